"""Measure the training stream on a big folder: start-up, memory per loader worker, throughput.

    python -m scripts.scale.measure_loading FOLDER [--workers 4] [--batch_size 16] [--patch_size 48]
        [--steps 300] [--throughput_batches 30] [--parts startup,throughput] [--cache FILE]

FOLDER is what the stream reads (e.g. the ROOT/train of scripts.scale.simulate_imagenet); the
Markdown tables it prints, and what their rows mean, are described in docs/SCALING.md. Each
start-up row runs in a fresh process. Exit status: 1 for a failed measurement, 2 for a bad
command line, 130 when SIGINT, SIGTERM or SIGUSR1 (to it or its process group) stopped it, the
row's process and its loader workers ended first. Figures on a shared machine move with the
other load: run it when the machine is quiet.
"""
from __future__ import annotations

import argparse
import contextlib
import gc
import json
import logging
import os
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence

import stops  # loads no torch

if __name__ == "__main__":  # a stop signal while torch loads is kept, not a silent kill
    stops.early()
    gc.disable()  # while torch loads, until utility.collect_again: as main.py starts

import torch  # noqa: E402
from torch.utils.data import DataLoader, IterableDataset, get_worker_info  # noqa: E402

import runfolder  # noqa: E402
import utility  # noqa: E402
from data.images import ImageReadError  # noqa: E402
from data.listing import FILE_LIST, RECENT_CHANGE_NS, walk_images  # noqa: E402
from data.sources import FileSource, open_source  # noqa: E402
from data.stream import PairStream  # noqa: E402
from option import OptionParser  # noqa: E402  (errors in one line, exit status 2)
from report import printable as shown  # noqa: E402
from scripts import cli  # noqa: E402
from scripts.timing import HEADS, timed  # noqa: E402
from tasks import task_scale  # noqa: E402

VARIANTS = {"list": "Python lists (before), walked",
            "walked": "compact index, walked, cache written",
            "cached": "compact index, from the cache"}
PARTS = ("startup", "throughput")
MIB = 1 << 20
CHILD_TIMEOUT_S = 1800
CHILD_STOP_S = 30  # a row's process asked to stop ends its loader workers well within this
SMAPS_FIELDS = ("Rss", "Pss", "Private_Clean", "Private_Dirty")
SMAPS = "/proc/self/smaps_rollup"  # Linux 4.14 and later
PROG = "measure_loading.py"
MODULE = "scripts.scale.measure_loading"  # a row's process runs this with --child
MAX_STEPS = 100_000
# Upper limits of the options: beyond them a run would exhaust memory or never end
LIMITS = {"workers": (1, 64), "batch_size": (1, 1024),
          "patch_size": (1, 256),  # the LR patch; sr4's HR crop is 4 times its side
          "steps": (1, MAX_STEPS), "throughput_batches": (1, 10_000)}
