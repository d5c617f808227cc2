"""Build a stand-in for ImageNet's train set at its full size, cheaply, to measure data loading.

    python -m scripts.scale.simulate_imagenet ROOT [--files 1281167] [--classes 1000] [--pool 128]
                                                   [--shards N] [--shard_members 128] [--seed 0]

ROOT/pool holds ``--pool`` real JPEGs made from the sample photos; ROOT/train/nXXXXXXXX/
nXXXXXXXX_K.JPEG are ``--files`` HARD LINKS to them in ``--classes`` folders named as ImageNet's,
so the tree costs directory entries, not 140 GB; ``--shards N`` adds ROOT/shards as make_shards
writes them (docs/SCALING.md). A stop (exit status 130) leaves complete classes only, and running
again finishes the tree; ROOT/simulated.json records the options, and other options on the same
ROOT are refused (exit status 2), as is a second run while one builds there (exit status 1).
"""
from __future__ import annotations

import argparse
import gc
import os
import random
import shutil
import sys
import time
from collections.abc import Sequence

import stops  # loads no torch

if __name__ == "__main__":  # a stop signal while torch loads is kept, not a silent kill
    stops.early()
    gc.disable()  # while torch loads, until utility.collect_again: as main.py starts

import numpy as np  # noqa: E402
from PIL import Image  # noqa: E402
from tqdm import tqdm  # noqa: E402

import records  # noqa: E402
import runfolder  # noqa: E402
import utility  # noqa: E402
from data.sample import TEST_PHOTOS, TRAIN_PHOTOS, sample_photo  # noqa: E402
from data.sources import TAR_BLOCK  # noqa: E402
from option import OptionParser  # noqa: E402  (errors in one line, exit status 2)
from report import printable as shown  # noqa: E402
from scripts.cli import (  # noqa: E402
    BAD_OPTION,
    FAILED,
    check_limits,
    holding_lock,
    kind_of,
    path_problem,
    run_stoppable,
    say,
)
from scripts.scale.make_shards import SHARD_NAME, write_shards  # noqa: E402

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
PROGRESS_EVERY_S = 5.0  # tqdm's line on stderr: done of total, rate, time left
RECORD = "simulated.json"
RECORD_MAX_BYTES = 64 << 10  # the record is a few hundred bytes; anything larger is not one
OPTIONS = tuple(records.SIMULATED["required"])  # the options kept in the record
BUILDING = ".building"
PROG = "simulate_imagenet.py"
LIMITS = {k: (f["minimum"], f["maximum"]) for k, f in records.SIMULATED["properties"].items() if k in OPTIONS}
# Disk estimates, checked against the free space before anything is written
MEAN_JPEG_BYTES = 100 << 10  # the pool's JPEGs: 93-97 KB on average, measured
ENTRY_BYTES = 64  # a directory entry of ROOT/train: 71 MB for 1.28M links, measured on ext4
GIB = 1 << 30


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line, its numbers checked (one line on stderr and SystemExit(2) otherwise)."""
    p = OptionParser(prog=PROG, description="Build an ImageNet-sized tree of hard-linked JPEGs.")
    p.add_argument("root", help="folder to build (ROOT/train, ROOT/pool, ROOT/shards)")
    p.add_argument("--files", type=int, default=IMAGENET_FILES, help="entries under ROOT/train")
    p.add_argument("--classes", type=int, default=IMAGENET_CLASSES, help="class folders")
    p.add_argument("--pool", type=int, default=DEFAULT_POOL, help="distinct JPEGs linked to")
    p.add_argument("--shards", type=int, default=0, help="tar shards to write under ROOT/shards")
    p.add_argument("--shard_members", type=int, default=DEFAULT_POOL, help="images per shard")
    p.add_argument("--seed", type=int, default=0, help="seed of names, sizes and crops")
    args = p.parse_args(argv)
    check_limits(p, args, LIMITS)
    if args.classes > args.files:
        p.error(f"--classes {args.classes}: give at most --files ({args.files})")
    if args.pool * MAX_LINKS < args.files:
        p.error(f"--pool {args.pool}: give at least --files / {MAX_LINKS} "
                f"({-(-args.files // MAX_LINKS)}; ext4's hard-link limit)")
    return args


def check_root(args: argparse.Namespace) -> str | None:
    """What is wrong with ROOT (nothing is written), or None."""
    root = args.root
    named = f"ROOT {shown(root)}"
    if problem := path_problem(root):
        return f"{named} {problem}: give a folder to build"
    above = nearest(root)
    if not os.path.isdir(above):
        where = "is" if above == os.path.abspath(root) else f"is under {shown(above)}, which is"
        return f"{named} {where} {kind_of(above)}: give a new folder, or one this script built"
    path = os.path.join(root, RECORD)
    try:
        record = (records.read_json(path, records.SIMULATED, "give a new folder", RECORD_MAX_BYTES)
                  if os.path.lexists(path) else None)
    except utility.RecordError as e:  # not this script's record: names the file and what is wrong
        return f"ROOT {shown(str(e))}"
    if record is None and os.path.lexists(os.path.join(root, "train")):
        return f"{named}/train exists but {RECORD} does not (not built by this script): " \
               f"give a new folder"
    if record is not None and {k: record[k] for k in OPTIONS} != {k: getattr(args, k) for k in OPTIONS}:
        before = " ".join(f"--{k} {record[k]}" for k in OPTIONS)
        return f"{named} holds a tree built with {before}: give those options, or a new folder"
    why = runfolder.unwritable(above)  # a file is created there and removed
    return f"{named} cannot be written ({why}): give a folder you can write" if why else None


def nearest(path: str) -> str:
    """``path`` if it exists, else the nearest folder above it that does (where it would be made)."""
    where = os.path.abspath(path)
    while not os.path.lexists(where):
        where = os.path.dirname(where)
    return where


def space_problem(args: argparse.Namespace) -> str | None:
    """Why ROOT's file system cannot hold the tree (by the estimates above), or None."""
    missing = sum(not os.path.isfile(os.path.join(args.root, "shards", SHARD_NAME.format(i)))
                  for i in range(args.shards))  # a run again writes only what is missing
    shard_bytes = missing * args.shard_members * (MEAN_JPEG_BYTES + 2 * TAR_BLOCK)
    need = args.pool * MEAN_JPEG_BYTES + args.files * ENTRY_BYTES + shard_bytes
    free = shutil.disk_usage(nearest(args.root)).free
    if need <= free:
        return None
    return (f"the tree needs about {need / GIB:,.1f} GiB ({shard_bytes / GIB:,.1f} GiB of it "
            f"shards), {free / GIB:,.1f} GiB is free under {shown(args.root)}: give fewer "
            f"--shards or --shard_members, or another ROOT")


