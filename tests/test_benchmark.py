"""scripts/benchmark.py --smoke: every section runs at minimal sizes and reports real figures."""
from __future__ import annotations

import os
import re
import sys

import pytest
import torch
from conftest import FIXTURE_ATOL, ROOT, TileCounter

from model import restore
from model.reference_chop import reference_chop

sys.path.insert(0, os.path.join(ROOT, "scripts"))
import benchmark  # noqa: E402

NUMBER = r"[0-9]+(?:\.[0-9]+)?"


@pytest.fixture(scope="module")
def smoke_doc(tmp_path_factory) -> str:
    """The doc that one smoke run of every section writes."""
    doc = str(tmp_path_factory.mktemp("bench") / "BENCHMARKS.md")
    assert benchmark.main(["--smoke", "--doc", doc]) == 0
    return open(doc).read()


def table(doc: str, section: str) -> list[dict[str, str]]:
    """The rows of a section's Markdown table, as {header: cell}."""
    body = doc.split(f"<!-- {section}:begin -->")[1].split(f"<!-- {section}:end -->")[0]
    rows = [[c.strip() for c in line.strip().strip("|").split("|")]
            for line in body.splitlines() if line.startswith("|")]
    return [dict(zip(rows[0], row)) for row in rows[2:]]


def test_every_section_has_its_markers_and_a_table(smoke_doc):
    for name in benchmark.SECTIONS:
        assert smoke_doc.count(f"<!-- {name}:begin -->") == 1
        assert smoke_doc.count(f"<!-- {name}:end -->") == 1
        assert table(smoke_doc, name), name


def test_loader_table_has_a_rate_per_task_and_worker_count(smoke_doc):
    rows = table(smoke_doc, "loader")
    assert [r["task"] for r in rows] == list(benchmark.SMOKE.loader_tasks)
    for row in rows:
        for w in benchmark.loader_workers(benchmark.SMOKE):
            assert float(row[f"{w} worker(s)"]) > 0


def test_tiling_counts_tiles_as_restore_does(smoke_doc, tiny_model):
    rows = table(smoke_doc, "tiling")
    modes = [m for m in benchmark.TILING_MODES if m != "official-64" or not torch.cuda.is_available()]
    assert len(rows) == len(benchmark.SMOKE.tiling_sizes) * len(modes)
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
        assert float(row["seconds"]) > 0 and row["speed-up vs reference"].endswith("x")
        if row["mode"] == "official":
            assert float(row["max abs diff official vs reference"]) <= FIXTURE_ATOL


@pytest.mark.skipif(not os.access("/proc/self/clear_refs", os.W_OK), reason="Linux peak-RSS reset")
def test_cpu_peak_memory_grows_with_the_image():
    small, large = (float(benchmark.in_child(f"child_tiling_memory({side}, 'official')"))
                    for side in (60, 480))
    # a 480x480 x2 output alone is 3 x 960 x 960 float32 = 10.5 MiB, and the averaging buffers
    # of the authors' procedure hold as much again
    assert 0 < small < large and large > 10.5


def test_forward_reports_flops_and_the_gemm_fraction(smoke_doc):
    body = smoke_doc.split("<!-- forward:begin -->")[1]
    per_tile = float(re.search(f"({NUMBER}) GFLOPs forward,", body).group(1))
    both = float(re.search(f"({NUMBER}) GFLOPs forward\\+backward", body).group(1))
    assert both == pytest.approx(3 * per_tile, rel=0.05)  # backward is about twice the forward
    assert re.search(f"fp32 {NUMBER} GFLOP/s", body)
    rows = table(smoke_doc, "forward")
    passes = benchmark.forward_passes(benchmark.SMOKE, benchmark.bench_device())
    expected = [(p.name, p.batch) for p in passes]
    assert [(r["pass"], int(r["batch"])) for r in rows[:len(expected)]] == expected
    for row in rows:
        work = (both if "backward" in row["pass"] else per_tile) * int(row["batch"])
        assert float(row["GFLOP per call"]) == pytest.approx(work, abs=0.06)
        rate = work / float(row["seconds"])
        assert float(row["achieved GFLOP/s"]) == pytest.approx(rate, rel=0.1)
        assert 0 < float(row["% of GEMM peak"].rstrip("%"))


def test_training_reports_steps_and_the_loader_ratio(smoke_doc):
    rows = table(smoke_doc, "training")
    assert {r["configuration"].split()[0] for r in rows} == {"tiny"}
    row = rows[0]  # fp32
    sec, batch = float(row["s/step"]), int(row["batch"])
    # against s/step, the cell with the most digits: on a slow or busy machine the steps and pairs
    # per second round to a few digits (0.18 steps/s, 0.4 pairs/s)
    assert sec > 0 and float(row["steps/s"]) == pytest.approx(1 / sec, rel=0.05, abs=0.005)
    assert float(row["pairs/s consumed"]) == pytest.approx(batch / sec, rel=0.05, abs=0.05)
    ratio = re.search(f"ratio ({NUMBER})x", smoke_doc)
    workers = max(w for w in benchmark.loader_workers(benchmark.SMOKE) if w <= benchmark.cpu_cores())
    loader = {r["task"]: float(r[f"{workers} worker(s)"]) for r in table(smoke_doc, "loader")}
    assert ratio and float(ratio.group(1)) == pytest.approx(
        min(loader.values()) * sec / batch, rel=0.05, abs=0.05)


def test_smoke_leaves_the_project_doc_alone(capsys):
    before = open(benchmark.DOC).read() if os.path.isfile(benchmark.DOC) else None
    assert benchmark.main(["tiling", "--smoke"]) == 0
    written = re.search(r"updated (\S+)", capsys.readouterr().out).group(1)
    assert os.path.abspath(written) != os.path.abspath(benchmark.DOC)
    assert "<!-- tiling:begin -->" in open(written).read()
    os.remove(written)
    assert (open(benchmark.DOC).read() if os.path.isfile(benchmark.DOC) else None) == before


def test_unknown_sections_are_refused():
    with pytest.raises(SystemExit):
        benchmark.main(["nonsense", "--smoke"])
