"""Does pre-training help at equal compute? Pre-train a tiny IPT three ways, fine-tune, score.

    python scripts/study.py --pool Sun80 --dir_data DATA [--seeds 1+2+3]   # run, record, report
    python scripts/study.py --report_only [--records docs/study]          # the report alone

1. pre-training: the paper's six tasks (+ contrastive loss) | mim only | six + mim, the same
   number of steps each (--pretrain_steps), on the photos of --pool plus the built-in samples;
2. fine-tuning of sr2 and denoise30 from each (--finetune_steps; from mim with the task's head
   and tail started from the mim head's, --init_from mim), and from scratch twice: for as many
   steps as pre-training and fine-tuning together (the reference at equal steps) and for as many
   as fit into the six row's training seconds (the reference at equal seconds);
3. evaluation: Set5 x2 (the authors' tiling) and CBSD68 sigma 30 (fast tiling), Y-channel
   PSNR/SSIM as in the paper, from --dir_data (prepared by scripts/prepare_data.py);
for each --seeds. Each run's small records (log.txt, training.json, metrics.json; no weights)
are copied to --records with the study's study.json, and the doc (--doc) gets a table per task
(mean, spread, and paired-by-seed 95% t-intervals of the differences to the references) and a
plot of validation PSNR against training step; --report_only re-makes both from --records.

Every run is a main.py run under --work; a finished one is not redone and an interrupted one
continues from its last save (--auto_resume), so a killed study continues where it stopped and
each run's training seconds (recorded by main.py in its training.json) count each step once. A
damaged record stops the study with one line naming the file and what to do. --launcher
"torchrun --nproc_per_node 8" runs each under that launcher, and --options "--n_feats 64
--num_layers 12 ..." scales the model. ``--smoke`` runs every stage at a few steps on two
images (CI).
"""
from __future__ import annotations

import argparse
import json
import math
import os
import platform
import re
import shlex
import shutil
import statistics
import subprocess
import sys
from dataclasses import dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import stops  # noqa: E402  (loads no torch)

if __name__ == "__main__":  # a stop signal while torch loads is kept, not a silent kill
    stops.early()

import main as ipt_main  # noqa: E402
import utility  # noqa: E402
from data.images import IMAGE_EXTENSIONS, ImageReadError, read_image, save_image, stem  # noqa: E402
from data.sample import sample_photos  # noqa: E402
from option import OptionParser  # noqa: E402  (errors in one line, exit status 2)
from report import markdown_text  # noqa: E402

SIX_SCALES, SIX_TASKS = "2+3+4+1+1+1", "sr2+sr3+sr4+derain+denoise30+denoise50"
PRETRAININGS = {  # name -> (--scale, --tasks, the contrastive loss or not)
    "six": (SIX_SCALES, SIX_TASKS, True),
    "mim": ("1", "mim", True),
    "six+mim": (SIX_SCALES + "+1", SIX_TASKS + "+mim", True),
}


@dataclass(frozen=True)
class Row:
    """One way to reach a fine-tuned model: which pre-training, where the task's head comes
    from, and how many fine-tuning steps (--finetune_steps; 'steps': as many as pre-training and
    fine-tuning together; 'seconds': as many as fit into the SECONDS_MATCH row's seconds)."""

    name: str
    pretraining: str | None = None
    init_from: str = ""  # --init_from of the fine-tuning: '' the task's own head
    budget: str = "finetune"


REFERENCE = Row("none", budget="steps")  # fine-tuning alone, at equal steps
SECONDS_REFERENCE = Row("none, equal seconds", budget="seconds")
SECONDS_MATCH = "six"  # the paper's pre-training: the row whose seconds SECONDS_REFERENCE gets
ROWS = (REFERENCE, Row("six", "six"), Row("mim, head from mim", "mim", "mim"), Row("six+mim", "six+mim"))
RUN_ROWS = (*ROWS, SECONDS_REFERENCE)  # in the order they run: SECONDS_REFERENCE needs the others
TASKS = {"sr2": "Set5", "denoise30": "CBSD68"}  # fine-tuning task -> its test set
TILING = {"sr2": "official", "denoise30": "fast"}  # official on all of CBSD68: ~7 min a model here
BASELINE = {"sr2": "bicubic", "denoise30": "noisy input"}
SAVE_EVERY = 200  # steps between saves, so a killed run loses little
TINY = ["--n_feats", "16", "--num_heads", "4", "--num_layers", "1", "--batch_size", "8",
        "--lr", "5e-4", "--schedule", "cosine"]
