"""Does pre-training help? Pre-train a tiny IPT four ways, fine-tune each, score them.

    python scripts/study.py --pool ../shared/datasets/Sun80 --dir_data DATA [--doc docs/STUDY.md]

1. pre-training: none | the paper's six tasks (+ contrastive loss) | mim only | six + mim, the
   same number of steps each, on the photos of --pool plus the built-in sample photos;
2. fine-tuning each on sr2 and on denoise30 for the same number of steps (and the mim
   pre-training a second time with the sr2/denoise30 head and tail started from the mim head's,
   --init_from mim), validating on the way;
3. evaluation with the default (official) tiling, Y-channel PSNR/SSIM as in the paper: Set5 x2
   and CBSD68 sigma 30 from --dir_data (prepared by scripts/prepare_data.py);
for each --seeds; then docs/STUDY.md gets the table (mean and spread per variant beside bicubic /
the noisy input) and a plot of validation PSNR against fine-tuning step.

Every run is a main.py run under --work; a finished one (its metrics.json) is not redone, so a
killed study continues where it stopped; a damaged metrics.json stops the study with one line
naming the file, the key and the run folder to delete (its run is then redone). --launcher
"torchrun --nproc_per_node 8" runs each as a subprocess under that launcher, and --options
"--n_feats 64 --num_layers 12 ..." scales the model. ``--smoke`` runs every stage at a few steps
on two images (CI).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import shlex
import statistics
import subprocess
import sys
from dataclasses import dataclass
from datetime import datetime

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import main as ipt_main  # noqa: E402
import utility  # noqa: E402
from option import OptionParser  # noqa: E402  (errors in one line, exit status 2)
from data.images import IMAGE_EXTENSIONS, ImageReadError, read_image, save_image, stem  # noqa: E402
from data.sample import sample_photos  # noqa: E402

SIX_SCALES, SIX_TASKS = "2+3+4+1+1+1", "sr2+sr3+sr4+derain+denoise30+denoise50"
PRETRAININGS = {  # name -> (--scale, --tasks, the contrastive loss or not)
    "six": (SIX_SCALES, SIX_TASKS, True),
    "mim": ("1", "mim", True),
    "mim-nocon": ("1", "mim", False),
    "six+mim": (SIX_SCALES + "+1", SIX_TASKS + "+mim", True),
}


@dataclass(frozen=True)
class Variant:
    """One way to start fine-tuning: which pre-training, and where the task's head comes from."""

    name: str
    pretraining: str | None
    init_from: str = ""  # --init_from of the fine-tuning: '' the task's own head, none random


VARIANTS = (Variant("none", None), Variant("six", "six"), Variant("mim", "mim", "none"),
            Variant("mim, head from mim", "mim", "mim"),
            Variant("mim without contrastive loss", "mim-nocon", "none"), Variant("six+mim", "six+mim"))
TASKS = {"sr2": "Set5", "denoise30": "CBSD68"}  # fine-tuning task -> its test set
BASELINE = {"sr2": "bicubic", "denoise30": "noisy input"}
# the model and schedule: the quickstart's tiny IPT (configs/quickstart.yaml)
TINY = ["--n_feats", "16", "--num_heads", "4", "--num_layers", "1", "--batch_size", "8",
        "--lr", "5e-4", "--schedule", "cosine"]
NO_VALIDATION = "1000000000"
LOG_TIME = re.compile(r"^(\d{4}-\d\d-\d\d \d\d:\d\d:\d\d)", re.MULTILINE)
POOL_TILE = 256  # training photos are cut into squares of this side (sr4 crops 192)
VALIDATION = re.compile(r"step (\d+): validation PSNR ([-\d.]+) dB")
PROG = "study.py"
MAX_SEED = 2 ** 63 - 1  # main.py's --seed: torch.manual_seed takes a 64-bit integer
SEED = re.compile(r"[0-9]{1,19}")  # MAX_SEED has 19 digits
METRICS = "metrics.json"
METRICS_MAX_BYTES = 16 << 20  # a metrics.json of a few hundred images is tens of kB
SCORES = ("psnr_y", "ssim_y", "baseline_psnr", "baseline_ssim")  # what the table and plot read


