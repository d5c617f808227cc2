"""The project's benchmarks: one function per section, each rewriting its part of BENCHMARKS.md.

    python scripts/benchmark.py [SECTION ...] [--doc docs/BENCHMARKS.md] [--reps 3] [--smoke]

With no SECTION every section runs. Each prints a Markdown table and replaces the text between
``<!-- NAME:begin -->`` and ``<!-- NAME:end -->`` in the doc (appending the section when the
markers are missing), leaving the other sections as they are. Timings are medians of
interleaved repetitions in one run. ``--smoke`` runs every section at minimal sizes (tiny
models, one repetition, one torch thread in this process and in the child processes it starts,
the tiling's peak memory of ``official`` only) and writes a temporary doc unless ``--doc`` is
given; it checks that the code runs, its figures mean little; the test suite runs it.
"""
from __future__ import annotations

import argparse
import logging
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import torch  # noqa: E402
from PIL import Image  # noqa: E402
from torch.utils.data import DataLoader  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

import utility  # noqa: E402
from data.sample import sample_photos  # noqa: E402
from data.stream import PairStream  # noqa: E402
from hostinfo import machine  # noqa: E402 (scripts/hostinfo.py)
from model import IPT, IPTConfig, build_model, restore  # noqa: E402
from model.ipt import MLP_RATIO  # noqa: E402
from model.reference_chop import reference_chop  # noqa: E402
from model.tiling import CPU_TILES_PER_CALL  # noqa: E402
from option import parse_args, settings  # noqa: E402
from tasks import task_scale  # noqa: E402
from trainer import Trainer  # noqa: E402

DOC = os.path.join(ROOT, "docs", "BENCHMARKS.md")
DOC_TITLE = ("# Benchmarks\n\nMade by `python scripts/benchmark.py [SECTION ...] [--reps N]`; "
             "each section is rewritten between its markers by its own run.\n")
DEFAULT_REPS = 5
HEADS = ("sr2", "sr3", "sr4", "derain", "denoise30", "denoise50")  # the six-task head order
JPEG_QUALITY = 90
TINY_IPT = dict(n_feats=16, num_heads=4, num_layers=1)  # the tiling section's CPU model
TRAIN_TINY = dict(n_feats=16, num_heads=4, num_layers=2)  # the tiny training configuration
CUDA_LOADER_WORKERS = (8, 16)
CUDA_BACKWARD_BATCH = 64  # about 29 GB on the CPU: GPU only


@dataclass(frozen=True)
class Sizes:
    """What a run measures: the full benchmark, or a smoke run of a few seconds for CI."""

    loader_tasks: tuple[str, ...]
    loader_workers: tuple[int, ...]  # CUDA_LOADER_WORKERS are added on a GPU machine
    loader_batch: int
    loader_batches: int  # timed batches per measurement, after one untimed (worker start-up)
    tiling_sizes: tuple[int, ...]
    forward_model: dict  # IPTConfig overrides of the x2 model of the forward section
    forward_batches: tuple[int, ...]
    backward_batches: tuple[int, ...]  # CUDA_BACKWARD_BATCH is added on a GPU
    gemm_calls: int  # matmuls per GEMM-peak measurement
    training: tuple[tuple[str, dict, int, int], ...]  # (name, IPT options, CPU batch, GPU batch)
    # torch threads of the run and of its children (None: torch's default, every core). One
    # thread keeps a smoke run short on a busy machine: with more threads than free cores, each
    # small operator waits for a descheduled thread (4x to 6x slower on 2 shared cores)
    threads: int | None = None
    # tiling modes whose CPU peak memory is measured, in a child process each (None: every mode)
    peak_modes: tuple[str, ...] | None = None
    # the forward in a fresh child process (glibc only): with glibc malloc as it is (False),
    # tuned (True)
    fresh_tuned: tuple[bool, ...] = (False, True)
    saving_model: dict = field(default_factory=dict)  # IPT options of the checkpointed model


FULL = Sizes(loader_tasks=("sr2", "sr3", "sr4", "derain", "denoise30"), loader_workers=(0, 1, 2),
             loader_batch=16, loader_batches=16, tiling_sizes=(126, 240, 256, 512),
             forward_model={}, forward_batches=(1, 16), backward_batches=(8,), gemm_calls=3,
             training=(("tiny", TRAIN_TINY, 8, 8), ("full", {}, 2, 8)))
SMOKE = Sizes(loader_tasks=("sr2",), loader_workers=(0, 2), loader_batch=4, loader_batches=1,
              tiling_sizes=(60,), forward_model=TINY_IPT, forward_batches=(1, 2),
              backward_batches=(2,), gemm_calls=1, training=(("tiny", TRAIN_TINY, 2, 2),),
              threads=1, peak_modes=("official",), fresh_tuned=(True,), saving_model=TRAIN_TINY)
SMOKE_NOTE = ("Smoke run (`--smoke`): minimal sizes, one repetition, one torch thread; its "
              "figures show that the code runs, not how fast it is.")


def bench_device() -> torch.device:
    """CUDA when present, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def synchronize(device: torch.device) -> None:
    """Wait for the device's queued work (no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


def significant(value: float, digits: int = 3) -> str:
    """``value`` to at least ``digits`` significant digits, without an exponent: 325, 24.3, 0.420
    (a positive rate never prints as 0)."""
    if not math.isfinite(value) or value <= 0:
        return f"{value:.0f}"
    return f"{value:.{max(0, digits - 1 - math.floor(math.log10(value)))}f}"


def write_section(doc: str, name: str, body: str) -> None:
    """Replace (or append) the text between the section's markers in the doc."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    text = open(doc).read() if os.path.isfile(doc) and os.path.getsize(doc) else DOC_TITLE
    block = f"{begin}\n{body.strip()}\n{end}"
    if begin in text and end in text:
        text = text[:text.index(begin)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    os.makedirs(os.path.dirname(os.path.abspath(doc)), exist_ok=True)
    with open(doc, "w") as f:
        f.write(text)


def read_section(doc: str, name: str) -> str | None:
    """The text between a section's markers, or None."""
    text = open(doc).read() if os.path.isfile(doc) else ""
    found = re.search(f"<!-- {name}:begin -->(.*?)<!-- {name}:end -->", text, re.DOTALL)
    return found.group(1) if found else None


def machine_line(args: argparse.Namespace) -> str:
    """A section's "Machine:" paragraph, with the smoke run's note under --smoke."""
    return f"Machine: {machine()}." + (f" {SMOKE_NOTE}" if args.smoke else "")


def in_child(call: str) -> str:
    """The last line printed by ``benchmark.<call>`` run in a fresh Python process, with as many
    torch threads as this process has."""
    code = (f"import sys; sys.path.insert(0, {os.path.join(ROOT, 'scripts')!r}); import torch; "
            f"torch.set_num_threads({torch.get_num_threads()}); import benchmark; "
            f"print(benchmark.{call})")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    return done.stdout.strip().splitlines()[-1]