NO_VALIDATION = "1000000000"
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
    p.add_argument("--dir_data", help="holds benchmark/Set5 and benchmark/CBSD68 (not with --report_only)")
    p.add_argument("--work", default=os.path.join("experiment", "study"), help="runs go here")
    p.add_argument("--records", default=os.path.join("docs", "study"),
                   help="the runs' small records are copied here; --report_only reads them")
    p.add_argument("--doc", default=os.path.join("docs", "STUDY.md"))
    p.add_argument("--report_only", action="store_true",
                   help="re-make --doc and its plot from --records alone (no run, no data)")
    p.add_argument("--seeds", default="1+2+3", help="seeds, A+B+C")
    p.add_argument("--pretrain_steps", type=int, default=400)
    p.add_argument("--finetune_steps", type=int, default=1000)
    p.add_argument("--val_every", type=int, default=250, help="fine-tuning steps between validations")
    p.add_argument("--noise_images", type=int, default=68,
                   help="CBSD68 images scored (the first N by name; 68: all)")
    p.add_argument("--val_images", type=int, default=3, help="CBSD68 images validated on")
    p.add_argument("--options", default="", help="more main.py options for every run (model size...)")
    p.add_argument("--launcher", default="", help="run each main.py under this (e.g. torchrun ...)")
    p.add_argument("--smoke", action="store_true", help="a few steps on two images: checks the wiring")
    a = p.parse_args(argv)
    a.seeds = parse_seeds(p, a.seeds)
    if not a.report_only and not a.dir_data:
        p.error("--dir_data: give the folder of the prepared test sets (or --report_only)")
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
    if code == stops.INTERRUPTED:  # a stop signal: the study stops as main.py did
        print(f"{PROG}: stopped by a signal; run the study again to go on: finished runs are "
              f"kept, the interrupted one continues from its last save", file=sys.stderr)
        raise SystemExit(stops.INTERRUPTED)
    if code != 0:
        raise SystemExit(f"study.py: main.py {' '.join(args)} failed (exit status {code}); "
                         f"fix it and run the study again: finished runs are kept")


def done(run: str, what: str, steps: int | None = None) -> bool:
    """Whether a run finished already: its training.json says so (at ``steps`` steps, when
    given), or its metrics.json exists (any file there: a bad one is refused when read, not
    silently redone)."""
    if what == "training":
        record = utility.read_training_record(os.path.join(run, "model", "model_latest.pt"))
        finished = bool(record and record.get("finished"))
        if finished and steps is not None and record.get("max_steps") != steps:
            raise StudyError(f"{run}: a finished run of {record.get('max_steps')} steps, where this "
                             f"study trains {steps}: give another --work, or delete that folder")
        return finished
    return os.path.lexists(os.path.join(run, METRICS))


class StudyError(utility.RecordError):
    """A run's records that do not fit the study: one line naming the folder and what to do."""


def run_dir(root: str, seed: int, what: str) -> str:
    """ROOT/seedN/WHAT: where one run of the study lives (its records keep the same layout)."""
    return os.path.join(root, f"seed{seed}", what)


def train(a: argparse.Namespace, run: str, steps: int, args: list[str]) -> None:
    """A training run of ``steps`` steps, unless it finished; an interrupted one continues from
    its last save (``--auto_resume``), so its training seconds count each step once."""
    if not done(run, "training", steps):
        run_main([*TINY, *args, "--data_train", "ImageNet", "--max_steps", str(steps),
                  "--save", run, "--auto_resume", "--save_every", str(SAVE_EVERY), *common(a)],
                 a.launcher)


def pretrain(a: argparse.Namespace, name: str, seed: int, data: str) -> str:
    """Pre-train ``name`` (its heads, one task a batch, the contrastive loss or not); the model file."""
    run = run_dir(a.work, seed, f"pretrain_{name}")
    scale, tasks, contrastive = PRETRAININGS[name]
    train(a, run, a.pretrain_steps, ["--scale", scale, "--tasks", tasks,
                                     *(["--con_loss"] if contrastive else []), "--dir_data", data,
                                     "--seed", str(seed), "--test_every", NO_VALIDATION])
    return os.path.join(run, "model", "model_latest.pt")


def finetune_name(row: Row, task: str) -> str:
    """The folder of a row's fine-tuning of ``task``."""
    return f"finetune_{slug(row.name)}_{task}"


