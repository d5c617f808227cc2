"""Pack a folder of images (any depth, e.g. ImageNet's train/nXXXX/*.JPEG) into tar shards.

    python -m scripts.scale.make_shards SRC_FOLDER OUT_FOLDER [--per_shard 1000] [--seed 0 | --sorted]

Writes OUT/shard-000000.tar, ... (the files' bytes, named by their path relative to SRC) and
OUT/shards.json with each shard's image count, so that readers need not scan the shards. The order
is shuffled (seeded) unless --sorted: the stream shuffles the shards each epoch but reads a
shard's members in order, and ImageNet sorted by path is grouped by class. Links are followed,
each folder entered once; what is not a readable regular file is skipped and counted on stderr.
"""
from __future__ import annotations

import argparse
import os
import random
import sys
import tarfile
from collections.abc import Iterable, Sequence

import records
import runfolder
from data.images import IMAGE_EXTENSIONS, open_regular, why_unreadable
from data.listing import walk_images
from data.sources import SHARD_INDEX
from option import OptionParser  # errors in one line, exit status 2
from report import printable
from scripts.cli import FAILED, check_limits, say

PROG = "make_shards.py"  # the name its error lines start with
LIMITS = {"per_shard": (1, records.MAX_SHARD_MEMBERS), "seed": (0, records.MAX_SEED)}  # as shards.json's
SHARD_NAME = "shard-{:06d}.tar"
DEFAULT_PER_SHARD = 1000


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line."""
    p = OptionParser(prog=PROG, description="Pack the images under a folder into tar shards.")
    p.add_argument("src", help=f"folder of images ({'/'.join(IMAGE_EXTENSIONS)}, any depth)")
    p.add_argument("out", help="folder for shard-NNNNNN.tar and shards.json")
    p.add_argument("--per_shard", type=int, default=DEFAULT_PER_SHARD, help="images per shard")
    p.add_argument("--seed", type=int, default=0, help="seed of the packing order")
    p.add_argument("--sorted", action="store_true", help="pack in path order, not shuffled")
    args = p.parse_args(argv)
    check_limits(p, args, LIMITS)
    return args


def write_shard(path: str, src: str, files: Sequence[str]) -> tuple[int, list[str]]:
    """One tar of the files (what links point to), named relative to src, written to a temporary
    name then renamed; (members packed, files skipped as not readable regular files)."""
    skipped = []

    def pack(tmp: str) -> None:
        with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as tar:
            for f in files:
                try:
                    data = open_regular(f)
                except OSError as e:
                    skipped.append(f"{f} ({why_unreadable(f, e)})")
                    continue
                with data:
                    info = tar.gettarinfo(arcname=os.path.relpath(f, src).replace(os.sep, "/"),
                                          fileobj=data)
                    tar.addfile(info, data)

    runfolder.atomic_write(path, pack)
    return len(files) - len(skipped), skipped  # each file is packed or skipped


def write_shards(out: str, src: str, chunks: Iterable[Sequence[str]]) -> tuple[dict[str, int], list[str]]:
    """A shard of each chunk of files and their shards.json in ``out``: ({shard: images}, skipped);
    a shard already there (an interrupted run's: written whole or not at all) is kept."""
    counts, skipped = {}, []
    for i, chunk in enumerate(chunks):
        name = SHARD_NAME.format(i)
        path = os.path.join(out, name)
        if os.path.isfile(path):
            counts[name] = len(chunk)
            continue
        counts[name], missed = write_shard(path, src, chunk)
        skipped += missed
    runfolder.write_json(os.path.join(out, SHARD_INDEX), {"shards": counts})
    return counts, skipped


def say_skipped(skipped: Sequence[str]) -> None:
    """One line on stderr counting what was not packed, naming the first."""
    if skipped:
        print(f"skipped {len(skipped)} path(s) named like images that are not readable regular "
              f"files (first: {skipped[0]})", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Pack SRC into OUT; 0 on success, 1 with nothing to pack, shards already in OUT or a failed
    write, 2 for a bad option or when OUT is not a folder."""
    args = parse_args(argv)
    if os.path.lexists(args.out) and not os.path.isdir(args.out):
        return say(PROG, f"OUT {args.out} exists and is not a folder: give an empty or new folder")
    files, skipped = walk_images(args.src) if os.path.isdir(args.src) else ([], [])
    skipped = [f"{f} ({_why(f)})" for f in skipped]
    if not files:
        say_skipped(skipped)
        return say(PROG, f"no images under {args.src}", FAILED)
    if not args.sorted:
        random.Random(args.seed).shuffle(files)
    try:
        os.makedirs(args.out, exist_ok=True)
        if any(n.endswith(".tar") for n in os.listdir(args.out)):
            return say(PROG, f"{args.out} already holds .tar files: give an empty or new folder", FAILED)
        chunks = (files[start:start + args.per_shard] for start in range(0, len(files), args.per_shard))
        counts, missed = write_shards(args.out, args.src, chunks)
    except OSError as e:  # SaveError names the shard, the reason and the free space
        why = str(e) if isinstance(e, runfolder.SaveError) else \
            f"cannot write shards to {args.out}: {e.strerror or e}"
        return say(PROG, why, FAILED)
    say_skipped(skipped + missed)
    print(f"packed {sum(counts.values())} images into {len(counts)} shard(s) in {printable(args.out)}")
    return 0


def _why(path: str) -> str:
    """Why ``path`` cannot be packed, in a few words."""
    try:
        open_regular(path).close()
    except OSError as e:
        return why_unreadable(path, e)
    return "it changed while the folder was read"


if __name__ == "__main__":
    sys.exit(main())