def parse(argv: list[str] | None) -> argparse.Namespace:
    """The study's options."""
    p = OptionParser(prog=PROG, description=__doc__.splitlines()[0])
    p.add_argument("--pool", action="append", default=[],
                   help="a folder of photos for (pre-)training, at any depth; repeat for more")
    p.add_argument("--dir_data", required=True, help="holds benchmark/Set5 and benchmark/CBSD68")
    p.add_argument("--work", default=os.path.join("experiment", "study"), help="runs go here")
    p.add_argument("--doc", default=os.path.join("docs", "STUDY.md"))
    p.add_argument("--seeds", default="1+2", help="seeds, A+B")
    p.add_argument("--pretrain_steps", type=int, default=500)
    p.add_argument("--finetune_steps", type=int, default=240)
    p.add_argument("--val_every", type=int, default=80, help="fine-tuning steps between validations")
    p.add_argument("--noise_images", type=int, default=6,
                   help="CBSD68 images scored (the first N by name; 68: all)")
    p.add_argument("--val_images", type=int, default=3, help="CBSD68 images validated on")
    p.add_argument("--options", default="", help="more main.py options for every run (model size...)")
    p.add_argument("--launcher", default="", help="run each main.py under this (e.g. torchrun ...)")
    p.add_argument("--smoke", action="store_true", help="a few steps on two images: checks the wiring")
    a = p.parse_args(argv)
    a.seeds = parse_seeds(p, a.seeds)
    for name in ("pretrain_steps", "finetune_steps", "val_every", "noise_images", "val_images"):
        if getattr(a, name) < 1:  # main.py reads --max_steps 0 as "train --epochs"
            p.error(f"--{name} {getattr(a, name)}: give at least 1")
    for name in ("options", "launcher"):
        try:
            shlex.split(getattr(a, name))
        except ValueError as e:
            p.error(f"--{name} {getattr(a, name)!r}: {e} (quote it as a shell would)")
    if a.smoke:
        a.pretrain_steps, a.finetune_steps, a.val_every = 4, 4, 2
        a.noise_images, a.val_images = 2, 1
    return a


def parse_seeds(p: OptionParser, text: str) -> list[int]:
    """--seeds A+B as distinct integers 0..MAX_SEED (argparse's one-line error otherwise)."""
    words = text.split("+")
    if not all(SEED.fullmatch(w) for w in words):
        p.error(f"--seeds {text!r}: give non-negative integers joined by +, like 1+2")
    seeds = [int(w) for w in words]
    if max(seeds) > MAX_SEED or len(set(seeds)) != len(seeds):
        p.error(f"--seeds {text!r}: give distinct seeds of at most {MAX_SEED}")
    return seeds


# ----------------------------------------------------------------------------------------
# The runs' metrics.json, read back
# ----------------------------------------------------------------------------------------
class MetricsError(utility.RecordError):
    """A metrics.json that is not what an evaluation writes: one line naming the file and key."""


def read_metrics(path: str) -> dict[str, dict[str, dict[str, float]]]:
    """A run's metrics.json: {set: {task: {metric: value}}} with every SCORES metric a finite
    number (other entries, like per_image, are left out); MetricsError names what is wrong."""
    redo = f"delete the run's folder {os.path.dirname(os.path.abspath(path))} to redo it"
    if not os.path.isfile(path):
        raise MetricsError(f"{path}: not a regular file; {redo}")
    if os.path.getsize(path) > METRICS_MAX_BYTES:
        raise MetricsError(f"{path}: larger than {METRICS_MAX_BYTES} bytes, not an evaluation's; {redo}")
    try:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
    except (OSError, ValueError, RecursionError) as e:  # UnicodeDecodeError is a ValueError
        raise MetricsError(f"{path}: not readable JSON ({type(e).__name__}); {redo}") from None
    results = record.get("results") if isinstance(record, dict) else None
    if not isinstance(results, dict) or not results:
        raise MetricsError(f"{path}: no 'results' object; {redo}")
    found: dict[str, dict[str, dict[str, float]]] = {}
    for set_name, tasks in results.items():
        if not isinstance(tasks, dict) or not tasks:
            raise MetricsError(f"{path}: results.{shown(set_name)} is not an object of tasks; {redo}")
        found[set_name] = {}
        for task, scores in tasks.items():
            where = f"results.{shown(set_name)}.{shown(task)}"
            if not isinstance(scores, dict):
                raise MetricsError(f"{path}: {where} is not an object of metrics; {redo}")
            found[set_name][task] = {k: finite(scores.get(k), f"{path}: {where}.{k}", redo)
                                     for k in SCORES}
    return found


