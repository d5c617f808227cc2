"""Build a stand-in for ImageNet's train set at its full size, cheaply, to measure data loading.

    python scripts/simulate_imagenet.py ROOT [--files 1281167] [--classes 1000] [--pool 128]
                                             [--shards N] [--shard_members 128]

Writes ROOT/pool/pool-NNN.JPEG: ``--pool`` real JPEGs of ImageNet's usual sizes (500x375,
375x500, 500x333, 500x500; quality 95, ~90 KB on average), random crops of the scikit-image
photos the project ships as samples (`data.sample`), resized, flipped, with Gaussian grain
(sigma 6) added, as those photos are smoother than most of ImageNet's. Then ROOT/train/nXXXXXXXX/
nXXXXXXXX_K.JPEG, ``--files`` entries in ``--classes`` folders named as ImageNet's are: each a
HARD LINK to a pool file, so the tree costs directory entries, not 140 GB (ext4 allows 65000
links to a file: the pool must be at least files / 65000). With ``--shards N``, also
ROOT/shards/shard-NNNNNN.tar, N tar shards of ``--shard_members`` members each (copies of pool
files named like ImageNet's, so N x members x ~100 KB of disk) and their shards.json, as
scripts/make_shards.py writes them.

Each class folder is built under ROOT/.building and renamed into ROOT/train when complete, so
Ctrl-C (or SIGTERM) leaves complete classes only (exit status 130, a partial tree that the stream
can read); running again finishes it. ROOT/simulated.json records what was built and how long it
took, once the tree is complete.
"""
from __future__ import annotations

import argparse
import io
import os
import random
import shutil
import sys
import tarfile
import time
from typing import Optional, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import numpy as np  # noqa: E402

import utility  # noqa: E402
from data.stream import SHARD_INDEX  # noqa: E402

IMAGENET_FILES = 1281167  # ILSVRC-2012 train images
IMAGENET_CLASSES = 1000
DEFAULT_POOL = 128
MAX_LINKS = 65000  # ext4's limit on the hard links to one file
SIZES = ((500, 375), (375, 500), (500, 333), (500, 500))  # (width, height), common in ImageNet
SIZE_WEIGHTS = (6, 2, 1, 1)
JPEG_QUALITY = 95
NOISE_SIGMA = 6.0  # grain added to the smooth sample photos: files of ImageNet's ~110 KB
SCALE_JITTER = (1.0, 1.6)  # the crop covers 1/1..1/1.6 of the resized photo's short side
MAX_IMAGE_NUMBER = 60000  # ImageNet's file numbers (nXXXXXXXX_K) run up to about this
WNID_RANGE = (1_000_000, 15_000_000)  # ImageNet's WordNet ids n01440764 .. n15075141
PROGRESS_EVERY_S = 5.0
SHARD_NAME = "shard-{:06d}.tar"
RECORD = "simulated.json"
BUILDING = ".building"
BAD_OPTION = 2
PROG = "simulate_imagenet.py"


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    """The command line."""
    p = argparse.ArgumentParser(description="Build an ImageNet-sized tree of hard-linked JPEGs.")
    p.add_argument("root", help="folder to build (ROOT/train, ROOT/pool, ROOT/shards)")
    p.add_argument("--files", type=int, default=IMAGENET_FILES, help="entries under ROOT/train")
    p.add_argument("--classes", type=int, default=IMAGENET_CLASSES, help="class folders")
    p.add_argument("--pool", type=int, default=DEFAULT_POOL, help="distinct JPEGs linked to")
    p.add_argument("--shards", type=int, default=0, help="tar shards to write under ROOT/shards")
    p.add_argument("--shard_members", type=int, default=DEFAULT_POOL, help="images per shard")
    p.add_argument("--seed", type=int, default=0, help="seed of names, sizes and crops")
    return p.parse_args(argv)


