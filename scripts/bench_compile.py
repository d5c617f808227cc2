"""The compile section of the benchmarks: torch.compile against eager, for whole-image restoration
and training steps of the tiny and the full-size model, in fp32 and bf16, on the device at hand."""
from __future__ import annotations

import argparse
import os
import tempfile

import torch

from model import restore
from scripts.bench_inference import random_image, x2_model
from scripts.bench_training import make_trainer, seconds_per_step, task_batches
from scripts.timing import bench_device, medians, section, significant, text, timed

PRECISIONS = {"fp32": ("single", "none"), "bf16": ("bf16", "bf16")}  # -> (--precision, --amp)


def restoration_rows(args: argparse.Namespace, name: str, options: dict, device: torch.device) -> list:
    """Eager and compiled restore() of one image (fast tiles, 8 a call) in each precision."""
    model = x2_model(device, **options).eval()
    compiled = torch.compile(model, backend=args.sizes.compile_backend)
    x, rows = random_image(args.sizes.compile_image, device), []
    for label, (precision, _) in PRECISIONS.items():
        # each row compiles (and times its compiling) afresh: dynamo's cache is per code object,
        # shared by every IPT, and with autocast on or off it holds another graph
        torch._dynamo.reset()

        def run(net: torch.nn.Module, precision: str = precision) -> torch.Tensor:
            return restore(net, x, mode="fast", precision=precision)

        first, out = timed(lambda: run(compiled), device)  # compiles
        eager_out = run(model)
        sec = medians({"eager": lambda rep: timed(lambda: run(model), device)[0],
                       "compiled": lambda rep: timed(lambda: run(compiled), device)[0]}, args.reps)
        diff = float((out - eager_out).abs().max())
        rows.append(row(name, label, f"restore {x.shape[-1]}x{x.shape[-1]}", sec, first, f"{diff:.2g}"))
    return rows


def training_rows(args: argparse.Namespace, name: str, options: dict, batch: int,
                  device: torch.device) -> list:
    """Eager and compiled Trainer.train_step (sr2 batches) under each --amp."""
    with tempfile.TemporaryDirectory() as save:
        return [training_row(args, name, options, batch, amp, label, os.path.join(save, label), device)
                for label, (_, amp) in PRECISIONS.items()]


def training_row(args: argparse.Namespace, name: str, options: dict, batch: int, amp: str, label: str,
                 save: str, device: torch.device) -> list:
    """The row of one --amp: both trainers start from the same weights and take the same batches."""
    patch = args.sizes.train_patch
    runs = {kind: make_trainer(options, batch, amp, os.path.join(save, kind), device, patch=patch)
            for kind in ("eager", "compiled")}
    torch._dynamo.reset()  # as restoration_rows: the row compiles afresh
    runs["compiled"].model = torch.compile(runs["compiled"].model, backend=args.sizes.compile_backend)
    batches = task_batches(batch, patch, device)[:1]
    eager_loss = runs["eager"].train_step(batches[0])
    first, compiled_loss = timed(lambda: runs["compiled"].train_step(batches[0]), device)  # compiles
    steps = {kind: lambda rep, r=r: seconds_per_step(r, batches) for kind, r in runs.items()}
    sec = medians(steps, args.reps)
    diff = abs(compiled_loss - eager_loss)  # the same weights and batch at step 1
    return row(name, label, f"train step, batch {batch}", sec, first, f"{diff:.2g} (loss)")


def row(name: str, precision: str, what: str, sec: dict, first: float, diff: str) -> list:
    return [name, precision, what, significant(sec["eager"]), significant(sec["compiled"]),
            f"{sec['eager'] / sec['compiled']:.2f}x", significant(first), diff]


def compile_section(args: argparse.Namespace) -> str:
    """torch.compile's speed-up, its compile time and its outputs' distance from eager."""
    device, rows = bench_device(), []
    for name, options, batch in args.sizes.compile_models:
        rows += restoration_rows(args, name, options, device)
        rows += training_rows(args, name, options, batch, device)
    return section(f"torch.compile ({device.type})", args,
                   [text("compile", reps=args.reps, backend=args.sizes.compile_backend,
                         patch=args.sizes.train_patch)],
                   ["model", "precision", "what", "eager s", "compiled s", "speed-up",
                    "first compiled call s", "largest difference from eager"], rows)
