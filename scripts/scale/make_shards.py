"""Pack a folder of images (any depth, e.g. ImageNet's train/nXXXX/*.JPEG) into tar shards.

    python -m scripts.scale.make_shards SRC_FOLDER OUT_FOLDER [--per_shard 1000] [--seed 0 | --sorted]

Writes OUT/shard-000000.tar, ... (the files' bytes, named by their path relative to SRC) and
OUT/shards.json with each shard's image count, so that readers need not scan the shards. The order
is shuffled (seeded) unless --sorted: the stream shuffles the shards each epoch but reads a
shard's members in order, and ImageNet sorted by path is grouped by class. Links are followed,
each folder entered once; what is not a readable regular file is skipped and counted on stderr.
A stop (exit status 130) keeps the shards written whole, and the same command again finishes the job.
"""
from __future__ import annotations

import argparse
import os
import random
import sys
import tarfile
from collections.abc import Iterable, Sequence

import stops  # loads no torch

if __name__ == "__main__":  # a stop signal while torch loads is kept, not a traceback
    stops.early()

import records  # noqa: E402
import runfolder  # noqa: E402
from data.images import IMAGE_EXTENSIONS, open_regular, why_unreadable  # noqa: E402
from data.listing import walk_images  # noqa: E402
from data.sources import SHARD_INDEX, SHARD_SUFFIX  # noqa: E402
from option import OptionParser  # noqa: E402  (errors in one line, exit status 2)
from report import printable  # noqa: E402
from scripts.cli import FAILED, Refusal, check_limits, holding_lock, run_stoppable, say  # noqa: E402

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
        # dereference: a file hard-linked to one packed before is packed again, with its bytes, not as
        # a link member (the stream reads regular members only; simulate_imagenet's tree is hard links)
        with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT, dereference=True) as tar:
            for f in files:
                try:
                    data = open_regular(f)
                except OSError as e:
                    skipped.append(f"{f} ({why_unreadable(f, e)})")
                    continue
                with data:
                    tar.addfile(tar.gettarinfo(arcname=member_name(f, src), fileobj=data), data)

    runfolder.atomic_write(path, pack)
    return len(files) - len(skipped), skipped  # each file is packed or skipped


def write_shards(out: str, src: str, chunks: Iterable[Sequence[str]]) -> tuple[dict[str, int], list[str]]:
    """A shard of each chunk of files and their shards.json in ``out``: ({shard: images}, skipped);
    a shard already there (an interrupted run's: written whole or not at all) is kept when it holds
    the chunk's files (see kept_members)."""
    counts, skipped = {}, []
    for i, chunk in enumerate(chunks):
        name = SHARD_NAME.format(i)
        path = os.path.join(out, name)
        if os.path.isfile(path):
            counts[name] = kept_members(path, src, chunk)
            continue
        counts[name], missed = write_shard(path, src, chunk)
        skipped += missed
    runfolder.write_json(os.path.join(out, SHARD_INDEX), {"shards": counts})
    return counts, skipped


def kept_members(path: str, src: str, files: Sequence[str]) -> int:
    """The member count of a shard written before, which must hold ``files`` in order, less those
    that cannot be packed (skipped then and now); Refusal otherwise: the kept shard would lose or
    repeat files (another SRC, other options, or files changed since)."""
    try:
        with tarfile.open(path) as tar:
            names = tar.getnames()
    except tarfile.TarError:
        names = None
    present = set(names or ())
    expected = [n for f in files if (n := member_name(f, src)) in present or not unpackable(f)]
    if names != expected:
        raise Refusal(f"{printable(path)} holds other files than this command packs into it: delete "
                      f"the shard-*.tar files in {printable(os.path.dirname(path))}, or give a new folder")
    return len(names)


def member_name(path: str, src: str) -> str:
    """The name a file is packed under: its path relative to src, with /."""
    return os.path.relpath(path, src).replace(os.sep, "/")


def say_skipped(skipped: Sequence[str]) -> None:
    """One line on stderr counting what was not packed, naming the first."""
    if skipped:
        print(f"skipped {len(skipped)} path(s) named like images that are not readable regular "
              f"files (first: {skipped[0]})", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    """Pack SRC into OUT; 0 on success, 130 when stopped (the same command again finishes), 1 with
    nothing to pack, other shards or another run in OUT or a failed write, 2 for a bad option or
    when OUT is not a folder."""
    args = parse_args(argv)
    out = printable(args.out)

    def job(stop: stops.StopSignals) -> int:
        if os.path.lexists(args.out) and not os.path.isdir(args.out):
            return say(PROG, f"OUT {args.out} exists and is not a folder: give an empty or new folder")
        files, skipped = walk_images(args.src) if os.path.isdir(args.src) else ([], [])
        skipped = [f"{f} ({unpackable(f) or 'it changed while the folder was read'})" for f in skipped]
        if not files:
            say_skipped(skipped)
            return say(PROG, f"no images under {args.src}", FAILED)
        if not args.sorted:
            random.Random(args.seed).shuffle(files)
        chunks = [files[start:start + args.per_shard] for start in range(0, len(files), args.per_shard)]
        os.makedirs(args.out, exist_ok=True)
        with holding_lock(PROG, args.out, "OUT", argv):  # the same command again continues: never two at once
            ours = {SHARD_NAME.format(i) for i in range(len(chunks))}
            if others := sorted(n for n in os.listdir(args.out)  # the stream would read them too
                                if n.lower().endswith(SHARD_SUFFIX) and n not in ours):
                return say(PROG, f"{out} holds {len(others)} .tar file(s) this command does not write "
                                 f"(first: {printable(others[0])}): delete them, or give an empty or "
                                 f"new folder", FAILED)
            counts, missed = write_shards(args.out, args.src, chunks)
        say_skipped(skipped + missed)
        print(f"packed {sum(counts.values())} images into {len(counts)} shard(s) in {out}")
        return 0

    def failed(e: Exception) -> str:
        if isinstance(e, runfolder.LockError):
            return printable(f"OUT {e}")
        if isinstance(e, OSError) and not isinstance(e, runfolder.SaveError):
            return f"cannot write shards to {out}: {e.strerror or e}"
        return str(e)  # a Refusal; a SaveError names the shard, the reason and the free space

    return run_stoppable(PROG, job, lambda signum: (
        f"stopped by {stops.signal_name(signum)}: {out} holds the shards written so far; run the same "
        f"command again to finish them"), (OSError, runfolder.LockError), failed)


def unpackable(path: str) -> str | None:
    """Why ``path`` cannot be packed, in a few words; None when it can."""
    try:
        open_regular(path).close()
    except OSError as e:
        return why_unreadable(path, e)
    return None


if __name__ == "__main__":
    sys.exit(main())
