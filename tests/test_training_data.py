"""data/training.py: the training set by name, ImageNet's folder, loader workers; tasks.py."""
from __future__ import annotations

import logging
import os

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image

import tasks
from data import training
from data.degrade import eval_noise_generator
from data.sample import sample_photos
from data.sources import TrainingDataError, seeded
from data.stream import PairStream
from data.training import DIV2K, RainTrainL

PATCH = 16
# the generators' seeds for (1, "epoch", 0) and (1, "CBSD68", "x"), from the code before this module
SEEDED_1_EPOCH_0 = 4813833510547437973
EVAL_1_CBSD68_X = 3383697618203716883


def save(path, arr: np.ndarray) -> None:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(arr).save(path)


def photo(i: int) -> np.ndarray:
    return skimage.data.astronaut()[i * 40:i * 40 + 64, :64]


def first(stream: PairStream) -> dict:
    return next(iter(stream))


def test_each_training_set_by_name(tmp_path, caplog):
    for i in range(1, 4):
        save(str(tmp_path / "DIV2K/DIV2K_train_HR" / f"{i:04d}.png"), photo(i))
        save(str(tmp_path / "RainTrainL" / f"norain-{i}.png"), photo(i))
        save(str(tmp_path / "RainTrainL" / f"rain-{i}.png"), photo(i))
    common = dict(batch_size=2, patch_size=PATCH, rank=0, world_size=1)
    sample = training.training_stream("Sample", str(tmp_path), ["sr2"], **common)
    assert type(sample) is PairStream and len(sample.source) == 8
    div2k = training.training_stream("DIV2K", str(tmp_path), ["sr2"], train_range=(2, 3), **common)
    assert isinstance(div2k, DIV2K) and len(div2k.source) == 2 and "DIV2K:" not in caplog.text
    partial = training.training_stream("DIV2K", str(tmp_path), ["sr2"], train_range=(1, 800), **common)
    assert len(partial.source) == 3 and "DIV2K: 3 of the 800 images numbered 1..800 are in" in caplog.text
    rain = training.training_stream("RainTrainL", str(tmp_path), ["derain"], **common)
    assert isinstance(rain, RainTrainL) and first(rain)["lr"].shape == (2, 3, PATCH, PATCH)
    with pytest.raises(ValueError, match="unknown training set 'Set5'; use Sample, ImageNet, DIV2K"):
        training.training_stream("Set5", str(tmp_path), ["sr2"], **common)
    with pytest.raises(TrainingDataError, match="DIV2K_train_HR"):
        training.training_stream("DIV2K", str(tmp_path / "nowhere"), ["sr2"], **common)


def test_imagenet_reads_its_train_folder_and_tif_files(tmp_path):
    assert training.imagenet_root(str(tmp_path)) == str(tmp_path / "ImageNet")
    save(str(tmp_path / "ImageNet/train/n01/a.tif"), photo(0))
    save(str(tmp_path / "ImageNet/train/n02/b.TIFF"), photo(1))
    assert training.imagenet_root(str(tmp_path)) == str(tmp_path / "ImageNet/train")
    stream = training.training_stream("ImageNet", str(tmp_path), ["denoise50"], batch_size=2,
                                      patch_size=PATCH, rank=0, world_size=1)
    assert sorted(stream.source.names) == ["n01/a.tif", "n02/b.TIFF"]
    assert first(stream)["skipped"] == 0


def test_loader_workers_fit_the_cores_and_the_files(monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="ipt")
    monkeypatch.setattr(training, "usable_cpus", lambda: 2)
    assert training.loader_workers(6, 8, 2) == 1  # two processes on two cores: one worker each
    assert "loader workers: 1 per process instead of --n_threads 6 (2 usable core(s) for 2 " \
           "process(es))" in caplog.text
    assert training.loader_workers(6, 8, 1) == 2
    monkeypatch.setattr(training, "usable_cpus", lambda: 64)
    assert training.loader_workers(6, 8, 2) == 4  # 8 files feed 4 workers in each of 2 processes
    assert "(8 training files for 2 process(es))" in caplog.text
    assert training.loader_workers(6, 8, 2, saved=3) == 3  # a resumed run keeps its data order
    assert "loader workers: 3, as when this run started (--n_threads 6)" in caplog.text
    with pytest.raises(ValueError, match="cannot feed"):
        training.loader_workers(6, 1, 2)
    monkeypatch.undo()
    assert training.usable_cpus() >= 1


def test_task_names_family_and_scale():
    assert tasks.task_kind("sr3") == ("sr", 3) and tasks.task_kind("denoise12.5") == ("denoise", 12.5)
    assert [tasks.task_scale(n) for n in ("sr2", "sr4", "derain", "denoise50")] == [2, 4, 1, 1]
    assert tasks.task_family("denoise30") == "denoise"
    for bad in ("sr1", "sr", "blur", "denoise", "Derain"):
        with pytest.raises(ValueError, match="unknown task"):
            tasks.task_scale(bad)
    assert tasks.default_task_names([2, 3, 4, 1, 1, 1]) == ["sr2", "sr3", "sr4", "derain",
                                                            "denoise30", "denoise50"]
    with pytest.raises(ValueError, match="--tasks"):
        tasks.default_task_names([1, 1, 1, 1])


def test_seeds_are_unchanged_by_the_shared_hash():
    """Both generators hash their own byte string; values recorded before they shared the code."""
    assert seeded(1, "epoch", 0).initial_seed() == SEEDED_1_EPOCH_0
    assert eval_noise_generator(1, "CBSD68", "x").initial_seed() == EVAL_1_CBSD68_X
    assert torch.equal(torch.randperm(5, generator=seeded(1, "epoch", 0)),
                       torch.randperm(5, generator=torch.Generator().manual_seed(SEEDED_1_EPOCH_0)))


def test_the_sample_photos_are_skimage_datas_pixels():
    """Read from scikit-image's data folder with Pillow, each photo is what skimage.data gives."""
    left, right, _ = skimage.data.stereo_motorcycle()
    expected = {"motorcycle_left": left, "motorcycle_right": right}
    for name, image in sample_photos("test") + sample_photos("train"):
        want = expected[name] if name in expected else getattr(skimage.data, name)()
        assert torch.equal(image, torch.from_numpy(want[..., :3]).permute(2, 0, 1)), name
