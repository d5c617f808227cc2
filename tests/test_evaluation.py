"""The evaluation run on benchmark trees built from scikit-image photos."""
from __future__ import annotations

import hashlib
import itertools
import json
import logging
import math
import os
import shutil
import signal
import subprocess
import sys
import types

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image

import evaluation
import main as cli
import metrics
import report
import runfolder
import stops
from data.benchmark import BenchmarkSet
from data.degrade import bicubic_lr
from data.images import ImageReadError
from evaluation import evaluate_set
from model import IPTConfig, build_model
from run_settings import EvalSettings, InferenceSettings

TINY = ["--n_feats", "16", "--num_heads", "4", "--num_layers", "1", "--chop", "fast", "--cpu"]


def photo(name: str, top: int, left: int, h: int, w: int) -> np.ndarray:
    return np.ascontiguousarray(getattr(skimage.data, name)()[top:top + h, left:left + w, :3])


def save(arr: np.ndarray, path) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(arr).save(path)


@pytest.fixture
def tree(tmp_path):
    """Set5 (one LR present, one missing), a flat CBSD68 and a Rain100L, all tiny."""
    root = tmp_path / "data"
    hr_a, hr_b = photo("astronaut", 40, 60, 61, 50), photo("coffee", 100, 200, 50, 64)
    save(hr_a, root / "benchmark/Set5/HR/a.png")
    save(hr_b, root / "benchmark/Set5/HR/b.png")
    lr_a = bicubic_lr(torch.from_numpy(hr_a).permute(2, 0, 1), 2).permute(1, 2, 0).numpy()
    save(lr_a, root / "benchmark/Set5/LR_bicubic/X2/ax2.png")
    save(photo("chelsea", 0, 0, 40, 52), root / "CBSD68/c.png")
    clean = photo("rocket", 200, 300, 48, 48)
    save(clean, root / "Rain100L/norain-1.png")
    save(np.clip(clean.astype(int) + 40, 0, 255).astype(np.uint8), root / "Rain100L/rain-1.png")
    return root


def evaluate(tmp_path, root, *argv):
    run = tmp_path / "run"
    code = cli.main(["--test_only", "--dir_data", str(root), "--save", str(run), "--save_results",
                     *TINY, *argv])
    return code, run


def test_sr_metrics_equal_the_saved_images(tmp_path, tree, caplog):
    code, run = evaluate(tmp_path, tree, "--scale", "2", "--data_test", "Set5")
    assert code == 0
    assert "1 of 2 LR images missing" in caplog.text and "making LR from HR" in caplog.text
    report = json.loads((run / "metrics.json").read_text())
    assert report["meta"]["step"] is None  # a checkpoint's evaluation, not a training validation
    assert set(report["meta"]) == {"checkpoint", "checkpoint_sha256", "step", "commit", "options",
                                   "model", "tiling", "self_ensemble", "precision", "precision_auto",
                                   "metric_channel", "test_noise", "training", "interrupted", "not_evaluated"}
    assert (report["meta"]["precision"], report["meta"]["precision_auto"]) == ("single", None)
    assert report["meta"]["interrupted"] is False and report["meta"]["not_evaluated"] == []
    assert report["meta"]["training"] is None  # random weights: no training.json
    assert report["meta"]["tiling"] == "fast" and report["meta"]["metric_channel"] == "y"  # TINY: fast
    r = report["results"]["Set5"]["sr2"]
    assert r["n_images"] == 2 and set(r["per_image"]) == {"a", "b"}
    for stem in ("a", "b"):
        sr = torch.from_numpy(np.array(Image.open(run / "results-Set5" / f"{stem}_x2_SR.png")))
        hr = torch.from_numpy(np.array(Image.open(tree / f"benchmark/Set5/HR/{stem}.png")))
        hr = hr[:sr.shape[0], :sr.shape[1]]  # HR cropped to LR x 2 (61 -> 60 rows)
        sr, hr = sr.permute(2, 0, 1).float(), hr.permute(2, 0, 1).float()
        assert r["per_image"][stem]["psnr"] == pytest.approx(metrics.calc_psnr(sr, hr, 2)[0], abs=1e-9)
        assert r["per_image"][stem]["psnr_y"] == r["per_image"][stem]["psnr"]
        assert r["per_image"][stem]["psnr_rgb"] == pytest.approx(
            metrics.calc_psnr(sr, hr, 2, y_channel=False)[0], abs=1e-9)
    assert r["psnr"] == pytest.approx(np.mean([v["psnr"] for v in r["per_image"].values()]))
    table = (run / "results.md").read_text()
    assert "| Set5 | sr2 | 2 |" in table and "38.37" in table
    assert r["baseline_psnr"] > 0 and "input PSNR" in table
    index = (run / "index.html").read_text()  # the sheets of --save_results, one per image
    for stem in ("a", "b"):
        assert os.path.isfile(run / "results-Set5" / f"{stem}_sr2_compare.png")
        assert f'src="results-Set5/{stem}_sr2_compare.png"' in index