# ----------------------------------------------------------------------------------------
# loader: training pairs per second from a JPEG folder
# ----------------------------------------------------------------------------------------
def write_jpegs(folder: str) -> float:
    """The sample training photos as JPEGs in folder; their mean size in megapixels."""
    pixels = []
    for name, image in sample_photos("train"):
        arr = image.permute(1, 2, 0).numpy()
        Image.fromarray(arr).save(os.path.join(folder, f"{name}.jpg"), quality=JPEG_QUALITY)
        pixels.append(arr.shape[0] * arr.shape[1])
    return statistics.mean(pixels) / 1e6


def loader_rate(folder: str, task: str, workers: int, seed: int, sizes: Sizes) -> float:
    """Pairs per second of a PairStream over the folder, after one untimed batch."""
    stream = PairStream(folder, HEADS, sizes.loader_batch, task_id=HEADS.index(task), seed=seed)
    batches = iter(DataLoader(stream, batch_size=None, num_workers=workers))
    next(batches)
    start = time.perf_counter()
    for _ in range(sizes.loader_batches):
        next(batches)
    elapsed = time.perf_counter() - start
    del batches  # stops the workers
    return sizes.loader_batches * sizes.loader_batch / elapsed


def loader_workers(sizes: Sizes) -> tuple[int, ...]:
    """The worker counts measured: 8 and 16 as well on a GPU machine."""
    return sizes.loader_workers + (CUDA_LOADER_WORKERS if torch.cuda.is_available() else ())


def loader_rates(folder: str, workers: tuple[int, ...], sizes: Sizes,
                 reps: int) -> dict[tuple[str, int], list[float]]:
    """(task, workers) -> pairs/s of each repetition, the repetitions interleaved."""
    rates: dict[tuple[str, int], list[float]] = {}
    for rep in range(reps):
        for task in sizes.loader_tasks:
            for w in workers:
                rates.setdefault((task, w), []).append(loader_rate(folder, task, w, rep, sizes))
    return rates


def loader_section(args: argparse.Namespace) -> str:
    """Data loader pairs/s per task and worker count: the median of interleaved repetitions."""
    workers = loader_workers(args.sizes)
    with tempfile.TemporaryDirectory() as folder:
        megapixels = write_jpegs(folder)
        rates = loader_rates(folder, workers, args.sizes, args.reps)
    return loader_table(args, workers, rates, megapixels)


def loader_table(args: argparse.Namespace, workers: tuple[int, ...],
                 rates: dict[tuple[str, int], list[float]], megapixels: float) -> str:
    """The loader section's Markdown."""
    sizes = args.sizes
    head = "| task | LR | HR | " + " | ".join(f"{w} worker(s)" for w in workers) + " |"
    lines = ["## Data loader (pairs/s)", "",
             machine_line(args), "",
             f"`PairStream` over the 8 scikit-image training photos written as JPEG (quality "
             f"{JPEG_QUALITY}, {megapixels:.2f} megapixels on average, larger than a typical "
             f"ImageNet JPEG of 500x375, 0.19 MP, so decoding costs more here), batch "
             f"{sizes.loader_batch}, one crop per file, augmentation on; "
             f"`DataLoader(batch_size=None, num_workers=W)`. Pairs per second over "
             f"{sizes.loader_batches} batches after a first untimed one, median of {args.reps} "
             "interleaved repetitions. derain uses procedural streaks.", "",
             head, "|" + "---|" * (3 + len(workers))]
    for task in sizes.loader_tasks:
        s = task_scale(task)
        cells = " | ".join(significant(median(rates[(task, w)])) for w in workers)
        lines.append(f"| {task} | 48 | {48 * s} | {cells} |")
    return "\n".join(lines) + "\n"


def loader_figures(doc: str) -> tuple[int, dict[str, float]] | None:
    """(workers, {task: pairs/s}) from the doc's loader table, at the most workers <= cores."""
    body = read_section(doc, "loader")
    if body is None:
        return None
    rows = [line.strip("|").split("|") for line in body.splitlines() if line.startswith("|")]
    head = [cell.strip() for cell in rows[0]]
    counts = {i: int(cell.split()[0]) for i, cell in enumerate(head) if cell.endswith("worker(s)")}
    usable = [i for i, w in counts.items() if w <= utility.usable_cpus()]
    if not usable:
        return None
    column = max(usable, key=counts.get)
    rates = {row[0].strip(): float(row[column]) for row in rows[2:]}
    return counts[column], rates


# ----------------------------------------------------------------------------------------
# tiling: whole-image inference, official and fast against the authors' strip-by-strip procedure
# ----------------------------------------------------------------------------------------
# reference: the authors' strip-by-strip procedure; official-64: official with the CPU's cap on
# tiles per network call lifted to the crop batch, to show what that cap is worth
TILING_MODES = ("reference", "official", "official-64", "fast")
CROP_BATCH = 64
# mode -> (restore's mode, its cpu_tiles_per_call); "reference" runs model.reference_chop
TILERS = {"official": ("official", CPU_TILES_PER_CALL), "official-64": ("official", CROP_BATCH),
          "fast": ("fast", CPU_TILES_PER_CALL)}


@dataclass
class TilingFigures:
    """What the tiling section measures."""

    times: dict = field(default_factory=dict)  # (size, mode) -> seconds of each repetition
    tiles: dict = field(default_factory=dict)  # (size, mode) -> tile evaluations
    peaks: dict = field(default_factory=dict)  # (size, mode) -> peak MiB
    diffs: dict = field(default_factory=dict)  # size -> max abs diff official vs reference


def tiling_modes(device: torch.device) -> list[str]:
    """The modes measured: official-64 only on the CPU, where the cap applies."""
    return [m for m in TILING_MODES if device.type == "cpu" or m != "official-64"]


def tiling_input(size: int, device: torch.device) -> torch.Tensor:
    """The random size x size image the tiling section restores."""
    return torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(size)).mul(255).to(device)


def tiling_model(device: torch.device) -> torch.nn.Module:
    """The x2 IPT the tiling section runs: full size on CUDA, the tiny one on the CPU."""
    torch.manual_seed(0)
    cfg = IPTConfig(scale=[2], num_queries=1, **({} if device.type == "cuda" else TINY_IPT))
    return IPT(cfg).to(device).eval()


def _proc_status_kib(name: str) -> int:
    """A memory figure (KiB) of this process from /proc/self/status (Linux)."""
    with open("/proc/self/status", encoding="ascii") as f:
        return int(re.search(rf"^{name}:\s+(\d+)", f.read(), re.M).group(1))