def check_args(args: argparse.Namespace) -> Optional[str]:
    """What is wrong with the command line, or None."""
    if args.classes < 1 or args.files < args.classes:
        return "--classes must be at least 1 and --files at least --classes"
    if args.pool < 1 or args.pool * MAX_LINKS < args.files:
        return f"--pool must be at least --files / {MAX_LINKS} (ext4's hard-link limit)"
    if args.shards < 0 or args.shard_members < 1:
        return "--shards must not be negative and --shard_members must be positive"
    return None


def pool_image(photo, rng: random.Random):
    """One JPEG-ready PIL image: a random crop of ``photo`` at one of ImageNet's usual sizes."""
    from PIL import Image

    width, height = rng.choices(SIZES, SIZE_WEIGHTS)[0]
    cover = max(width / photo.width, height / photo.height) * rng.uniform(*SCALE_JITTER)
    resized = photo.resize((max(width, round(photo.width * cover)),
                            max(height, round(photo.height * cover))), Image.BICUBIC)
    x, y = rng.randint(0, resized.width - width), rng.randint(0, resized.height - height)
    crop = resized.crop((x, y, x + width, y + height))
    crop = crop.transpose(Image.FLIP_LEFT_RIGHT) if rng.random() < 0.5 else crop
    grain = np.random.default_rng(rng.getrandbits(32)).normal(0, NOISE_SIGMA, (height, width, 3))
    return Image.fromarray((np.asarray(crop, dtype=np.float32) + grain).clip(0, 255).astype(np.uint8))


def make_pool(folder: str, count: int, seed: int) -> list[str]:
    """``count`` JPEGs in ``folder`` made from the sample photos (kept if already there)."""
    from PIL import Image

    from data.sample import TEST_PHOTOS, TRAIN_PHOTOS, sample_photo

    paths = [os.path.join(folder, f"pool-{i:03d}.JPEG") for i in range(count)]
    if all(os.path.isfile(p) for p in paths):
        return paths
    os.makedirs(folder, exist_ok=True)
    photos = [Image.fromarray(sample_photo(n).permute(1, 2, 0).numpy())
              for n in TRAIN_PHOTOS + TEST_PHOTOS]
    rng = random.Random(seed)
    for i, path in enumerate(paths):
        image = pool_image(photos[i % len(photos)], rng)
        utility.atomic_write(path, lambda tmp: image.save(tmp, "JPEG", quality=JPEG_QUALITY))
    return paths