def test_denoise_and_derain_sets(tmp_path, tree):
    code, run = evaluate(tmp_path, tree, "--tasks", "derain+denoise30", "--data_test", "CBSD68+Rain100L",
                         "--save_gt")
    assert code == 0
    results = json.loads((run / "metrics.json").read_text())["results"]
    assert set(results) == {"CBSD68", "Rain100L"}
    assert set(results["CBSD68"]) == {"denoise30"} and set(results["Rain100L"]) == {"derain"}
    assert os.path.isfile(run / "results-CBSD68" / "c_denoise30_SR.png")
    assert os.path.isfile(run / "results-Rain100L" / "rain-1_derain_SR.png")
    rainy = np.array(Image.open(run / "results-Rain100L" / "rain-1_derain_LR.png"))
    assert np.array_equal(rainy, np.array(Image.open(tree / "Rain100L/rain-1.png")))
    clean = np.array(Image.open(run / "results-CBSD68" / "c_denoise30_HR.png"))
    assert np.array_equal(clean, np.array(Image.open(tree / "CBSD68/c.png")))


def test_authors_derain_command_defaults_to_rain100l(tmp_path, tree):
    code, run = evaluate(tmp_path, tree, "--scale", "1", "--derain")
    assert code == 0
    assert "Rain100L" in json.loads((run / "metrics.json").read_text())["results"]


@pytest.mark.parametrize("breakage,argv,expected", [
    ("none", ["--scale", "2", "--data_test", "Urban100"], "benchmark/Urban100/HR"),
    ("mismatch", ["--scale", "2", "--data_test", "Set5"], "ax2.png"),
    ("unpaired", ["--task", "derain", "--data_test", "Rain100L"], "rain-2.png"),
    ("empty", ["--scale", "2", "--data_test", "Set14"], "no images"),
    ("none", ["--scale", "2", "--data_test", "Set5+Urban100"], "benchmark/Urban100/HR"),  # said first
])
def test_layout_errors_name_the_path(tmp_path, tree, caplog, breakage, argv, expected):
    if breakage == "mismatch":
        save(np.zeros((20, 20, 3), np.uint8), tree / "benchmark/Set5/LR_bicubic/X2/ax2.png")
    elif breakage == "unpaired":
        save(np.zeros((8, 8, 3), np.uint8), tree / "Rain100L/rain-2.png")
    elif breakage == "empty":
        os.makedirs(tree / "benchmark/Set14/HR")
    code, run = evaluate(tmp_path, tree, *argv)
    assert code != 0
    assert expected in caplog.text
    assert not os.path.exists(run / "metrics.json") and not list(run.rglob("*.png"))  # nothing restored