def child_tiling_memory(size: int, mode: str) -> str:
    """In a fresh CPU process: MiB by which one restoration raises the resident set at its peak
    (after a one-tile warm-up, so the libraries' one-time buffers are not counted)."""
    model = tiling_model(torch.device("cpu"))
    x = tiling_input(size, torch.device("cpu"))
    with torch.no_grad():
        model(x[..., :model.patch_size, :model.patch_size], 0)
    with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
        f.write("5")  # resets the peak (VmHWM) to the current resident set
    before = _proc_status_kib("VmRSS")
    run_tiling(mode, model, x)
    return repr((_proc_status_kib("VmHWM") - before) / 1024)


def run_tiling(mode: str, model: torch.nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, int]:
    """(output, tile evaluations) of one whole-image restoration."""
    count = [0]
    hook = model.register_forward_pre_hook(lambda m, inp: count.__setitem__(0, count[0] + inp[0].shape[0]))
    try:
        with torch.no_grad():
            if mode == "reference":
                out = reference_chop(lambda t: model(t, 0), x, 2, batch=CROP_BATCH)
            else:
                tiler, cap = TILERS[mode]
                out = restore(model, x, 0, tiler, crop_batch_size=CROP_BATCH, cpu_tiles_per_call=cap)
    finally:
        hook.remove()
    return out, count[0]


def time_tiling(mode: str, model: torch.nn.Module, x: torch.Tensor, size: int,
                figures: TilingFigures) -> torch.Tensor:
    """One timed restoration of x, its seconds, tiles (and CUDA peak) recorded; its output."""
    key, device = (size, mode), x.device
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
    start = time.perf_counter()
    out, figures.tiles[key] = run_tiling(mode, model, x)
    synchronize(device)
    if device.type == "cuda":
        figures.peaks[key] = torch.cuda.max_memory_allocated() / 2 ** 20
    figures.times.setdefault(key, []).append(time.perf_counter() - start)
    return out


def measure_tiling(args: argparse.Namespace, device: torch.device) -> TilingFigures:
    """Every mode at every size, interleaved repetitions; on Linux CPUs the peaks in children."""
    model, modes, figures = tiling_model(device), tiling_modes(device), TilingFigures()
    for size in args.sizes.tiling_sizes:
        x = tiling_input(size, device)
        for _ in range(args.reps):
            outs = {mode: time_tiling(mode, model, x, size, figures) for mode in modes}
            figures.diffs[size] = (outs["official"] - outs["reference"]).abs().max().item()
        if device.type == "cpu" and os.access("/proc/self/clear_refs", os.W_OK):  # Linux
            peak_modes = [m for m in modes if args.sizes.peak_modes is None or
                          m in args.sizes.peak_modes]
            figures.peaks.update({(size, m): float(in_child(f"child_tiling_memory({size}, {m!r})"))
                                  for m in peak_modes})
    return figures


def tiling_section(args: argparse.Namespace) -> str:
    """Seconds, tile evaluations and peak memory of whole-image x2 inference per tiler."""
    device = bench_device()
    return tiling_table(args, device, measure_tiling(args, device))


def tiling_intro(args: argparse.Namespace, device: torch.device) -> str:
    """The paragraph above the tiling table."""
    kind = "full-size x2 IPT" if device.type == "cuda" else "tiny x2 IPT (n_feats 16, 4 heads, 1 layer)"
    cap = (f"On the CPU `official` and `fast` call the network on at most {CPU_TILES_PER_CALL} "
           "tiles at a time (`restore`'s `cpu_tiles_per_call`, by default "
           "`model.tiling.CPU_TILES_PER_CALL`: larger calls allocate blocks that glibc maps afresh "
           f"on every call); `official-64` passes {CROP_BATCH}, the crop batch, to show what that "
           "cap is worth. " if device.type == "cpu" else "")
    return (f"{kind}, random weights, crop batch {CROP_BATCH}; seconds are medians of {args.reps} "
            "interleaved repetitions; `reference` is the authors' strip-by-strip procedure "
            f"(model/reference_chop.py, {CROP_BATCH} tiles per call). {cap}Peak memory: on CUDA "
            "`max_memory_allocated`; on the CPU how far one restoration in a fresh process "
            "raises its resident set at the peak (`VmHWM` reset through `/proc/self/clear_refs`, "
            "after a one-tile warm-up)" + (f", measured for {', '.join(args.sizes.peak_modes)} only"
                                           if args.sizes.peak_modes else "") + ".")


def tiling_table(args: argparse.Namespace, device: torch.device, figures: TilingFigures) -> str:
    """The tiling section's Markdown."""
    lines = [f"## Whole-image inference ({device.type})", "", machine_line(args), "",
             tiling_intro(args, device), "",
             "| size | mode | seconds | tile evaluations | speed-up vs reference | peak MiB | "
             "max abs diff official vs reference |", "|---|---|---|---|---|---|---|"]
    for size in args.sizes.tiling_sizes:
        ref = median(figures.times[(size, "reference")])
        for mode in tiling_modes(device):
            sec = median(figures.times[(size, mode)])
            peak = f"{figures.peaks[(size, mode)]:.1f}" if (size, mode) in figures.peaks else "-"
            diff = f"{figures.diffs[size]:.2e}" if mode == "official" else ""
            lines.append(f"| {size}x{size} | {mode} | {sec:.3f} | {figures.tiles[(size, mode)]} | "
                         f"{ref / sec:.2f}x | {peak} | {diff} |")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------
# forward: the x2 model's forward and forward+backward against a GEMM peak
# ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Pass:
    """One timed configuration of the forward section."""

    backward: bool
    dtype: str  # "fp32" or "bf16" (autocast)
    batch: int

    @property
    def name(self) -> str:
        return "forward+backward" if self.backward else "forward"


AUTOCAST = {"fp32": None, "bf16": torch.bfloat16}


@dataclass
class ForwardFigures:
    """What the forward section measures."""

    cfg: IPTConfig
    device: torch.device
    flops: dict[bool, int]  # backward or not -> FLOPs of one tile
    shape: tuple[int, int, int]  # (M, K, N) of the GEMM peak's matmul
    runs: list[Pass]
    times: dict  # Pass, or dtype for the GEMM -> seconds of each repetition
    peak: dict[str, float]  # dtype -> GEMM FLOP/s
    fresh: dict[bool, tuple[float, float]]  # malloc tuned or not -> (seconds, faults) of a child


def forward_config(sizes: Sizes) -> IPTConfig:
    """The x2 IPTConfig of the forward section (full size unless the sizes say otherwise)."""
    return IPTConfig(scale=[2], **sizes.forward_model)


