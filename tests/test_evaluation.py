"""The evaluation run on benchmark trees built from scikit-image photos."""
from __future__ import annotations

import json
import os
import shutil

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image

import main as cli
import utility
from data.benchmark import BenchmarkSet
from data.degrade import bicubic_lr
from evaluation import evaluate_set
from model import IPTConfig, build_model
from option import InferenceSettings

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
                                   "model", "tiling", "self_ensemble", "metric_channel", "test_noise"}
    assert report["meta"]["tiling"] == "fast" and report["meta"]["metric_channel"] == "y"  # TINY: fast
    r = report["results"]["Set5"]["sr2"]
    assert r["n_images"] == 2 and set(r["per_image"]) == {"a", "b"}
    for stem in ("a", "b"):
        sr = torch.from_numpy(np.array(Image.open(run / "results-Set5" / f"{stem}_x2_SR.png")))
        hr = torch.from_numpy(np.array(Image.open(tree / f"benchmark/Set5/HR/{stem}.png")))
        hr = hr[:sr.shape[0], :sr.shape[1]]  # HR cropped to LR x 2 (61 -> 60 rows)
        sr, hr = sr.permute(2, 0, 1).float(), hr.permute(2, 0, 1).float()
        assert r["per_image"][stem]["psnr"] == pytest.approx(utility.calc_psnr(sr, hr, 2)[0], abs=1e-9)
        assert r["per_image"][stem]["psnr_y"] == r["per_image"][stem]["psnr"]
        assert r["per_image"][stem]["psnr_rgb"] == pytest.approx(
            utility.calc_psnr(sr, hr, 2, y_channel=False)[0], abs=1e-9)
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
    assert not os.path.exists(run / "metrics.json")


def test_sample_needs_no_data(tmp_path):
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