def finite(value: object, where: str, redo: str) -> float:
    """A metric as a finite float; MetricsError naming ``where`` for anything else."""
    number = isinstance(value, (int, float)) and not isinstance(value, bool)
    try:
        if number and math.isfinite(float(value)):
            return float(value)
    except OverflowError:  # an integer too large for a float
        pass
    what = "missing" if value is None else f"{type(value).__name__}, not a finite number"
    raise MetricsError(f"{where}: {what}; {redo}")


def shown(key: str) -> str:
    """A key read from a file, as a message shows it: quoted when it is not printable text."""
    return key if key.isprintable() else repr(key)


def scores(run: str, set_name: str | None = None, task: str | None = None) -> dict[str, float]:
    """The SCORES of ``task`` on ``set_name`` in RUN/metrics.json (None: its only set / task)."""
    path = os.path.join(run, METRICS)
    results = read_metrics(path)
    redo = f"delete the run's folder {os.path.abspath(run)} to redo it"
    if set_name is None:
        if len(results) != 1:
            raise MetricsError(f"{path}: results: {len(results)} test sets, expected one; {redo}")
        set_name = next(iter(results))
    if set_name not in results:
        raise MetricsError(f"{path}: results.{set_name}: missing; {redo}")
    tasks = results[set_name]
    if task is None:
        if len(tasks) != 1:
            raise MetricsError(f"{path}: results.{shown(set_name)}: {len(tasks)} tasks, expected "
                               f"one; {redo}")
        task = next(iter(tasks))
    if task not in tasks:
        raise MetricsError(f"{path}: results.{set_name}.{task}: missing; {redo}")
    return tasks[task]


# ----------------------------------------------------------------------------------------
# Data: the training pool and the (subsets of the) test sets, as main.py reads them
# ----------------------------------------------------------------------------------------
def make_pool(folders: list[str], root: str, smoke: bool) -> None:
    """ROOT/ImageNet/: the photos of ``folders`` and the sample photos, cut into POOL_TILE
    squares (a small PNG decodes in a few ms, a 1024-pixel JPEG in 35: the loader kept up with
    the tiny model only on tiles)."""
    target = os.path.join(root, "ImageNet")
    os.makedirs(target, exist_ok=True)
    photos = [(f"pool{i}_{stem(path)}", path) for i, folder in enumerate(folders)
              for path in sorted(images_under(folder))[:2 if smoke else None]]
    photos += [(f"sample_{name}", image) for name, image in sample_photos("train")]
    unreadable = []
    for name, photo in photos:
        if os.path.exists(os.path.join(target, f"{name}_0.png")):
            continue
        try:
            image = read_image(photo) if isinstance(photo, str) else photo
        except ImageReadError as e:
            print(f"{PROG}: warning: {e}; left out of the pool", file=sys.stderr, flush=True)
            unreadable.append(photo)
            continue
        _, h, w = image.shape
        corners = [(y, x) for y in range(0, h - POOL_TILE + 1, POOL_TILE)
                   for x in range(0, w - POOL_TILE + 1, POOL_TILE)]
        for k, (y, x) in enumerate(corners):
            save_image(image[:, y:y + POOL_TILE, x:x + POOL_TILE], os.path.join(target, f"{name}_{k}.png"))
    if unreadable:
        print(f"{PROG}: warning: {len(unreadable)} of {len(photos)} pool photo(s) could not be "
              f"read and were left out", file=sys.stderr, flush=True)


def images_under(folder: str) -> list[str]:
    """The image files under ``folder`` (any depth; regular files only: a FIFO would hang a read)."""
    if not os.path.isdir(folder):
        raise SystemExit(f"study.py: --pool {folder}: not a folder")
    return [os.path.join(d, f) for d, _, files in os.walk(folder) for f in files
            if f.lower().endswith(IMAGE_EXTENSIONS) and os.path.isfile(os.path.join(d, f))]


def link(source: str, name: str) -> None:
    """A symbolic link ``name`` -> ``source`` (kept when it exists)."""
    if not os.path.lexists(name):
        os.symlink(os.path.abspath(source), name)