def test_sample_needs_no_data(tmp_path, crop_sample):
    crop_sample(48, 64)
    code, run = evaluate(tmp_path, tmp_path / "nothing", "--tasks", "sr2+denoise50",
                         "--data_test", "Sample")
    assert code == 0
    results = json.loads((run / "metrics.json").read_text())["results"]["Sample"]
    assert set(results) == {"sr2", "denoise50"}
    assert set(results["sr2"]["per_image"]) == {"astronaut", "coffee"}
    assert all(np.isfinite(v["psnr"]) for v in results["denoise50"]["per_image"].values())


SET5_BIRD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "fixtures", "set5_bird")


def test_standard_lr_files_and_made_ones_evaluate_the_same(tmp_path):
    """Set5's bird with its published LR files, and with LR made here: the same inputs, the same
    metrics, and a bicubic baseline that is the published LR upscaled by MATLAB's rule."""
    made = tmp_path / "benchmark" / "Set5" / "HR"
    made.mkdir(parents=True)
    shutil.copy(os.path.join(SET5_BIRD, "benchmark", "Set5", "HR", "bird.png"), made)
    for s in (2, 3, 4):
        given = BenchmarkSet(SET5_BIRD, "Set5", f"sr{s}", s)
        assert given.lr_dir is not None  # the published files are read
        ours = BenchmarkSet(str(tmp_path), "Set5", f"sr{s}", s)
        assert ours.lr_dir is None  # none here: made from HR
        assert torch.equal(given[0].lr, ours[0].lr) and torch.equal(given[0].hr, ours[0].hr)
    model = build_model(IPTConfig(n_feats=16, num_heads=4, num_layers=1, scale=[2])).eval()
    fast = InferenceSettings(mode="fast")
    a = evaluate_set(model, BenchmarkSet(SET5_BIRD, "Set5", "sr2", 2), 0, fast, None)
    b = evaluate_set(model, BenchmarkSet(str(tmp_path), "Set5", "sr2", 2), 0, fast, None)
    assert a == b


# ----------------------------------------------------------------------------------------
# results.md: per-image rows, the gain over the input, the training length, stdout
# ----------------------------------------------------------------------------------------
COLUMNS = {"PSNR (Y)": "psnr_y", "SSIM (Y)": "ssim_y", "PSNR (RGB)": "psnr_rgb",
           "SSIM (RGB)": "ssim_rgb", "input PSNR": "baseline_psnr", "input SSIM": "baseline_ssim",
           "gain over input (dB)": "gain_psnr"}


def cells(row: str) -> list[str]:
    return [c.strip() for c in row.strip().strip("|").split("|")]


def table_after(markdown: str, marker: str) -> dict[str, dict[str, str]]:
    """The table after the first line starting with ``marker``: {first cell: {column: cell}}."""
    lines = markdown.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith(marker))
    rest = itertools.dropwhile(lambda line: not line.startswith("|"), lines[start + 1:])
    rows = list(itertools.takewhile(lambda line: line.startswith("|"), rest))
    header = cells(rows[0])
    assert set(cells(rows[1])) == {"---"}
    return {c[0]: dict(zip(header, c, strict=False)) for c in map(cells, rows[2:])}


def assert_printed(printed: str, value: float) -> None:
    """A printed number equals ``value`` to within half a unit of its last digit."""
    digits = len(printed.split(".")[1]) if "." in printed else 0
    assert abs(float(printed) - value) <= 0.5 * 10 ** -digits + 1e-9, (printed, value)


def assert_row(row: dict[str, str], metrics: dict) -> None:
    for column, key in COLUMNS.items():
        assert_printed(row[column], metrics[key])


