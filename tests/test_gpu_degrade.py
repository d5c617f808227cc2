"""--gpu_degrade: SR and noisy inputs made by the trainer on its device instead of in the loader."""
from __future__ import annotations

import pytest
import torch

import main as cli
from data.sample import sample_photos
from data.stream import PairStream, synthesize_lr

TASKS = ["sr2", "sr3", "denoise30"]


@pytest.fixture(scope="module")
def photos():
    return sample_photos("train")


@pytest.mark.parametrize("task_id", [0, 1])
def test_deferred_bicubic_equals_the_loaders(photos, task_id):
    loader = PairStream(photos, TASKS, batch_size=3, patch_size=16, seed=5, task_id=task_id)
    deferred = PairStream(photos, TASKS, batch_size=3, patch_size=16, seed=5, task_id=task_id,
                          lr_in_loader=False)
    a, b = next(iter(loader)), next(iter(deferred))
    assert b["lr"] is None and torch.equal(a["hr"], b["hr"])
    assert torch.equal(synthesize_lr(b["hr"], TASKS[task_id]), a["lr"])


def test_deferred_noise_has_the_task_sigma():
    hr = torch.full((4, 3, 64, 64), 128.0)
    noisy = synthesize_lr(hr, "denoise30", torch.Generator().manual_seed(0))
    assert (noisy - hr).std().item() == pytest.approx(30, rel=0.03)
    with pytest.raises(ValueError, match="streak"):
        synthesize_lr(hr, "derain")


def test_training_with_gpu_degrade_runs(tmp_path):
    code = cli.main(["--cpu", "--gpu_degrade", "--scale", "2+1", "--n_feats", "16", "--num_heads", "4",
                     "--num_layers", "1", "--patch_size", "12", "--batch_size", "2", "--data_train",
                     "Sample", "--data_test", "Demo", "--n_threads", "0", "--max_steps", "4",
                     "--save", str(tmp_path / "run")])
    assert code == 0 and (tmp_path / "run" / "model" / "model_latest.pt").is_file()
