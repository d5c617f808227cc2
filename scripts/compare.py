"""IPT against a Restormer of similar size, trained for the same wall-clock on the sample photos.

    python -m scripts.compare [--seconds 480] [--threads 1] [--doc docs/COMPARE.md]

``--seconds`` bounds the whole run, from the start of the script to the doc written. The script
times each model's inference and a few training steps, picks the most faithful evaluation that
fits (``choose_plan``), splits the rest evenly among the four trainings (each model from scratch,
cosine schedule, through the project's Trainer) and evaluates. Both models see the same crops,
degradations, optimiser, test pixels and metrics; the table is printed and written to ``--doc``.
"""
from __future__ import annotations

import time

STARTED = time.monotonic()  # the budget counts from here when run as a script: imports included

import stops  # noqa: E402  (loads no torch)

if __name__ == "__main__":  # a stop is one line and exit 130, its loader workers ended
    stops.early()

import argparse  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
from collections.abc import Callable  # noqa: E402
from dataclasses import dataclass, replace  # noqa: E402

import torch  # noqa: E402
from torch.utils.flop_counter import FlopCounterMode  # noqa: E402

import evaluation  # noqa: E402
import runfolder  # noqa: E402
import trainer  # noqa: E402
import utility  # noqa: E402
from data.benchmark import BenchmarkSet, Pair  # noqa: E402
from model import build_model  # noqa: E402
from option import OptionParser, parse_args, settings  # noqa: E402
from report import markdown_table  # noqa: E402
from scripts.cli import BAD_OPTION, FAILED, REPOSITORY, Refusal, check_limits, check_paths, say  # noqa: E402
from scripts.timing import machine, timed  # noqa: E402

DOC = os.path.join(REPOSITORY, "docs", "COMPARE.md")
LIMITS = {"seconds": (1, 7 * 24 * 3600), "threads": (1, utility.MAX_LOADER_WORKERS)}  # a week at most
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
RUNS = tuple((task, model) for task in TASKS for model in MODELS)
CALIBRATION_SHARE = 0.02  # of the budget, per run: steps are timed this long, after a first step
MAX_CALIBRATION_SECONDS = 6.0
MIN_CALIBRATION_STEPS = 3
EVAL_SHARE = 0.3  # the evaluation may take this share of the time left after the calibrations
EVAL_SAFETY = 1.5  # predicted evaluation seconds are the probe's rate times the pixels, times this
# (the photos' evaluations took up to 1.5x the probe's rate per pixel on a busy machine)
STEP_SAFETY = 0.9  # planned steps are the calibrated rate times the share, times this: the cosine
# schedule ends before the share's deadline, and the time saved goes to the later runs
PROBE_SIDE = 128  # inference is timed on a crop of this side (after a warm-up on one of WARM_SIDE)
WARM_SIDE = 48
CROP_STEP = 16  # centre crops are a multiple of this side
MIN_CROP = 48
MIN_TRAIN_SECONDS = 1.0  # per model and task: below this the budget is refused
FLOP_SIDE = 48  # GFLOPs are counted on one 48x48 input (IPT's patch) and scaled to a megapixel
INFERENCE = {"ipt": ("official", "fast"), "restormer": ("whole",)}  # tilers, preferred first


def reserve(seconds: float) -> float:
    """Seconds kept back at the end for the table, the doc and the interpreter's exit, and as a margin."""
    return max(2.0, 0.02 * seconds)


@dataclass
class Budget:
    """The whole run's wall-clock: ``seconds`` from ``started`` on ``clock``."""

    seconds: float
    started: float
    clock: Callable[[], float] = time.monotonic

    def elapsed(self) -> float:
        return self.clock() - self.started

    def left(self) -> float:
        """Seconds until the deadline, less the reserve for the end."""
        return self.seconds - reserve(self.seconds) - self.elapsed()


