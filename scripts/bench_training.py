"""The benchmark's training sections: the data loader, training steps, saving a checkpoint, torch.compile."""
from __future__ import annotations

import argparse
import os
import re
import statistics
import tempfile
import time

import torch
from PIL import Image
from torch.utils.data import DataLoader

import utility
from data.sample import sample_photos
from data.stream import PairStream
from model import build_model, restore
from option import parse_args, settings
from scripts.bench_inference import random_image, x2_model
from scripts.timing import HEADS, Sizes, bench_device, medians, section, significant, text, timed
from tasks import task_scale
from trainer import Trainer

JPEG_QUALITY = 90
CUDA_LOADER_WORKERS = (8, 16)


# loader: training pairs per second from a JPEG folder
def loader_rate(folder: str, task: str, workers: int, seed: int, sizes: Sizes) -> float:
    """Pairs per second of a PairStream over the folder, after one untimed batch."""
    stream = PairStream(folder, HEADS, sizes.loader_batch, task_id=HEADS.index(task), seed=seed)
    batches = iter(DataLoader(stream, batch_size=None, num_workers=workers))
    next(batches)
    elapsed = timed(lambda it=batches: [next(it) for _ in range(sizes.loader_batches)])[0]
    del batches  # stops the workers
    return sizes.loader_batches * sizes.loader_batch / elapsed


def loader_workers(sizes: Sizes) -> tuple[int, ...]:
    """The worker counts measured: 8 and 16 as well on a GPU machine."""
    return sizes.loader_workers + (CUDA_LOADER_WORKERS if torch.cuda.is_available() else ())


def loader_section(args: argparse.Namespace) -> str:
    """Data loader pairs/s per task and worker count: the median of interleaved repetitions."""
    sizes, workers = args.sizes, loader_workers(args.sizes)
    with tempfile.TemporaryDirectory() as folder:
        pixels = []  # the sample training photos as JPEGs
        for name, image in sample_photos("train"):
            array = image.permute(1, 2, 0).numpy()
            Image.fromarray(array).save(os.path.join(folder, f"{name}.jpg"), quality=JPEG_QUALITY)
            pixels.append(array.shape[0] * array.shape[1])
        rates = medians({(task, w): lambda rep, t=task, w=w: loader_rate(folder, t, w, rep, sizes)
                         for task in sizes.loader_tasks for w in workers}, args.reps)
    intro = text("loader", quality=JPEG_QUALITY, megapixels=statistics.mean(pixels) / 1e6,
                 batch=sizes.loader_batch, batches=sizes.loader_batches, reps=args.reps)
    rows = [[task, 48, 48 * task_scale(task), *(significant(rates[(task, w)]) for w in workers)]
            for task in sizes.loader_tasks]
    return section("Data loader (pairs/s)", args, [intro],
                   ["task", "LR", "HR", *(f"{w} worker(s)" for w in workers)], rows)


# training: steps per second of the project's Trainer, and the loader against it
def make_trainer(ipt_options: dict, batch: int, amp: str, save: str, device: torch.device,
                 accumulate: int = 1, patch: int = 48) -> Trainer:
    """A Trainer of a six-task IPT (these IPT options) over a fresh (seeded) model, with no data
    of its own: the one place that builds the model and calls the Trainer's constructor."""
    argv = ["--tasks", "+".join(HEADS), "--batch_size", str(batch), "--patch_size", str(patch),
            "--con_loss", "--amp", amp, "--save", save, "--reset", "--accumulate", str(accumulate)]
    argv += [f"--{key}={value}" for key, value in ipt_options.items()]
    torch.manual_seed(0)
    s = settings(parse_args(argv))
    return Trainer(s.train, build_model(s.model).to(device), lambda step: iter(()), None, 10 ** 9, 1)


def task_batches(batch: int, patch: int, device: torch.device) -> list[dict]:
    """One random batch per head, in head order, as the loader hands them over."""
    out = []
    for task_id, task in enumerate(HEADS):
        hr = patch * task_scale(task)
        out.append({"lr": torch.rand(batch, 3, patch, patch, device=device) * 255,
                    "hr": torch.rand(batch, 3, hr, hr, device=device) * 255,
                    "task_id": task_id, "step": task_id})
    return out


def seconds_per_step(trainer: Trainer, batches: list[dict]) -> float:
    """Seconds per train_step over one step of each head (each batch taken --accumulate times)."""
    def steps() -> None:
        for batch in batches:
            if trainer.train_step([batch] * trainer.settings.accumulate) is None:
                raise RuntimeError("a benchmark training step was skipped (non-finite loss)")
    return timed(steps, trainer.device)[0] / len(batches)