def largest_gemm(cfg: IPTConfig, batch: int) -> tuple[int, int, int]:
    """(M, K, N) of the model's largest matmul: a feed-forward Linear of the body at ``batch``.

    Every Transformer block and the mlp_head run tokens x dim @ dim x 4 dim (and back); the
    convolutions and attention products are smaller.
    """
    tokens = batch * (cfg.patch_size // cfg.patch_dim) ** 2
    dim = cfg.n_feats * cfg.patch_dim ** 2
    return tokens, dim, MLP_RATIO * dim


def gemm_seconds(operands: tuple[torch.Tensor, torch.Tensor, torch.Tensor], calls: int) -> float:
    """Seconds per torch.mm(a, b, out=c): the output is preallocated, so only arithmetic counts."""
    a, b, c = operands
    synchronize(a.device)
    start = time.perf_counter()
    for _ in range(calls):
        torch.mm(a, b, out=c)
    synchronize(a.device)
    return (time.perf_counter() - start) / calls


def gemm_operands(shape: tuple[int, int, int], dtype: torch.dtype,
                  device: torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random a (M, K), b (K, N) and an output c (M, N)."""
    m, k, n = shape
    a, b = torch.randn(m, k, dtype=dtype, device=device), torch.randn(k, n, dtype=dtype, device=device)
    c = torch.empty(m, n, dtype=dtype, device=device)
    torch.mm(a, b, out=c)  # warm-up
    return a, b, c


def count_flops(model: torch.nn.Module, x: torch.Tensor, backward: bool) -> int:
    """FLOPs that FlopCounterMode counts for one forward (and backward) of x.

    It counts matmuls, convolutions and fused attention, 2 per multiply-add; softmax, LayerNorm,
    ReLU and additions are not counted. (Run with autograd on: its module tracker needs it.)
    """
    model.train(backward)
    with FlopCounterMode(display=False) as counter:
        out = model(x, 0)
        if backward:
            out.float().mean().backward()
    model.zero_grad(set_to_none=True)
    return counter.get_total_flops()


def time_pass(model: torch.nn.Module, x: torch.Tensor, run: Pass) -> float:
    """Seconds of one forward (no_grad) or forward+backward of x, under autocast for bf16."""
    dtype = AUTOCAST[run.dtype]
    model.train(run.backward)
    model.zero_grad(set_to_none=True)
    synchronize(x.device)
    start = time.perf_counter()
    with torch.autocast(x.device.type, dtype=dtype, enabled=dtype is not None), \
            torch.set_grad_enabled(run.backward):
        out = model(x, 0)
        if run.backward:
            out.float().mean().backward()
    synchronize(x.device)
    return time.perf_counter() - start


def forward_passes(sizes: Sizes, device: torch.device) -> list[Pass]:
    """The timed configurations: fp32 (and bf16 on CUDA) forward and forward+backward."""
    cuda = device.type == "cuda"
    backward = sizes.backward_batches + ((CUDA_BACKWARD_BATCH,) if cuda else ())
    return [Pass(bwd, dtype, b) for dtype in (("fp32", "bf16") if cuda else ("fp32",))
            for bwd, batches in ((False, sizes.forward_batches), (True, backward)) for b in batches]


def pass_dtypes(runs: list[Pass]) -> list[str]:
    """The dtypes of the passes, in AUTOCAST's order."""
    return sorted({r.dtype for r in runs}, key=list(AUTOCAST).index)


def fresh_forward(batch: int, reps: int, smoke: bool, tuned: bool) -> tuple[float, float]:
    """(median seconds, minor page faults per call) of the fp32 CPU forward at ``batch`` in a
    fresh process that runs nothing else, as an evaluation does; with ``tuned`` its glibc malloc
    never maps blocks of their own (M_MMAP_MAX 0) nor trims the heap (M_TRIM_THRESHOLD 1 GiB)."""
    seconds, faults = in_child(f"child_forward({batch}, {reps}, {smoke}, {tuned})").split()
    return float(seconds), float(faults)


def child_forward(batch: int, reps: int, smoke: bool, tuned: bool) -> str:
    """fresh_forward's child: set the malloc options if asked, time the forward, count faults."""
    import resource  # Unix only; the parent starts this child only on glibc systems

    if tuned and not utility.keep_freed_memory():
        raise RuntimeError("glibc mallopt is not available here")
    torch.manual_seed(0)
    model = IPT(forward_config(SMOKE if smoke else FULL))
    x = torch.rand(batch, 3, model.patch_size, model.patch_size) * 255
    run = Pass(False, "fp32", batch)
    time_pass(model, x, run)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    seconds = [time_pass(model, x, run) for _ in range(reps)]
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    return f"{median(seconds)!r} {faults / reps}"


def time_forward(model: torch.nn.Module, runs: list[Pass], shape: tuple[int, int, int],
                 gemm_calls: int, reps: int) -> dict:
    """Seconds of each repetition of every pass (by Pass) and of the GEMM (by dtype), after one
    warm-up of each pass; the repetitions interleaved."""
    device, patch = next(model.parameters()).device, model.patch_size
    dtypes = pass_dtypes(runs)
    gemms = {d: gemm_operands(shape, AUTOCAST[d] or torch.float32, device) for d in dtypes}
    inputs = {b: torch.rand(b, 3, patch, patch, device=device) * 255 for b in {r.batch for r in runs}}
    for run in runs:  # warm-up
        time_pass(model, inputs[run.batch], run)
    times: dict[object, list[float]] = {}
    for _ in range(reps):
        for d in dtypes:
            times.setdefault(d, []).append(gemm_seconds(gemms[d], gemm_calls))
        for run in runs:
            times.setdefault(run, []).append(time_pass(model, inputs[run.batch], run))
    return times


def forward_section(args: argparse.Namespace) -> str:
    """Achieved FLOP/s of the x2 model's forward and forward+backward, and its share of a GEMM."""
    sizes, device = args.sizes, bench_device()
    cfg = forward_config(sizes)
    torch.manual_seed(0)
    model = IPT(cfg).to(device)
    one = torch.rand(1, 3, cfg.patch_size, cfg.patch_size, device=device) * 255
    flops = {bwd: count_flops(model, one, bwd) for bwd in (False, True)}  # per 48x48 tile
    shape = largest_gemm(cfg, max(sizes.forward_batches))
    runs = forward_passes(sizes, device)
    times = time_forward(model, runs, shape, sizes.gemm_calls, args.reps)
    peak = {d: 2 * shape[0] * shape[1] * shape[2] / median(times[d]) for d in pass_dtypes(runs)}
    fresh = {}  # glibc malloc tuned or not -> (seconds, faults)
    if device.type == "cpu" and platform.libc_ver()[0] == "glibc":
        fresh = {t: fresh_forward(max(sizes.forward_batches), args.reps, args.smoke, t)
                 for t in sizes.fresh_tuned}
    return forward_table(args, ForwardFigures(cfg, device, flops, shape, runs, times, peak, fresh))


def forward_intro(args: argparse.Namespace, f: ForwardFigures) -> list[str]:
    """The forward section's heading and its paragraphs on the model and on the GEMM peak."""
    cfg, size = f.cfg, "full-size" if not args.sizes.forward_model else "tiny (smoke)"
    m, k, n = f.shape
    return [f"## Model forward and backward ({f.device.type})", "", machine_line(args), "",
            f"{size} x2 IPT (n_feats {cfg.n_feats}, {cfg.num_heads} heads, {cfg.num_layers} "
            f"layer(s), {cfg.patch_size}x{cfg.patch_size} input, attention `{cfg.attention}`: "
            f"{'sdpa' if f.device.type == 'cuda' else 'the authors arithmetic'} here), random "
            "weights. "
            f"FLOPs counted by `torch.utils.flop_counter.FlopCounterMode` on one tile: "
            f"{f.flops[False] / 1e9:.2f} GFLOPs forward, {f.flops[True] / 1e9:.2f} GFLOPs forward+"
            f"backward ({f.flops[True] / f.flops[False]:.2f}x); it counts matmuls, convolutions "
            "and fused attention at 2 FLOPs per multiply-add, not softmax, LayerNorm, ReLU or "
            "additions. Forward runs under `no_grad` in eval mode; forward+backward in train "
            "mode with loss = mean of the output; bf16 is `torch.autocast`.", "",
            f"GEMM peak: `torch.mm` of the model's largest matmul, the body's feed-forward "
            f"Linear at batch {max(args.sizes.forward_batches)} ({m} tokens x {k} @ {k} x {n}), "
            f"into a preallocated output, {args.sizes.gemm_calls} call(s) per repetition: "
            + ", ".join(f"{d} {f.peak[d] / 1e9:.0f} GFLOP/s" for d in f.peak)
            + f". Seconds are medians of {args.reps} interleaved repetitions after one warm-up."]


def forward_row(f: ForwardFigures, label: str, dtype: str, batch: int, sec: float,
                backward: bool) -> str:
    """One row of the forward table."""
    work = f.flops[backward] * batch
    return (f"| {label} | {dtype} | {batch} | {sec:.3f} | {work / 1e9:.1f} | "
            f"{work / sec / 1e9:.1f} | {100 * work / sec / f.peak[dtype]:.0f}% |")


def fresh_notes(fresh: dict[bool, tuple[float, float]]) -> list[str]:
    """The footnotes of the fresh-process rows (both, or only the tuned one in a smoke run)."""
    child = ("In a child process that runs only this forward (a warm-up, then the repetitions), "
             "as an evaluation does")
    notes = []
    if False in fresh:
        against = f", against {fresh[True][1]:,.0f} in the row below" if True in fresh else ""
        notes += ["", f"\\* {child}: {fresh[False][1]:,.0f} minor page faults per call "
                  f"(`getrusage`){against}. glibc "
                  "maps large blocks on their own and unmaps them when freed, so such a process "
                  "page-faults its activations in afresh on every call (the attention scores of "
                  "16 full-size tiles take 50 MiB). The rows above run after the warm-up's "
                  "forward+backward, after which glibc serves these blocks from its heap (its "
                  "dynamic mmap and trim thresholds have risen)."]
    if True in fresh:
        first = ("The same" if False in fresh else
                 f"{child}, {fresh[True][1]:,.0f} minor page faults per call (`getrusage`),")
        notes += ["", f"\\*\\* {first} with `mallopt(M_MMAP_MAX, 0)` and "
                  "`mallopt(M_TRIM_THRESHOLD, 1 GiB)` called first (`utility.keep_freed_memory`, "
                  "which `main.py` calls when it runs on the CPU): no block is mapped on its own "
                  "and the heap keeps up to 1 GiB of freed memory. The allocator changes no "
                  "arithmetic."]
    return notes


def forward_table(args: argparse.Namespace, f: ForwardFigures) -> str:
    """The forward section's Markdown."""
    lines = forward_intro(args, f) + [
        "", "| pass | dtype | batch | seconds | GFLOP per call | achieved GFLOP/s | "
        "% of GEMM peak |", "|---|---|---|---|---|---|---|"]
    lines += [forward_row(f, run.name, run.dtype, run.batch, median(f.times[run]), run.backward)
              for run in f.runs]
    batch = max(args.sizes.forward_batches)
    for tuned, (sec, _) in f.fresh.items():
        label = "forward, fresh process, malloc tuned**" if tuned else "forward, fresh process*"
        lines.append(forward_row(f, label, "fp32", batch, sec, False))
    if f.fresh:
        lines += fresh_notes(f.fresh)
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------
# training: steps per second of the project's Trainer, and the loader against it
# ----------------------------------------------------------------------------------------
def training_options(ipt_options: dict, batch: int, amp: str, save: str) -> argparse.Namespace:
    """The command-line options of a six-task IPT training run with these IPT options."""
    argv = ["--tasks", "+".join(HEADS), "--batch_size", str(batch), "--patch_size", "48",
            "--con_loss", "--amp", amp, "--save", save, "--reset"]
    for key, value in ipt_options.items():
        argv += [f"--{key}", str(value)]
    return parse_args(argv)


def make_trainer(args: argparse.Namespace, device: torch.device) -> Trainer:
    """A Trainer over a fresh (seeded) model built from the options, with no data of its own:
    the one place that builds the model and calls the Trainer's constructor."""
    torch.manual_seed(0)
    s = settings(args)
    net = build_model(s.model).to(device)
    return Trainer(s.train, net, lambda step: iter(()), None, 10 ** 9, 1)


def task_batches(batch: int, patch: int, device: torch.device) -> list[dict]:
    """One random batch per head, in head order, as the loader hands them over."""
    out = []
    for task_id, task in enumerate(HEADS):
        s = task_scale(task)
        out.append({"lr": torch.rand(batch, 3, patch, patch, device=device) * 255,
                    "hr": torch.rand(batch, 3, patch * s, patch * s, device=device) * 255,
                    "task_id": task_id, "step": task_id})
    return out


@dataclass
class TrainRun:
    """One timed training configuration: its Trainer and its six batches."""

    name: str
    options: dict
    batch: int
    amp: str
    trainer: Trainer
    batches: list

    def seconds_per_step(self) -> float:
        """Seconds per train_step over one step of each head."""
        device = self.trainer.device
        synchronize(device)
        start = time.perf_counter()
        for batch in self.batches:
            if self.trainer.train_step(batch) is None:
                raise RuntimeError("a benchmark training step was skipped (non-finite loss)")
        synchronize(device)
        return (time.perf_counter() - start) / len(self.batches)

    def describe(self) -> str:
        """The configuration's name and options, for the table."""
        given = ", ".join(f"{k} {v}" for k, v in self.options.items())
        return f"{self.name} ({given or 'defaults: n_feats 64, 12 heads, 12 layers'})"


def training_runs(sizes: Sizes, device: torch.device, save: str) -> list[TrainRun]:
    """Every training configuration (fp32, and bf16 on CUDA), each warmed up by one round."""
    cuda = device.type == "cuda"
    runs = []
    for name, options, cpu_batch, gpu_batch in sizes.training:
        batch = gpu_batch if cuda else cpu_batch
        for amp in ("none", "bf16") if cuda else ("none",):
            args = training_options(options, batch, amp, os.path.join(save, f"{name}-{amp}"))
            runs.append(TrainRun(name, options, batch, amp, make_trainer(args, device),
                                 task_batches(batch, 48, device)))
            runs[-1].seconds_per_step()  # warm-up
    return runs


def training_section(args: argparse.Namespace) -> str:
    """Training steps/s of the tiny and the full configuration through Trainer.train_step."""
    device = bench_device()
    times: dict[int, list[float]] = {}
    with tempfile.TemporaryDirectory() as save:
        runs = training_runs(args.sizes, device, save)
        for _ in range(args.reps):  # interleaved repetitions
            for i, run in enumerate(runs):
                times.setdefault(i, []).append(run.seconds_per_step())
    return training_table(args, device, runs, [median(times[i]) for i in range(len(runs))])


def training_table(args: argparse.Namespace, device: torch.device, runs: list[TrainRun],
                   seconds: list[float]) -> str:
    """The training section's Markdown: a row per run (median seconds per step), and the ratio."""
    lines = [f"## Training ({device.type})", "", machine_line(args), "",
             "`Trainer.train_step` (trainer.py) of a six-head IPT (sr2, sr3, sr4, derain, "
             "denoise30, denoise50), 48x48 inputs, L1 + 0.1 x contrastive loss, Adam; one step "
             "per head in turn on random in-memory batches (no loader), after one warm-up round; "
             f"medians of {args.reps} interleaved repetitions.", "",
             "| configuration | batch | amp | s/step | steps/s | pairs/s consumed |",
             "|---|---|---|---|---|---|"]
    for run, sec in zip(runs, seconds, strict=False):
        lines.append(f"| {run.describe()} | {run.batch} | {run.amp} | {sec:.3f} | {1 / sec:.2f} | "
                     f"{run.batch / sec:.1f} |")
    tiny = [sec / r.batch for r, sec in zip(runs, seconds, strict=False)
            if r.name == "tiny" and r.amp == "none"]
    lines += ["", loader_ratio(args.doc, 1 / tiny[0] if tiny else None)]
    return "\n".join(lines) + "\n"


def loader_ratio(doc: str, consumed: float | None) -> str:
    """A sentence: the loader's pairs/s with all cores over what tiny training consumes."""
    figures = loader_figures(doc)
    if figures is None or consumed is None:
        return "Loader ratio: no loader figures in the doc (run the loader section)."
    workers, rates = figures
    slowest = min(rates, key=rates.get)
    return (f"Loader ratio: with {workers} worker(s) (this machine's {utility.usable_cpus()} core(s)) the "
            f"loader section's slowest task, {slowest}, delivers {significant(rates[slowest])} pairs/s; "
            f"the tiny training (fp32) consumes {consumed:.1f} pairs/s: ratio "
            f"{rates[slowest] / consumed:.1f}x (the loader runs beside the training in practice, "
            "on the same cores).")


# ----------------------------------------------------------------------------------------
# saving: what writing a checkpoint costs the training loop
# ----------------------------------------------------------------------------------------
SAVE_BATCH = 1  # the training steps timed beside the saves: batch 1 of 48x48 sr2 inputs
SAVE_PHASES = ("torch.save", "fsync", "rename")


def fill_moments(optimizer: torch.optim.Optimizer) -> None:
    """Optimiser state for every weight, as after a step on each head (a step on one head
    leaves the others' moments unmade): a zero-gradient step of the weights that have none."""
    optimizer.zero_grad(set_to_none=True)
    for group in optimizer.param_groups:
        for param in group["params"]:
            if not optimizer.state.get(param):
                param.grad = torch.zeros_like(param)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)


def timed_atomic_save(obj: object, path: str) -> dict[str, float]:
    """Seconds of each phase of writing ``obj`` as ``utility.atomic_save`` does (a temporary,
    torch.save, rename), with an fsync of the temporary before the rename, which atomic_save
    does not do: what making the file durable would add."""
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp",
                               dir=os.path.dirname(path))
    os.close(fd)
    times = {}
    start = time.perf_counter()
    torch.save(obj, tmp)
    times["torch.save"] = time.perf_counter() - start
    start = time.perf_counter()
    with open(tmp, "rb+") as f:
        os.fsync(f.fileno())
    times["fsync"] = time.perf_counter() - start
    start = time.perf_counter()
    os.replace(tmp, path)
    times["rename"] = time.perf_counter() - start
    return times