@dataclass(frozen=True)
class EvalPlan:
    """How the trained models are evaluated: IPT's tiler and the test photos' centre crop."""

    ipt_mode: str  # "official" or "fast"; the Restormer runs whole
    crop: int | None  # the side of the centre crops; None: the whole photos

    def mode(self, model: str) -> str:
        return self.ipt_mode if model == "ipt" else "whole"

    def describe(self) -> str:
        what = ("the 2 Sample test photos (astronaut, coffee) whole" if self.crop is None else
                f"the centre {self.crop}x{self.crop} of each of the 2 Sample test photos "
                "(astronaut, coffee)")
        ipt = ("IPT with the authors' tiling (`official`)" if self.ipt_mode == "official" else
               "IPT with `fast` tiling (few overlapping tiles; `official` did not fit the budget)")
        return f"{what}, {ipt}, Restormer whole"


CHEAPEST = EvalPlan("fast", MIN_CROP)


@dataclass(frozen=True)
class Probe:
    """What the probe measured."""

    rates: dict  # (model, mode) -> inference seconds per megapixel
    gflops: dict  # model -> GFLOPs per megapixel
    shapes: tuple  # (height, width) of each test photo


@dataclass(frozen=True)
class Calibration:
    """One run's measured training speed."""

    setup: float  # seconds from building the model to its first step done
    rate: float  # steps per second after it
    seconds: float  # the calibration's whole cost


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


# ---- test photos and evaluation ----------------------------------------------------------
class PhotoSet(list):
    """Test pairs in the form evaluation.evaluate_set takes (a sized, indexable set with a name)."""

    dataset = "Sample"


def centre_crop(pair: Pair, side: int | None) -> Pair:
    """The pair's centre ``side`` x ``side`` (less where the photo is smaller); the pair when None.
    Input and target are cut alike (the compared tasks keep the size)."""
    if side is None:
        return pair
    if pair.lr.shape != pair.hr.shape:
        raise ValueError(f"{pair.name}: input {tuple(pair.lr.shape)} and target "
                         f"{tuple(pair.hr.shape)} differ in size")
    h, w = pair.hr.shape[-2:]
    top, left = max(h - side, 0) // 2, max(w - side, 0) // 2
    cut = (..., slice(top, top + side), slice(left, left + side))  # a slice stops at the edge
    return Pair(pair.name, pair.lr[cut], pair.hr[cut])


def sample_pairs(args: argparse.Namespace, crop: int | None) -> PhotoSet:
    """The Sample test pairs of the run's task, whole or centre-cropped."""
    data = BenchmarkSet(args.dir_data, "Sample", args.task, 1, args.seed)
    pairs = [data[i] for i in range(len(data))]
    for pair in pairs:
        if isinstance(pair, Exception):
            raise pair
    return PhotoSet(centre_crop(pair, crop) for pair in pairs)


def evaluate(args: argparse.Namespace, net: torch.nn.Module, mode: str, photos: PhotoSet) -> dict[str, float]:
    """Mean metrics on the photos with the given tiler, and milliseconds per megapixel to get them."""
    inference = replace(settings(args).inference, mode=mode)
    with torch.no_grad():
        seconds, result = timed(lambda: evaluation.evaluate_set(net, photos, 0, inference, None))
    megapixels = sum(p.lr.shape[-1] * p.lr.shape[-2] for p in photos) / 1e6
    return {**result, "ms_per_mp": 1000 * seconds / megapixels}


def probe(workdir: str) -> Probe:
    """Each model's GFLOPs, and its inference seconds per megapixel with each of its tilers on a
    PROBE_SIDE crop of a test photo; weights do not change the cost, so the models are untrained."""
    rates, gflops, shapes = {}, {}, ()
    for model in MODELS:
        args = options(model, TASKS[0], os.path.join(workdir, f"probe-{model}"))
        torch.manual_seed(args.seed)
        net = build_model(settings(args).model).eval()
        gflops[model] = gflops_per_megapixel(net)
        photos = sample_pairs(args, None)
        shapes = tuple(tuple(p.hr.shape[-2:]) for p in photos)
        for mode in INFERENCE[model]:
            evaluate(args, net, mode, PhotoSet([centre_crop(photos[0], WARM_SIDE)]))
            timed = PhotoSet([centre_crop(photos[0], PROBE_SIDE)])
            rates[(model, mode)] = evaluate(args, net, mode, timed)["ms_per_mp"] / 1000
    return Probe(rates, gflops, shapes)