def test_sets(dir_data: str, root: str, images: int) -> None:
    """ROOT/benchmark/Set5 (all of it) and ROOT/benchmark/CBSD68 (its first ``images`` images)."""
    bench = os.path.join(root, "benchmark")
    os.makedirs(os.path.join(bench, "CBSD68", "HR"), exist_ok=True)
    set5 = os.path.join(dir_data, "benchmark", "Set5")
    noise = os.path.join(dir_data, "benchmark", "CBSD68", "HR")
    for folder, what in ((set5, "Set5"), (noise, "CBSD68/HR")):
        if not os.path.isdir(folder):
            raise SystemExit(f"study.py: --dir_data {dir_data}: no benchmark/{what}; prepare it "
                             f"with python scripts/prepare_data.py ... --out {dir_data}")
    link(set5, os.path.join(bench, "Set5"))
    for name in sorted(os.listdir(noise))[:images]:
        link(os.path.join(noise, name), os.path.join(bench, "CBSD68", "HR", name))


# ----------------------------------------------------------------------------------------
# Runs
# ----------------------------------------------------------------------------------------
def run_main(args: list[str], launcher: str) -> None:
    """One main.py run, in this process or under the launcher; stops the study if it fails."""
    if launcher:
        try:
            code = subprocess.call([*shlex.split(launcher), os.path.join(ROOT, "main.py"), *args])
        except OSError as e:
            raise SystemExit(f"{PROG}: --launcher {launcher!r}: cannot start it ({e.strerror})") from None
    else:
        code = ipt_main.main(args)
    if code == utility.INTERRUPTED:  # a stop signal: the study stops as main.py did
        print(f"{PROG}: stopped by a signal; run the study again to go on: finished runs are "
              f"kept, the interrupted one starts again", file=sys.stderr)
        raise SystemExit(utility.INTERRUPTED)
    if code != 0:
        raise SystemExit(f"study.py: main.py {' '.join(args)} failed (exit status {code}); "
                         f"fix it and run the study again: finished runs are kept")


def done(run: str, what: str) -> bool:
    """Whether a run finished already: its training.json says so, or its metrics.json exists
    (any file there: a bad one is refused when read, not silently redone)."""
    if what == "training":
        record = utility.read_training_record(os.path.join(run, "model", "model_latest.pt"))
        return bool(record and record.get("finished"))
    return os.path.lexists(os.path.join(run, METRICS))


def pretrain(a: argparse.Namespace, name: str, seed: int, data: str) -> str:
    """Pre-train ``name`` (its heads, one task a batch, the contrastive loss or not); the model file."""
    run = os.path.join(a.work, f"seed{seed}", f"pretrain_{name}")
    scale, tasks, contrastive = PRETRAININGS[name]
    if not done(run, "training"):
        run_main([*TINY, "--scale", scale, "--tasks", tasks,
                  *(["--con_loss"] if contrastive else []),
                  "--data_train", "ImageNet", "--dir_data", data, "--max_steps", str(a.pretrain_steps),
                  "--seed", str(seed), "--test_every", NO_VALIDATION, "--save", run, "--reset",
                  *common(a)], a.launcher)
    return os.path.join(run, "model", "model_latest.pt")


def finetune(a: argparse.Namespace, variant: Variant, task: str, seed: int, data: str,
             checkpoints: dict[str, str]) -> str:
    """Fine-tune ``task`` from the variant's pre-training (validating on the way); the run."""
    run = os.path.join(a.work, f"seed{seed}", f"finetune_{slug(variant.name)}_{task}")
    start = []
    if variant.pretraining:
        start = ["--pretrain", checkpoints[variant.pretraining]]
        start += ["--init_from", variant.init_from] if variant.init_from else []
    if not done(run, "training"):
        run_main([*TINY, "--scale", "2" if task == "sr2" else "1",
                  "--task", task, *start, "--data_train", "ImageNet", "--dir_data", data,
                  "--max_steps", str(a.finetune_steps), "--seed", str(seed),
                  "--test_every", str(a.val_every), "--data_test", TASKS[task], "--chop", "fast",
                  "--save", run, "--reset", *common(a)], a.launcher)
    return run