@dataclass
class SavingFigures:
    """What the saving section measures: seconds of each repetition by row, and sizes."""

    parameters: int = 0
    sizes: dict = field(default_factory=dict)  # file -> bytes
    times: dict = field(default_factory=dict)  # row -> seconds of each repetition
    steps_during: list = field(default_factory=list)  # training steps taken while a save was written

    def add(self, row: str, seconds: float) -> None:
        self.times.setdefault(row, []).append(seconds)


def timed(call: Callable[[], object], device: torch.device) -> tuple[float, object]:
    """(seconds, result) of one call, the device's queued work included."""
    synchronize(device)
    start = time.perf_counter()
    result = call()
    synchronize(device)
    return time.perf_counter() - start, result


def saving_rep(runner: Trainer, batch: dict, folder: str, figures: SavingFigures) -> None:
    """One repetition of every saving measurement."""
    device = runner.device
    figures.add("step", timed(lambda: runner.train_step(batch), device)[0])
    seconds, snapshot = timed(lambda: runner.snapshot(runner.model.state_dict()), device)
    figures.add("snapshot", seconds)
    split = os.path.join(folder, "split")
    os.makedirs(split, exist_ok=True)
    for name, obj in (("model_latest.pt", snapshot.state["model"]), ("state.pt", snapshot.state)):
        path = os.path.join(split, name)
        for phase, sec in timed_atomic_save(obj, path).items():
            figures.add(f"{name} {phase}", sec)
        figures.sizes[name] = os.path.getsize(path)
        os.remove(path)
    figures.add("save", timed(runner.save, device)[0])
    figures.add("background", timed(lambda: runner.save(background=True), device)[0])
    start, steps = time.perf_counter(), 0
    while steps == 0 or runner.saver.busy:  # the first step begins while the files are written
        runner.train_step(batch)
        steps += 1
    synchronize(device)
    runner.saver.wait()
    figures.add("during", (time.perf_counter() - start) / max(steps, 1))
    figures.steps_during.append(steps)