def training_section(args: argparse.Namespace) -> str:
    """Training steps/s of the tiny and the full configuration (fp32 and bf16, and the batch as
    two micro-batches of --accumulate 2) through Trainer.train_step, each warmed up by one round."""
    device, runs = bench_device(), {}  # (name, options, batch, amp, accumulate) -> (trainer, batches)
    patch = args.sizes.train_patch
    with tempfile.TemporaryDirectory() as save:
        for name, options, cpu_batch, gpu_batch in args.sizes.training:
            batch = gpu_batch if device.type == "cuda" else cpu_batch
            for amp, k in (("none", 1), ("bf16", 1), ("none", 2)):
                key = (name, tuple(options.items()), batch, amp, k)
                folder = os.path.join(save, f"{name}-{amp}-{k}")
                runs[key] = (make_trainer(options, batch // k, amp, folder, device, k, patch),
                             task_batches(batch // k, patch, device))
                seconds_per_step(*runs[key])  # warm-up
        sec = medians({key: lambda rep, run=run: seconds_per_step(*run) for key, run in runs.items()},
                      args.reps)
    rows = []
    for (name, options, batch, amp, micro), s in sec.items():
        given = ", ".join(f"{k} {v}" for k, v in options) or "defaults: n_feats 64, 12 heads, 12 layers"
        size = f"{batch // micro} x {micro} micro-batches" if micro > 1 else batch
        rows.append([f"{name} ({given})", size, amp, f"{s:.3f}", f"{1 / s:.2f}", f"{batch / s:.1f}"])
    tiny = [s / key[2] for key, s in sec.items() if key[0] == "tiny" and key[3:] == ("none", 1)]
    return section(f"Training ({device.type})", args, [text("training", reps=args.reps, patch=patch)],
                   ["configuration", "batch", "amp", "s/step", "steps/s", "pairs/s consumed"], rows,
                   [loader_ratio(args.doc, 1 / tiny[0] if tiny else None)])


def loader_ratio(doc: str, consumed: float | None) -> str:
    """A sentence: the loader's pairs/s (its slowest task in the doc's loader table, at the most
    workers <= cores) over what tiny training consumes."""
    found = re.search("<!-- loader:begin -->(.*?)<!-- loader:end -->",
                      open(doc).read() if os.path.isfile(doc) else "", re.DOTALL)
    body = found.group(1) if found else ""
    rows = [line.strip("|").split("|") for line in body.splitlines() if line.startswith("|")] or [[]]
    counts = {i: int(cell.split()[0]) for i, cell in enumerate(rows[0]) if cell.strip().endswith("worker(s)")}
    usable = [i for i, w in counts.items() if w <= utility.usable_cpus()]
    if not usable or consumed is None:
        return "Loader ratio: no loader figures in the doc (run the loader section)."
    column = max(usable, key=counts.get)
    rates = {row[0].strip(): float(row[column]) for row in rows[2:]}
    slowest = min(rates, key=rates.get)
    return text("loader-ratio", workers=counts[column], cores=utility.usable_cpus(), slowest=slowest,
                rate=significant(rates[slowest]), consumed=consumed, ratio=rates[slowest] / consumed)


# saving: what writing a checkpoint costs the training loop
SAVE_BATCH = 1  # the training steps timed beside the saves: batch 1 of 48x48 sr2 inputs
SAVE_PHASES = ("torch.save", "fsync", "rename")
EMA_DECAY = 0.999  # the saves are measured again with a moving average of the weights kept


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
    """Seconds of each phase of writing ``obj`` as ``runfolder.atomic_save`` does (a temporary,
    torch.save, rename), with an fsync of the temporary before the rename, which atomic_save
    does not do: what making the file durable would add."""
    tmp = f"{path}.tmp"

    def fsync() -> None:
        with open(tmp, "rb+") as f:
            os.fsync(f.fileno())
    return {phase: timed(call)[0] for phase, call in zip(
        SAVE_PHASES, (lambda: torch.save(obj, tmp), fsync, lambda: os.replace(tmp, path)), strict=True)}


def saving_rep(runner: Trainer, batch: dict, folder: str) -> dict[str, float]:
    """One repetition of every saving measurement: seconds by row, steps meanwhile, file MB."""
    device, figures = runner.device, {}
    figures["step"] = timed(lambda: runner.train_step(batch), device)[0]
    figures["snapshot"], snapshot = timed(runner.snapshot, device)
    split = os.path.join(folder, "split")
    os.makedirs(split, exist_ok=True)
    for name, obj in (("model_latest.pt", snapshot.state["model"]), ("state.pt", snapshot.state)):
        path = os.path.join(split, name)
        figures.update({f"{name} {phase}": sec for phase, sec in timed_atomic_save(obj, path).items()})
        figures[f"{name} MB"] = os.path.getsize(path) / 1e6
        os.remove(path)
    figures["save"] = timed(runner.save, device)[0]
    figures["background"] = timed(lambda: runner.save(background=True), device)[0]
    start, steps = time.perf_counter(), 0
    while steps == 0 or runner.saver.busy:  # the first step begins while the files are written
        runner.train_step(batch)
        steps += 1
    timed(runner.saver.wait, device)
    figures["during"], figures["steps during"] = (time.perf_counter() - start) / max(steps, 1), steps
    return figures


def saving_section(args: argparse.Namespace) -> str:
    """Seconds a checkpoint of the six-head model takes: its copy, its files, and the training
    loop's wait for it before and after the writer thread."""
    device = bench_device()
    if device.type == "cpu":  # as main.py does: a copy reuses the heap memory the last one freed
        utility.keep_freed_memory()
    reps, ema = [], []
    with tempfile.TemporaryDirectory() as folder:
        for average, kept in ((0, reps), (EMA_DECAY, ema)):  # one model in memory at a time
            options = {**args.sizes.saving_model, **({"ema_decay": average} if average else {})}
            runner = make_trainer(options, SAVE_BATCH, "none", folder, device)
            parameters = sum(p.numel() for p in runner.model.parameters())
            batch = task_batches(SAVE_BATCH, 48, device)[0]
            runner.train_step(batch)  # warm-up
            fill_moments(runner.optimizer)
            kept += [saving_rep(runner, batch, folder) for _ in range(args.reps)]
            del runner
    sec = {row: statistics.median(rep[row] for rep in reps) for row in reps[0]}
    with_ema = {row: statistics.median(rep[row] for rep in ema) for row in ema[0]}
    size = "full-size" if not args.sizes.saving_model else "tiny (smoke)"
    intro = text("saving", size=size, parameters=parameters / 1e6, model_mb=sec["model_latest.pt MB"],
                 state_mb=sec["state.pt MB"], ema_mb=with_ema["state.pt MB"], decay=EMA_DECAY, reps=args.reps)
    rows = [["copy of the state to the CPU (`Trainer.snapshot`)", f"{sec['snapshot']:.3f}"]]
    rows += [[f"{name}: {phase}", f"{sec[f'{name} {phase}']:.3f}"]
             for name in ("model_latest.pt", "state.pt") for phase in SAVE_PHASES]
    rows += [["`save()`: copy, files written, as every save waited before the writer thread "
              "(now the final save only)", f"{sec['save']:.3f}"],
             ["`save(background=True)`: the wait of a periodic save now", f"{sec['background']:.3f}"],
             [f"a training step (batch {SAVE_BATCH}, 48x48, sr2), alone", f"{sec['step']:.3f}"],
             [f"a training step while a save is written ({sec['steps during']:g} step(s) meanwhile)",
              f"{sec['during']:.3f}"]]
    rows += [[f"with `--ema_decay`: {what}", f"{with_ema[row]:.3f}"] for what, row in (
        ("copy of the state to the CPU", "snapshot"), ("state.pt: torch.save", "state.pt torch.save"),
        ("state.pt: fsync", "state.pt fsync"), ("`save()`", "save"))]
    return section(f"Saving a checkpoint ({device.type})", args, [intro], ["what", "seconds"], rows)


# compile: torch.compile against eager, for whole-image restoration and training steps of the tiny and
# the full-size model, in fp32 and bf16, on the device at hand
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
        rows.append(compile_row(name, label, f"restore {x.shape[-1]}x{x.shape[-1]}", sec, first,
                                f"{diff:.2g}"))
    return rows


def training_row(args: argparse.Namespace, name: str, options: dict, batch: int, label: str,
                 device: torch.device) -> list:
    """Eager and compiled Trainer.train_step (sr2 batches) under the --amp of ``label``: both
    trainers start from the same weights and take the same batches."""
    patch, amp = args.sizes.train_patch, PRECISIONS[label][1]
    with tempfile.TemporaryDirectory() as save:
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
    return compile_row(name, label, f"train step, batch {batch}", sec, first, f"{diff:.2g} (loss)")


def compile_row(name: str, precision: str, what: str, sec: dict, first: float, diff: str) -> list:
    return [name, precision, what, significant(sec["eager"]), significant(sec["compiled"]),
            f"{sec['eager'] / sec['compiled']:.2f}x", significant(first), diff]


def compile_section(args: argparse.Namespace) -> str:
    """torch.compile's speed-up, its compile time and its outputs' distance from eager."""
    device, rows = bench_device(), []
    for name, options, batch in args.sizes.compile_models:
        rows += restoration_rows(args, name, options, device)
        rows += [training_row(args, name, options, batch, label, device) for label in PRECISIONS]
    return section(f"torch.compile ({device.type})", args,
                   [text("compile", reps=args.reps, backend=args.sizes.compile_backend,
                         patch=args.sizes.train_patch)],
                   ["model", "precision", "what", "eager s", "compiled s", "speed-up",
                    "first compiled call s", "largest difference from eager"], rows)