def class_names(classes: int, files: int, seed: int) -> list[tuple[str, list[int]]]:
    """(WordNet-like id, image numbers) of each class: ids and numbers distinct, sorted."""
    rng = random.Random(seed)
    wnids = sorted(rng.sample(range(*WNID_RANGE), classes))
    per_class = [files // classes + (i < files % classes) for i in range(classes)]
    return [(f"n{w:08d}", sorted(rng.sample(range(1, max(MAX_IMAGE_NUMBER, n + 1)), n)))
            for w, n in zip(wnids, per_class)]


class Progress:
    """One line on stderr every few seconds: done of total, rate, time left."""

    def __init__(self, what: str, total: int):
        self.what, self.total, self.start, self.said = what, total, time.monotonic(), 0.0

    def update(self, done: int, force: bool = False) -> None:
        now = time.monotonic()
        if force or now - self.said >= PROGRESS_EVERY_S:
            rate = done / max(now - self.start, 1e-9)
            left = (self.total - done) / rate if rate else float("inf")
            print(f"{self.what}: {done}/{self.total} ({rate:,.0f}/s, {left:,.0f} s left)",
                  file=sys.stderr, flush=True)
            self.said = now


def build_train(root: str, pool: Sequence[str], classes: list[tuple[str, list[int]]]) -> int:
    """The class folders of ROOT/train, each built aside then renamed in; the links made."""
    train, building = os.path.join(root, "train"), os.path.join(root, BUILDING)
    shutil.rmtree(building, ignore_errors=True)  # what an interrupted build left
    os.makedirs(train, exist_ok=True)
    progress, done = Progress("linked", sum(len(n) for _, n in classes)), 0
    for wnid, numbers in classes:
        final = os.path.join(train, wnid)
        if not os.path.isdir(final):  # not built by an earlier, interrupted run
            aside = os.path.join(building, wnid)
            os.makedirs(aside)
            for j, k in enumerate(numbers):
                os.link(pool[(done + j) % len(pool)], os.path.join(aside, f"{wnid}_{k}.JPEG"))
            os.rename(aside, final)
        done += len(numbers)
        progress.update(done)
    progress.update(done, force=True)
    shutil.rmtree(building, ignore_errors=True)
    return done


def build_shards(root: str, pool: Sequence[str], classes: list[tuple[str, list[int]]],
                 shards: int, members: int, seed: int) -> int:
    """``shards`` tars of ``members`` pool copies named like ImageNet's, and their shards.json."""
    folder = os.path.join(root, "shards")
    os.makedirs(folder, exist_ok=True)
    data = [open(p, "rb").read() for p in pool]
    names = [f"{w}/{w}_{k}.JPEG" for w, numbers in classes for k in numbers]
    random.Random(seed).shuffle(names)
    counts, progress = {}, Progress("shards", shards)
    for s in range(shards):
        name = SHARD_NAME.format(s)
        path = os.path.join(folder, name)
        if not os.path.isfile(path):
            chunk = [names[(s * members + m) % len(names)] for m in range(members)]
            utility.atomic_write(path, lambda tmp: _write_tar(tmp, chunk, data, s * members))
        counts[name] = members
        progress.update(s + 1)
    progress.update(shards, force=True)
    utility.write_json(os.path.join(folder, SHARD_INDEX), {"shards": counts})
    return shards * members


def _write_tar(path: str, names: Sequence[str], data: Sequence[bytes], first: int) -> None:
    """A tar of the pool's bytes (in turn, from ``first``) under ``names``."""
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tar:
        for i, name in enumerate(names):
            blob = data[(first + i) % len(data)]
            info = tarfile.TarInfo("train/" + name)
            info.size, info.mtime = len(blob), 0
            tar.addfile(info, io.BytesIO(blob))


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Build the tree; 0 when complete, 130 when stopped (complete classes kept), 1 on a failed
    write, 2 for a bad command line."""
    args = parse_args(argv)
    problem = check_args(args)
    if problem:
        print(f"{PROG}: {problem}", file=sys.stderr)
        return BAD_OPTION
    start = time.monotonic()
    try:
        with utility.StopSignals(raise_=True):
            pool = make_pool(os.path.join(args.root, "pool"), args.pool, args.seed)
            classes = class_names(args.classes, args.files, args.seed)
            files = build_train(args.root, pool, classes)
            members = (build_shards(args.root, pool, classes, args.shards, args.shard_members,
                                    args.seed) if args.shards else 0)
    except KeyboardInterrupt:
        print(f"{PROG}: stopped: {args.root}/train holds the classes finished so far (a partial "
              f"tree the stream can read); run the same command again to finish it",
              file=sys.stderr)
        return utility.INTERRUPTED
    except OSError as e:
        print(f"{PROG}: cannot build {args.root}: {e}", file=sys.stderr)
        return 1
    seconds = time.monotonic() - start
    sizes = [os.path.getsize(p) for p in pool]
    record = {"files": files, "classes": args.classes, "pool": args.pool,
              "pool_mean_bytes": round(sum(sizes) / len(sizes)), "shards": args.shards,
              "shard_members": args.shard_members, "shard_images": members,
              "seconds": round(seconds, 1)}
    utility.write_json(os.path.join(args.root, RECORD), record)
    print(f"built {files} entries in {args.classes} classes under {args.root}/train "
          f"(links to {args.pool} JPEGs of {record['pool_mean_bytes'] / 1024:.0f} KB on average)"
          + (f" and {args.shards} shards of {args.shard_members}" if args.shards else "")
          + f" in {seconds:.0f} s", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