def row_steps(a: argparse.Namespace, root: str, row: Row, task: str, seed: int) -> int:
    """The fine-tuning steps of a row: --finetune_steps; their sum with --pretrain_steps (the
    reference at equal steps); or as many as the reference's own speed fits into the training
    seconds of the SECONDS_MATCH row (its pre-training and its fine-tuning of the task)."""
    if row.budget == "finetune":
        return a.finetune_steps
    total = a.pretrain_steps + a.finetune_steps
    if row.budget == "steps":
        return total
    match = next(r for r in ROWS if r.name == SECONDS_MATCH)
    target = (train_seconds(run_dir(root, seed, f"pretrain_{match.pretraining}"))
              + train_seconds(run_dir(root, seed, finetune_name(match, task))))
    per_step = train_seconds(run_dir(root, seed, finetune_name(REFERENCE, task))) / total
    return max(1, round(target / per_step)) if per_step > 0 else total


def finished_record(run: str) -> dict:
    """A finished run's training.json, with its training seconds; StudyError otherwise."""
    path = os.path.join(run, "model", utility.TRAINING_RECORD)
    try:
        record = utility.read_training_record(os.path.join(run, "model", "model_latest.pt"),
                                              strict=True)
    except utility.RecordError as e:
        raise StudyError(f"{e}") from None
    if not record or not record.get("finished") or "train_seconds" not in record:
        raise StudyError(f"{path}: not the record of a finished run with its training seconds; "
                         f"delete the run's folder {os.path.abspath(run)} to redo it")
    return record


def train_seconds(run: str) -> float:
    """The training seconds a finished run recorded in its training.json."""
    return float(finished_record(run)["train_seconds"])


def finetune(a: argparse.Namespace, row: Row, task: str, seed: int, data: str,
             checkpoints: dict[str, str]) -> str:
    """Fine-tune ``task`` from the row's pre-training (validating on the way); the run."""
    run = run_dir(a.work, seed, finetune_name(row, task))
    start = []
    if row.pretraining:
        start = ["--pretrain", checkpoints[row.pretraining]]
        start += ["--init_from", row.init_from] if row.init_from else []
    train(a, run, row_steps(a, a.work, row, task, seed),
          ["--scale", "2" if task == "sr2" else "1", "--task", task, *start, "--dir_data", data,
           "--seed", str(seed), "--test_every", str(a.val_every), "--data_test", TASKS[task],
           "--chop", "fast"])
    return run


def evaluate(a: argparse.Namespace, run: str, task: str, test_data: str) -> dict:
    """The fine-tuned model's metrics on the task's test set (TILING of the task)."""
    out = run + "_eval"
    if not done(out, "evaluation"):
        run_main(["--test_only", "--scale", "2" if task == "sr2" else "1",
                  "--task", task, "--pretrain", os.path.join(run, "model", "model_latest.pt"),
                  "--data_test", TASKS[task], "--dir_data", test_data, "--save", out,
                  "--chop", "fast" if a.smoke else TILING[task], *common(a)],
                 a.launcher)
    return scores(out, TASKS[task], task)


def common(a: argparse.Namespace) -> list[str]:
    """Options of every run: logging only now and then, then --options (which win)."""
    return ["--print_every", "100", *shlex.split(a.options)]


def slug(name: str) -> str:
    """A folder-safe form of a row's name."""
    return re.sub(r"[^a-z0-9+]+", "_", name.lower()).strip("_")


def run_all(a: argparse.Namespace) -> None:
    """Every run of every seed: the pre-trainings, then per task each row's fine-tuning and
    evaluation, the equal-seconds reference last (its steps come from the others' seconds)."""
    data, test = os.path.join(a.work, "data"), os.path.join(a.work, "test")
    make_pool(a.pool, data, a.smoke)
    test_sets(a.dir_data, data, a.val_images)  # what fine-tuning validates on
    test_sets(a.dir_data, test, a.noise_images)  # what the table scores
    for seed in a.seeds:
        checkpoints = {name: pretrain(a, name, seed, data) for name in PRETRAININGS}
        for task in TASKS:
            for row in RUN_ROWS:
                evaluate(a, finetune(a, row, task, seed, data, checkpoints), task, test)


