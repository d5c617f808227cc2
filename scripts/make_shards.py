"""Pack a folder of images (any depth, e.g. ImageNet's train/nXXXX/*.JPEG) into tar shards.

    python scripts/make_shards.py SRC_FOLDER OUT_FOLDER [--per_shard 1000] [--seed 0 | --sorted]

Writes OUT/shard-000000.tar, ... with the files' bytes as they are, named by their path relative
to SRC, and OUT/shards.json with the image count of each shard (so that readers need not scan
the shards). Files are packed in a shuffled order (seeded) unless --sorted: the training stream
shuffles the shards each epoch but reads the members of a shard in order, and ImageNet sorted
by path is grouped by class.
"""
from __future__ import annotations

import argparse
import os
import random
import sys
import tarfile
from typing import Optional, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import utility  # noqa: E402
from data.stream import SHARD_INDEX, find_images  # noqa: E402

SHARD_NAME = "shard-{:06d}.tar"
DEFAULT_PER_SHARD = 1000


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    """The command line."""
    p = argparse.ArgumentParser(description="Pack the images under a folder into tar shards.")
    p.add_argument("src", help="folder of images (.png/.jpg/.jpeg/.bmp/.tif/.tiff, any depth)")
    p.add_argument("out", help="folder for shard-NNNNNN.tar and shards.json")
    p.add_argument("--per_shard", type=int, default=DEFAULT_PER_SHARD, help="images per shard")
    p.add_argument("--seed", type=int, default=0, help="seed of the packing order")
    p.add_argument("--sorted", action="store_true", help="pack in path order, not shuffled")
    return p.parse_args(argv)


def write_shard(path: str, src: str, files: Sequence[str]) -> None:
    """One tar of the files, named relative to src, written to a temporary name then renamed."""
    def pack(tmp: str) -> None:
        with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
            for f in files:
                tar.add(f, arcname=os.path.relpath(f, src).replace(os.sep, "/"), recursive=False)

    utility.atomic_write(path, pack)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Pack SRC into OUT; 0 on success, 1 with nothing to pack or shards already in OUT."""
    args = parse_args(argv)
    if args.per_shard < 1:
        print("--per_shard must be at least 1", file=sys.stderr)
        return 1
    files = find_images(args.src) if os.path.isdir(args.src) else []
    if not files:
        print(f"no images under {args.src}", file=sys.stderr)
        return 1
    if not args.sorted:
        random.Random(args.seed).shuffle(files)
    os.makedirs(args.out, exist_ok=True)
    if any(n.endswith(".tar") for n in os.listdir(args.out)):
        print(f"{args.out} already holds .tar files: give an empty or new folder", file=sys.stderr)
        return 1
    counts = {}
    for i, start in enumerate(range(0, len(files), args.per_shard)):
        name = SHARD_NAME.format(i)
        chunk = files[start:start + args.per_shard]
        write_shard(os.path.join(args.out, name), args.src, chunk)
        counts[name] = len(chunk)
    utility.write_json(os.path.join(args.out, SHARD_INDEX), {"shards": counts})
    print(f"packed {len(files)} images into {len(counts)} shard(s) in {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