def evaluate(a: argparse.Namespace, run: str, task: str, test_data: str) -> dict:
    """The fine-tuned model's metrics on the task's test set, official tiling."""
    out = run + "_eval"
    if not done(out, "evaluation"):
        run_main(["--test_only", "--scale", "2" if task == "sr2" else "1",
                  "--task", task, "--pretrain", os.path.join(run, "model", "model_latest.pt"),
                  "--data_test", TASKS[task], "--dir_data", test_data, "--save", out,
                  "--chop", "fast" if a.smoke else "official", *common(a)],
                 a.launcher)
    return scores(out, TASKS[task], task)


def common(a: argparse.Namespace) -> list[str]:
    """Options of every run: logging only now and then, then --options (which win)."""
    return ["--print_every", "100", "--save_every", "1000000", *shlex.split(a.options)]


def slug(name: str) -> str:
    """A folder-safe form of a variant's name."""
    return re.sub(r"[^a-z0-9+]+", "_", name.lower()).strip("_")


def curve(run: str) -> list[tuple[int, float]]:
    """(step, validation PSNR) of a training run, from its log; step 0 is the input's PSNR."""
    with open(os.path.join(run, "log.txt"), encoding="utf-8") as f:
        points = [(int(m.group(1)), float(m.group(2))) for m in VALIDATION.finditer(f.read())]
    return [(0, scores(run)["baseline_psnr"]), *points]  # the last validation's metrics.json


# ----------------------------------------------------------------------------------------
# The study and its report
# ----------------------------------------------------------------------------------------
def study(a: argparse.Namespace) -> dict:
    """Every run of every seed; {seed: {variant: {task: (metrics, curve)}}}."""
    data, test = os.path.join(a.work, "data"), os.path.join(a.work, "test")
    make_pool(a.pool, data, a.smoke)
    test_sets(a.dir_data, data, a.val_images)  # what fine-tuning validates on
    test_sets(a.dir_data, test, a.noise_images)  # what the table scores
    found = {}
    for seed in a.seeds:
        checkpoints = {name: pretrain(a, name, seed, data) for name in PRETRAININGS}
        found[seed] = {}
        for v in VARIANTS:
            found[seed][v.name] = {}
            for task in TASKS:
                run = finetune(a, v, task, seed, data, checkpoints)
                found[seed][v.name][task] = (evaluate(a, run, task, test), curve(run))
    return found


def spread(values: list[float], digits: int = 3) -> str:
    """mean +- standard deviation (over seeds), or the value for one seed."""
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def table(found: dict) -> str:
    """The markdown table: PSNR/SSIM (Y) per variant and task, the input's row first."""
    seeds = list(found)
    head = " | ".join(f"{task} {TASKS[task]} PSNR | SSIM" for task in TASKS)
    lines = [f"| pre-training | {head} |", "|---|" + "---|---|" * len(TASKS)]
    first = found[seeds[0]][VARIANTS[0].name]
    inputs = " | ".join(f"{first[t][0]['baseline_psnr']:.3f} | {first[t][0]['baseline_ssim']:.4f}"
                        for t in TASKS)
    lines.append(f"| *input ({' / '.join(BASELINE[t] for t in TASKS)})* | {inputs} |")
    for v in VARIANTS:
        cells = []
        for task in TASKS:
            runs = [found[s][v.name][task][0] for s in seeds]
            cells += [spread([r["psnr_y"] for r in runs]), spread([r["ssim_y"] for r in runs], 4)]
        lines.append(f"| {v.name} | {' | '.join(cells)} |")
    return "\n".join(lines)


