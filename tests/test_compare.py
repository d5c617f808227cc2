"""scripts/compare.py: the FLOP count and the two models it pits against each other."""
from __future__ import annotations

import os
import sys

import pytest
import torch

from conftest import ROOT
from model import build_model
from option import settings

sys.path.insert(0, os.path.join(ROOT, "scripts"))
import compare  # noqa: E402


def test_gflops_per_megapixel_of_a_hand_counted_network():
    conv = torch.nn.Conv2d(3, 5, kernel_size=3, padding=1, bias=False)
    # 2 FLOPs per multiply-add, 3*3*3 multiply-adds per output value, 5 outputs per pixel
    assert compare.gflops_per_megapixel(conv) == pytest.approx(2 * 27 * 5 * 1e6 / 1e9)


@pytest.mark.parametrize("task", compare.TASKS)
def test_the_two_models_are_of_similar_size(tmp_path, task):
    sizes = {}
    for name in compare.MODELS:
        args = compare.options(name, task, str(tmp_path / name))
        assert args.model == name and args.task_names == [task]
        sizes[name] = sum(p.numel() for p in build_model(settings(args).model).parameters())
    assert 0.8 <= sizes["restormer"] / sizes["ipt"] <= 1.25


def test_a_fresh_trainer_takes_a_step(tmp_path):
    args = compare.options("ipt", compare.TASKS[0], str(tmp_path / "ipt"))
    net, runner = compare.fresh_trainer(args, total_steps=1)
    assert runner.fit() == 0 and runner.progress.step == 1
