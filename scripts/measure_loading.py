"""Measure the training stream on a big folder: start-up, memory per loader worker, throughput.

    python scripts/measure_loading.py FOLDER [--workers 4] [--batch_size 16] [--patch_size 48]
                                             [--steps 300] [--throughput_batches 30]
                                             [--parts startup,throughput]

FOLDER is what the stream reads (e.g. the ROOT/train of scripts/simulate_imagenet.py). Prints
Markdown tables:

- start-up and memory, each row in a fresh process: the time to list FOLDER and build the
  `PairStream`, then to the first batch through ``DataLoader(stream, batch_size=None,
  num_workers=W)``; then RSS, PSS and USS (from /proc/PID/smaps_rollup; PSS and USS are what
  count when workers share pages) of the main process and of each worker after ``--steps``
  steps, and again after every worker has looked up the name and path of each file of its share
  of an epoch (what a whole epoch does to the pages of the file list). Rows: the file list as two
  Python lists of str (the code before the compact index, walked), the compact index walked with
  the listing cached, and the compact index from that cache;
- throughput: steady pairs per second of one core (``num_workers=0``, one torch thread, after a
  warm-up batch) for each task, its task fixed by ``task_id``.

Figures on a shared machine move with the other load: run it when the machine is quiet.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from typing import Optional, Sequence

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import utility  # noqa: E402
from data.listing import walk_images  # noqa: E402
from data.stream import FileSource, PairStream, open_source  # noqa: E402

TASKS = ("sr2", "sr3", "sr4", "derain", "denoise30", "denoise50")
VARIANTS = {"list": "Python lists (before), walked",
            "walked": "compact index, walked, cache written",
            "cached": "compact index, from the cache"}
PARTS = ("startup", "throughput")
KIB = 1024
MIB = 1 << 20
CHILD_TIMEOUT_S = 1800
SMAPS_FIELDS = ("Rss", "Pss", "Private_Clean", "Private_Dirty")


def parse_args(argv: Optional[Sequence[str]]) -> argparse.Namespace:
    """The command line."""
    p = argparse.ArgumentParser(description="Measure start-up, memory and throughput of loading.")
    p.add_argument("folder", help="the folder of images the stream reads")
    p.add_argument("--workers", type=int, default=4, help="loader workers (memory, start-up)")
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--patch_size", type=int, default=48)
    p.add_argument("--steps", type=int, default=300, help="steps before memory is read")
    p.add_argument("--throughput_batches", type=int, default=30, help="timed batches per task")
    p.add_argument("--parts", default=",".join(PARTS), help=f"some of {', '.join(PARTS)}")
    p.add_argument("--cache", help="the listing cache file (default: a temporary folder's)")
    p.add_argument("--child", choices=tuple(VARIANTS), help=argparse.SUPPRESS)
    return p.parse_args(argv)


def memory(pid: int) -> dict[str, float]:
    """RSS, PSS and USS of a process in MiB, from /proc/PID/smaps_rollup."""
    values = {}
    with open(f"/proc/{pid}/smaps_rollup") as f:
        for line in f:
            key, _, rest = line.partition(":")
            if key in SMAPS_FIELDS:
                values[key] = int(rest.split()[0]) * KIB / MIB
    return {"rss": values["Rss"], "pss": values["Pss"],
            "uss": values["Private_Clean"] + values["Private_Dirty"]}


class Touching(IterableDataset):
    """A stream whose loader workers first look up the name and path of every file of their
    share of epoch 0 when ``touch`` is set (as a whole epoch of reading does), then stream."""

    def __init__(self, stream: IterableDataset, touch: bool):
        self.stream, self.touch = stream, touch

    def __iter__(self):
        info = get_worker_info()
        if self.touch and info is not None:
            source = self.stream.source
            for ref in source.epoch_refs(0, self.stream.seed, info.id, info.num_workers):
                source.name(ref), source.items[ref]
        return iter(self.stream)


def open_variant(folder: str, variant: str, cache: str):
    """The source of a variant: the old lists, or the compact index walked or from the cache."""
    if variant == "list":  # what _source_at did before the compact index
        files, _ = walk_images(folder)
        return FileSource(files, [os.path.relpath(f, folder) for f in files])
    if variant == "walked" and os.path.exists(cache):
        os.remove(cache)
    return open_source(folder, listing_cache=cache)


def run_loader(args: argparse.Namespace, stream, touch: bool) -> tuple[float, dict]:
    """(seconds to the first batch, memory after the steps) of a DataLoader over the stream."""
    start = time.monotonic()
    loader = DataLoader(Touching(stream, touch), batch_size=None,
                        num_workers=args.workers, worker_init_fn=utility.ignore_stop_signals)
    batches = iter(loader)
    next(batches)
    first = time.monotonic() - start
    for _ in range(args.steps - 1):
        next(batches)
    found = {"main": memory(os.getpid())}
    for i, worker in enumerate(batches._workers):
        found[f"worker {i}"] = memory(worker.pid)
    del batches
    return first, found


def child(args: argparse.Namespace) -> dict:
    """One variant's start-up and memory, measured in this fresh process."""
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    before = memory(os.getpid())
    start = time.monotonic()
    source = open_variant(args.folder, args.child, args.cache)
    listed = time.monotonic() - start
    stream = PairStream(source, list(TASKS), batch_size=args.batch_size,
                        patch_size=args.patch_size)
    built = time.monotonic() - start
    after = memory(os.getpid())
    first, steps = run_loader(args, stream, touch=False)
    _, touched = run_loader(args, stream, touch=True)
    return {"variant": args.child, "files": len(source), "listed_s": listed, "built_s": built,
            "first_batch_s": first, "source_mib": after["uss"] - before["uss"],
            "steps": steps, "touched": touched}


