"""The benchmark's inference sections: whole-image tiling, the forward against a GEMM, and bf16."""
from __future__ import annotations

import argparse
import collections
import os
import platform
import re
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Callable

import torch
from torch.utils.flop_counter import FlopCounterMode

import utility
from data.images import save_image
from model import IPT, IPTConfig, restore
from model.ipt import MLP_RATIO
from model.reference_chop import reference_chop
from model.tiling import CPU_TILES_PER_CALL
from scripts import cli, timing
from scripts.timing import bench_device, in_child, medians, section, text, timed

CUDA_BACKWARD_BATCH = 64  # about 29 GB on the CPU: GPU only


def x2_model(device: torch.device, **options: object) -> IPT:
    """A seeded x2 IPT with random weights and these IPTConfig options."""
    torch.manual_seed(0)
    return IPT(IPTConfig(scale=[2], **options)).to(device)


def random_image(size: int, device: torch.device) -> torch.Tensor:
    """The random size x size image (seeded by its size) that a section restores."""
    return torch.rand(1, 3, size, size, generator=torch.Generator().manual_seed(size)).mul(255).to(device)


# tiling: whole-image inference. reference: the authors' strip-by-strip procedure; official-64:
# official with the CPU's cap on tiles per network call lifted to the crop batch (what it is worth)
TILING_MODES = ("reference", "official", "official-64", "fast")
CROP_BATCH = 64
# mode -> (restore's mode, its cpu_tiles_per_call); "reference" runs model.reference_chop
TILERS = {"official": ("official", CPU_TILES_PER_CALL), "official-64": ("official", CROP_BATCH),
          "fast": ("fast", CPU_TILES_PER_CALL)}


def tiling_model(device: torch.device) -> torch.nn.Module:
    """The x2 IPT the tiling section runs: full size on CUDA, the tiny one on the CPU."""
    return x2_model(device, num_queries=1, **({} if device.type == "cuda" else timing.TINY_IPT)).eval()


def run_tiling(mode: str, model: torch.nn.Module, x: torch.Tensor,
               precision: str = "single") -> tuple[torch.Tensor, int]:
    """(output, tile evaluations) of one whole-image restoration."""
    count = [0]
    hook = model.register_forward_pre_hook(lambda m, inp: count.__setitem__(0, count[0] + inp[0].shape[0]))
    with torch.no_grad():
        if mode == "reference":
            out = reference_chop(lambda t: model(t, 0), x, 2, batch=CROP_BATCH)
        else:
            tiler, cap = TILERS[mode]
            out = restore(model, x, 0, tiler, crop_batch_size=CROP_BATCH, cpu_tiles_per_call=cap,
                          precision=precision)
    hook.remove()
    return out, count[0]


def _proc_status_kib(name: str) -> int:
    """A memory figure (KiB) of this process from /proc/self/status (Linux)."""
    with open("/proc/self/status", encoding="ascii") as f:
        return int(re.search(rf"^{name}:\s+(\d+)", f.read(), re.M).group(1))


def child_tiling_memory(size: int, mode: str) -> str:
    """In a fresh CPU process: MiB by which one restoration raises the resident set at its peak
    (after a one-tile warm-up, so the libraries' one-time buffers are not counted)."""
    model, x = tiling_model(torch.device("cpu")), random_image(size, torch.device("cpu"))
    with torch.no_grad():
        model(x[..., :model.patch_size, :model.patch_size], 0)
    with open("/proc/self/clear_refs", "w", encoding="ascii") as f:
        f.write("5")  # resets the peak (VmHWM) to the current resident set
    before = _proc_status_kib("VmRSS")
    run_tiling(mode, model, x)
    return repr((_proc_status_kib("VmHWM") - before) / 1024)


def tiling_size(args: argparse.Namespace, model: torch.nn.Module, size: int, rows: list) -> None:
    """The table's rows of one image size: every mode timed, interleaved, and its peak memory."""
    device = next(model.parameters()).device
    x, tiles, peaks, outs = random_image(size, device), {}, {}, {}
    modes = [m for m in TILING_MODES if device.type == "cpu" or m != "official-64"]  # where the cap applies

    def measure(mode: str) -> float:
        if device.type == "cuda":
            torch.cuda.synchronize()
            torch.cuda.reset_peak_memory_stats()
        seconds, (outs[mode], tiles[mode]) = timed(lambda: run_tiling(mode, model, x), device)
        if device.type == "cuda":
            peaks[mode] = torch.cuda.max_memory_allocated() / 2 ** 20
        return seconds

    sec = medians({mode: lambda rep, m=mode: measure(m) for mode in modes}, args.reps)
    diff = (outs["official"] - outs["reference"]).abs().max().item()
    if device.type == "cpu" and os.access("/proc/self/clear_refs", os.W_OK):  # Linux
        peaks.update({m: float(in_child("bench_inference", f"child_tiling_memory({size}, {m!r})"))
                      for m in modes if args.sizes.peak_modes is None or m in args.sizes.peak_modes})
    for mode in modes:
        rows.append([f"{size}x{size}", mode, f"{sec[mode]:.3f}", tiles[mode],
                     f"{sec['reference'] / sec[mode]:.2f}x", f"{peaks[mode]:.1f}" if mode in peaks else "-",
                     f"{diff:.2e}" if mode == "official" else ""])


