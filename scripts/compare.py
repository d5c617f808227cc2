"""IPT against a Restormer of similar size, trained for the same wall-clock on the sample photos.

    python scripts/compare.py [--seconds 90] [--doc docs/COMPARE.md]

For each task (denoise30, derain) and each model it measures the training speed over a few steps,
sets the step count that fills ``--seconds``, trains from scratch with a cosine schedule through
the project's Trainer, and evaluates on the two Sample test photos with the model's own inference
(IPT: the authors' tiling; Restormer: the whole image). Both see the same crops, degradations,
optimiser and metrics. The table is printed and written to the doc.
"""
from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

import evaluation  # noqa: E402
import trainer  # noqa: E402
from data.benchmark import BenchmarkSet  # noqa: E402
from model import build_model  # noqa: E402
from option import InferenceSettings, parse_args, settings  # noqa: E402

from hostinfo import machine  # noqa: E402 (scripts/hostinfo.py)

DOC = os.path.join(ROOT, "docs", "COMPARE.md")
TASKS = ("denoise30", "derain")
MODELS = {  # two networks of about 0.8-0.9M parameters
    "ipt": ["--model", "ipt", "--n_feats", "16", "--num_heads", "4", "--num_layers", "1"],
    "restormer": ["--model", "restormer", "--dim", "16", "--num_blocks", "1+1+1+1",
                  "--num_refinement_blocks", "1"],
}
COMMON = ["--cpu", "--data_train", "Sample", "--data_test", "Sample", "--batch_size", "8",
          "--patch_size", "48", "--lr", "5e-4", "--schedule", "cosine", "--n_threads", "2",
          "--seed", "1", "--test_every", "1000000", "--print_every", "1000000",
          "--save_every", "1000000", "--max_nonfinite", "1000"]
CALIBRATION_SECONDS = 6.0  # steps are timed for about this long, after one warm-up step
MIN_CALIBRATION_STEPS = 3
FLOP_SIDE = 48  # GFLOPs are counted on one 48x48 input (IPT's patch) and scaled to a megapixel


def options(model: str, task: str, save: str, steps: int = 1) -> argparse.Namespace:
    """The parsed options of one run."""
    return parse_args([*MODELS[model], *COMMON, "--task", task, "--save", save,
                       "--max_steps", str(steps), "--reset"])


def gflops_per_megapixel(net: torch.nn.Module) -> float:
    """Forward GFLOPs (2 per multiply-add) per megapixel of input, counted on one 48x48 input."""
    with FlopCounterMode(display=False) as counter:
        net(torch.rand(1, 3, FLOP_SIDE, FLOP_SIDE) * 255)
    return counter.get_total_flops() / 1e9 / (FLOP_SIDE * FLOP_SIDE / 1e6)


def fresh_trainer(args: argparse.Namespace, total_steps: int) -> tuple[torch.nn.Module, trainer.Trainer]:
    """A model built from the options (seeded) and a Trainer over the Sample training photos."""
    torch.manual_seed(args.seed)
    s = settings(args)
    net = build_model(s.model)
    batches, per_epoch, workers = trainer.make_batches(s.data)
    return net, trainer.Trainer(s.train, net, batches, None, total_steps, per_epoch, 0, workers)


def steps_per_second(args: argparse.Namespace) -> float:
    """Training steps per second, timed over a few steps of a throwaway model."""
    _, runner = fresh_trainer(args, 10 ** 9)
    stream = iter(runner.batches(0))
    runner.train_step(next(stream))
    start, steps = time.perf_counter(), 0
    while steps < MIN_CALIBRATION_STEPS or time.perf_counter() - start < CALIBRATION_SECONDS:
        runner.train_step(next(stream))
        steps += 1
    return steps / (time.perf_counter() - start)


def train(args: argparse.Namespace) -> tuple[torch.nn.Module, float]:
    """A model trained from scratch for args.max_steps; (model, seconds)."""
    net, runner = fresh_trainer(args, args.max_steps)
    start = time.perf_counter()
    status = runner.fit()
    if status != 0:
        raise RuntimeError(f"{args.model} {args.task}: training stopped on non-finite losses")
    return net.eval(), time.perf_counter() - start


