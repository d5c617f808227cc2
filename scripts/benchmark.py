"""The project's benchmarks: one function per section, each rewriting its part of BENCHMARKS.md.

    python scripts/benchmark.py [SECTION ...] [--doc docs/BENCHMARKS.md] [--reps 3]

With no SECTION every section runs. Each prints a Markdown table and replaces the text between
``<!-- NAME:begin -->`` and ``<!-- NAME:end -->`` in the doc (appending the section when the
markers are missing), leaving the other sections as they are.
"""
from __future__ import annotations

import argparse
import datetime
import logging
import os
import platform
import re
import statistics
import sys
import tempfile
import time
from typing import Callable, Optional, Sequence

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import torch  # noqa: E402
from PIL import Image  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402

DOC = os.path.join(ROOT, "docs", "BENCHMARKS.md")
DOC_TITLE = ("# Benchmarks\n\nMade by `python scripts/benchmark.py [SECTION]`; each section is "
             "rewritten between its markers by its own run.\n")
DEFAULT_REPS = 5

# loader section
LOADER_TASKS = ("sr2", "sr3", "sr4", "derain", "denoise30")
HEADS = ("sr2", "sr3", "sr4", "derain", "denoise30", "denoise50")  # the six-task head order
LOADER_WORKERS = (0, 1, 2)
LOADER_BATCH = 16
LOADER_BATCHES = 16  # timed batches per measurement, after one untimed (worker start-up)
JPEG_QUALITY = 90


def machine() -> str:
    """CPU model, core count, torch version and date, in one line."""
    model = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            found = re.search(r"^model name\s*:\s*(.+)$", f.read(), re.MULTILINE)
        model = found.group(1).strip() if found else model
    except OSError:
        pass
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    return (f"{model}, {cores} core(s); Python {platform.python_version()}, torch "
            f"{torch.__version__}; {date}")


def write_section(doc: str, name: str, body: str) -> None:
    """Replace (or append) the text between the section's markers in the doc."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    text = open(doc).read() if os.path.isfile(doc) else DOC_TITLE
    block = f"{begin}\n{body.strip()}\n{end}"
    if begin in text and end in text:
        text = text[:text.index(begin)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    os.makedirs(os.path.dirname(doc), exist_ok=True)
    with open(doc, "w") as f:
        f.write(text)


# ----------------------------------------------------------------------------------------
# loader: training pairs per second from a JPEG folder
# ----------------------------------------------------------------------------------------
def write_jpegs(folder: str) -> float:
    """The sample training photos as JPEGs in folder; their mean size in megapixels."""
    from data.sample import sample_photos

    pixels = []
    for name, image in sample_photos("train"):
        arr = image.permute(1, 2, 0).numpy()
        Image.fromarray(arr).save(os.path.join(folder, f"{name}.jpg"), quality=JPEG_QUALITY)
        pixels.append(arr.shape[0] * arr.shape[1])
    return statistics.mean(pixels) / 1e6


def loader_rate(folder: str, task: str, workers: int, seed: int) -> float:
    """Pairs per second of a PairStream over the folder, after one untimed batch."""
    from data.stream import PairStream

    stream = PairStream(folder, HEADS, LOADER_BATCH, task_id=HEADS.index(task), seed=seed)
    batches = iter(DataLoader(stream, batch_size=None, num_workers=workers))
    next(batches)
    start = time.perf_counter()
    for _ in range(LOADER_BATCHES):
        next(batches)
    elapsed = time.perf_counter() - start
    del batches  # stops the workers
    return LOADER_BATCHES * LOADER_BATCH / elapsed


def loader_section(args: argparse.Namespace) -> str:
    """Data loader pairs/s per task and worker count: the median of interleaved repetitions."""
    from data.stream import task_scale

    rates: dict[tuple[str, int], list[float]] = {}
    with tempfile.TemporaryDirectory() as folder:
        megapixels = write_jpegs(folder)
        for rep in range(args.reps):
            for task in LOADER_TASKS:
                for workers in LOADER_WORKERS:
                    rate = loader_rate(folder, task, workers, seed=rep)
                    rates.setdefault((task, workers), []).append(rate)
    head = "| task | LR | HR | " + " | ".join(f"{w} worker(s)" for w in LOADER_WORKERS) + " |"
    lines = ["## Data loader (pairs/s)", "",
             f"Machine: {machine()}.", "",
             f"`PairStream` over the 8 scikit-image training photos written as JPEG (quality "
             f"{JPEG_QUALITY}, {megapixels:.2f} megapixels on average, larger than a typical "
             f"ImageNet JPEG of 500x375, 0.19 MP, so decoding costs more here), batch {LOADER_BATCH}, one crop per file, "
             f"augmentation on; `DataLoader(batch_size=None, num_workers=W)`. Pairs per second "
             f"over {LOADER_BATCHES} batches after a first untimed one, median of {args.reps} "
             "interleaved repetitions. derain uses procedural streaks.", "",
             head, "|" + "---|" * (3 + len(LOADER_WORKERS))]
    for task in LOADER_TASKS:
        s = task_scale(task)
        cells = " | ".join(f"{statistics.median(rates[(task, w)]):.0f}" for w in LOADER_WORKERS)
        lines.append(f"| {task} | 48 | {48 * s} | {cells} |")
    return "\n".join(lines) + "\n"


# tiling section
TILING_SIZES = (126, 240, 256, 512)
TILING_MODES = ("reference", "official", "fast")  # reference: the authors' strip-by-strip procedure
TINY_IPT = dict(n_feats=16, num_heads=4, num_layers=1)


def tiling_model(device: torch.device) -> torch.nn.Module:
    """The x2 IPT the tiling section runs: full size on CUDA, the tiny one on the CPU."""
    from model import IPT, IPTConfig

    torch.manual_seed(0)
    cfg = IPTConfig(scale=[2], num_queries=1, **({} if device.type == "cuda" else TINY_IPT))
    return IPT(cfg).to(device).eval()


def run_tiling(mode: str, model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(output, tile evaluations) of one whole-image restoration."""
    from model import restore
    from reference_chop import reference_chop

    count = [0]
    hook = model.register_forward_pre_hook(lambda m, inp: count.__setitem__(0, count[0] + inp[0].shape[0]))
    try:
        with torch.no_grad():
            if mode == "reference":
                out = reference_chop(lambda t: model(t, 0), x, 2)
            else:
                out = restore(model, x, 0, mode)
    finally:
        hook.remove()
    return out, count[0]


