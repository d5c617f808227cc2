"""Restormer through the shared trainer and evaluation: fine-tune, evaluate, the authors' recipe."""
from __future__ import annotations

import json
import math
import os

import pytest
import torch

import main as cli
import trainer
from conftest import FIXTURES, ROOT
from data.benchmark import BenchmarkSet
from model import Restormer, RestormerConfig, build_model
from option import parse_args, settings

# the fixture's configuration, so our checkpoints can be checked against the authors' keys
FIXTURE_NET = ["--model", "restormer", "--dim", "8", "--num_blocks", "1+2+1+2",
               "--num_refinement_blocks", "1"]
FAST = ["--cpu", "--n_threads", "0", "--data_test", "Sample"]


def test_fine_tune_and_evaluate_on_sample(tmp_path, crop_sample):
    crop_sample(64, 96)
    run = tmp_path / "train"  # one run: 3 steps, then the final model evaluated
    code = cli.main([*FIXTURE_NET, *FAST, "--task", "denoise30", "--data_train", "Sample",
                     "--patch_size", "32", "--batch_size", "2", "--max_steps", "3",
                     "--test_every", "3", "--optimizer", "ADAMW", "--weight_decay", "1e-4",
                     "--save", str(run)])
    assert code == 0
    saved = torch.load(run / "model" / "model_latest.pt", weights_only=True)
    authors = torch.load(os.path.join(FIXTURES, "restormer_tiny.pt"), weights_only=True)["WithBias"]
    assert list(saved) == list(authors["params"])  # loads into the authors' restormer_arch.py
    assert all(saved[k].shape == authors["params"][k].shape for k in saved)
    ours = json.loads((run / "metrics.json").read_text())
    assert ours["meta"]["model"] == "restormer" and ours["meta"]["tiling"] == "whole"
    assert ours["meta"]["step"] == 3 and ours["meta"]["checkpoint"] is None

    evaluated = tmp_path / "eval"  # the saved weights evaluated again give the same numbers
    code = cli.main([*FIXTURE_NET, *FAST, "--task", "denoise30", "--test_only", "--pretrain",
                     str(run / "model" / "model_latest.pt"), "--save", str(evaluated)])
    assert code == 0
    again = json.loads((evaluated / "metrics.json").read_text())
    assert again["meta"]["step"] is None and again["meta"]["checkpoint"].endswith("model_latest.pt")
    assert again["results"] == ours["results"]

    ipt = tmp_path / "ipt"  # the same evaluation with a tiny IPT: the same structure
    code = cli.main([*FAST, "--task", "denoise30", "--n_feats", "16", "--num_heads", "4",
                     "--num_layers", "1", "--chop", "fast", "--test_only", "--save", str(ipt)])
    assert code == 0
    theirs = json.loads((ipt / "metrics.json").read_text())
    assert set(ours["meta"]) == set(theirs["meta"])
    r, q = ours["results"]["Sample"]["denoise30"], theirs["results"]["Sample"]["denoise30"]
    assert set(r) == set(q) and set(r["per_image"]) == set(q["per_image"]) == {"astronaut", "coffee"}
    for name, m in r["per_image"].items():
        assert set(m) == set(q["per_image"][name])
        assert math.isfinite(m["psnr"]) and m["psnr"] == m["psnr_y"]


def test_cyclic_cosine_matches_the_authors_two_cycles():
    lr, periods, etas = 3e-4, [4, 8], [3e-4, 1e-6]
    factor = trainer.lr_factor("cyclic_cosine", [], 0.5, 0, 12, periods, [e / lr for e in etas])
    assert [factor(s) for s in range(4)] == pytest.approx([1.0] * 4)  # first cycle held at 3e-4
    for step in range(4, 12):  # second cycle: cosine from 3e-4 to 1e-6 over 8 steps
        expected = etas[1] + (lr - etas[1]) * 0.5 * (1 + math.cos(math.pi * (step - 4) / 8))
        assert factor(step) * lr == pytest.approx(expected)
    assert factor(50) * lr == pytest.approx(1e-6)


def test_progressive_stages_and_crops(tmp_path):
    args = parse_args([*FIXTURE_NET, "--task", "derain", "--patch_size", "32", "--batch_size", "4",
                       "--progressive_patches", "16+24+32", "--progressive_batches", "4+2+1",
                       "--progressive_steps", "2+2+2", "--save", str(tmp_path)])
    model = build_model(settings(args).model)
    runner = trainer.Trainer(settings(args).train, model, lambda start: iter(()), None, 6, 1)
    assert [runner.stage(s) for s in range(8)] == [(16, 4)] * 2 + [(24, 2)] * 2 + [(32, 1)] * 4
    lr = torch.arange(4 * 3 * 32 * 32, dtype=torch.float32).view(4, 3, 32, 32)
    hr = lr + 0.5
    small_lr, small_hr = trainer.progressive_crop(lr, hr, 24, 2, torch.Generator().manual_seed(0))
    assert small_lr.shape == (2, 3, 24, 24) and torch.equal(small_hr, small_lr + 0.5)
    first = small_lr[0, 0, 0, 0].item()  # locate the crop: it is one window of one sample
    n, rest = divmod(int(first), 3 * 32 * 32)
    top, left = divmod(rest, 32)
    assert torch.equal(small_lr[0], lr[n, :, top:top + 24, left:left + 24])


def test_unclipped_test_noise_is_the_clipped_one_before_clamping():
    clipped = BenchmarkSet("unused", "Sample", "denoise50", 1)[0]
    raw = BenchmarkSet("unused", "Sample", "denoise50", 1, clip_noise=False)[0]
    assert raw.lr.min() < 0 and raw.lr.max() > 255
    assert torch.equal(raw.lr.clamp(0, 255), clipped.lr)


@pytest.mark.parametrize("name", ["restormer_derain.yaml", "restormer_denoise.yaml"])
def test_recipe_configs_parse_to_the_authors_settings(name):
    args = parse_args(["--config", os.path.join(ROOT, "configs", name)])
    assert args.model == "restormer" and args.optimizer == "ADAMW" and args.weight_decay == 1e-4
    assert args.schedule == "cyclic_cosine" and args.periods == [92000, 208000]
    assert args.eta_mins == [3e-4, 1e-6] and args.lr == 3e-4
    assert args.progressive_patches == [128, 160, 192, 256, 320, 384]
    assert args.progressive_batches == [8, 5, 4, 2, 1, 1]
    assert sum(args.progressive_steps) == args.max_steps == 300000
    with torch.device("meta"):
        model = build_model(settings(args).model)
    assert isinstance(model, Restormer) and model.cfg == RestormerConfig(
        rgb_range=args.rgb_range, task_names=args.task_names)
