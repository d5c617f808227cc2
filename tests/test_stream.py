"""The pre-training stream: the split over ranks and workers, skipped files, tasks, shards."""
from __future__ import annotations

import json
import logging
import os
import tarfile

import numpy as np
import pytest
import skimage.data
import torch
from PIL import Image
from torch.utils.data import DataLoader

from data.degrade import bicubic_lr
from data.listing import walk_images
from data.sample import sample_photos
from data.sources import TrainingDataError, epoch_files, shard_counts
from data.stream import PairStream, task_kind
from scripts.scale import make_shards

SIX = ["sr2", "sr3", "sr4", "derain", "denoise30", "denoise50"]
PATCH = 16  # small crops keep the tests fast; test_default_patch_48 checks the real size
GOOD = {"n01/a.JPEG": (0, 0), "n01/b.jpg": (40, 90), "n02/c.jpeg": (100, 20),
        "n02/deep/d.JPG": (150, 200), "n02/deep/e.png": (10, 300), "n03/f.jpg": (200, 100),
        "n03/g.bmp": (60, 250), "n03/h.jpg": (220, 380)}
GREY, CMYK, BROKEN = "n04/grey.png", "n04/cmyk.jpg", "n04/broken.jpg"
SIDE = (72, 80)  # H, W of the test images


def crop(y: int, x: int, size: tuple[int, int] = SIDE) -> np.ndarray:
    return skimage.data.astronaut()[y:y + size[0], x:x + size[1]]


def save(root, rel: str, arr: np.ndarray) -> str:
    path = os.path.join(root, rel)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fmt = {".png": "PNG", ".bmp": "BMP"}.get(os.path.splitext(rel)[1].lower(), "JPEG")
    Image.fromarray(arr).save(path, fmt)
    return path