def tiling_section(args: argparse.Namespace) -> str:
    """Seconds, tile evaluations and peak memory of whole-image x2 inference per tiler."""
    device, rows = bench_device(), []
    model = tiling_model(device)
    for size in args.sizes.tiling_sizes:
        tiling_size(args, model, size, rows)
    kind = "full-size x2 IPT" if device.type == "cuda" else "tiny x2 IPT (n_feats 16, 4 heads, 1 layer)"
    cap = text("tiling-cap", cap=CPU_TILES_PER_CALL, crop=CROP_BATCH) + " " if device.type == "cpu" else ""
    only = f", measured for {', '.join(args.sizes.peak_modes)} only" if args.sizes.peak_modes else ""
    intro = text("tiling", kind=kind, crop=CROP_BATCH, reps=args.reps, cap=cap, only=only)
    return section(f"Whole-image inference ({device.type})", args, [intro],
                   ["size", "mode", "seconds", "tile evaluations", "speed-up vs reference", "peak MiB",
                    "max abs diff official vs reference"], rows)


# forward: the x2 model's forward and forward+backward against a GEMM peak
Pass = collections.namedtuple("Pass", "backward dtype batch")  # a timed configuration; dtype fp32 or bf16
PASS_NAME = {False: "forward", True: "forward+backward"}
AUTOCAST = {"fp32": None, "bf16": torch.bfloat16}  # a Pass's dtype -> its autocast