MAX_BATCH_PIXELS = 1 << 26  # batch_size x HR crop area: a float HR batch of at most 768 MiB
MAX_SCALE = max(task_scale(t) for t in HEADS)  # sr4: its HR crop is this times the patch
PROBE_IMAGES = 8  # images decoded before measuring: the crops must fit in one of them
# what a measurement can fail with (DataLayoutError, ImageReadError and a loader worker's death are
# RuntimeErrors), as with a cli.Refusal (one that cannot be made or trusted): one line, exit status 1
FAILURES = (OSError, RuntimeError, MemoryError)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line, its numbers and parts checked (else one line, exit status 2); ``parts`` a tuple."""
    p = OptionParser(prog=PROG, description="Measure start-up, memory and throughput of loading.")
    p.add_argument("folder", help="the folder of images the stream reads")
    p.add_argument("--workers", type=int, default=4, help="loader workers (memory, start-up)")
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--patch_size", type=int, default=48)
    p.add_argument("--steps", type=int, default=300, help="steps before memory is read")
    p.add_argument("--throughput_batches", type=int, default=30, help="timed batches per task")
    p.add_argument("--parts", default=",".join(PARTS), help=f"some of {', '.join(PARTS)}")
    p.add_argument("--cache", help="the listing cache file (default: a temporary folder's)")
    p.add_argument("--child", choices=tuple(VARIANTS), help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    cli.check_limits(p, args, LIMITS)
    hr_side = args.patch_size * MAX_SCALE
    if args.batch_size * hr_side ** 2 > MAX_BATCH_PIXELS:
        p.error(f"--batch_size {args.batch_size} with --patch_size {args.patch_size}: a batch of "
                f"{hr_side}x{hr_side} crops is over {MAX_BATCH_PIXELS:,} pixels; give smaller")
    parts = tuple(args.parts.split(","))
    if unknown := [part for part in parts if part not in PARTS]:
        p.error(f"--parts {shown(args.parts)!r}: {shown(unknown[0])!r} is not a part; give some "
                f"of {','.join(PARTS)} joined by commas")
    args.parts = parts
    return args


def check_paths(args: argparse.Namespace) -> str | None:
    """What is wrong with FOLDER or --cache (a file this process can replace), or None; nothing is
    written but a file created beside --cache and removed, to find out."""
    problem = cli.path_problem(args.folder)
    if problem is None and not os.path.isdir(args.folder):
        problem = f"is {cli.kind_of(args.folder)}" if os.path.lexists(args.folder) else "does not exist"
    if problem:
        return f"FOLDER {shown(args.folder)} {problem}: give a folder of images"
    if "startup" in args.parts and not os.path.exists(SMAPS):
        return f"--parts startup reads {SMAPS} (Linux 4.14 and later), missing here: give " \
               f"--parts throughput"
    cache = args.cache
    if cache is None:
        return None
    named = f"--cache {shown(cache)}"
    if problem := cli.path_problem(cache):
        return f"{named} {problem}: give a file name"
    if os.path.lexists(cache) and not os.path.isfile(cache):
        return f"{named} is {cli.kind_of(cache)}: give a file name (the file is replaced)"
    folder = os.path.dirname(cache) or "."
    if not os.path.isdir(folder):
        return f"{named}: its folder does not exist; give a file in an existing folder"
    why = runfolder.unwritable(folder)
    return (f"{named}: its folder cannot be written ({why}); give a file in a folder you can write"
            if why else None)


def memory(pid: int) -> dict[str, float]:
    """RSS, PSS and USS of a process in MiB, from /proc/PID/smaps_rollup."""
    with open(f"/proc/{pid}/smaps_rollup") as f:
        fields = (line.partition(":") for line in f)
        values = {key: int(rest.split()[0]) / 1024 for key, _, rest in fields if key in SMAPS_FIELDS}  # kB
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


def run_loader(args: argparse.Namespace, stream, touch: bool) -> tuple[float, dict]:
    """(seconds to the first batch, memory after the steps) of a DataLoader over the stream."""
    start = time.monotonic()
    loader = DataLoader(Touching(stream, touch), batch_size=None,
                        num_workers=args.workers, worker_init_fn=stops.ignore_stop_signals)
    batches = iter(loader)
    try:
        next(batches)
        first = time.monotonic() - start
        for _ in range(args.steps - 1):
            next(batches)
        found = {"main": memory(os.getpid()),
                 **{f"worker {i}": memory(worker.pid) for i, worker in enumerate(batches._workers)}}
    finally:
        # the workers ended now, on an error or a stop too: they ignore SIGTERM, which is how
        # multiprocessing ends them at exit, while it waits for them (a hang)
        batches._shutdown_workers()
    return first, found


def child(args: argparse.Namespace) -> dict:
    """One variant's start-up and memory, measured in this fresh process: its source the old lists,
    or the compact index walked or from the cache."""
    before = memory(os.getpid())
    start = time.monotonic()
    if args.child == "list":  # what _source_at did before the compact index
        files, _ = walk_images(args.folder)
        source = FileSource(files, [os.path.relpath(f, args.folder) for f in files])
    else:
        if args.child == "walked" and os.path.exists(args.cache):
            os.remove(args.cache)
        source = open_source(args.folder, listing_cache=args.cache)
    listed = time.monotonic() - start
    stream = PairStream(source, list(HEADS), batch_size=args.batch_size, patch_size=args.patch_size)
    built = time.monotonic() - start
    after = memory(os.getpid())
    first, steps = run_loader(args, stream, touch=False)
    _, touched = run_loader(args, stream, touch=True)
    return {"variant": args.child, "files": len(source), "listed_s": listed, "built_s": built,
            "first_batch_s": first, "source_mib": after["uss"] - before["uss"],
            "steps": steps, "touched": touched}


class StopOnce(stops.StopSignals):
    """StopSignals raising Interrupted at the first stop signal only: a row's process that is
    ending its loader workers is not interrupted again (its parent may signal it too)."""

    def _handle(self, signum: int, frame) -> None:
        if self.received is None:
            super()._handle(signum, frame)


def run_child(args: argparse.Namespace) -> int:
    """A row's process: its figures as one JSON line on stdout; 0, 1 with one line on stderr,
    130 when stopped (its loader workers ended, quietly: the parent says it)."""
    logging.basicConfig(level=logging.INFO, format="%(message)s", stream=sys.stderr)
    with StopOnce(raise_=True, ignore_after=True):
        try:
            print(json.dumps(child(args)), flush=True)
            return 0
        except KeyboardInterrupt:
            return stops.INTERRUPTED
        except FAILURES as e:
            return cli.say(PROG, shown(utility.last_line(e)), cli.FAILED)


def end_child(process: subprocess.Popen) -> None:
    """Stop a row's process (SIGTERM; it ends its loader workers), killed if it has not ended
    within CHILD_STOP_S; the stop signals wait meanwhile (delivered once it has ended)."""
    signal.pthread_sigmask(signal.SIG_BLOCK, stops.STOP_SIGNALS)
    try:
        process.terminate()  # SIGTERM, unless it has ended (Popen checks)
        try:
            process.communicate(timeout=CHILD_STOP_S)
        except subprocess.TimeoutExpired:
            process.kill()
            process.communicate()
    finally:
        signal.pthread_sigmask(signal.SIG_UNBLOCK, stops.STOP_SIGNALS)


def measure_variant(args: argparse.Namespace, variant: str, cache: str) -> dict:
    """Run one variant in a fresh process; its figures (a Refusal when it fails)."""
    numbers = [f"--{name}={getattr(args, name)}" for name in ("workers", "batch_size", "patch_size", "steps")]
    command = [sys.executable, "-m", MODULE, os.path.abspath(args.folder), "--child", variant,
               "--cache", os.path.abspath(cache), *numbers]
    process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               cwd=cli.REPOSITORY, text=True, errors="backslashreplace")
    try:
        out, err = process.communicate(timeout=CHILD_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        end_child(process)
        raise cli.Refusal(f"the {variant} run took more than {CHILD_TIMEOUT_S} s: give fewer "
                          f"--steps") from None
    except BaseException:  # a stop: the row's process ends first
        end_child(process)
        raise
    if process.returncode:
        said = err.strip().splitlines()[-1:] or [f"exit status {process.returncode}"]
        raise cli.Refusal(f"the {variant} run failed: {said[0].removeprefix(PROG + ': ')}")
    sys.stderr.write(err)
    return json.loads(out.strip().splitlines()[-1])


def cache_stamp(cache: str) -> tuple[int, int] | None:
    """(inode, mtime) of the listing cache, None if there is none."""
    with contextlib.suppress(OSError):
        info = os.stat(cache)
        return info.st_ino, info.st_mtime_ns
    return None


def table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> list[str]:
    """The lines of a Markdown table, its first column text and the others figures (right-aligned)."""
    return ["| " + " | ".join(cells) + " |" for cells in (header, ["---"] + ["---:"] * (len(header) - 1),
                                                            *rows)]


def startup_tables(args: argparse.Namespace, cache: str) -> str:
    """The start-up and memory tables, one fresh process per variant."""
    results = []
    for variant in VARIANTS:
        written = cache_stamp(cache)
        results.append(measure_variant(args, variant, cache))
        if variant == "walked" and cache_stamp(cache) is None:
            raise cli.Refusal(f"the walked run did not cache the listing in {shown(cache)} (a "
                              f"folder under FOLDER changed meanwhile?): run again")
        if variant == "cached" and cache_stamp(cache) != written:
            raise cli.Refusal("the cached run walked FOLDER again (it changed during the "
                              "measurement): run again")
    lines = [f"Start-up ({results[0]['files']:,} files, {args.workers} workers, batch "
             f"{args.batch_size}, patch {args.patch_size}):", "",
             *table(["file list", "listed s", "listed + stream built s", "first batch s",
                     "list in main MiB"],
                    [[VARIANTS[r["variant"]], f"{r['listed_s']:.1f}", f"{r['built_s']:.1f}",
                      f"{r['first_batch_s']:.1f}", f"{r['source_mib']:.0f}"] for r in results]),
             "", f"Cache file: {os.path.getsize(cache) / MIB:.1f} MiB."]
    for when, title in (("steps", f"after {args.steps} steps"), ("touched", "after each worker looked "
                        "up the name and path of its whole epoch share")):
        lines += ["", f"Memory {title} (MiB, RSS / PSS / USS):", "",
                  *table(["file list", *results[0][when]],
                         [[VARIANTS[r["variant"]], *(f"{m['rss']:.0f} / {m['pss']:.0f} / {m['uss']:.0f}"
                                                     for m in r[when].values())] for r in results])]
    return "\n".join(lines)


def rate_line(what: str, pairs: int, seconds: float) -> str:
    """A throughput table row: pairs per second and milliseconds per pair."""
    rate = pairs / max(seconds, 1e-9)
    return f"| {what} | {rate:.0f} | {1000 / rate:.1f} |"


def throughput_table(args: argparse.Namespace, source) -> str:
    """Steady pairs per second of one core for each task (in this process, no workers)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        lines = [f"Throughput, one core (num_workers=0, 1 torch thread), batch {args.batch_size}, "
                 f"patch {args.patch_size}, {args.throughput_batches} batches after a warm-up:", "",
                 *table(["task", "pairs/s", "ms per pair"], [])]
        for task_id, task in enumerate(HEADS):
            batches = iter(PairStream(source, list(HEADS), batch_size=args.batch_size,
                                      patch_size=args.patch_size, task_id=task_id))
            next(batches)  # warm-up: the first JPEGs, lazy imports, allocations
            seconds, _ = timed(lambda it=batches: [next(it) for _ in range(args.throughput_batches)])
            lines.append(rate_line(task, args.throughput_batches * args.batch_size, seconds))
        return "\n".join([*lines, decoding_line(args, source)])
    finally:
        torch.set_num_threads(threads)  # as it was: main() may be called in a longer process