def test_results_md_per_image_rows_and_gain_match_metrics_json(tmp_path, tree, capsys):
    code, run = evaluate(tmp_path, tree, "--tasks", "sr2+denoise30+derain",
                         "--data_test", "Set5+CBSD68+Rain100L")
    assert code == 0
    report = json.loads((run / "metrics.json").read_text())
    results = report["results"]
    assert {(s, t) for s in results for t in results[s]} == {
        ("Set5", "sr2"), ("CBSD68", "denoise30"), ("Rain100L", "derain")}
    text = (run / "results.md").read_text()
    summary = table_after(text, "training:")
    assert "training: random weights" in text
    for dataset, tasks in results.items():
        for task, r in tasks.items():
            for m in [r, *r["per_image"].values()]:  # gain: the model's PSNR minus the input's
                assert math.isclose(m["gain_psnr"], m["psnr"] - m["baseline_psnr"], abs_tol=1e-9)
            assert r["gain_psnr"] == pytest.approx(np.mean([m["gain_psnr"] for m in r["per_image"].values()]))
            row = summary[dataset]
            assert row["task"] == task and row["images"] == str(r["n_images"])
            assert_row(row, r)
            rows = table_after(text, f"### {dataset} {task}")
            assert set(rows) == set(r["per_image"])
            for image, m in r["per_image"].items():
                assert_row(rows[image], m)
    out = capsys.readouterr().out  # the same Markdown on stdout, per-image rows included (few)
    assert out.strip() == text.strip()


def test_gain_over_the_input_by_hand():
    hr = torch.full((3, 12, 12), 100.0)
    output, inputs = hr + 5, hr + 10  # errors 5 and 10 everywhere: MSE 25 and 100 (scaled alike on Y)
    for channel in ("rgb", "y"):
        psnr = metrics.calc_psnr(output, hr, 1, y_channel=channel == "y")[0]
        m = evaluation.image_metrics(output, inputs, hr, 1, channel)
        assert m["psnr"] == psnr
        assert m["gain_psnr"] == pytest.approx(10 * math.log10(100 / 25))  # 6.02 dB
        assert m["gain_psnr"] == pytest.approx(psnr - m["baseline_psnr"])
        if channel == "rgb":
            assert psnr == pytest.approx(10 * math.log10(255 ** 2 / 25))
            assert m["baseline_psnr"] == pytest.approx(10 * math.log10(255 ** 2 / 100))
    exact = evaluation.image_metrics(hr, hr, hr, 1)  # an exact input kept exact: inf - inf was NaN
    assert (exact["psnr"], exact["baseline_psnr"], exact["gain_psnr"]) == (math.inf, math.inf, 0.0)
    cells_ = report.metric_cells({"psnr_y": 30.0, "ssim_y": 0.9, "psnr_rgb": 29.0, "ssim_rgb": 0.8,
                                      "baseline_psnr": 27.5, "baseline_ssim": 0.7, "gain_psnr": 2.5})
    assert cells_[-1] == "+2.50"


def write_record(folder, described: dict | None = None, **fields) -> None:
    """training.json in ``folder``, describing the files of ``described`` ({name: step}) by
    their size and mtime_ns now, as training records the weights it writes."""
    weights = {}
    for name, step in (described or {}).items():
        st = os.stat(folder / name)
        weights[name] = {"step": step, "size": st.st_size, "mtime_ns": st.st_mtime_ns}
    record = {"model": "ipt", "architecture": {"model": "ipt", "n_feats": 16}, "step": 2000,
              "max_steps": 2000, "schedule_steps": 2000, "finished": True, "interrupted": False,
              "best_step": 1500, "weights": weights, **fields}
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "training.json").write_text(json.dumps(record))


def weights_file(path, content: bytes = b"weights") -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(content)
    return str(path)


