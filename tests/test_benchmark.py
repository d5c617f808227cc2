"""python -m scripts.benchmark --smoke: every section runs at minimal sizes and reports real figures."""
from __future__ import annotations

import contextlib
import io
import os
import pathlib
import re
import tempfile
from concurrent.futures import ThreadPoolExecutor
from types import SimpleNamespace

import pytest
import torch

import utility
from conftest import FIXTURE_ATOL, TileCounter
from model import restore
from model.reference_chop import reference_chop
from scripts import bench_inference, bench_training, benchmark, timing

NUMBER = r"[0-9]+(?:\.[0-9]+)?"


# The doc prints rounded figures. A figure derived from others is checked against the interval
# of values that the printed inputs stand for, never against the printed inputs taken as exact.
def printed(cell: str) -> tuple[float, float]:
    """The interval of non-negative values that print as ``cell`` ("0.218", "24.3", "2.6x", "75%")
    at its number of decimals."""
    text = cell.strip().rstrip("x%").replace(",", "")
    half = 0.5 * 10.0 ** -(len(text.split(".")[1]) if "." in text else 0)
    value = float(text)
    slack = 1e-9 * value  # the binary value behind the printed decimal digits
    return max(0.0, value - half - slack), value + half + slack


def times(a: tuple[float, float], b: tuple[float, float]) -> tuple[float, float]:
    """The product of two non-negative intervals."""
    return a[0] * b[0], a[1] * b[1]


def over(a: tuple[float, float], b: tuple[float, float]) -> tuple[float, float]:
    """The quotient of two non-negative intervals (unbounded above when b reaches 0)."""
    return a[0] / b[1], (a[1] / b[0] if b[0] > 0 else float("inf"))


def overlap(a: tuple[float, float], b: tuple[float, float]) -> bool:
    return a[0] <= b[1] and b[0] <= a[1]


def test_printed_intervals_are_the_values_that_round_to_the_cell():
    assert printed("0.218") == pytest.approx((0.2175, 0.2185))
    assert printed("2.6x") == pytest.approx((2.55, 2.65))
    assert printed("325") == pytest.approx((324.5, 325.5))
    assert printed("0") == (0.0, 0.5)
    for value, digits in ((0.21849, 3), (4.5849, 2), (0.0004, 3), (324.51, 0)):
        lo, hi = printed(f"{value:.{digits}f}")
        assert lo <= value <= hi
    # the case: 0.2 printed against 0.22 computed from other rounded figures
    assert overlap(printed("0.2"), (0.215, 0.225)) and not overlap(printed("0.2"), (0.26, 0.27))


@pytest.fixture
def one_thread():
    """One torch thread for the test (and the children it starts), as before it afterwards: on a
    CPU shared with busy processes more threads make small operators wait for each other."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def project_doc() -> str | None:
    """docs/BENCHMARKS.md as it stands (None when there is none)."""
    return open(timing.DOC).read() if os.path.isfile(timing.DOC) else None


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory) -> SimpleNamespace:
    """One smoke run of every section with no --doc (its temporary doc and files under a folder
    of its own): what it wrote and printed, and the torch threads and project doc around it."""
    folder = tmp_path_factory.mktemp("bench")
    run = SimpleNamespace(folder=str(folder), project_before=project_doc(), threads=torch.get_num_threads())
    with pytest.MonkeyPatch.context() as patch, contextlib.redirect_stdout(io.StringIO()) as out:
        patch.setattr(tempfile, "tempdir", str(folder))  # where its temporary doc goes
        assert benchmark.main(["--smoke"]) == 0
    run.threads_after, run.project_after = torch.get_num_threads(), project_doc()
    run.written = re.search(r"updated (\S+)", out.getvalue()).group(1)
    run.doc = open(run.written).read()
    return run


@pytest.fixture(scope="module")
def smoke_doc(smoke_run) -> str:
    """The doc that one smoke run of every section writes."""
    return smoke_run.doc


def table(doc: str, section: str) -> list[dict[str, str]]:
    """The rows of a section's Markdown table, as {header: cell}."""
    body = doc.split(f"<!-- {section}:begin -->")[1].split(f"<!-- {section}:end -->")[0]
    rows = [[c.strip() for c in line.strip().strip("|").split("|")]
            for line in body.splitlines() if line.startswith("|")]
    return [dict(zip(rows[0], row, strict=False)) for row in rows[2:]]