def decoded(load: Callable, refs: Sequence[int]) -> Iterator:
    """The images of ``refs`` that ``load`` decodes; the others are skipped, as the stream skips them."""
    for ref in refs:
        with contextlib.suppress(ImageReadError):
            yield load(ref)


def decoding_line(args: argparse.Namespace, source) -> str:
    """The throughput row of reading and decoding alone: each file once, at most as many as the
    tasks' rows took; the files that fail to decode are not counted."""
    load, refs = source.opener(), source.epoch_refs(0, 0, 0, 1)[:args.throughput_batches * args.batch_size]
    next(decoded(load, refs[-1:]), None)  # warm-up
    seconds, count = timed(lambda: sum(1 for _ in decoded(load, refs)))
    if not count:
        raise cli.Refusal(f"none of the first {len(refs)} files under {shown(args.folder)} could be decoded")
    return rate_line("(reading and decoding the JPEG alone)", count, seconds)


def check_source(args: argparse.Namespace, source, cache: str) -> None:
    """A Refusal when FOLDER's listing cannot serve the parts asked for: none of the first images
    decodes or holds the largest crop (the stream would read a whole epoch looking for one), or
    the start-up part cannot measure it."""
    refs = source.epoch_refs(0, 0, 0, 1)[:PROBE_IMAGES]
    sides = [min(image.shape[-2:]) for image in decoded(source.opener(), refs)]
    folder = f"FOLDER {shown(args.folder)}"
    if not sides:
        raise cli.Refusal(f"none of the first {len(refs)} files under {folder} could be decoded")
    crop = args.patch_size * MAX_SCALE
    if max(sides) < crop:
        raise cli.Refusal(f"--patch_size {args.patch_size}: sr{MAX_SCALE}'s {crop}x{crop} crops are larger "
                          f"than the first images of FOLDER (short sides up to {max(sides)}); give at most "
                          f"{max(sides) // MAX_SCALE}", cli.BAD_OPTION)
    if "startup" not in args.parts:
        return
    if not isinstance(source, FileSource):
        raise cli.Refusal(f"{folder} holds tar shards: the start-up part measures folder listings; give "
                          f"--parts throughput", cli.BAD_OPTION)
    if args.workers > len(source):
        raise cli.Refusal(f"--workers {args.workers}: {folder} holds {len(source)} image(s), give at "
                          f"most that many workers", cli.BAD_OPTION)
    if cache_stamp(cache) is None:  # list_folder does not cache what may still be changing
        raise cli.Refusal(f"the listing of {folder} was not cached in {shown(cache)}: a folder under it "
                          f"changed less than {RECENT_CHANGE_NS / 1e9:.0f} s ago; run again")