@pytest.mark.parametrize("name,saved_at,fields,steps,finished,interrupted,note", [
    ("model_latest.pt", 2000, {}, 2000, True, False, "trained 2000 of 2000 steps (finished)"),
    ("model_latest.pt", 511, {"step": 511, "finished": False, "interrupted": True}, 511, False, True,
     "trained 511 of 2000 steps (interrupted)"),
    ("model_latest.pt", 700, {"step": 700, "finished": False}, 700, False, False,
     "trained 700 of 2000 steps (not finished)"),
    ("model_2000.pt", 2000, {}, 2000, True, False, "trained 2000 of 2000 steps (finished)"),
    ("model_500.pt", 500, {}, 500, False, False,
     "trained 500 of 2000 steps (saved at step 500; training.json records the run at step 2000)"),
    ("model_best.pt", 1500, {}, 1500, False, False,
     "trained 1500 of 2000 steps (saved at step 1500; training.json records the run at step 2000)"),
    ("model_best.pt", 511, {"step": 511, "best_step": 511, "finished": False, "interrupted": True},
     511, False, True, "trained 511 of 2000 steps (interrupted)"),
    ("IPT_sr2.pt", None, {}, None, False, False,
     "training length unknown (the training.json beside it gives no step for IPT_sr2.pt)"),
])
def test_training_length_from_training_json(tmp_path, name, saved_at, fields, steps, finished,
                                            interrupted, note):
    folder = tmp_path / "run" / "model"
    checkpoint = weights_file(folder / name)
    write_record(folder, {name: saved_at} if saved_at is not None else {}, **fields)
    t = evaluation.training_length(checkpoint)
    assert t == {"steps": steps, "max_steps": 2000, "finished": finished, "interrupted": interrupted,
                 "run_steps": fields.get("step", 2000), "source": str(folder / "training.json"),
                 "unverified": None}
    assert report.training_note(checkpoint, None, t) == note


def test_training_length_only_for_the_weights_the_record_describes(tmp_path):
    """A step is told only for a file whose size and mtime_ns are those training.json records
    for its name: weights saved after the last training.json (a failed state save) are not
    reported as the record's step."""
    folder = tmp_path / "run" / "model"
    latest = weights_file(folder / "model_latest.pt", b"step 4 weights")
    write_record(folder, {"model_latest.pt": 4}, step=4, max_steps=4, finished=True)
    assert report.training_note(latest, None, evaluation.training_length(latest)) == (
        "trained 4 of 4 steps (finished)")
    st = os.stat(latest)
    weights_file(folder / "model_latest.pt", b"step 6 weights!")  # saved again; the record not
    os.utime(latest, ns=(st.st_atime_ns, st.st_mtime_ns + 2_000_000_000))
    t = evaluation.training_length(latest)
    assert t["steps"] is None and not t["finished"] and t["run_steps"] == 4
    note = report.training_note(latest, None, t)
    assert note.startswith("training length unknown (the weights are newer than training.json: "
                           "model_latest.pt is 15 bytes of ")
    assert "training.json describes 14 bytes of " in note and note.endswith("(step 4))")
    weights_file(folder / "model_latest.pt", b"step 4 weights")  # same size, another time
    os.utime(latest, ns=(st.st_atime_ns, st.st_mtime_ns - 1))
    assert "not the file training.json describes" in report.training_note(
        latest, None, evaluation.training_length(latest))
    os.utime(latest, ns=(st.st_atime_ns, st.st_mtime_ns))  # the described file again
    assert evaluation.training_length(latest)["steps"] == 4
    best = weights_file(folder / "model_best.pt")  # a trained name the record does not describe
    t = evaluation.training_length(best)
    assert t["steps"] is None and t["unverified"] == (
        'training.json does not describe model_best.pt (no step, size and time of it under "weights")')
    assert report.training_note(best, None, t) == f"training length unknown ({t['unverified']})"
    os.remove(latest)
    assert evaluation.training_length(latest)["unverified"].startswith(
        "cannot read the size and time of model_latest.pt (No such file")


def test_training_length_without_a_record(tmp_path):
    checkpoint = str(tmp_path / "IPT_sr2.pt")  # the authors' file: nothing beside it
    assert evaluation.training_length(checkpoint) is None
    assert report.training_note(checkpoint, None, None) == (
        "training length unknown (no training.json beside the checkpoint)")
    assert evaluation.training_length("") is None
    assert report.training_note("", None, None) == "random weights"
    assert report.training_note("", 300, None) == "validation of this training run at step 300"