# ----------------------------------------------------------------------------------------
# The records: the runs' small files, copied under --records, and the study's own study.json
# ----------------------------------------------------------------------------------------
RECORD_FILES = ("log.txt", os.path.join("model", utility.TRAINING_RECORD), METRICS)
MANIFEST = "study.json"
MANIFEST_MAX_BYTES = 1 << 20
LOG_MAX_BYTES = 16 << 20  # a run's log.txt at --print_every 100 is a few kB
MANIFEST_COUNTS = ("pretrain_steps", "finetune_steps", "val_every", "noise_images", "val_images",
                   "pool_photos", "sample_photos")
MANIFEST_TEXTS = ("options", "machine")


def run_names(seeds: list[int]) -> list[str]:
    """Every run folder of the study, relative to its --work (and to its records)."""
    names = []
    for seed in seeds:
        names += [os.path.join(f"seed{seed}", f"pretrain_{name}") for name in PRETRAININGS]
        for task in TASKS:
            for row in RUN_ROWS:
                run = os.path.join(f"seed{seed}", finetune_name(row, task))
                names += [run, run + "_eval"]
    return names


def collect(a: argparse.Namespace) -> None:
    """Copy each run's small records (no weights) from --work into --records, with study.json."""
    for name in run_names(a.seeds):
        for file in RECORD_FILES:
            source = os.path.join(a.work, name, file)
            if os.path.isfile(source):
                target = os.path.join(a.records, name, file)
                os.makedirs(os.path.dirname(target), exist_ok=True)
                shutil.copyfile(source, target)
    manifest = {"seeds": a.seeds, **{k: getattr(a, k) for k in MANIFEST_COUNTS[:5]},
                "pool_photos": len(images_under_all(a)), "sample_photos": len(sample_photos("train")),
                "options": a.options, "machine": machine(), "pool": a.pool, "command": a.argv}
    utility.write_json(os.path.join(a.records, MANIFEST), manifest)


def read_manifest(records: str) -> dict:
    """RECORDS/study.json, checked key by key; StudyError naming the file and key otherwise.
    It says how the study was run (the report's text), never where anything is written."""
    path = os.path.join(records, MANIFEST)
    fix = "re-make it by running the study (finished runs are kept), or give another --records"
    if not os.path.isfile(path) or os.path.getsize(path) > MANIFEST_MAX_BYTES:
        raise StudyError(f"{path}: not a regular file of at most {MANIFEST_MAX_BYTES} bytes; {fix}")
    try:
        with open(path, encoding="utf-8") as f:
            record = json.load(f)
    except (OSError, ValueError, RecursionError) as e:
        raise StudyError(f"{path}: not readable JSON ({type(e).__name__}); {fix}") from None
    if not isinstance(record, dict):
        raise StudyError(f"{path}: not a JSON object; {fix}")
    seeds = record.get("seeds")
    if not (isinstance(seeds, list) and seeds and all(utility.is_count(s, 0, MAX_SEED) for s in seeds)
            and len(set(seeds)) == len(seeds)):
        raise StudyError(f"{path}: key 'seeds': not a list of distinct seeds; {fix}")
    for key in MANIFEST_COUNTS:
        if not utility.is_count(record.get(key), 1 if key not in ("pool_photos", "sample_photos") else 0):
            raise StudyError(f"{path}: key {key!r}: not a count; {fix}")
    for key in MANIFEST_TEXTS:
        if not isinstance(record.get(key), str):
            raise StudyError(f"{path}: key {key!r}: not a string; {fix}")
    for key in ("pool", "command"):
        if not (isinstance(record.get(key), list) and all(isinstance(x, str) for x in record[key])):
            raise StudyError(f"{path}: key {key!r}: not a list of strings; {fix}")
    return {k: record[k] for k in ("seeds", *MANIFEST_COUNTS, *MANIFEST_TEXTS, "pool", "command")}


@dataclass(frozen=True)
class Result:
    """One row's fine-tuning of one task with one seed, as its records tell it."""

    scores: dict[str, float]  # the evaluation's SCORES
    steps: int  # training steps, the pre-training's included
    seconds: float  # training seconds, the pre-training's included
    curve: list[tuple[int, float]]  # (training step, pre-training included; validation PSNR)