def saving_section(args: argparse.Namespace) -> str:
    """Seconds a checkpoint of the six-head model takes: its copy, its files, and the training
    loop's wait for it before and after the writer thread."""
    device, figures = bench_device(), SavingFigures()
    if device.type == "cpu":  # as main.py does: a copy reuses the heap memory the last one freed
        utility.keep_freed_memory()
    with tempfile.TemporaryDirectory() as folder:
        options = training_options(args.sizes.saving_model, SAVE_BATCH, "none", folder)
        runner = make_trainer(options, device)
        figures.parameters = sum(p.numel() for p in runner.model.parameters())
        batch = task_batches(SAVE_BATCH, 48, device)[0]
        runner.train_step(batch)  # warm-up
        fill_moments(runner.optimizer)
        for _ in range(args.reps):
            saving_rep(runner, batch, folder, figures)
    return saving_table(args, device, figures)


def saving_table(args: argparse.Namespace, device: torch.device, f: SavingFigures) -> str:
    """The saving section's Markdown."""
    sec = {row: median(times) for row, times in f.times.items()}
    mb = {name: size / 1e6 for name, size in f.sizes.items()}
    size = "full-size" if not args.sizes.saving_model else "tiny (smoke)"
    lines = [f"## Saving a checkpoint ({device.type})", "", machine_line(args), "",
             f"`Trainer.save` of the {size} six-head IPT ({f.parameters / 1e6:.1f} M parameters), "
             "Adam moments filled for every weight, into a temporary folder on this machine's "
             f"disk: model/model_latest.pt {mb['model_latest.pt']:.0f} MB, state.pt "
             f"{mb['state.pt']:.0f} MB (weights, two Adam moments, the rest). A save copies the "
             "state to the CPU (pinned memory from CUDA): one more copy of the state in memory, "
             "allocated by the first save of a run and overwritten by the next ones; then a "
             "thread writes model_latest.pt, state.pt and training.json, each to a temporary "
             "renamed over the file. Periodic saves return once the copy is made, the final one "
             "once the files are written. While the thread writes, training steps share the CPU "
             "with it: where the step's threads occupy every core, as on a CPU-only machine, "
             "those steps are slower. On the CPU glibc malloc is tuned as `main.py` tunes it "
             "(`utility.keep_freed_memory`). "
             "The file rows write the copy as `utility.atomic_save` does, plus an fsync before "
             "the rename, which atomic_save does not do (the kernel writes the pages back "
             f"later): what durability would add. Seconds are medians of {args.reps} "
             "repetitions.", "",
             "| what | seconds |", "|---|---|",
             f"| copy of the state to the CPU (`Trainer.snapshot`) | {sec['snapshot']:.3f} |"]
    for name in ("model_latest.pt", "state.pt"):
        lines += [f"| {name}: {phase} | {sec[f'{name} {phase}']:.3f} |" for phase in SAVE_PHASES]
    steps = median(f.steps_during)
    lines += [f"| `save()`: copy, files written, as every save waited before the writer thread "
              f"(now the final save only) | {sec['save']:.3f} |",
              f"| `save(background=True)`: the wait of a periodic save now | {sec['background']:.3f} |",
              f"| a training step (batch {SAVE_BATCH}, 48x48, sr2), alone | {sec['step']:.3f} |",
              f"| a training step while a save is written ({steps:g} step(s) meanwhile) | "
              f"{sec['during']:.3f} |"]
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------
# bf16: --precision bf16 against single, whole-image restoration and a whole --test_only run
# ----------------------------------------------------------------------------------------
BF16_MODES = ("official", "fast")
PRECISIONS = ("single", "bf16")
BF16_SIZE = {False: 126, True: 64}  # --smoke or not -> side of the image restore() is timed on
BF16_MODEL = {False: {}, True: TINY_IPT}  # --smoke or not -> IPT options: full size, or tiny
SMOKE_DEMO_SIDE = 60  # --smoke: the --test_only run restores one Demo image of this side
TEST_ONLY_TIMEOUT_S = 3600  # one --test_only child (the full-size model on the two Sample photos)