def test_evaluated_checkpoint_reports_its_training(tmp_path, tree, capsys, monkeypatch):
    folder = tmp_path / "trained" / "model"
    checkpoint = folder / "model_latest.pt"
    torch.manual_seed(0)
    model = build_model(IPTConfig(n_feats=16, num_heads=4, num_layers=1, scale=[2], num_queries=1))
    folder.mkdir(parents=True)
    torch.save(model.state_dict(), checkpoint)
    write_record(folder, {"model_latest.pt": 511}, step=511, finished=False, interrupted=True)
    monkeypatch.setattr(report, "PRINTED_IMAGE_ROWS", 1)  # two images: their rows not printed
    code, run = evaluate(tmp_path, tree, "--scale", "2", "--data_test", "Set5",
                         "--pretrain", str(checkpoint))
    assert code == 0
    meta = json.loads((run / "metrics.json").read_text())["meta"]
    assert meta["training"] == {"steps": 511, "max_steps": 2000, "finished": False, "interrupted": True,
                                "run_steps": 511, "source": str(folder / "training.json"),
                                "unverified": None}
    text = (run / "results.md").read_text()
    assert "training: trained 511 of 2000 steps (interrupted)" in text
    assert set(table_after(text, "### Set5 sr2")) == {"a", "b"}
    out = capsys.readouterr().out
    head = text.split("\n## Per image")[0]
    assert out.startswith(head) and "### Set5" not in out
    assert f"Per-image rows (2) left out here: see {run / 'results.md'}" in out


# ----------------------------------------------------------------------------------------
# Stopped evaluations and what the records say
# ----------------------------------------------------------------------------------------
STUB_MODEL = types.SimpleNamespace(task_names=["sr2"], scale=[2])  # all evaluate asks of a model
FAST = InferenceSettings(mode="fast")  # resolve_mode needs no network for it
METRICS = {"psnr": 30.0, "ssim": 0.9, "psnr_y": 30.0, "ssim_y": 0.9, "psnr_rgb": 29.0,
           "ssim_rgb": 0.8, "baseline_psnr": 28.0, "baseline_ssim": 0.7, "gain_psnr": 2.0}


def eval_settings(tmp_path, data_test: list[str], save_results: bool = False) -> EvalSettings:
    os.makedirs(tmp_path / "run", exist_ok=True)  # main.py makes it before
    return EvalSettings(data_test=data_test, dir_data=str(tmp_path / "data"),
                        dir_demo=str(tmp_path / "demo"), test_range=(801, 810), clip_noise=True,
                        seed=1, save=str(tmp_path / "run"), save_results=save_results, save_gt=False,
                        workers=0, task_id=None, model_name="ipt", record={"scale": [2]})


def fake_results(*images: str) -> dict:
    """evaluate_benchmark's answer for one set and the head sr2."""
    return {"sr2": {**METRICS, "n_images": len(images), "per_image": {i: dict(METRICS) for i in images}}}


def answer_at_once(monkeypatch, fake) -> None:
    """evaluate_benchmark is ``fake``, over sets that are on no disk (their layout not checked)."""
    monkeypatch.setattr(evaluation, "evaluate_benchmark", fake)
    monkeypatch.setattr(evaluation, "check_sets", lambda *args: None)


def stop_at(monkeypatch, stopped_set: str, stop: BaseException) -> None:
    """evaluate_benchmark answers at once, and raises ``stop`` for ``stopped_set``."""
    def fake(model, ev, inference, name, task_ids, out_dir, previews=None):
        if name == stopped_set:
            raise stop
        return fake_results("a", "b")

    answer_at_once(monkeypatch, fake)


def run_evaluate(*args) -> int:
    try:
        return evaluation.evaluate(*args)
    except KeyboardInterrupt:
        pytest.fail("the stop went through evaluate (a traceback, no report)")


@pytest.mark.parametrize("stop,name", [(KeyboardInterrupt(), "SIGINT"),
                                       (stops.Interrupted(signal.SIGTERM), "SIGTERM")])