def evaluate(args: argparse.Namespace, net: torch.nn.Module) -> dict[str, float]:
    """Mean metrics on the Sample test photos and milliseconds per megapixel to get them."""
    inference: InferenceSettings = settings(args).inference
    data = BenchmarkSet(args.dir_data, "Sample", args.task, 1, args.seed)
    megapixels = sum(pair.lr.shape[-1] * pair.lr.shape[-2] for pair in data) / 1e6
    start = time.perf_counter()
    result = evaluation.evaluate_set(net, data, 0, inference, None)
    return {**result, "ms_per_mp": 1000 * (time.perf_counter() - start) / megapixels}


def compare(seconds: float, workdir: str) -> list[dict]:
    """One row per (task, model)."""
    rows = []
    for task in TASKS:
        for model in MODELS:
            save = os.path.join(workdir, f"{model}-{task}")
            rate = steps_per_second(options(model, task, save))
            steps = max(1, round(rate * seconds))
            args = options(model, task, save, steps)
            net, trained = train(args)
            with torch.no_grad():
                metrics = evaluate(args, net)
            rows.append({"task": task, "model": model, "params": sum(p.numel() for p in net.parameters()),
                         "gflops": gflops_per_megapixel(net), "steps": steps, "seconds": trained,
                         **metrics})
            print(f"{task} {model}: {steps} steps in {trained:.0f} s, PSNR {metrics['psnr']:.2f} dB",
                  flush=True)
    return rows


def table(rows: list[dict], seconds: float) -> str:
    """The Markdown report."""
    lines = ["# IPT and Restormer side by side", "",
             f"Made by `python scripts/compare.py --seconds {seconds:g}` on "
             f"{machine()}. Each model trains from scratch for about {seconds:g} s of wall-clock "
             "per task on the 8 Sample training photos (batch 8 of 48x48 crops, Adam 5e-4, cosine "
             "schedule, L1), then restores the 2 Sample test photos (astronaut, coffee) with its own "
             "inference: IPT with the authors' tiling (`official`), Restormer whole. The derain "
             "task uses procedural streaks. GFLOPs count 2 per multiply-add, for one forward pass "
             "over a megapixel of input (IPT's tiling evaluates each pixel several times more); "
             "inference ms / MP includes reading, quantising and scoring the outputs.", "",
             "| task | model | parameters | GFLOPs / MP | steps | train s | steps/s | inference ms / MP "
             "| PSNR (Y) | SSIM (Y) | PSNR (RGB) | SSIM (RGB) | input PSNR (Y) |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['task']} | {r['model']} | {r['params']:,} | {r['gflops']:.0f} | {r['steps']} | "
                     f"{r['seconds']:.0f} | {r['steps'] / r['seconds']:.2f} | {r['ms_per_mp']:.0f} | "
                     f"{r['psnr_y']:.2f} | {r['ssim_y']:.4f} | {r['psnr_rgb']:.2f} | {r['ssim_rgb']:.4f} | "
                     f"{r['baseline_psnr']:.2f} |")
    return "\n".join(lines) + "\n"


def main(argv: list[str] | None = None) -> int:
    """Run the comparison, print the table and write it to --doc."""
    p = argparse.ArgumentParser(description="Train IPT and Restormer for the same time and compare.")
    p.add_argument("--seconds", type=float, default=90, help="training wall-clock per model and task")
    p.add_argument("--doc", default=DOC, help="Markdown file to write")
    a = p.parse_args(argv)
    if a.seconds <= 0:
        p.error("--seconds must be positive")
    with tempfile.TemporaryDirectory() as workdir:
        report = table(compare(a.seconds, workdir), a.seconds)
    print(report)
    os.makedirs(os.path.dirname(os.path.abspath(a.doc)), exist_ok=True)
    with open(a.doc, "w", encoding="utf-8") as f:
        f.write(report)
    print(f"written to {a.doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