def gather(records: str, manifest: dict) -> dict[int, dict[str, dict[str, Result]]]:
    """{seed: {row: {task: Result}}} from the records of every run."""
    found: dict[int, dict[str, dict[str, Result]]] = {}
    for seed in manifest["seeds"]:
        found[seed] = {}
        for row in RUN_ROWS:
            pre_steps, pre_seconds = 0, 0.0
            if row.pretraining:
                pre = finished_record(run_dir(records, seed, f"pretrain_{row.pretraining}"))
                pre_steps, pre_seconds = int(pre.get("step", 0)), float(pre["train_seconds"])
            found[seed][row.name] = {}
            for task in TASKS:
                run = run_dir(records, seed, finetune_name(row, task))
                fine = finished_record(run)
                found[seed][row.name][task] = Result(
                    scores(run + "_eval", TASKS[task], task), pre_steps + int(fine.get("step", 0)),
                    pre_seconds + float(fine["train_seconds"]),
                    [(pre_steps + k, v) for k, v in curve(run)])
    return found


def curve(run: str) -> list[tuple[int, float]]:
    """(step, validation PSNR) of a training run, from its log (a step validated twice, before
    and after a resume: the later); step 0 is the input's PSNR."""
    path = os.path.join(run, "log.txt")
    if not os.path.isfile(path) or os.path.getsize(path) > LOG_MAX_BYTES:
        raise StudyError(f"{path}: not a regular file of at most {LOG_MAX_BYTES} bytes; delete "
                         f"the run's folder {os.path.abspath(run)} to redo it")
    with open(path, encoding="utf-8", errors="replace") as f:
        points = {int(m.group(1)): float(m.group(2)) for m in VALIDATION.finditer(f.read())}
    start = scores(run)["baseline_psnr"]  # the last validation's metrics.json
    return [(0, start), *((k, v) for k, v in sorted(points.items()) if math.isfinite(v))]


# ----------------------------------------------------------------------------------------
# Statistics: mean, spread, and paired-by-seed intervals of differences
# ----------------------------------------------------------------------------------------
def t975(df: int) -> float:
    """Student's t 0.975 quantile (a two-sided 95% interval) for ``df`` degrees of freedom."""
    if df < 1:
        raise ValueError("an interval needs two seeds")
    from scipy.stats import t  # installed with scikit-image; only the report needs it
    return float(t.ppf(0.975, df))


def paired_interval(differences: list[float]) -> tuple[float, float, float] | None:
    """(mean, low, high): the 95% t-interval of the mean of per-seed differences (None: one seed)."""
    if len(differences) < 2:
        return None
    mean = statistics.mean(differences)
    half = t975(len(differences) - 1) * statistics.stdev(differences) / math.sqrt(len(differences))
    return mean, mean - half, mean + half


def spread(values: list[float], digits: int = 3) -> str:
    """mean ± standard deviation (over seeds), or the value for one seed."""
    if len(values) == 1:
        return f"{values[0]:.{digits}f}"
    return f"{statistics.mean(values):.{digits}f} ± {statistics.stdev(values):.{digits}f}"


def difference(found: dict, row: str, reference: str, task: str) -> str:
    """The PSNR difference of ``row`` to ``reference``: mean [95% interval], bold when the
    interval leaves out 0."""
    diffs = [found[s][row][task].scores["psnr_y"] - found[s][reference][task].scores["psnr_y"]
             for s in found]
    interval = paired_interval(diffs)
    if interval is None:
        return f"{diffs[0]:+.3f}"
    mean, low, high = interval
    text = f"{mean:+.3f} [{low:+.3f}, {high:+.3f}]"
    return f"**{text}**" if low > 0 or high < 0 else text