# ---- the plan: evaluation first, the rest to training ------------------------------------
def plan_pixels(plan: EvalPlan, shapes: tuple) -> float:
    """Megapixels of one evaluation (one model, one task) under the plan."""
    side = plan.crop or 10 ** 9
    return sum(min(h, side) * min(w, side) for h, w in shapes) / 1e6


def predicted_eval(plan: EvalPlan, found: Probe, model: str) -> float:
    """Seconds one evaluation of the model is expected to take under the plan."""
    return EVAL_SAFETY * found.rates[(model, plan.mode(model))] * plan_pixels(plan, found.shapes)


def total_eval(plan: EvalPlan, found: Probe) -> float:
    """Predicted seconds of every run's evaluation."""
    return sum(predicted_eval(plan, found, model) for _, model in RUNS)


def choose_plan(found: Probe, allowance: float) -> EvalPlan:
    """The most faithful evaluation predicted to take at most ``allowance`` seconds in all:
    IPT's official tiling on the whole photos, else fast tiling on them, else fast tiling on the
    largest centre crops that fit (MIN_CROP at the least)."""
    largest = max(max(shape) for shape in found.shapes)
    crops = range(largest // CROP_STEP * CROP_STEP, MIN_CROP - 1, -CROP_STEP)
    plans = [EvalPlan("official", None), EvalPlan("fast", None), *(EvalPlan("fast", side) for side in crops)]
    return next((plan for plan in plans if total_eval(plan, found) <= allowance), CHEAPEST)


def training_share(left: float, pending: float, runs_left: int) -> float:
    """Seconds of training for the next run: what is left once the set-ups and evaluations of
    this and the later runs (``pending``) are taken out, split evenly among the runs left."""
    return (left - pending) / runs_left


def too_short(budget: Budget, needed: float, what: str) -> Refusal:
    """The refusal of a budget that cannot hold ``needed`` more seconds of ``what``."""
    least = math.ceil(budget.seconds + needed - budget.left())
    return Refusal(f"--seconds {budget.seconds:g} is too short on this machine: after {budget.elapsed():.0f} "
                   f"s, {what} need about {needed:.0f} s more than the {max(0.0, budget.left()):.0f} s left; "
                   f"give --seconds {least} or more", BAD_OPTION)


# ---- training ----------------------------------------------------------------------------
def calibrate(args: argparse.Namespace, seconds: float, clock: Callable[[], float]) -> Calibration:
    """The set-up time and the training steps per second of a throwaway model."""
    start = clock()
    _, runner = fresh_trainer(args, 10 ** 9)
    stream = iter(runner.batches(0))
    runner.train_step(next(stream))
    first = clock()
    steps = 0
    while steps < MIN_CALIBRATION_STEPS or clock() - first < seconds:
        runner.train_step(next(stream))
        steps += 1
    end = clock()
    del stream  # stops the loader's workers
    return Calibration(first - start, steps / (end - first), end - start)


def train(args: argparse.Namespace, deadline: float,
          clock: Callable[[], float]) -> tuple[torch.nn.Module, float, int]:
    """A model trained from scratch through the Trainer for args.max_steps (the cosine schedule's
    length), or fewer where the deadline comes first (one step at the least); (model, seconds
    from the first step, steps done)."""
    net, runner = fresh_trainer(args, args.max_steps)
    stream = iter(runner.batches(0))
    start, p = clock(), runner.progress
    while p.step < args.max_steps and (p.step == 0 or clock() < deadline):
        runner.train_step(next(stream))  # None for a non-finite loss (skipped)
        p.step += 1
    seconds = clock() - start
    del stream  # stops the loader's workers
    if p.nonfinite_total == p.step or utility.nonfinite_tensors(net.state_dict()):
        raise RuntimeError(f"{args.model} {args.task}: training ended on non-finite losses or weights")
    return net.eval(), seconds, p.step


# ---- the run -----------------------------------------------------------------------------
@dataclass
class Comparison:
    """What compare() hands to the report."""

    rows: list
    plan: EvalPlan
    budget: Budget
    threads: int = 1  # torch threads


def compare(budget: Budget, workdir: str) -> Comparison:
    """One row per (task, model), within the budget."""
    if budget.left() <= 0:
        raise too_short(budget, 0, "the imports")
    found = probe(workdir)
    print("probe: inference seconds per megapixel "
          + ", ".join(f"{m} {t} {r:.1f}" for (m, t), r in found.rates.items()), flush=True)
    calib: dict[tuple[str, str], Calibration] = {}
    calibration_s = min(MAX_CALIBRATION_SECONDS, CALIBRATION_SHARE * budget.seconds)  # each run timed so long
    for task, model in RUNS:
        cost = max((c.seconds for c in calib.values()), default=calibration_s)
        if budget.left() < cost:
            raise too_short(budget, cost * (len(RUNS) - len(calib)), "the calibrations")
        args = options(model, task, os.path.join(workdir, f"calibrate-{model}-{task}"))
        c = calib[(task, model)] = calibrate(args, calibration_s, budget.clock)
        print(f"calibration {task} {model}: set-up {c.setup:.1f} s, {c.rate:.2f} steps/s", flush=True)
    setups = sum(c.setup for c in calib.values())
    plan = choose_plan(found, EVAL_SHARE * (budget.left() - setups))
    if budget.left() < setups + total_eval(plan, found) + MIN_TRAIN_SECONDS * len(RUNS):
        plan = CHEAPEST
    needed = setups + total_eval(plan, found) + MIN_TRAIN_SECONDS * len(RUNS)
    if budget.left() < needed:
        raise too_short(budget, needed, "the set-ups, the cheapest evaluation and a second of "
                                        "training per model and task")
    evals = {(task, model): predicted_eval(plan, found, model) for task, model in RUNS}
    print(f"plan: evaluation on {plan.describe()} (predicted {sum(evals.values()):.0f} s); "
          f"{budget.left() - setups - sum(evals.values()):.0f} s of training in all", flush=True)
    rows = []
    for i, (task, model) in enumerate(RUNS):
        later = RUNS[i:]
        share = training_share(budget.left(), sum(calib[r].setup + evals[r] for r in later), len(later))
        c = calib[(task, model)]
        planned = max(1, math.floor(c.rate * share * STEP_SAFETY))
        deadline = budget.clock() + c.setup + share
        args = options(model, task, os.path.join(workdir, f"{model}-{task}"), planned)
        net, trained, steps = train(args, deadline, budget.clock)
        metrics = evaluate(args, net, plan.mode(model), sample_pairs(args, plan.crop))
        rows.append({"task": task, "model": model, "params": sum(p.numel() for p in net.parameters()),
                     "gflops": found.gflops[model], "steps": steps, "planned": planned,
                     "seconds": trained, **metrics})
        print(f"{task} {model}: {steps} of {planned} steps in {trained:.0f} s, PSNR "
              f"{metrics['psnr']:.2f} dB ({budget.elapsed():.0f} s of {budget.seconds:g})", flush=True)
    return Comparison(rows, plan, budget, torch.get_num_threads())


def table(result: Comparison) -> str:
    """The Markdown report."""
    plan, rows, budget = result.plan, result.rows, result.budget
    short = [r for r in rows if r["steps"] < r["planned"]]
    stopped = (f" {len(short)} training(s) stopped at their deadline before the planned steps "
               "(the steps column shows done of planned)." if short else "")
    lines = ["# IPT and Restormer side by side", "",
             f"Made by `python -m scripts.compare --seconds {budget.seconds:g} --threads "
             f"{result.threads}` on {machine()}. `--seconds` bounds the whole run; this one took "
             f"{budget.elapsed():.0f} s, with {result.threads} torch thread(s) beside the loader's "
             "2 worker processes. The script "
             "times inference and a few training steps of each model first, picks the evaluation "
             f"that fits in {EVAL_SHARE:.0%} of the time left, and splits the rest evenly among the "
             "four trainings. Each model trains from scratch for its share (train s) "
             "per task on the 8 Sample training photos (batch 8 of 48x48 crops, Adam 5e-4, cosine "
             "schedule over the planned steps, L1), then restores " + plan.describe() + "." +
             stopped + " The derain task uses procedural streaks. GFLOPs count 2 per "
             "multiply-add, for one forward pass over a megapixel of input (IPT's tiling evaluates "
             "each pixel several times more); inference ms / MP includes quantising and scoring "
             "the outputs.", "", markdown_table([COLUMNS, *(row_cells(r) for r in rows)])]
    return "\n".join(lines) + "\n"


COLUMNS = ["task", "model", "parameters", "GFLOPs / MP", "steps", "train s", "steps/s", "inference ms / MP",
           "PSNR (Y)", "SSIM (Y)", "PSNR (RGB)", "SSIM (RGB)", "input PSNR (Y)"]


def row_cells(r: dict) -> list[str]:
    """The table's cells of one run (the steps as done of planned when it stopped early)."""
    steps = str(r["steps"]) if r["steps"] >= r["planned"] else f"{r['steps']} of {r['planned']}"
    return [r["task"], r["model"], f"{r['params']:,}", f"{r['gflops']:.0f}", steps, f"{r['seconds']:.0f}",
            f"{r['steps'] / r['seconds']:.2f}", f"{r['ms_per_mp']:.0f}", f"{r['psnr_y']:.2f}",
            f"{r['ssim_y']:.4f}", f"{r['psnr_rgb']:.2f}", f"{r['ssim_rgb']:.4f}", f"{r['baseline_psnr']:.2f}"]


def main(argv: list[str] | None = None, started: float | None = None) -> int:
    """Run the comparison within --seconds, print the table and write it to --doc."""
    started = time.monotonic() if started is None else started
    p = OptionParser(prog="compare.py", description="Train IPT and Restormer for the same time and compare.")
    p.add_argument("--seconds", type=float, default=480.0,
                   help="wall-clock budget of the WHOLE run, imports included (default %(default)g); "
                        "too short a budget for this machine is refused with the least that would do")
    p.add_argument("--threads", type=int, default=1,
                   help="torch threads (default %(default)s; on 2 cores shared with another busy "
                        "process, 2 threads made IPT's training 13x and the Restormer's 33x slower)")
    p.add_argument("--doc", default=DOC, help="Markdown file to write")
    a = p.parse_args(argv)
    check_limits(p, a, LIMITS)
    check_paths(p, a, ["doc"])
    budget, threads = Budget(a.seconds, started), torch.get_num_threads()
    torch.set_num_threads(a.threads)
    try:
        with tempfile.TemporaryDirectory() as workdir:
            result = compare(budget, workdir)
    except Refusal as e:
        return say("compare.py", str(e), e.status)
    finally:
        torch.set_num_threads(threads)
    report = table(result)
    print(report)
    try:
        os.makedirs(os.path.dirname(os.path.abspath(a.doc)), exist_ok=True)
        runfolder.write_text(a.doc, report)
    except OSError as e:  # SaveError names the file and the reason; the table is printed above
        return say("compare.py", f"--doc {a.doc}: {e}", FAILED)
    print(f"written to {a.doc} after {budget.elapsed():.0f} s of {a.seconds:g}")
    return 0


if __name__ == "__main__":
    sys.exit(main(started=STARTED))