def pool_image(photo, rng: random.Random):
    """One JPEG-ready PIL image: a random crop of ``photo`` at one of ImageNet's usual sizes."""
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
    paths = [os.path.join(folder, f"pool-{i:03d}.JPEG") for i in range(count)]
    if all(os.path.isfile(p) for p in paths):
        return paths
    os.makedirs(folder, exist_ok=True)
    photos = [Image.fromarray(sample_photo(n).permute(1, 2, 0).numpy())
              for n in TRAIN_PHOTOS + TEST_PHOTOS]
    rng = random.Random(seed)
    for i, path in enumerate(paths):
        image = pool_image(photos[i % len(photos)], rng)
        runfolder.atomic_write(path, lambda tmp, image=image: image.save(tmp, "JPEG", quality=JPEG_QUALITY))
    return paths


def class_names(classes: int, files: int, seed: int) -> list[tuple[str, list[int]]]:
    """(WordNet-like id, image numbers) of each class: ids and numbers distinct, sorted."""
    rng = random.Random(seed)
    wnids = sorted(rng.sample(range(*WNID_RANGE), classes))
    per_class = [files // classes + (i < files % classes) for i in range(classes)]
    return [(f"n{w:08d}", sorted(rng.sample(range(1, max(MAX_IMAGE_NUMBER, n + 1)), n)))
            for w, n in zip(wnids, per_class, strict=False)]


def build_train(root: str, pool: Sequence[str], classes: list[tuple[str, list[int]]]) -> int:
    """The class folders of ROOT/train, each built aside then renamed in; the links made."""
    train, building = os.path.join(root, "train"), os.path.join(root, BUILDING)
    shutil.rmtree(building, ignore_errors=True)  # what an interrupted build left
    os.makedirs(train, exist_ok=True)
    done = 0
    with tqdm(total=sum(len(n) for _, n in classes), desc="linked", mininterval=PROGRESS_EVERY_S) as progress:
        for wnid, numbers in classes:
            final = os.path.join(train, wnid)
            if not os.path.isdir(final):  # not built by an earlier, interrupted run
                aside = os.path.join(building, wnid)
                os.makedirs(aside)
                for j, k in enumerate(numbers):
                    os.link(pool[(done + j) % len(pool)], os.path.join(aside, f"{wnid}_{k}.JPEG"))
                os.rename(aside, final)
            done += len(numbers)
            progress.update(len(numbers))
    shutil.rmtree(building, ignore_errors=True)
    return done


def build_shards(args: argparse.Namespace, classes: list[tuple[str, list[int]]]) -> int:
    """``--shards`` tars of ``--shard_members`` copies of ROOT/train's files (in a seeded order, again
    from the first after the last), under their names, and their shards.json (see write_shards)."""
    folder, shards, members = os.path.join(args.root, "shards"), args.shards, args.shard_members
    os.makedirs(folder, exist_ok=True)
    paths = [os.path.join(args.root, "train", w, f"{w}_{k}.JPEG") for w, numbers in classes for k in numbers]
    random.Random(args.seed).shuffle(paths)
    chunks = ([paths[(s * members + m) % len(paths)] for m in range(members)] for s in range(shards))
    write_shards(folder, args.root, tqdm(chunks, total=shards, desc="shards", mininterval=PROGRESS_EVERY_S))
    return shards * members


def build(args: argparse.Namespace) -> int:
    """The pool, the class folders and the shards, recorded in ROOT/simulated.json; 0."""
    start = time.monotonic()
    options = {k: getattr(args, k) for k in OPTIONS}
    os.makedirs(args.root, exist_ok=True)
    runfolder.write_json(os.path.join(args.root, RECORD), {**options, "complete": False})
    pool = make_pool(os.path.join(args.root, "pool"), args.pool, args.seed)
    classes = class_names(args.classes, args.files, args.seed)
    files = build_train(args.root, pool, classes)
    members = build_shards(args, classes) if args.shards else 0
    seconds = time.monotonic() - start
    sizes = [os.path.getsize(p) for p in pool]
    record = {**options, "complete": True, "pool_mean_bytes": round(sum(sizes) / len(sizes)),
              "shard_images": members, "seconds": round(seconds, 1)}
    runfolder.write_json(os.path.join(args.root, RECORD), record)
    print(f"built {files} entries in {args.classes} classes under {shown(args.root)}/train "
          f"(links to {args.pool} JPEGs of {record['pool_mean_bytes'] / 1024:.0f} KB on average)"
          + (f" and {args.shards} shards of {args.shard_members}" if args.shards else "")
          + f" in {seconds:.0f} s", flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Build the tree; 0 when complete, 130 when stopped (complete classes kept), 1 on a failed
    write or too little disk space, 2 for a bad command line."""
    args = parse_args(argv)

    def job(stop: stops.StopSignals) -> int:
        if problem := check_root(args):
            return say(PROG, problem, BAD_OPTION)
        if problem := space_problem(args):
            return say(PROG, problem, FAILED)
        os.makedirs(args.root, exist_ok=True)
        # a second run on ROOT is refused: its start would delete the class the first one builds
        with holding_lock(PROG, args.root, "ROOT", argv):
            if problem := check_root(args):  # again: a run that ended meanwhile may have built it
                return say(PROG, problem, BAD_OPTION)
            return build(args)

    def failed(e: Exception) -> str:
        if isinstance(e, runfolder.LockError):
            return shown(f"ROOT {e}")
        if not isinstance(e, OSError):  # a Refusal: a shard that is not this tree's (kept_members)
            return str(e)
        why = str(e) if isinstance(e, runfolder.SaveError) else \
            f"{e.filename}: {e.strerror}" if e.filename and e.strerror else str(e)
        return f"cannot build {shown(args.root)}: {shown(why)}"  # SaveError names the file and space

    return run_stoppable(PROG, job, lambda signum: (
        f"stopped by {stops.signal_name(signum)}: {shown(args.root)}/train holds the classes "
        f"finished so far (a partial tree the stream can read); run the same command again to "
        f"finish it"), (OSError, runfolder.LockError), failed)


if __name__ == "__main__":
    utility.collect_again()
    sys.exit(main())