def test_interrupted_evaluation_reports_the_finished_sets(tmp_path, monkeypatch, caplog, capsys,
                                                         stop, name):
    stop_at(monkeypatch, "Set14", stop)
    ev = eval_settings(tmp_path, ["Set5", "Set14", "Urban100"], save_results=True)
    caplog.set_level(logging.INFO, logger="ipt")
    assert run_evaluate(STUB_MODEL, ev, FAST, "") == stops.INTERRUPTED == 130
    run = tmp_path / "run"
    report = json.loads((run / "metrics.json").read_text())
    meta = report["meta"]
    assert meta["interrupted"] is True and meta["not_evaluated"] == ["Set14", "Urban100"]
    assert set(report["results"]) == {"Set5"}
    line = f"interrupted by {name}: sets Set5 finished; Set14, Urban100 not evaluated"
    assert f"\n{line}\n" in (run / "results.md").read_text()
    assert "(interrupted)" in (run / "index.html").read_text()
    said = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert said == [f"{line}; reports written: {run / 'metrics.json'}, {run / 'results.md'}, "
                    f"{run / 'index.html'}"]
    assert capsys.readouterr().out == ""  # the one line only: no tables printed


@pytest.mark.parametrize("error", [ImageReadError("cannot read image 'Set14/b.png': truncated"),
                                   runfolder.SaveError("cannot write run/b_x2_SR.png (No space left)")])
def test_an_error_in_a_set_reports_the_sets_finished_before(tmp_path, monkeypatch, caplog, error):
    """An unreadable image in the second set lost the first set's results (no report, exit 1), and a
    file that could not be written there (--save_results on a full disk) ended in a traceback."""
    stop_at(monkeypatch, "Set14", error)
    ev = eval_settings(tmp_path, ["Set5", "Set14", "Urban100"])
    assert run_evaluate(STUB_MODEL, ev, FAST, "") == 1
    run = tmp_path / "run"
    report = json.loads((run / "metrics.json").read_text())
    assert set(report["results"]) == {"Set5"} and report["meta"]["not_evaluated"] == ["Set14", "Urban100"]
    line = "interrupted by an error in Set14: sets Set5 finished; Set14, Urban100 not evaluated"
    assert f"\n{line}\n" in (run / "results.md").read_text()
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == [
        str(error), f"{line}; reports written: {run / 'metrics.json'}, {run / 'results.md'}"]


def test_a_report_that_cannot_be_written_is_one_line(tmp_path, monkeypatch, caplog):
    stop_at(monkeypatch, "none", KeyboardInterrupt())
    failure = runfolder.SaveError("cannot write run/metrics.json (No space left on device; 0.0 MiB free)")

    def full_disk(*args, **kwargs):
        raise failure

    monkeypatch.setattr(report, "write_reports", full_disk)
    assert run_evaluate(STUB_MODEL, eval_settings(tmp_path, ["Set5"]), FAST, "") == 1
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == [str(failure)]


def test_interrupted_in_the_first_set_writes_no_report(tmp_path, monkeypatch, caplog):
    stop_at(monkeypatch, "Set5", KeyboardInterrupt())
    ev = eval_settings(tmp_path, ["Set5", "Set14"])
    assert run_evaluate(STUB_MODEL, ev, FAST, "") == stops.INTERRUPTED
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == [
        "interrupted by SIGINT: no set finished; Set5, Set14 not evaluated; no report written"]
    assert not (tmp_path / "run" / "metrics.json").exists()


def test_interrupted_again_while_writing_the_reports(tmp_path, monkeypatch, caplog):
    stop_at(monkeypatch, "Set14", KeyboardInterrupt())

    def second_stop(*args, **kwargs):
        raise stops.Interrupted(signal.SIGTERM)

    monkeypatch.setattr(report, "write_reports", second_stop)
    assert run_evaluate(STUB_MODEL, eval_settings(tmp_path, ["Set5", "Set14"]), FAST, "") == 130
    assert [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING] == [
        "SIGTERM while writing the reports: some may be missing"]