@dataclass
class Bf16Figures:
    """What the bf16 section measures."""

    times: dict = field(default_factory=dict)  # (mode, precision) -> seconds of each repetition
    tiles: dict = field(default_factory=dict)  # (mode, precision) -> tile evaluations
    diffs: dict = field(default_factory=dict)  # mode -> max |bf16 - single| of the outputs
    runs: dict = field(default_factory=dict)  # precision -> seconds of each whole --test_only run


def bf16_model(smoke: bool, device: torch.device) -> torch.nn.Module:
    """The x2 IPT of the bf16 section, random weights: full size, or tiny for --smoke."""
    torch.manual_seed(0)
    return IPT(IPTConfig(scale=[2], num_queries=1, **BF16_MODEL[smoke])).to(device).eval()


def timed_restore(model: torch.nn.Module, x: torch.Tensor, mode: str,
                  precision: str) -> tuple[float, torch.Tensor, int]:
    """(seconds, output, tile evaluations) of one restore() of x at this precision."""
    count = [0]
    hook = model.register_forward_pre_hook(lambda m, inp: count.__setitem__(0, count[0] + inp[0].shape[0]))
    try:
        synchronize(x.device)
        start = time.perf_counter()
        out = restore(model, x, 0, mode, crop_batch_size=CROP_BATCH, precision=precision)
        synchronize(x.device)
    finally:
        hook.remove()
    return time.perf_counter() - start, out, count[0]


def test_only_argv(precision: str, save: str, demo: str | None, smoke: bool,
                   device: torch.device) -> list[str]:
    """main.py's command line of the timed --test_only run: the Sample photos (sr2, scored), or
    with --smoke one small Demo image, fast tiling, the torch threads of this process."""
    argv = [sys.executable, os.path.join(ROOT, "main.py"), "--test_only", "--scale", "2",
            "--precision", precision, "--chop", "fast", "--save", save,
            "--threads", str(torch.get_num_threads())]
    argv += ["--data_test", "Demo", "--dir_demo", demo] if demo else ["--data_test", "Sample"]
    for key, value in BF16_MODEL[smoke].items():
        argv += [f"--{key}", str(value)]
    return argv + (["--cpu"] if device.type == "cpu" else [])


def test_only_seconds(argv: list[str]) -> float:
    """Wall-clock seconds of one main.py run in a child process (its start-up included)."""
    start = time.perf_counter()
    done = subprocess.run(argv, capture_output=True, text=True, timeout=TEST_ONLY_TIMEOUT_S)
    seconds = time.perf_counter() - start
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines() or ["no output"]
        raise RuntimeError(f"main.py --test_only failed (exit {done.returncode}): {lines[-1]}")
    return seconds


