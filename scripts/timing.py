"""What every benchmark section shares: its sizes, its timing, the machine it ran on, its part of the doc."""
from __future__ import annotations

import argparse
import datetime
import math
import os
import platform
import re
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass, field

import torch

import runfolder
import utility
from scripts.cli import REPOSITORY

DOC = os.path.join(REPOSITORY, "docs", "BENCHMARKS.md")
TEXT = os.path.join(REPOSITORY, "scripts", "benchmark_text.md")  # the doc's paragraphs, with {fields}
DOC_TITLE = ("# Benchmarks\n\nMade by `python -m scripts.benchmark [SECTION ...] [--reps N]`; "
             "each section is rewritten between its markers by its own run.\n")
HEADS = ("sr2", "sr3", "sr4", "derain", "denoise30", "denoise50")  # the six-task head order
TINY_IPT = dict(n_feats=16, num_heads=4, num_layers=1)  # the tiling section's CPU model
TRAIN_TINY = dict(n_feats=16, num_heads=4, num_layers=2)  # the tiny training configuration


@dataclass(frozen=True)
class Sizes:
    """What a run measures: the full benchmark, or a smoke run of a few seconds for CI."""

    loader_tasks: tuple[str, ...]
    loader_workers: tuple[int, ...]  # CUDA_LOADER_WORKERS are added on a GPU machine
    loader_batch: int
    loader_batches: int  # timed batches per measurement, after one untimed (worker start-up)
    tiling_sizes: tuple[int, ...]
    forward_model: dict  # IPTConfig overrides of the x2 model of the forward and bf16 sections
    forward_batches: tuple[int, ...]
    backward_batches: tuple[int, ...]  # CUDA_BACKWARD_BATCH is added on a GPU
    gemm_calls: int  # matmuls per GEMM-peak measurement
    training: tuple[tuple[str, dict, int, int], ...]  # (name, IPT options, CPU batch, GPU batch)
    # torch threads of the run and of its children (None: torch's default, every core). One
    # thread keeps a smoke run short on a busy machine: with more threads than free cores, each
    # small operator waits for a descheduled thread (4x to 6x slower on 2 shared cores)
    threads: int | None = None
    peak_modes: tuple[str, ...] | None = None  # tilings whose CPU peak memory is measured (None: all)
    fresh_tuned: tuple[bool, ...] = (False, True)  # forwards in a fresh process: malloc as it is, tuned
    saving_model: dict = field(default_factory=dict)  # IPT options of the checkpointed model
    compile_models: tuple[tuple[str, dict, int], ...] = ()  # (name, IPT options, training batch)
    compile_image: int = 192  # the side of the image the compile section restores (16 x2 tiles)
    compile_backend: str = "inductor"  # torch.compile's; smoke: "eager", dynamo without codegen
    train_patch: int = 48  # the LR patch side of the batches that training steps take


FULL = Sizes(loader_tasks=("sr2", "sr3", "sr4", "derain", "denoise30"), loader_workers=(0, 1, 2),
             loader_batch=16, loader_batches=16, tiling_sizes=(126, 240, 256, 512),
             forward_model={}, forward_batches=(1, 16), backward_batches=(8,), gemm_calls=3,
             training=(("tiny", TRAIN_TINY, 8, 8), ("full", {}, 2, 8)),
             compile_models=(("tiny", TRAIN_TINY, 8), ("full", {}, 2)))
SMOKE = Sizes(loader_tasks=("sr2",), loader_workers=(0, 2), loader_batch=4, loader_batches=1,
              tiling_sizes=(60,), forward_model=TINY_IPT, forward_batches=(1, 2),
              backward_batches=(2,), gemm_calls=1, training=(("tiny", TRAIN_TINY, 2, 2),),
              threads=1, peak_modes=("official",), fresh_tuned=(True,), saving_model=TRAIN_TINY,
              compile_models=(("tiny", TRAIN_TINY, 2),), compile_image=48, compile_backend="eager",
              train_patch=12)