def tiling_section(args: argparse.Namespace) -> str:
    """Seconds, tile evaluations and peak memory of whole-image x2 inference per tiler."""
    sys.path.insert(0, os.path.join(ROOT, "tests"))
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = tiling_model(device)
    times: dict[tuple[int, str], list[float]] = {}
    tiles, peaks, diffs = {}, {}, {}
    for size in TILING_SIZES:
        x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(size)).mul(255).to(device)
        for _ in range(args.reps):
            outs = {}
            for mode in TILING_MODES:  # interleaved repetitions
                if device.type == "cuda":
                    torch.cuda.synchronize()
                    torch.cuda.reset_peak_memory_stats()
                start = time.perf_counter()
                outs[mode], tiles[(size, mode)] = run_tiling(mode, model, x)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                    peaks[(size, mode)] = torch.cuda.max_memory_allocated() / 2 ** 20
                times.setdefault((size, mode), []).append(time.perf_counter() - start)
            diffs[size] = (outs["official"] - outs["reference"]).abs().max().item()
    kind = "full-size x2 IPT" if device.type == "cuda" else "tiny x2 IPT (n_feats 16, 4 heads, 1 layer)"
    lines = [f"## Whole-image inference ({device.type})", "", f"Machine: {machine()}.", "",
             f"{kind}, random weights, crop batch 64; seconds are medians of {args.reps} interleaved "
             "repetitions; `reference` is the authors' strip-by-strip procedure "
             "(tests/reference_chop.py); peak memory on CUDA only.", "",
             "| size | mode | seconds | tile evaluations | speed-up vs reference | peak MiB | "
             "max abs diff official vs reference |", "|---|---|---|---|---|---|---|"]
    for size in TILING_SIZES:
        ref = statistics.median(times[(size, "reference")])
        for mode in TILING_MODES:
            sec = statistics.median(times[(size, mode)])
            peak = f"{peaks[(size, mode)]:.0f}" if (size, mode) in peaks else "-"
            diff = f"{diffs[size]:.2e}" if mode == "official" else ""
            lines.append(f"| {size}x{size} | {mode} | {sec:.2f} | {tiles[(size, mode)]} | "
                         f"{ref / sec:.2f}x | {peak} | {diff} |")
    return "\n".join(lines) + "\n"


SECTIONS: dict[str, Callable[[argparse.Namespace], str]] = {"loader": loader_section,
                                                              "tiling": tiling_section}


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Run the named sections (default: all), print them and write them into the doc."""
    p = argparse.ArgumentParser(description="Run the project's benchmarks.")
    p.add_argument("sections", nargs="*", metavar="SECTION",
                   help=f"one or more of {', '.join(SECTIONS)} (default: all)")
    p.add_argument("--doc", default=DOC, help="Markdown file to update")
    p.add_argument("--reps", type=int, default=DEFAULT_REPS, help="repetitions (median taken)")
    args = p.parse_args(argv)
    unknown = [n for n in args.sections if n not in SECTIONS]
    if unknown:
        p.error(f"unknown section(s) {', '.join(unknown)}; known: {', '.join(SECTIONS)}")
    logging.basicConfig(level=logging.ERROR)
    for name in args.sections or list(SECTIONS):
        body = SECTIONS[name](args)
        print(body)
        write_section(args.doc, name, body)
    print(f"updated {args.doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