def test_every_section_has_its_markers_and_a_table(smoke_doc):
    for name in benchmark.SECTIONS:
        assert smoke_doc.count(f"<!-- {name}:begin -->") == 1
        assert smoke_doc.count(f"<!-- {name}:end -->") == 1
        assert table(smoke_doc, name), name


def test_loader_table_has_a_rate_per_task_and_worker_count(smoke_doc):
    rows = table(smoke_doc, "loader")
    assert [r["task"] for r in rows] == list(timing.SMOKE.loader_tasks)
    for row in rows:
        for w in bench_training.loader_workers(timing.SMOKE):
            assert float(row[f"{w} worker(s)"]) > 0  # printed to 3 significant digits: never 0


def test_rates_print_to_three_significant_digits():
    assert [timing.significant(v) for v in (325.4, 24.31, 0.42, 0.0123)] == [
        "325", "24.3", "0.420", "0.0123"]


def test_tiling_counts_tiles_as_restore_does(smoke_doc, tiny_model, one_thread):
    rows = table(smoke_doc, "tiling")
    modes = [m for m in bench_inference.TILING_MODES if m != "official-64" or not torch.cuda.is_available()]
    assert len(rows) == len(timing.SMOKE.tiling_sizes) * len(modes)
    for row in rows:
        side = int(row["size"].split("x")[0])
        x = torch.rand(1, 3, side, side) * 255
        counter = TileCounter(tiny_model)
        with torch.no_grad():
            if row["mode"] == "reference":
                reference_chop(lambda t: tiny_model(t, 0), x, 2)
            else:
                restore(tiny_model, x, 0, row["mode"].split("-")[0])
        counter.close()
        assert int(row["tile evaluations"]) == counter.count, row
        reference = next(r for r in rows if r["size"] == row["size"] and r["mode"] == "reference")
        speed_up = over(printed(reference["seconds"]), printed(row["seconds"]))
        assert row["speed-up vs reference"].endswith("x")
        assert overlap(printed(row["speed-up vs reference"]), speed_up), (row, speed_up)
        if row["mode"] == "official":
            assert float(row["max abs diff official vs reference"]) <= FIXTURE_ATOL


@pytest.mark.skipif(not os.access("/proc/self/clear_refs", os.W_OK), reason="Linux peak-RSS reset")
def test_cpu_peak_memory_grows_with_the_image(one_thread):
    calls = ["child_tiling_memory(60, 'official')",  # the larger also prints its torch threads
             "child_tiling_memory(144, 'official'), torch.get_num_threads()"]
    with ThreadPoolExecutor(2) as pool:  # the children at once: each measures its own peak
        (small,), (large, threads) = pool.map(lambda c: timing.in_child("bench_inference", c).split(), calls)
    small, large = float(small), float(large)
    # a 144x144 x2 output alone is 3 x 288 x 288 float32 = 0.95 MiB, and the averaging buffers
    # of the authors' procedure hold as much again
    assert 0 < small < large and large > 0.95
    assert threads == "1"  # the children take this count