def measure_variant(args: argparse.Namespace, variant: str, cache: str) -> dict:
    """Run one variant in a fresh process; its figures."""
    command = [sys.executable, os.path.abspath(__file__), args.folder, "--child", variant,
               "--cache", cache, "--workers", str(args.workers), "--batch_size",
               str(args.batch_size), "--patch_size", str(args.patch_size), "--steps",
               str(args.steps)]
    done = subprocess.run(command, capture_output=True, text=True, timeout=CHILD_TIMEOUT_S)
    sys.stderr.write(done.stderr)
    if done.returncode:
        raise SystemExit(f"measure_loading.py: the {variant} run failed (exit {done.returncode})")
    return json.loads(done.stdout.strip().splitlines()[-1])


def startup_tables(args: argparse.Namespace, cache: str) -> str:
    """The start-up and memory tables, one fresh process per variant."""
    results = [measure_variant(args, v, cache) for v in VARIANTS]
    lines = [f"Start-up ({results[0]['files']:,} files, {args.workers} workers, batch "
             f"{args.batch_size}, patch {args.patch_size}):", "",
             "| file list | listed s | listed + stream built s | first batch s | list in main MiB |",
             "| --- | ---: | ---: | ---: | ---: |"]
    for r in results:
        lines.append(f"| {VARIANTS[r['variant']]} | {r['listed_s']:.1f} | {r['built_s']:.1f} | "
                     f"{r['first_batch_s']:.1f} | {r['source_mib']:.0f} |")
    if os.path.exists(cache):
        lines += ["", f"Cache file: {os.path.getsize(cache) / MIB:.1f} MiB."]
    for when in ("steps", "touched"):
        title = (f"after {args.steps} steps" if when == "steps" else
                 "after each worker looked up the name and path of its whole epoch share")
        lines += ["", f"Memory {title} (MiB, RSS / PSS / USS):", "",
                  "| file list | " + " | ".join(results[0][when]) + " |",
                  "| --- |" + " ---: |" * len(results[0][when])]
        for r in results:
            cells = [f"{m['rss']:.0f} / {m['pss']:.0f} / {m['uss']:.0f}" for m in r[when].values()]
            lines.append(f"| {VARIANTS[r['variant']]} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def throughput_table(args: argparse.Namespace) -> str:
    """Steady pairs per second of one core for each task (in this process, no workers)."""
    torch.set_num_threads(1)
    source = open_source(args.folder, listing_cache=args.cache)
    lines = [f"Throughput, one core (num_workers=0, 1 torch thread), batch {args.batch_size}, "
             f"patch {args.patch_size}, {args.throughput_batches} batches after a warm-up:", "",
             "| task | pairs/s | ms per pair |", "| --- | ---: | ---: |"]
    for task_id, task in enumerate(TASKS):
        stream = PairStream(source, list(TASKS), batch_size=args.batch_size,
                            patch_size=args.patch_size, task_id=task_id)
        batches = iter(stream)
        next(batches)  # warm-up: the first JPEGs, lazy imports, allocations
        start = time.monotonic()
        for _ in range(args.throughput_batches):
            next(batches)
        rate = args.throughput_batches * args.batch_size / (time.monotonic() - start)
        lines.append(f"| {task} | {rate:.0f} | {1000 / rate:.1f} |")
    load, refs = source.opener(), source.epoch_refs(0, 0, 0, 1)
    count = args.throughput_batches * args.batch_size
    load(refs[-1])  # warm-up
    start = time.monotonic()
    for ref in refs[:count]:
        load(ref)
    rate = count / (time.monotonic() - start)
    lines.append(f"| (reading and decoding the JPEG alone) | {rate:.0f} | {1000 / rate:.1f} |")
    return "\n".join(lines)


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Measure and print the tables."""
    args = parse_args(argv)
    if args.child:
        print(json.dumps(child(args)))
        return 0
    parts = set(args.parts.split(","))
    if not parts <= set(PARTS) or not os.path.isdir(args.folder):
        print(f"measure_loading.py: give a folder of images and --parts among {PARTS}",
              file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="measure_loading.") as scratch:
        args.cache = args.cache or os.path.join(scratch, "file_list.npz")
        print(f"measured: {os.path.abspath(args.folder)}, python {sys.version.split()[0]}, "
              f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}", flush=True)
        if "startup" in parts:
            print(startup_tables(args, args.cache) + "\n", flush=True)
        if "throughput" in parts:
            print(throughput_table(args), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
