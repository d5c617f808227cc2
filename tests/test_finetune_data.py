"""Fine-tuning sets: DIV2K with and without LR folders, RainTrainL pairs and their errors."""
from __future__ import annotations

import os

import numpy as np
import pytest
import skimage.data
import torch
import torch.nn.functional as F
from PIL import Image

from data.degrade import bicubic_lr
from data.sources import TrainingDataError
from data.training import DIV2K, RainTrainL

PATCH = 16
RAIN = 40  # the test's "rain": a constant added to the clean image, clipped


def save(path: str, arr: np.ndarray) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(arr).save(path)


def photo(i: int, size: int = 64) -> np.ndarray:
    return skimage.data.astronaut()[40 * i:40 * i + size, 50 * i:50 * i + size]


def make_div2k(root, n: int = 4, lr_scales: tuple[int, ...] = ()) -> str:
    """DIV2K_train_HR/0001.png...; LR for the given scales made by s x s block means."""
    for i in range(1, n + 1):
        hr = photo(i)
        save(os.path.join(root, "DIV2K", "DIV2K_train_HR", f"{i:04d}.png"), hr)
        for s in lr_scales:
            lr = F.avg_pool2d(torch.from_numpy(hr).permute(2, 0, 1).float()[None], s).round()
            save(os.path.join(root, "DIV2K", "DIV2K_train_LR_bicubic", f"X{s}", f"{i:04d}x{s}.png"),
                 lr[0].permute(1, 2, 0).to(torch.uint8).numpy())
    return str(root)


def first(stream):
    return next(iter(stream))


def test_div2k_without_lr_makes_bicubic_lr(tmp_path):
    batch = first(DIV2K(make_div2k(tmp_path), ["sr2"], 3, PATCH, seed=2))
    lr, hr = batch["lr"], batch["hr"]
    assert lr.shape == (3, 3, 16, 16) and hr.shape == (3, 3, 32, 32)
    assert torch.equal(lr, bicubic_lr(hr.to(torch.uint8), 2).float())
    assert set(batch) >= {"lr", "hr", "task_id", "step", "skipped", "files"}


def test_div2k_with_lr_gives_aligned_crops_from_the_files(tmp_path):
    root = make_div2k(tmp_path, lr_scales=(2, 4))
    for task_id, s in ((0, 2), (1, 4)):
        stream = DIV2K(root, ["sr2", "sr4"], 4, PATCH, task_id=task_id, seed=3)
        batch = first(stream)
        lr, hr = batch["lr"], batch["hr"]
        assert lr.shape == (4, 3, PATCH, PATCH) and hr.shape == (4, 3, PATCH * s, PATCH * s)
        assert torch.equal(lr, F.avg_pool2d(hr, s).round())  # flips commute with block means
        assert not torch.equal(lr, bicubic_lr(hr.to(torch.uint8), s).float())


def test_div2k_lr_of_the_wrong_size_is_an_error(tmp_path):
    root = make_div2k(tmp_path, n=1, lr_scales=(2,))
    save(os.path.join(root, "DIV2K", "DIV2K_train_LR_bicubic", "X2", "0001x2.png"), photo(1, 20))
    with pytest.raises(TrainingDataError, match="0001x2.png"):
        first(DIV2K(root, ["sr2"], 1, PATCH))


def test_div2k_denoise_range_and_missing_folder(tmp_path):
    root = make_div2k(tmp_path, n=4)
    stream = DIV2K(root, ["denoise50"], 8, PATCH, data_range=(1, 3))
    assert len(stream.source) == 3
    batch = first(stream)
    assert batch["lr"].shape == batch["hr"].shape == (8, 3, PATCH, PATCH)
    assert (batch["lr"] - batch["hr"]).std().item() == pytest.approx(50, rel=0.1)
    with pytest.raises(TrainingDataError, match="DIV2K_train_HR.*layout"):
        DIV2K(str(tmp_path / "elsewhere"), ["sr2"], 2)


def make_rain(root, ids=(1, 2, 3)) -> str:
    folder = os.path.join(root, "RainTrainL")
    for i in ids:
        clean = photo(i)
        save(os.path.join(folder, f"norain-{i}.png"), clean)
        rain = np.clip(clean.astype(int) + RAIN, 0, 255).astype(np.uint8)
        save(os.path.join(folder, f"rain-{i}.png"), rain)
        save(os.path.join(folder, f"rainstreak-{i}.png"), np.zeros((64, 64), np.uint8))  # ignored
    return str(root)


def test_raintrainl_pairs_rain_with_norain(tmp_path):
    stream = RainTrainL(make_rain(tmp_path), 6, PATCH, seed=5)
    names = [os.path.basename(r) for r, _ in stream.source.items]
    assert names == ["rain-1.png", "rain-2.png", "rain-3.png"]
    assert all(os.path.basename(c) == os.path.basename(r).replace("rain-", "norain-")
               for r, c in stream.source.items)
    batch = first(stream)
    assert batch["lr"].shape == batch["hr"].shape == (6, 3, PATCH, PATCH)
    assert torch.equal(batch["lr"], (batch["hr"] + RAIN).clamp(max=255))
    six = RainTrainL(str(tmp_path), 2, PATCH, tasks=["sr2", "derain"], task_id=1)
    assert first(six)["task_id"] == 1
    with pytest.raises(TrainingDataError, match="derain only"):
        RainTrainL(str(tmp_path), 2, PATCH, tasks=["sr2", "derain"])


def test_raintrainl_unpaired_file_and_missing_folder(tmp_path):
    root = make_rain(tmp_path)
    save(os.path.join(root, "RainTrainL", "rain-7.png"), photo(0))
    with pytest.raises(TrainingDataError, match="rain-7.png has no partner"):
        RainTrainL(root, 2, PATCH)
    with pytest.raises(TrainingDataError, match=r"nowhere.*RainTrainL/rain-<id>.png"):
        RainTrainL(str(tmp_path / "nowhere"), 2, PATCH)