def largest_gemm(cfg: IPTConfig, batch: int) -> tuple[int, int, int]:
    """(M, K, N) of the model's largest matmul, a feed-forward Linear of the body at ``batch``: every
    Transformer block and the mlp_head run tokens x dim @ dim x 4 dim (and back); the rest is smaller."""
    tokens = batch * (cfg.patch_size // cfg.patch_dim) ** 2
    dim = cfg.n_feats * cfg.patch_dim ** 2
    return tokens, dim, MLP_RATIO * dim


def gemm_measure(shape: tuple[int, int, int], dtype: str, calls: int,
                 device: torch.device) -> Callable[[int], float]:
    """Seconds per torch.mm(a, b, out=c) of random operands, after a warm-up: the output is
    preallocated, so only arithmetic counts."""
    (m, k, n), dtype = shape, AUTOCAST[dtype] or torch.float32
    a, b = torch.randn(m, k, dtype=dtype, device=device), torch.randn(k, n, dtype=dtype, device=device)
    c = torch.empty(m, n, dtype=dtype, device=device)
    torch.mm(a, b, out=c)
    return lambda rep: timed(lambda: [torch.mm(a, b, out=c) for _ in range(calls)], device)[0] / calls


def count_flops(model: torch.nn.Module, x: torch.Tensor, backward: bool) -> int:
    """FLOPs that FlopCounterMode counts for one forward (and backward) of x (what it counts: the
    forward-model paragraph). Run with autograd on: its module tracker needs it."""
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

    def step() -> None:
        with torch.autocast(x.device.type, dtype=dtype, enabled=dtype is not None), \
                torch.set_grad_enabled(run.backward):
            out = model(x, 0)
            if run.backward:
                out.float().mean().backward()
    return timed(step, x.device)[0]


def forward_passes(sizes: timing.Sizes, device: torch.device) -> list[Pass]:
    """The timed configurations: fp32 (and bf16 on CUDA) forward and forward+backward."""
    cuda = device.type == "cuda"
    backward = sizes.backward_batches + ((CUDA_BACKWARD_BATCH,) if cuda else ())
    return [Pass(bwd, dtype, b) for dtype in (("fp32", "bf16") if cuda else ("fp32",))
            for bwd, batches in ((False, sizes.forward_batches), (True, backward)) for b in batches]


def child_forward(batch: int, reps: int, smoke: bool, tuned: bool) -> str:
    """"seconds faults": the median seconds and minor page faults per call of the fp32 CPU forward
    at ``batch`` in this fresh process, with glibc malloc tuned (``utility.keep_freed_memory``)
    or not."""
    import resource  # Unix only; the parent starts this child only on glibc systems

    if tuned and not utility.keep_freed_memory():
        raise RuntimeError("glibc mallopt is not available here")
    model = x2_model(torch.device("cpu"), **(timing.SMOKE if smoke else timing.FULL).forward_model)
    x = torch.rand(batch, 3, model.patch_size, model.patch_size) * 255
    run = Pass(False, "fp32", batch)
    time_pass(model, x, run)
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    seconds = [time_pass(model, x, run) for _ in range(reps)]
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults
    return f"{statistics.median(seconds)!r} {faults / reps}"


def forward_section(args: argparse.Namespace) -> str:
    """Achieved FLOP/s of the x2 model's forward and forward+backward, and its share of a GEMM."""
    sizes, device, batch = args.sizes, bench_device(), max(args.sizes.forward_batches)
    model = x2_model(device, **sizes.forward_model)
    cfg, patch = model.cfg, model.patch_size
    one = torch.rand(1, 3, patch, patch, device=device) * 255
    flops = {bwd: count_flops(model, one, bwd) for bwd in (False, True)}  # per 48x48 tile
    shape, runs = largest_gemm(cfg, batch), forward_passes(sizes, device)
    dtypes = sorted({r.dtype for r in runs}, key=list(AUTOCAST).index)
    measures = {d: gemm_measure(shape, d, sizes.gemm_calls, device) for d in dtypes}
    inputs = {b: torch.rand(b, 3, patch, patch, device=device) * 255 for b in {r.batch for r in runs}}
    for run in runs:  # warm-up
        time_pass(model, inputs[run.batch], run)
    measures.update({run: lambda rep, r=run: time_pass(model, inputs[r.batch], r) for run in runs})
    sec = medians(measures, args.reps)
    peak = {d: 2 * shape[0] * shape[1] * shape[2] / sec[d] for d in dtypes}
    fresh = {}  # glibc malloc tuned or not -> (seconds, faults)
    if device.type == "cpu" and platform.libc_ver()[0] == "glibc":
        for tuned in sizes.fresh_tuned:
            call = f"child_forward({batch}, {args.reps}, {args.smoke}, {tuned})"
            fresh[tuned] = tuple(map(float, in_child("bench_inference", call).split()))

    def row(label: str, dtype: str, batch: int, sec: float, backward: bool) -> list[str]:
        work = flops[backward] * batch
        return [label, dtype, batch, f"{sec:.3f}", f"{work / 1e9:.1f}", f"{work / sec / 1e9:.1f}",
                f"{100 * work / sec / peak[dtype]:.0f}%"]
    rows = [row(PASS_NAME[r.backward], r.dtype, r.batch, sec[r], r.backward) for r in runs]
    rows += [row("forward, fresh process, malloc tuned**" if tuned else "forward, fresh process*",
                 "fp32", batch, seconds, False) for tuned, (seconds, _) in fresh.items()]
    how = "sdpa" if device.type == "cuda" else "the authors arithmetic"
    peaks = ", ".join(f"{d} {peak[d] / 1e9:.0f} GFLOP/s" for d in peak)
    intro = [text("forward-model", size="tiny (smoke)" if sizes.forward_model else "full-size", cfg=cfg,
                  how=how, forward=flops[False] / 1e9, both=flops[True] / 1e9,
                  ratio=flops[True] / flops[False]),
             text("forward-gemm", batch=batch, m=shape[0], k=shape[1], n=shape[2], calls=sizes.gemm_calls,
                  peaks=peaks, reps=args.reps)]
    notes, child = [], text("fresh-child")  # of the fresh-process rows: both, or the tuned one (smoke)
    if False in fresh:
        against = f", against {fresh[True][1]:,.0f} in the row below" if True in fresh else ""
        notes.append(text("fresh-untuned", child=child, faults=fresh[False][1], against=against))
    if True in fresh:
        first = ("The same" if False in fresh else
                 f"{child}, {fresh[True][1]:,.0f} minor page faults per call (`getrusage`),")
        notes.append(text("fresh-tuned", first=first))
    return section(f"Model forward and backward ({device.type})", args, intro,
                   ["pass", "dtype", "batch", "seconds", "GFLOP per call", "achieved GFLOP/s",
                    "% of GEMM peak"], rows, notes)


# bf16: --precision bf16 against single, whole-image restoration and a whole --test_only run
BF16_MODES = ("official", "fast")
PRECISIONS = ("single", "bf16")
BF16_SIZE = {False: 126, True: 64}  # --smoke or not -> side of the image restore() is timed on
SMOKE_DEMO_SIDE = 60  # --smoke: the --test_only run restores one Demo image of this side
TEST_ONLY_TIMEOUT_S = 3600  # one --test_only child (the full-size model on the two Sample photos)


def test_only_seconds(precision: str, save: str, demo: str | None, sizes: timing.Sizes,
                      device: torch.device) -> float:
    """Wall-clock seconds (its start-up included) of main.py --test_only in a child process: the
    Sample photos (sr2, scored), or with --smoke one small Demo image; fast tiling, the torch
    threads of this process, the IPT options of ``sizes.forward_model``."""
    argv = [sys.executable, os.path.join(cli.REPOSITORY, "main.py"), "--test_only", "--scale", "2",
            "--precision", precision, "--chop", "fast", "--save", save,
            "--threads", str(torch.get_num_threads())]
    argv += ["--data_test", "Demo", "--dir_demo", demo] if demo else ["--data_test", "Sample"]
    argv += [f"--{key}={value}" for key, value in sizes.forward_model.items()]
    argv += ["--cpu"] if device.type == "cpu" else []
    seconds, done = timed(lambda: subprocess.run(argv, capture_output=True, text=True,
                                                 timeout=TEST_ONLY_TIMEOUT_S))
    if done.returncode != 0:
        lines = (done.stderr or done.stdout).strip().splitlines() or ["no output"]
        raise RuntimeError(f"main.py --test_only failed (exit {done.returncode}): {lines[-1]}")
    return seconds


def bf16_section(args: argparse.Namespace) -> str:
    """Seconds of restore() per tiling mode and precision, then of whole --test_only runs, single
    and bf16, interleaved."""
    device, size = bench_device(), BF16_SIZE[args.smoke]
    model = x2_model(device, num_queries=1, **args.sizes.forward_model).eval()
    x, demo, tiles, diffs = random_image(size, device), None, {}, {}

    def measure(mode: str, p: str) -> tuple[float, torch.Tensor]:
        seconds, (out, tiles[(mode, p)]) = timed(lambda: run_tiling(mode, model, x, p), device)
        return seconds, out

    for mode in BF16_MODES:  # warm-up, and the outputs compared
        outs = {p: measure(mode, p)[1] for p in PRECISIONS}
        diffs[mode] = (outs["bf16"] - outs["single"]).abs().max().item()
    measures = {(mode, p): lambda rep, m=mode, p=p: measure(m, p)[0]
                for mode in BF16_MODES for p in PRECISIONS}
    with tempfile.TemporaryDirectory(prefix="bench-bf16-") as folder:
        if args.smoke:
            demo = os.path.join(folder, "demo")
            save_image(x[0, :, :SMOKE_DEMO_SIDE, :SMOKE_DEMO_SIDE], os.path.join(demo, "image.png"))
        measures.update({p: lambda rep, p=p: test_only_seconds(
            p, os.path.join(folder, f"run-{p}-{rep}"), demo, args.sizes, device) for p in PRECISIONS})
        sec, rows = medians(measures, args.reps), []
    for mode in BF16_MODES:
        single, bf16 = (sec[(mode, p)] for p in PRECISIONS)
        if tiles[(mode, "bf16")] != tiles[(mode, "single")]:  # the same tiles in both precisions
            raise RuntimeError(f"{mode}: {tiles[(mode, 'bf16')]} tiles in bf16, {tiles[(mode, 'single')]} "
                               "in single")
        rows.append(["`restore()`", mode, f"{single:.3f}", f"{bf16:.3f}", f"{single / bf16:.2f}x",
                     tiles[(mode, "single")], f"{diffs[mode]:.2f}"])
    single, bf16 = (sec[p] for p in PRECISIONS)
    rows.append(["whole `--test_only` run", "fast", f"{single:.1f}", f"{bf16:.1f}", f"{single / bf16:.2f}x",
                 "", ""])
    from evaluation import cpu_flags, emulated_bf16
    if why := emulated_bf16(device):
        support = f"bf16 is emulated here: {why}"
    elif device.type == "cuda":
        support = "bf16 is native on this GPU"
    elif cpu_flags() is None:
        support = "whether this CPU has native bf16 is unknown (no /proc/cpuinfo)"
    else:
        support = (f"this CPU has bf16 instructions (avx512_bf16 or amx_bf16 in /proc/cpuinfo; torch's CPU "
                   f"capability {torch.backends.cpu.get_cpu_capability()}), which makes bf16 possible, not "
                   f"faster: the table says which it is here")
    run = (f"one {SMOKE_DEMO_SIDE}x{SMOKE_DEMO_SIDE} Demo image" if args.smoke else
           "the two Sample photos (sr2, scored: bicubic baseline, PSNR and SSIM)")
    intro = text("bf16", kind="tiny (smoke)" if args.smoke else "full-size", cfg=model.cfg,
                 threads=torch.get_num_threads(), size=size, crop=CROP_BATCH, support=support,
                 run=run, reps=args.reps)
    return section(f"bf16 inference ({device.type})", args, [intro],
                   ["what", "tiling", "single s", "bf16 s", "speed-up", "tile evaluations", "max abs diff"],
                   rows)