@pytest.fixture(scope="module")
def folder(tmp_path_factory) -> str:
    """8 colour images at several depths, greyscale and CMYK ones, a truncated JPEG, a text."""
    root = str(tmp_path_factory.mktemp("imagenet"))
    for rel, (y, x) in GOOD.items():
        save(root, rel, crop(y, x))
    save(root, GREY, skimage.data.camera()[:SIDE[0], :SIDE[1]])
    Image.fromarray(crop(120, 120)).convert("CMYK").save(os.path.join(root, CMYK), "JPEG")
    path = save(root, BROKEN, crop(30, 30))
    data = open(path, "rb").read()
    open(path, "wb").write(data[:len(data) // 2])
    open(os.path.join(root, "n04", "notes.txt"), "w").write("not an image")
    return root


ALL = sorted(list(GOOD) + [GREY, CMYK, BROKEN])


def test_walk_images_any_depth_and_case(folder):
    found = walk_images(folder)[0]
    assert [os.path.relpath(f, folder) for f in found] == ALL
    assert found == sorted(found)


@pytest.mark.parametrize("n", [4, 5, 10, 13])
def test_epoch_files_split_every_file_once_per_epoch(n):
    files = [f"file{i}" for i in range(n)]
    for epoch in range(3):
        runs = [epoch_files(files, epoch, 7, rank, 2, worker, 2)
                for rank in range(2) for worker in range(2)]
        seen = [f for run in runs for f in run]
        assert sorted(seen) == sorted(files)  # every file, none twice
        assert max(map(len, runs)) - min(map(len, runs)) <= 1
    assert epoch_files(files, 0, 7, 0, 1, 0, 1) != epoch_files(files, 1, 7, 0, 1, 0, 1)
    assert epoch_files(files, 0, 7, 0, 1, 0, 1) == epoch_files(files, 0, 7, 0, 1, 0, 1)


def run_loader(stream: PairStream, steps: int, workers: int) -> list[dict]:
    loader = DataLoader(stream, batch_size=None, num_workers=workers)
    out = []
    for batch in loader:
        out.append(batch)
        if len(out) == steps:
            return out


def test_two_ranks_two_workers_read_every_file_once_per_epoch(folder):
    # 11 files over 2 ranks x 2 workers: runs of 2 or 3 files, 2 files a batch: 4 steps cover them
    read, skipped = [], 0
    for rank in range(2):
        stream = PairStream(folder, ["sr2", "denoise30"], batch_size=2, patch_size=PATCH,
                            seed=3, rank=rank, world_size=2)
        batches = run_loader(stream, 4, workers=2)
        assert [b["step"] for b in batches] == [0, 1, 2, 3]
        read += [tuple(f) for b in batches for f in b["files"]]
        skipped += batches[-1]["skipped"] + batches[-2]["skipped"]  # last of each worker
    first = sorted(name for epoch, name in read if epoch == 0)
    assert first == ALL
    assert skipped == [name for _, name in read].count(BROKEN) >= 1  # each read of it skipped


def test_a_resume_at_another_world_size_reads_every_file_once_an_epoch_from_there(folder):
    """2 ranks x 2 workers to step 3, then 3 ranks x 1 worker from there: a new epoch starts at
    step 3, in an order no earlier epoch had, and its 4 steps of 3 x 1 x 1 files cover the 11."""
    def files_of(world, workers, start, steps, origin):
        read = {}
        for rank in range(world):
            stream = PairStream(folder, ["sr2"], batch_size=1, patch_size=PATCH, seed=3, rank=rank,
                                world_size=world, split_origin=origin, start_step=start)
            read |= {(rank, b["step"]): [tuple(f) for f in b["files"]]
                     for b in run_loader(stream, steps, workers)}
        return read

    before = files_of(2, 2, 0, 3, 0)
    after = files_of(3, 1, 3, 4, 3)
    old_epochs = {epoch for files in before.values() for epoch, _ in files}
    first = min(epoch for files in after.values() for epoch, _ in files)
    assert first not in old_epochs
    assert sorted(n for files in after.values() for e, n in files if e == first) == ALL
    again = files_of(3, 1, 5, 2, 3)  # a later resume at the same size keeps that split
    assert again == {key: files for key, files in after.items() if key[1] >= 5}
    with pytest.raises(ValueError, match="split_origin"):
        PairStream(folder, ["sr2"], batch_size=1, patch_size=PATCH, split_origin=4, start_step=3)


def test_truncated_skipped_greyscale_and_cmyk_converted(folder):
    stream = PairStream(folder, ["sr2"], batch_size=11, patch_size=PATCH, seed=0, augment=False,
                        world_size=1)
    batch = next(iter(stream))
    assert sorted(name for _, name in batch["files"]) == ALL
    assert batch["skipped"] == 1 and batch["hr"].shape == (11, 3, 32, 32)
    grey = PairStream([os.path.join(folder, GREY)], ["sr2"], batch_size=2, patch_size=PATCH)
    hr = next(iter(grey))["hr"]
    assert hr.shape == (2, 3, 32, 32) and torch.equal(hr[:, 0], hr[:, 1])


def test_images_smaller_than_the_crop_are_skipped(tmp_path):
    save(str(tmp_path), "big.jpg", crop(0, 0))
    save(str(tmp_path), "small.jpg", crop(0, 0, (40, 40)))  # fits sr2 (32), not sr4 (64)
    for task, skipped in (("sr2", 0), ("sr4", 1)):
        batch = next(iter(PairStream(str(tmp_path), [task], batch_size=2, patch_size=PATCH)))
        assert batch["skipped"] == skipped and batch["hr"].shape[0] == 2


def take(stream: PairStream, n: int) -> list[dict]:
    it = iter(stream)
    return [next(it) for _ in range(n)]


@pytest.fixture(scope="module")
def photos():
    return [(name, image[:, :200, :200].contiguous()) for name, image in sample_photos("train")]


def test_same_seed_same_batches_other_seed_other(photos):
    a, b, c = (take(PairStream(photos, SIX, 3, PATCH, seed=s), 4) for s in (5, 5, 6))
    for x, y in zip(a, b, strict=False):
        assert x["task_id"] == y["task_id"] and x["files"] == y["files"]
        assert torch.equal(x["lr"], y["lr"]) and torch.equal(x["hr"], y["hr"])
    assert any(x["hr"].shape != z["hr"].shape or not torch.equal(x["hr"], z["hr"])
               for x, z in zip(a, c, strict=False))


def test_shapes_and_degradations_per_task(photos):
    for task_id, task in enumerate(SIX):
        batch = take(PairStream(photos, SIX, 4, PATCH, task_id=task_id), 1)[0]
        kind, value = task_kind(task)
        scale = int(value) if kind == "sr" else 1
        lr, hr = batch["lr"], batch["hr"]
        assert batch["task_id"] == task_id and lr.dtype == hr.dtype == torch.float32
        assert lr.shape == (4, 3, PATCH, PATCH) and hr.shape == (4, 3, PATCH * scale, PATCH * scale)
        if kind == "sr":
            assert torch.equal(lr, bicubic_lr(hr.to(torch.uint8), scale).float())
        elif kind == "denoise":
            assert (lr - hr).std().item() == pytest.approx(value, rel=0.1)
        else:
            assert (lr >= hr).all() and lr.max() <= 255


def test_default_patch_48(photos):
    stream = PairStream(photos, SIX, 2, task_id=1)  # sr3
    batch = take(stream, 1)[0]
    assert batch["lr"].shape == (2, 3, 48, 48) and batch["hr"].shape == (2, 3, 144, 144)


def test_task_of_a_step_is_the_same_on_every_rank(photos):
    ranks = [PairStream(photos, SIX, 2, PATCH, seed=9, rank=r, world_size=2) for r in range(2)]
    tasks = [[b["task_id"] for b in take(s, 12)] for s in ranks]
    assert tasks[0] == tasks[1] == [ranks[0].task_of(k) for k in range(12)]
    assert len(set(tasks[0])) > 2
    assert ranks[0].steps_per_epoch == 2  # 8 photos / (2 a batch x 2 ranks)


def test_fixed_task_id(photos):
    assert {b["task_id"] for b in take(PairStream(photos, SIX, 2, PATCH, task_id=4), 5)} == {4}


def test_resume_gives_the_same_batches(photos):
    stream = PairStream(photos, SIX, 2, PATCH, seed=4)
    straight = run_loader(stream, 7, workers=2)
    resumed = run_loader(stream.with_start(3), 4, workers=2)
    assert [b["step"] for b in resumed] == [3, 4, 5, 6]
    for x, y in zip(straight[3:], resumed, strict=False):
        assert x["files"] == y["files"] and torch.equal(x["lr"], y["lr"])


def test_procedural_rain_is_said_and_real_streaks_are_used(photos, tmp_path, caplog):
    import data.stream

    data.stream._say_procedural.cache_clear()
    with caplog.at_level(logging.WARNING, logger="ipt"):
        PairStream(photos, SIX, 2, PATCH)
        PairStream(photos, SIX, 2, PATCH)
    assert sum("PROCEDURAL" in r.message for r in caplog.records) == 1
    layer = np.zeros((20, 8), np.uint8)
    layer[:, 5] = 100  # one vertical streak, tiled every 8 columns
    Image.fromarray(layer).save(tmp_path / "rainstreak-1.png")
    Image.fromarray(np.full((20, 8), 255, np.uint8)).save(tmp_path / "other.png")  # not used
    dim = [("dim", photos[0][1] // 2)]  # never saturated: every streak pixel shows
    stream = PairStream(dim, SIX, 2, PATCH, task_id=3, streaks_dir=str(tmp_path), augment=False)
    batch = take(stream, 1)[0]
    added = batch["lr"] - batch["hr"]
    assert added.max() == 100
    for sample in added:
        columns = sample.amax(dim=(0, 1)).nonzero().flatten().tolist()
        assert len(columns) == 2 and columns[1] - columns[0] == 8


def test_too_many_workers_and_empty_sources(tmp_path, photos):
    with pytest.raises(TrainingDataError, match="cannot feed"):
        take(PairStream(photos[:2], SIX, 2, PATCH, rank=0, world_size=3), 1)
    with pytest.raises(TrainingDataError, match="no images"):
        PairStream(str(tmp_path), SIX, 2)
    with pytest.raises(TrainingDataError, match="does not exist"):
        PairStream(str(tmp_path / "nowhere"), SIX, 2)
    with pytest.raises(TrainingDataError, match="unknown task"):
        PairStream(photos, ["sr2", "blur"], 2)


def test_shards_round_trip_and_stream(folder, tmp_path, capsys):
    out = str(tmp_path / "shards")
    assert make_shards.main([folder, out, "--per_shard", "3"]) == 0
    assert "packed 11 images into 4 shard(s)" in capsys.readouterr().out
    shards = sorted(os.path.join(out, n) for n in os.listdir(out) if n.endswith(".tar"))
    packed, member = {}, {}
    for shard in shards:
        with tarfile.open(shard) as tar:
            packed.update({m.name: tar.extractfile(m).read() for m in tar})
            base = os.path.basename(shard)
            member.update({f"{base}#{i}": m for i, m in enumerate(tar.getnames())})
    assert sorted(packed) == ALL
    assert all(packed[rel] == open(os.path.join(folder, rel), "rb").read() for rel in ALL)
    index = json.load(open(os.path.join(out, "shards.json")))["shards"]
    assert sorted(index.values()) == [2, 3, 3, 3]
    assert shard_counts(shards) == [index[os.path.basename(s)] for s in shards]
    os.remove(os.path.join(out, "shards.json"))
    assert shard_counts(shards) == [3, 3, 3, 2]  # scanned when there is no index
    assert make_shards.main([folder, out]) == 1  # refuses to mix with existing shards

    read, skipped = [], 0
    for rank in range(4):  # 4 ranks x 1 worker: runs of 2 or 3 members
        batches = take(PairStream(out, ["sr2"], 2, PATCH, seed=1, rank=rank, world_size=4), 2)
        read += [(epoch, member[name]) for b in batches for epoch, name in b["files"]]
        skipped += batches[-1]["skipped"]
    assert sorted(name for epoch, name in read if epoch == 0) == ALL
    assert skipped == [name for _, name in read].count(BROKEN) >= 1