def measure(args: argparse.Namespace) -> int:
    """Print the tables asked for; 0 (a Refusal when FOLDER cannot serve them)."""
    with tempfile.TemporaryDirectory(prefix="measure_loading.") as scratch:
        cache = args.cache if args.cache is not None else os.path.join(scratch, FILE_LIST)
        source = open_source(args.folder, listing_cache=cache)
        check_source(args, source, cache)
        print(f"measured: {shown(args.folder)}, python {sys.version.split()[0]}, "
              f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}", flush=True)
        if "startup" in args.parts:
            print(startup_tables(args, cache) + "\n", flush=True)
        if "throughput" in args.parts:
            print(throughput_table(args, source), flush=True)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Measure and print the tables; the exit status (0, 1, 2 or 130, as the docstring above says)."""
    args = parse_args(argv)
    if args.child:
        return run_child(args)
    if problem := check_paths(args):
        return cli.say(PROG, problem, cli.BAD_OPTION)
    return cli.run_stoppable(PROG, lambda stop: measure(args), lambda signum: (
        f"stopped by {stops.signal_name(signum)}: the tables printed so far are complete"),
        FAILURES, lambda e: shown(utility.last_line(e)))  # a loader worker's error: its last line


if __name__ == "__main__":
    utility.collect_again()
    sys.exit(main())