SMOKE_NOTE = ("Smoke run (`--smoke`): minimal sizes, one repetition, one torch thread; its "
              "figures show that the code runs, not how fast it is.")


def bench_device() -> torch.device:
    """CUDA when present, else the CPU."""
    return torch.device("cuda" if torch.cuda.is_available() else "cpu")


def timed(call: Callable[[], object], device: torch.device | None = None) -> tuple[float, object]:
    """(seconds, result) of one call, the device's queued work included."""
    cuda = device is not None and device.type == "cuda"
    if cuda:
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    result = call()
    if cuda:
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, result


def medians(measures: dict[Hashable, Callable[[int], float]], reps: int) -> dict[Hashable, float]:
    """key -> the median figure of ``measures[key](rep)`` over the repetitions, interleaved (every
    measure once, then every measure again) so that a machine's drift reaches them alike."""
    rounds = [{key: measure(rep) for key, measure in measures.items()} for rep in range(reps)]
    return {key: statistics.median(figures[key] for figures in rounds) for key in measures}


def significant(value: float, digits: int = 3) -> str:
    """``value`` to at least ``digits`` significant digits, without an exponent: 325, 24.3, 0.420
    (a positive rate never prints as 0)."""
    if not math.isfinite(value) or value <= 0:
        return f"{value:.0f}"
    return f"{value:.{max(0, digits - 1 - math.floor(math.log10(value)))}f}"


def text(name: str, **fields: object) -> str:
    """benchmark_text.md's paragraph ``name``, on one line, with its fields filled in."""
    with open(TEXT, encoding="utf-8") as f:
        parts = re.split(r"^\[([\w-]+)\]\n", f.read(), flags=re.M)[1:]
    return " ".join(dict(zip(parts[::2], parts[1::2], strict=True))[name].split()).format(**fields)


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux), or what platform knows of it."""
    return utility.cpuinfo("model name") or platform.processor() or platform.machine() or "unknown CPU"


def machine() -> str:
    """CPU model, core count, GPU when present, Python and torch versions and the date, in one line."""
    gpu = f"; {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    return (f"{cpu_model()}, {utility.usable_cpus()} core(s){gpu}; Python {platform.python_version()}, "
            f"torch {torch.__version__}; {date}")


def section(title: str, args: argparse.Namespace, paragraphs: list[str], header: list[str],
            rows: list[list[object]], notes: Sequence[str] = ()) -> str:
    """A section's Markdown: its heading, the machine, its paragraphs, its table, its notes."""
    table = ["| " + " | ".join(map(str, row)) + " |" for row in [header, *rows]]
    table.insert(1, "|" + "---|" * len(header))
    blocks = [f"## {title}", f"Machine: {machine()}." + (f" {SMOKE_NOTE}" if args.smoke else ""), *paragraphs,
              "\n".join(table), *notes]
    return "\n\n".join(blocks) + "\n"


def write_section(doc: str, name: str, body: str) -> None:
    """Replace (or append) the text between the section's markers in the doc."""
    begin, end = f"<!-- {name}:begin -->", f"<!-- {name}:end -->"
    text = open(doc, encoding="utf-8").read() if os.path.isfile(doc) and os.path.getsize(doc) else DOC_TITLE
    block = f"{begin}\n{body.strip()}\n{end}"
    if begin in text and end in text:
        text = text[:text.index(begin)] + block + text[text.index(end) + len(end):]
    else:
        text = text.rstrip("\n") + "\n\n" + block + "\n"
    os.makedirs(os.path.dirname(os.path.abspath(doc)), exist_ok=True)
    runfolder.write_text(doc, text)


def in_child(module: str, call: str) -> str:
    """The last line printed by ``scripts.<module>.<call>`` run in a fresh Python process at the
    repository root, with as many torch threads as this process has (started as main.py starts:
    the garbage collector off while torch loads)."""
    code = (f"import gc; gc.disable(); import torch; torch.set_num_threads({torch.get_num_threads()}); "
            f"import utility; from scripts import {module}; utility.collect_again(); print({module}.{call})")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          cwd=REPOSITORY)
    return done.stdout.strip().splitlines()[-1]