def plot(found: dict, path: str) -> None:
    """Validation PSNR against fine-tuning step, one panel per task, mean over seeds."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(TASKS), figsize=(5 * len(TASKS), 3.6))
    for ax, task in zip(axes, TASKS):
        for v in VARIANTS:
            curves = [dict(found[s][v.name][task][1][1:]) for s in found]
            steps = sorted(set.intersection(*(set(c) for c in curves)))
            ax.plot(steps, [statistics.mean(c[k] for c in curves) for k in steps], marker=".",
                    label=v.name)
        first = found[next(iter(found))][VARIANTS[0].name][task][1]
        ax.axhline(first[0][1], color="grey", linestyle="--", label=BASELINE[task])
        ax.set(title=f"fine-tuning {task}: validation", xlabel="step", ylabel="PSNR (dB, Y)")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)


def machine() -> str:
    """The CPU (or GPU) and torch version the study ran on."""
    import torch
    if torch.cuda.is_available():
        where = torch.cuda.get_device_name(0)
    else:
        where = f"{platform.processor() or platform.machine()}, {len(os.sched_getaffinity(0))} usable cores"
        try:
            with open("/proc/cpuinfo", encoding="utf-8") as f:
                where = next(line.split(":", 1)[1].strip() for line in f if line.startswith("model name")) + \
                    f", {len(os.sched_getaffinity(0))} usable cores"
        except (OSError, StopIteration):
            pass
    return f"{where}; torch {torch.__version__}"


def report(a: argparse.Namespace, found: dict, minutes: float, plot_name: str) -> str:
    """STUDY.md's text around the table and the plot."""
    seeds = "+".join(map(str, a.seeds))
    return f"""# Does pre-training help? Measured at a tiny scale

Made by `python scripts/study.py {' '.join(shlex.quote(x) for x in a.argv)}` on {machine()},
in {minutes:.0f} min of runs, seeds {seeds}.

Each row starts fine-tuning differently; everything else is the same: the quickstart's tiny IPT
(n_feats 16, 4 heads, 1 layer, batch 8, Adam at 5e-4 with a cosine schedule{', ' + a.options if a.options else ''}),
{a.pretrain_steps} pre-training steps (one task a batch, L1 plus the contrastive loss at weight
0.1, on the {len(images_under_all(a))} photos of {', '.join(a.pool) or 'no --pool'} and the
{len(sample_photos('train'))} sample photos),
{a.finetune_steps} fine-tuning steps on the same photos for each task (all photos cut into
{POOL_TILE}x{POOL_TILE} tiles, which the loader reads faster). *mim*: masked image
modelling, half of the body's tokens masked at random per sample; *head from mim*: the sr2 or
denoise30 head, tail (its last convolution) and query start from the mim head's
(`--init_from mim`) instead of at random. Scores: official tiling, PSNR/SSIM on the Y channel
(sr2: Set5 x2, {2} pixels shaved; denoise30: the first {a.noise_images} CBSD68 images by name,
seeded noise), mean ± standard deviation over the seeds.

{table(found)}

![validation PSNR against fine-tuning step]({plot_name})

The plot: validation PSNR (fast tiling; Set5 and the first {a.val_images} CBSD68 images) every
{a.val_every} fine-tuning steps, mean over the seeds.
"""


def images_under_all(a: argparse.Namespace) -> list[str]:
    """The photos of every --pool folder."""
    return [p for folder in a.pool for p in images_under(folder)]


CONCLUSIONS = "## What the numbers show"  # written by a person: kept when the study is remade


def kept_conclusions(doc: str) -> str:
    """The doc's CONCLUSIONS section as it stands (empty when there is none yet)."""
    try:
        with open(doc, encoding="utf-8") as f:
            text = f.read()
    except OSError:
        return ""
    return "\n" + text[text.index(CONCLUSIONS):] if CONCLUSIONS in text else ""


def run_minutes(work: str) -> float:
    """The minutes the study's runs took (first to last line of each run's log), summed over
    every invocation of the study that made them."""
    total = 0.0
    for folder, _, files in os.walk(work):
        if "log.txt" in files:
            with open(os.path.join(folder, "log.txt"), encoding="utf-8") as f:
                stamps = LOG_TIME.findall(f.read())
            if stamps:
                first, last = (datetime.strptime(t, "%Y-%m-%d %H:%M:%S") for t in (stamps[0], stamps[-1]))
                total += (last - first).total_seconds()
    return total / 60


def main(argv: list[str] | None = None) -> int:
    """Run the study and write its doc and plot."""
    a = parse(argv)
    a.argv = sys.argv[1:] if argv is None else list(argv)
    try:
        found = study(a)
    except MetricsError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 1
    minutes = run_minutes(a.work)
    plot_path = os.path.splitext(a.doc)[0] + ".png"
    os.makedirs(os.path.dirname(os.path.abspath(a.doc)), exist_ok=True)
    plot(found, plot_path)
    text = report(a, found, minutes, os.path.basename(plot_path)) + kept_conclusions(a.doc)
    with open(a.doc, "w", encoding="utf-8") as f:
        f.write(text)
    print(table(found))
    print(f"study.py: {a.doc} and {plot_path} written in {minutes:.1f} min")
    return 0


if __name__ == "__main__":
    sys.exit(main())