def test_forward_reports_flops_and_the_gemm_fraction(smoke_doc):
    body = smoke_doc.split("<!-- forward:begin -->")[1].split("<!-- forward:end -->")[0]
    per_tile = printed(re.search(f"({NUMBER}) GFLOPs forward,", body).group(1))
    both = printed(re.search(f"({NUMBER}) GFLOPs forward\\+backward", body).group(1))
    # backward is about twice the forward: a property of the model, far wider than the rounding
    assert 2.85 * per_tile[0] <= both[1] and both[0] <= 3.15 * per_tile[1]
    peaks = {d: printed(v) for d, v in re.findall(f"(fp32|bf16) ({NUMBER}) GFLOP/s", body)}
    assert "fp32" in peaks
    rows = table(smoke_doc, "forward")
    passes = bench_inference.forward_passes(timing.SMOKE, timing.bench_device())
    expected = [(bench_inference.PASS_NAME[p.backward], p.batch) for p in passes]
    assert [(r["pass"], int(r["batch"])) for r in rows[:len(expected)]] == expected
    fresh = [r["pass"] for r in rows[len(expected):]]
    assert fresh in ([], ["forward, fresh process, malloc tuned**"])  # glibc only, smoke: tuned
    for row in rows:
        batch = (int(row["batch"]),) * 2
        work = times(both if "backward" in row["pass"] else per_tile, batch)
        assert overlap(printed(row["GFLOP per call"]), work), (row, work)
        rate = over(work, printed(row["seconds"]))
        assert overlap(printed(row["achieved GFLOP/s"]), rate), (row, rate)
        share = times(over(rate, peaks[row["dtype"]]), (100, 100))
        assert overlap(printed(row["% of GEMM peak"]), share), (row, share)


def test_training_reports_steps_and_the_loader_ratio(smoke_doc):
    rows = table(smoke_doc, "training")
    assert {r["configuration"].split()[0] for r in rows} == {"tiny"}
    row = rows[0]  # fp32
    sec, batch = printed(row["s/step"]), (int(row["batch"]),) * 2
    assert sec[1] > 0
    steps = over((1, 1), sec)
    assert overlap(printed(row["steps/s"]), steps), (row, steps)
    pairs = over(batch, sec)
    assert overlap(printed(row["pairs/s consumed"]), pairs), (row, pairs)
    ratio = re.search(f"delivers ({NUMBER}) pairs/s; .* ratio ({NUMBER})x", smoke_doc)
    workers = max(w for w in bench_training.loader_workers(timing.SMOKE) if w <= utility.usable_cpus())
    loader = [r[f"{workers} worker(s)"] for r in table(smoke_doc, "loader")]
    slowest = min(loader, key=float)
    assert ratio and ratio.group(1) == slowest  # the loader table's figure, as printed there
    expected = over((float(slowest),) * 2, pairs)  # the script divides the printed figure
    assert overlap(printed(ratio.group(2)), expected), (ratio.group(0), expected)


def test_saving_measures_each_phase_of_a_save(smoke_doc, smoke_run):
    rows = {r["what"]: r["seconds"] for r in table(smoke_doc, "saving")}
    for name in ("model_latest.pt", "state.pt"):
        for phase in bench_training.SAVE_PHASES:
            assert float(rows[f"{name}: {phase}"]) >= 0
    assert float(rows["`save(background=True)`: the wait of a periodic save now"]) > 0
    assert re.search(r"model_latest.pt \d+ MB, state.pt \d+ MB", smoke_doc)
    assert not list(pathlib.Path(smoke_run.folder).rglob("*.pt"))  # its temporary folders are removed


def test_bf16_times_restore_and_a_test_only_run_in_both_precisions(smoke_doc):
    rows = [list(r.values()) for r in table(smoke_doc, "bf16")]
    assert [(r[0], r[1]) for r in rows] == [("`restore()`", "official"), ("`restore()`", "fast"),
                                           ("whole `--test_only` run", "fast")]
    for row in rows:
        # the speed-up is of the unrounded seconds: it must fit what the rounded cells can stand for
        assert float(row[2]) > 0 and float(row[3]) > 0, row
        assert overlap(printed(row[4]), over(printed(row[2]), printed(row[3]))), row
    assert int(rows[0][5]) > int(rows[1][5]) > 0  # official evaluates more tiles than fast
    assert float(rows[0][6]) < 50  # bf16 moved the tiny model's output by a few grey levels


def test_smoke_leaves_the_project_doc_alone(smoke_run):
    assert smoke_run.threads_after == smoke_run.threads  # the smoke run's one thread is undone
    assert os.path.dirname(os.path.abspath(smoke_run.written)) == smoke_run.folder
    assert "<!-- tiling:begin -->" in open(smoke_run.written).read()
    assert smoke_run.project_after == smoke_run.project_before


def test_unknown_sections_are_refused():
    with pytest.raises(SystemExit):
        benchmark.main(["nonsense", "--smoke"])