def table(found: dict, task: str) -> str:
    """One task's Markdown table: the input, the two references, the pre-trained rows."""
    seeds = list(found)
    lines = [f"| start | steps (pre-training + fine-tuning) | training seconds | PSNR (dB, Y) | "
             f"SSIM (Y) | Δ PSNR to {REFERENCE.name}, equal steps | Δ PSNR to "
             f"{SECONDS_REFERENCE.name} |", "|---|---|---|---|---|---|---|"]
    first = found[seeds[0]][REFERENCE.name][task].scores
    lines.append(f"| *input ({BASELINE[task]})* | | | {first['baseline_psnr']:.3f} | "
                 f"{first['baseline_ssim']:.4f} | | |")
    for row in (REFERENCE, SECONDS_REFERENCE, *ROWS[1:]):
        runs = [found[s][row.name][task] for s in seeds]
        pre = f"{found[seeds[0]][row.name][task].steps - finetune_of(found, row.name, task)} + " \
            if row.pretraining else ""
        steps = sorted({r.steps for r in runs})
        steps_text = pre + (f"{finetune_of(found, row.name, task)}" if len(steps) == 1 else
                            f"{min(steps)}–{max(steps)}")
        cells = [row.name, steps_text, spread([r.seconds for r in runs], 0),
                 spread([r.scores["psnr_y"] for r in runs]),
                 spread([r.scores["ssim_y"] for r in runs], 4)]
        cells += ["reference" if row is REFERENCE else
                  "" if row is SECONDS_REFERENCE else difference(found, row.name, REFERENCE.name, task)]
        cells += ["reference" if row is SECONDS_REFERENCE else
                  "" if row is REFERENCE else difference(found, row.name, SECONDS_REFERENCE.name, task)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def finetune_of(found: dict, row: str, task: str) -> int:
    """The fine-tuning steps of a row (its first seed's; the same for every seed but the
    equal-seconds reference's)."""
    r = next(r for r in RUN_ROWS if r.name == row)
    first = found[next(iter(found))][row][task]
    return first.steps - (first.curve[0][0] if r.pretraining else 0)


def plot(found: dict, path: str) -> None:
    """Validation PSNR against training step (pre-training included), one panel per task, mean
    over seeds."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    fig, axes = plt.subplots(1, len(TASKS), figsize=(5.5 * len(TASKS), 3.8))
    for ax, task in zip(axes, TASKS, strict=False):
        for row in (REFERENCE, SECONDS_REFERENCE, *ROWS[1:]):
            curves = [dict(found[s][row.name][task].curve[1:]) for s in found]
            steps = sorted(set.intersection(*(set(c) for c in curves)))
            ax.plot(steps, [statistics.mean(c[k] for c in curves) for k in steps], marker=".",
                    label=row.name, linestyle=":" if row is SECONDS_REFERENCE else "-")
        first = found[next(iter(found))][REFERENCE.name][task].curve
        ax.axhline(first[0][1], color="grey", linestyle="--", label=BASELINE[task])
        ax.set(title=f"{task}: validation while fine-tuning", ylabel="PSNR (dB, Y)",
               xlabel="training step, pre-training included")
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
        model = utility.cpuinfo("model name") or platform.processor() or platform.machine()
        where = f"{model}, {utility.usable_cpus()} usable cores"
    return f"{where}; torch {torch.__version__}"


def excluding_zero(found: dict) -> list[str]:
    """'row, task, reference: mean' for every difference whose interval leaves out 0."""
    out = []
    for task in TASKS:
        for row in ROWS[1:]:
            for ref in (REFERENCE, SECONDS_REFERENCE):
                text = difference(found, row.name, ref.name, task)
                if text.startswith("**"):
                    out.append(f"{row.name} ({task}, to {ref.name}): {text.strip('*')} dB")
    return out


def report(m: dict, found: dict, plot_name: str) -> str:
    """STUDY.md's text around the tables and the plot."""
    seeds = "+".join(map(str, m["seeds"]))
    command = " ".join(shlex.quote(x) for x in m["command"])
    pool = ", ".join(m["pool"]) or "no --pool"
    total = m["pretrain_steps"] + m["finetune_steps"]
    hours = sum(r.seconds for s in found for row in found[s].values() for r in row.values()) / 3600
    tables = "\n\n".join(f"### {task}: {TASKS[task]}{' x2' if task == 'sr2' else ' σ30'}\n\n"
                         f"{table(found, task)}" for task in TASKS)
    clear = "\n".join(f"- {line}" for line in excluding_zero(found)) or "- none"
    return f"""# Does pre-training help? Measured at equal compute, at a tiny scale

Made by `python scripts/study.py` with {markdown_text(command)} on {markdown_text(m['machine'])},
seeds {seeds}; the document and its plot are re-made from the committed records in
`docs/study/` by `python scripts/study.py --report_only`.

**The question.** Does pre-training on many tasks, then fine-tuning, beat fine-tuning alone
*at the same cost*? The pre-training is charged in full to each task. Each row starts the
fine-tuning of sr2 and of denoise30 differently; everything else is the same: the quickstart's
tiny IPT (n_feats 16, 4 heads, 1 layer, batch 8, Adam at 5e-4 with a cosine schedule over each
run{', ' + markdown_text(m['options']) if m['options'] else ''}), trained on the
{m['pool_photos']} photos of {markdown_text(pool)} and the {m['sample_photos']} built-in sample
photos, cut into {POOL_TILE}x{POOL_TILE} tiles.

- **{REFERENCE.name}** (the reference at equal steps): fine-tuning only, for {total} steps:
  as many as a pre-trained row's {m['pretrain_steps']} pre-training and {m['finetune_steps']}
  fine-tuning steps together.
- **{SECONDS_REFERENCE.name}** (the reference at equal seconds): fine-tuning only, for as many
  steps as its own measured speed fits into the training seconds of the *{SECONDS_MATCH}* row
  (that seed's pre-training plus its fine-tuning of the task).
- **six**: {m['pretrain_steps']} steps on the paper's six tasks (sr2, sr3, sr4, derain,
  denoise30, denoise50; one task a batch, L1 plus the contrastive loss at weight 0.1), then
  {m['finetune_steps']} fine-tuning steps of the task's own head.
- **mim, head from mim**: the same, pre-trained on masked image modelling alone (half the
  body's tokens masked at random per sample), the task's head, tail (its last convolution) and
  query started from the mim head's (`--init_from mim`).
- **six+mim**: the six tasks and mim, one task a batch.

*Training seconds* are what each run recorded in its training.json (the wall-clock time of its
training steps, data loading included; validation, saving and any time between interrupted
sessions left out), on an otherwise idle machine; {hours:.1f} h in all. Scores: sr2 on Set5 x2
with the authors' tiling (`--chop official`), denoise30 on all {m['noise_images']} CBSD68 images
with `--chop fast` (the authors' tiling takes about 7 minutes an evaluation here; the two
differ by a few hundredths of a dB), seeded noise; PSNR and SSIM on the Y channel (sr2: 2
pixels shaved); mean ± standard deviation over the seeds. Each Δ is the mean over seeds of the
per-seed difference to the reference, with its paired 95% t-interval; **bold**: the interval
leaves out 0.

{tables}

Differences larger than their interval:

{clear}

![validation PSNR against training step]({plot_name})

The plot: validation PSNR (fast tiling; Set5 and the first {m['val_images']} CBSD68 images)
every {m['val_every']} fine-tuning steps, mean over the seeds, against the run's training step
with its pre-training counted (the pre-trained rows start at {m['pretrain_steps']}).

**The data**, public sets under their usual names: Set5 (the `testsets/Set5` folder of the
SwinIR repository, JingyunLiang/SwinIR), CBSD68 and Sun-Hays 80 (the `CBSD68` and
`CSun_Hays80` folders of majedelhelou/denoising_datasets). Prepare the test sets with
`python scripts/prepare_data.py Set5 CBSD68 --out DATA` (folders or archives as downloaded),
then run `python scripts/study.py --pool CSun_Hays80 --dir_data DATA`.
"""


CONCLUSIONS = "## What the numbers show"  # written by a person: kept when the study is remade


def kept_conclusions(doc: str) -> str:
    """The doc's CONCLUSIONS section as it stands (empty when there is none yet)."""
    try:
        with open(doc, encoding="utf-8") as f:
            text = f.read()
    except OSError:
        return ""
    return "\n" + text[text.index(CONCLUSIONS):] if CONCLUSIONS in text else ""


def images_under_all(a: argparse.Namespace) -> list[str]:
    """The photos of every --pool folder."""
    return [p for folder in a.pool for p in images_under(folder)]


def write_report(records: str, doc: str) -> dict:
    """--doc and its plot (beside it, .png) from the records alone; what was found."""
    manifest = read_manifest(records)
    found = gather(records, manifest)
    plot_path = os.path.splitext(doc)[0] + ".png"
    os.makedirs(os.path.dirname(os.path.abspath(doc)), exist_ok=True)
    plot(found, plot_path)
    utility.write_text(doc, report(manifest, found, os.path.basename(plot_path)) + kept_conclusions(doc))
    return found


def main(argv: list[str] | None = None) -> int:
    """Run the study (unless --report_only), copy its records, and write its doc and plot."""
    a = parse(argv)
    a.argv = sys.argv[1:] if argv is None else list(argv)
    try:
        if not a.report_only:
            run_all(a)
            collect(a)
        found = write_report(a.records, a.doc)
    except utility.RecordError as e:  # MetricsError, StudyError
        print(f"{PROG}: {e}", file=sys.stderr)
        return 1
    for task in TASKS:
        print(table(found, task))
    print(f"study.py: {a.doc} and its plot written from {a.records}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