def test_recorded_hash_is_of_the_bytes_loaded(tmp_path, monkeypatch):
    """metrics.json records the SHA-256 given by the loader, not one of the file at report time
    (replaced meanwhile here); without one, null (the file is not hashed again)."""
    checkpoint = weights_file(tmp_path / "IPT_sr2.pt", b"another file, written after loading")
    loaded = hashlib.sha256(b"the weights loaded").hexdigest()
    answer_at_once(monkeypatch, lambda *args, **kwargs: fake_results("a"))
    ev = eval_settings(tmp_path, ["Set5"])
    assert run_evaluate(STUB_MODEL, ev, FAST, checkpoint, loaded) == 0
    metrics = tmp_path / "run" / "metrics.json"
    assert json.loads(metrics.read_text())["meta"]["checkpoint_sha256"] == loaded
    report.write_reports("fast", ev, FAST, {"Set5": fake_results("a")}, checkpoint=checkpoint)
    meta = json.loads(metrics.read_text())["meta"]
    assert meta["checkpoint"] == checkpoint and meta["checkpoint_sha256"] is None


def test_validation_lets_a_stop_through_to_the_trainer(tmp_path, monkeypatch):
    stop_at(monkeypatch, "Set5", stops.Interrupted(signal.SIGUSR1))
    validate = evaluation.validator(STUB_MODEL, eval_settings(tmp_path, ["Set5"]), FAST)
    with pytest.raises(stops.Interrupted):
        validate(STUB_MODEL, 100)
    assert os.listdir(tmp_path / "run") == []  # no report of that step


def test_image_loader_workers_ignore_stop_signals(tree):
    loader = evaluation.prefetch(BenchmarkSet(str(tree), "Set5", "sr2", 2), 2)
    assert loader.worker_init_fn is stops.ignore_stop_signals


SLOW_SECOND_SET = """
import multiprocessing, sys, time
import evaluation, main
real = evaluation.evaluate_set
def slow_set14(model, data, *args, **kwargs):
    if data.dataset == "Set14":  # its loader's workers are running when the signal comes
        def wait(*a, **k):
            print("waiting with loader workers:", len(multiprocessing.active_children()), flush=True)
            time.sleep(60)
        evaluation.restore_quantised = wait
    return real(model, data, *args, **kwargs)
evaluation.evaluate_set = slow_set14
sys.exit(main.main(sys.argv[1:]))
"""


@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM], ids=lambda s: s.name)
def test_signal_during_test_only_one_line_and_reports(tmp_path, tree, sig):
    """A signal to the process group (Ctrl-C: SIGINT; Slurm/timeout: SIGTERM) while the second
    set is restored, its image loader's workers running: exit 130, one line, no traceback, the
    first set's reports written and marked interrupted."""
    save(photo("astronaut", 0, 0, 40, 40), tree / "benchmark/Set14/HR/x.png")
    save(photo("coffee", 0, 0, 40, 40), tree / "benchmark/Set14/HR/y.png")
    run = tmp_path / "run"
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    proc = subprocess.Popen(
        [sys.executable, "-c", SLOW_SECOND_SET, "--test_only", "--dir_data", str(tree), "--save",
         str(run), *TINY, "--scale", "2", "--data_test", "Set5+Set14", "--n_threads", "2"],
        cwd=root, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        started = proc.stdout.readline()
        assert started == "waiting with loader workers: 2\n", proc.communicate(timeout=60)[1]
        os.killpg(proc.pid, sig)
        out, err = proc.communicate(timeout=60)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.communicate()
    assert proc.returncode == stops.INTERRUPTED, err
    assert "Traceback" not in err and "Error" not in err, err
    stop_lines = [line for line in err.splitlines() if "interrupted by" in line or "received" in line]
    assert stop_lines == [f"WARNING interrupted by {sig.name}: sets Set5 finished; Set14 not evaluated; "
                     f"reports written: {run / 'metrics.json'}, {run / 'results.md'}"], err
    meta = json.loads((run / "metrics.json").read_text())["meta"]
    assert meta["interrupted"] is True and meta["not_evaluated"] == ["Set14"]
    assert out == ""