def measure_bf16(args: argparse.Namespace, device: torch.device, folder: str) -> Bf16Figures:
    """restore() per tiling mode and precision, then whole --test_only runs, interleaved."""
    model, figures = bf16_model(args.smoke, device), Bf16Figures()
    size = BF16_SIZE[args.smoke]
    x = torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(size)).mul(255).to(device)
    demo = None
    if args.smoke:
        demo = os.path.join(folder, "demo")
        os.makedirs(demo)
        Image.fromarray(x[0, :, :SMOKE_DEMO_SIDE, :SMOKE_DEMO_SIDE].byte().permute(1, 2, 0)
                        .cpu().numpy()).save(os.path.join(demo, "image.png"))
    for mode in BF16_MODES:  # warm-up, and the outputs compared
        outs = {p: timed_restore(model, x, mode, p)[1] for p in PRECISIONS}
        figures.diffs[mode] = (outs["bf16"] - outs["single"]).abs().max().item()
    for rep in range(args.reps):
        for mode in BF16_MODES:
            for p in PRECISIONS:
                sec, _, figures.tiles[(mode, p)] = timed_restore(model, x, mode, p)
                figures.times.setdefault((mode, p), []).append(sec)
        for p in PRECISIONS:
            argv = test_only_argv(p, os.path.join(folder, f"run-{p}-{rep}"), demo, args.smoke, device)
            figures.runs.setdefault(p, []).append(test_only_seconds(argv))
    return figures


def bf16_section(args: argparse.Namespace) -> str:
    """Seconds of restore() per tiling mode and of a whole --test_only run, single and bf16."""
    device = bench_device()
    with tempfile.TemporaryDirectory(prefix="bench-bf16-") as folder:
        return bf16_table(args, device, measure_bf16(args, device, folder))


def bf16_support(device: torch.device) -> str:
    """Whether bf16 arithmetic is native on ``device``, in words."""
    from evaluation import cpu_flags, emulated_bf16
    why = emulated_bf16(device)
    if why:
        return f"bf16 is emulated here: {why}"
    if device.type == "cuda":
        return "bf16 is native on this GPU"
    if cpu_flags() is None:
        return "whether this CPU has native bf16 is unknown (no /proc/cpuinfo)"
    return (f"bf16 is native on this CPU (avx512_bf16 or amx_bf16 in /proc/cpuinfo; torch's CPU "
            f"capability {torch.backends.cpu.get_cpu_capability()})")


def bf16_intro(args: argparse.Namespace, device: torch.device) -> str:
    """The paragraph above the bf16 table."""
    cfg, size = IPTConfig(scale=[2], **BF16_MODEL[args.smoke]), BF16_SIZE[args.smoke]
    kind = "tiny (smoke)" if args.smoke else "full-size"
    run = (f"one {SMOKE_DEMO_SIDE}x{SMOKE_DEMO_SIDE} Demo image" if args.smoke else
           "the two Sample photos (sr2, scored: bicubic baseline, PSNR and SSIM)")
    return (f"{kind} x2 IPT (n_feats {cfg.n_feats}, {cfg.num_heads} heads, {cfg.num_layers} "
            f"layer(s)), random weights, {torch.get_num_threads()} torch thread(s). `restore()` "
            f"of one {size}x{size} image, crop batch {CROP_BATCH}; `--precision bf16` runs the "
            "network's forward under `torch.autocast` (fp32 weights) and blends in fp32. "
            f"{bf16_support(device)}. The whole run: `main.py --test_only --chop fast` "
            f"on {run} in a child process, its start-up (about 2.5 s of imports) included. "
            f"Seconds are medians of {args.reps} interleaved repetitions after one warm-up of "
            "each restoration. Max abs diff: of the unquantised outputs, bf16 against single, "
            "in grey levels (random weights; what bf16 does to the PSNR of trained weights is "
            "in the table below this section).")


def bf16_table(args: argparse.Namespace, device: torch.device, figures: Bf16Figures) -> str:
    """The bf16 section's Markdown."""
    lines = [f"## bf16 inference ({device.type})", "", machine_line(args), "",
             bf16_intro(args, device), "",
             "| what | tiling | single s | bf16 s | speed-up | tile evaluations | "
             "max abs diff |", "|---|---|---|---|---|---|---|"]
    for mode in BF16_MODES:
        single, bf16 = (median(figures.times[(mode, p)]) for p in PRECISIONS)
        tiles = figures.tiles[(mode, "single")]
        if figures.tiles[(mode, "bf16")] != tiles:  # the same tiles in both precisions
            raise RuntimeError(f"{mode}: {figures.tiles[(mode, 'bf16')]} tiles in bf16, {tiles} in single")
        lines.append(f"| `restore()` | {mode} | {single:.3f} | {bf16:.3f} | {single / bf16:.2f}x | "
                     f"{tiles} | {figures.diffs[mode]:.2f} |")
    single, bf16 = (median(figures.runs[p]) for p in PRECISIONS)
    lines.append(f"| whole `--test_only` run | fast | {single:.1f} | {bf16:.1f} | "
                 f"{single / bf16:.2f}x |  |  |")
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------
# command line
# ----------------------------------------------------------------------------------------
SECTIONS: dict[str, Callable[[argparse.Namespace], str]] = {
    "loader": loader_section, "tiling": tiling_section, "forward": forward_section,
    "training": training_section, "saving": saving_section, "bf16": bf16_section}


def parse_options(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line, with the sizes, repetitions and doc that it implies filled in."""
    p = argparse.ArgumentParser(description="Run the project's benchmarks.")
    p.add_argument("sections", nargs="*", metavar="SECTION",
                   help=f"one or more of {', '.join(SECTIONS)} (default: all)")
    p.add_argument("--doc", default=None,
                   help="Markdown file to update (default docs/BENCHMARKS.md; a temporary file "
                        "with --smoke)")
    p.add_argument("--reps", type=int, default=None,
                   help=f"repetitions, median taken (default {DEFAULT_REPS}; 1 with --smoke)")
    p.add_argument("--smoke", action="store_true",
                   help="every section at minimal sizes, one repetition and one torch thread, "
                        "in seconds: checks that the code runs (CI), its figures mean little")
    args = p.parse_args(argv)
    unknown = [n for n in args.sections if n not in SECTIONS]
    if unknown:
        p.error(f"unknown section(s) {', '.join(unknown)}; known: {', '.join(SECTIONS)}")
    args.sizes = SMOKE if args.smoke else FULL
    args.reps = args.reps or (1 if args.smoke else DEFAULT_REPS)
    if args.doc is None:
        args.doc = tempfile.mkstemp(prefix="benchmarks-smoke-", suffix=".md")[1] if args.smoke else DOC
    return args


def main(argv: Sequence[str] | None = None) -> int:
    """Run the named sections (default: all), print them and write them into the doc."""
    args = parse_options(argv)
    logging.basicConfig(level=logging.ERROR)
    threads = torch.get_num_threads()
    if args.sizes.threads:
        torch.set_num_threads(args.sizes.threads)
    try:
        for name in args.sections or list(SECTIONS):
            body = SECTIONS[name](args)
            print(body)
            write_section(args.doc, name, body)
    finally:
        torch.set_num_threads(threads)  # as it was, for a caller in the same process (the tests)
    print(f"updated {args.doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
