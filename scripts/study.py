"""Does pre-training help at equal compute? Pre-train a tiny IPT three ways, fine-tune, score.

    python -m scripts.study --pool Sun80 --dir_data DATA [--seeds 1+2+3]   # run, record, report
    python -m scripts.study --report_only [--records docs/study]          # the report alone

Pre-training on six tasks, mim, or both, then fine-tuning sr2 and denoise30, against fine-tuning
alone at equal steps and at equal seconds, for each seed: docs/STUDY.md says what each row is.
Every run is a main.py run under --work: a finished one is not redone, an interrupted one
continues from its last save, so a killed study continues where it stopped. The runs' small
records go to --records; --doc gets a table per task and a plot, which --report_only re-makes
from the records alone.
"""
from __future__ import annotations

import argparse
import gc
import itertools
import os
import re
import shlex
import shutil
import subprocess
import sys

import stops  # (loads no torch)

if __name__ == "__main__":  # a stop signal while torch loads is kept, not a silent kill
    stops.early()
    gc.disable()  # while torch loads, until utility.collect_again: as main.py starts

import torch  # noqa: E402

import main as ipt_main  # noqa: E402
import records  # noqa: E402
import runfolder  # noqa: E402
import utility  # noqa: E402
from data.images import ImageReadError, read_image, save_image, stem  # noqa: E402
from data.listing import walk_images  # noqa: E402
from data.sample import sample_photos  # noqa: E402
from option import OptionParser  # noqa: E402  (errors in one line, exit status 2)
from scripts import cli, study_report  # noqa: E402
from scripts.study_report import PROG, TASKS, Row, StudyError, finetune_name, run_dir, scores  # noqa: E402
from scripts.timing import cpu_model  # noqa: E402

SEED = re.compile(r"[0-9]{1,19}")  # records.MAX_SEED has 19 digits
SIX_SCALES, SIX_TASKS = "2+3+4+1+1+1", "sr2+sr3+sr4+derain+denoise30+denoise50"
PRETRAININGS = {"six": (SIX_SCALES, SIX_TASKS), "mim": ("1", "mim"),  # name -> (--scale, --tasks)
                "six+mim": (SIX_SCALES + "+1", SIX_TASKS + "+mim")}  # each with the contrastive loss
TILING = {"sr2": "official", "denoise30": "fast"}  # official on all of CBSD68: ~7 min a model here
SAVE_EVERY = 200  # steps between saves, so a killed run loses little
# at least 1 (main.py reads --max_steps 0 as "train --epochs"); CBSD68 holds 68 images
LIMITS = {**dict.fromkeys(("pretrain_steps", "finetune_steps", "val_every"), (1, utility.MAX_COUNT)),
          "noise_images": (1, 68), "val_images": (1, 68)}
TINY = ["--n_feats", "16", "--num_heads", "4", "--num_layers", "1", "--batch_size", "8",
        "--lr", "5e-4", "--schedule", "cosine"]
NO_VALIDATION = "1000000000"
RECORD_FILES = ("log.txt", os.path.join("model", utility.TRAINING_RECORD), study_report.METRICS)


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
    p.add_argument("--options", default="", help="more main.py options for every run (--n_feats 64 ...)")
    p.add_argument("--launcher", default="", help="run each main.py under this (torchrun --nproc_per_node 8)")
    p.add_argument("--smoke", action="store_true", help="a few steps on two images: checks the wiring")
    p.add_argument("--variant", default="main", choices=("main", "ema"),
                   help="main: the rows above; ema: the equal-steps reference again with --ema_decay "
                        "0.995, on sr2 (its records join the main study's)")
    a = p.parse_args(argv)
    words = a.seeds.split("+")  # distinct integers 0..records.MAX_SEED
    if not all(SEED.fullmatch(w) for w in words):
        p.error(f"--seeds {a.seeds!r}: give non-negative integers joined by +, like 1+2")
    if max(map(int, words)) > records.MAX_SEED or len(set(map(int, words))) != len(words):
        p.error(f"--seeds {a.seeds!r}: give distinct seeds of at most {records.MAX_SEED}")
    a.seeds = [int(w) for w in words]
    if not a.report_only and not a.dir_data:
        p.error("--dir_data: give the folder of the prepared test sets (or --report_only)")
    cli.check_limits(p, a, LIMITS)
    cli.check_paths(p, a, ["work", "records", "doc"])
    if a.doc.lower().endswith(".png"):  # the plot beside the doc would be written over it
        p.error(f"--doc {a.doc}: give a Markdown file; the plot is written beside it as .png")
    for name in ("options", "launcher"):
        try:
            shlex.split(getattr(a, name))
        except ValueError as e:
            p.error(f"--{name} {getattr(a, name)!r}: {e} (quote it as a shell would)")
    if a.smoke:
        a.pretrain_steps, a.finetune_steps, a.val_every = 4, 4, 2
        a.noise_images, a.val_images = 2, 1
    return a


# Data: the training pool and the (subsets of the) test sets, as main.py reads them
def make_pool(folders: list[str], root: str, smoke: bool) -> None:
    """ROOT/ImageNet/: the photos of ``folders`` and the sample photos, cut into POOL_TILE
    squares (a small PNG decodes in a few ms, a 1024-pixel JPEG in 35: the loader kept up with
    the tiny model only on tiles)."""
    target, tile = os.path.join(root, "ImageNet"), study_report.POOL_TILE
    os.makedirs(target, exist_ok=True)
    photos = [(f"pool{i}_{stem(path)}", path) for i, folder in enumerate(folders)
              for path in images_under(folder)[:2 if smoke else None]]
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
        corners = [(y, x) for y in range(0, h - tile + 1, tile) for x in range(0, w - tile + 1, tile)]
        for k, (y, x) in enumerate(corners):
            save_image(image[:, y:y + tile, x:x + tile], os.path.join(target, f"{name}_{k}.png"))
    if unreadable:
        print(f"{PROG}: warning: {len(unreadable)} of {len(photos)} pool photo(s) could not be "
              f"read and were left out", file=sys.stderr, flush=True)


def images_under(folder: str) -> list[str]:
    """The image files under ``folder``, sorted (any depth; regular files only: a FIFO would hang a read)."""
    if not os.path.isdir(folder):
        raise SystemExit(f"{PROG}: --pool {folder}: not a folder")
    return walk_images(folder)[0]


def test_sets(dir_data: str, root: str, images: int) -> None:
    """ROOT/benchmark/Set5 (all of it) and ROOT/benchmark/CBSD68 (its first ``images`` images)."""
    bench = os.path.join(root, "benchmark")
    os.makedirs(os.path.join(bench, "CBSD68", "HR"), exist_ok=True)
    set5 = os.path.join(dir_data, "benchmark", "Set5")
    noise = os.path.join(dir_data, "benchmark", "CBSD68", "HR")
    for folder, what in ((set5, "Set5"), (noise, "CBSD68/HR")):
        if not os.path.isdir(folder):
            raise SystemExit(f"{PROG}: --dir_data {dir_data}: no benchmark/{what}; prepare it "
                             f"with python -m scripts.prepare_data ... --out {dir_data}")
    links = [(set5, os.path.join(bench, "Set5"))]
    links += [(os.path.join(noise, name), os.path.join(bench, "CBSD68", "HR", name))
              for name in sorted(os.listdir(noise))[:images]]
    for source, name in links:
        if not os.path.lexists(name):  # kept when it exists
            os.symlink(os.path.abspath(source), name)


# Runs
def run_main(args: list[str], launcher: str) -> None:
    """One main.py run, in this process or under the launcher; stops the study if it fails."""
    if launcher:
        try:
            code = subprocess.call([*shlex.split(launcher), os.path.join(cli.REPOSITORY, "main.py"), *args])
        except OSError as e:
            raise SystemExit(f"{PROG}: --launcher {launcher!r}: cannot start it ({e.strerror})") from None
    else:
        code = ipt_main.main(args)
    if code == stops.INTERRUPTED:  # a stop signal: the study stops as main.py did
        print(f"{PROG}: stopped by a signal; run the study again to go on: finished runs are "
              f"kept, the interrupted one continues from its last save", file=sys.stderr)
        raise SystemExit(stops.INTERRUPTED)
    if code != 0:
        raise SystemExit(f"{PROG}: main.py {' '.join(args)} failed (exit status {code}); "
                         f"fix it and run the study again: finished runs are kept")


def done(run: str, what: str, steps: int | None = None) -> bool:
    """Whether a run finished already: its training.json says so (at ``steps`` steps, when
    given), or its metrics.json exists (any file there: a bad one is refused when read, not
    silently redone)."""
    if what == "training":
        record = records.read_training_record(os.path.join(run, "model", "model_latest.pt"))
        finished = bool(record and record.get("finished"))
        if finished and steps is not None and record.get("max_steps") != steps:
            raise StudyError(f"{run}: a finished run of {record.get('max_steps')} steps, where this "
                             f"study trains {steps}: give another --work, or delete that folder")
        return finished
    return os.path.lexists(os.path.join(run, study_report.METRICS))


def common(a: argparse.Namespace) -> list[str]:
    """Options of every run: logging only now and then, then --options (which win)."""
    return ["--print_every", "100", *shlex.split(a.options)]


def task_options(task: str) -> list[str]:
    """main.py's options of a run of ``task``, scored on its test set."""
    return ["--scale", "2" if task == "sr2" else "1", "--task", task, "--data_test", TASKS[task]]


def launch(a: argparse.Namespace, save: str, args: list[str], steps: int | None = None) -> None:
    """One main.py run into ``save``, unless it finished: with ``steps`` a training run of that
    many steps on the pool (an interrupted one continues from its last save, ``--auto_resume``,
    so its training seconds count each step once), else an evaluation."""
    if done(save, "training" if steps else "evaluation", steps):
        return
    if steps:
        args = [*TINY, *args, "--data_train", "ImageNet", "--max_steps", str(steps), "--auto_resume",
                "--save_every", str(SAVE_EVERY)]
    run_main([*args, "--save", save, *common(a)], a.launcher)


def row_steps(a: argparse.Namespace, root: str, row: Row, task: str, seed: int) -> int:
    """The fine-tuning steps of a row: --finetune_steps; their sum with --pretrain_steps (the
    reference at equal steps); or as many as the reference's own speed fits into the training
    seconds of the SECONDS_MATCH row (its pre-training and its fine-tuning of the task)."""
    if row.budget == "finetune":
        return a.finetune_steps
    total = a.pretrain_steps + a.finetune_steps
    if row.budget == "steps":
        return total
    match = next(r for r in study_report.ROWS if r.name == study_report.SECONDS_MATCH)

    def seconds(run: str) -> float:  # the training seconds of a finished run of this seed
        return float(study_report.finished_record(run_dir(root, seed, run))["train_seconds"])
    target = seconds(f"pretrain_{match.pretraining}") + seconds(finetune_name(match, task))
    per_step = seconds(finetune_name(study_report.REFERENCE, task)) / total
    return max(1, round(target / per_step)) if per_step > 0 else total


def evaluate(a: argparse.Namespace, run: str, task: str, test_data: str) -> dict:
    """The fine-tuned model's metrics on the task's test set (TILING of the task)."""
    launch(a, run + "_eval", ["--test_only", *task_options(task), "--dir_data", test_data,
                              "--pretrain", os.path.join(run, "model", "model_latest.pt"),
                              "--chop", "fast" if a.smoke else TILING[task]])
    return scores(run + "_eval", TASKS[task], task)


def run_all(a: argparse.Namespace) -> None:
    """Every run of every seed: the pre-trainings the rows start from (their heads, one task a
    batch), then per task each row's fine-tuning (validating on the way) and evaluation, the
    equal-seconds reference last (its steps come from the others' seconds)."""
    data, test = os.path.join(a.work, "data"), os.path.join(a.work, "test")
    test_sets(a.dir_data, data, a.val_images)  # what fine-tuning validates on
    test_sets(a.dir_data, test, a.noise_images)  # what the table scores
    make_pool(a.pool, data, a.smoke)  # once the test sets are found
    rows, tasks = study_report.VARIANTS[a.variant]
    pretrainings = [name for name in PRETRAININGS if name in {row.pretraining for row in rows}]
    for seed in a.seeds:
        checkpoints = {}
        for name in pretrainings:
            run = run_dir(a.work, seed, f"pretrain_{name}")
            scale, heads = PRETRAININGS[name]
            launch(a, run, ["--scale", scale, "--tasks", heads, "--con_loss", "--dir_data", data,
                            "--seed", str(seed), "--test_every", NO_VALIDATION], a.pretrain_steps)
            checkpoints[name] = os.path.join(run, "model", "model_latest.pt")
        for task, row in itertools.product(tasks, rows):
            run = run_dir(a.work, seed, finetune_name(row, task))
            start = ["--pretrain", checkpoints[row.pretraining]] if row.pretraining else []
            start += ["--init_from", row.init_from] if row.init_from else []  # rows with a pre-training only
            start += ["--ema_decay", str(row.ema_decay)] if row.ema_decay else []
            args = [*task_options(task), *start, "--dir_data", data, "--seed", str(seed), "--test_every",
                    str(a.val_every), "--chop", "fast"]
            launch(a, run, args, row_steps(a, a.work, row, task, seed))
            evaluate(a, run, task, test)


# The records: the runs' small files, copied under --records, and the study's own study.json
def collect(a: argparse.Namespace) -> None:
    """Copy each run's small records (no weights) from --work into --records, with study.json
    (which describes the main study: a variant's runs are added beside it)."""
    names = []  # every run folder, relative to --work and to --records
    rows, tasks = study_report.VARIANTS[a.variant]
    for seed in a.seeds:
        names += [run_dir("", seed, f"pretrain_{name}") for name in PRETRAININGS
                  if name in {row.pretraining for row in rows}]
        names += [run_dir("", seed, finetune_name(row, task)) + end
                  for task in tasks for row in rows for end in ("", "_eval")]
    for name, file in itertools.product(names, RECORD_FILES):
        source = os.path.join(a.work, name, file)
        if os.path.isfile(source):
            target = os.path.join(a.records, name, file)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            shutil.copyfile(source, target)
    if a.variant != "main":
        return
    machine = (torch.cuda.get_device_name(0) if torch.cuda.is_available() else
               f"{cpu_model()}, {utility.usable_cpus()} usable cores")  # and its torch
    manifest = {"seeds": a.seeds, **{k: getattr(a, k) for k in study_report.MANIFEST_COUNTS[:5]},
                "pool_photos": sum(len(images_under(folder)) for folder in a.pool),
                "sample_photos": len(sample_photos("train")), "options": a.options,
                "machine": f"{machine}; torch {torch.__version__}", "pool": a.pool, "command": a.argv}
    runfolder.write_json(os.path.join(a.records, study_report.MANIFEST), manifest)


def main(argv: list[str] | None = None) -> int:
    """Run the study (unless --report_only), copy its records, and write its doc and plot."""
    a = parse(argv)
    a.argv = sys.argv[1:] if argv is None else list(argv)
    try:
        if not a.report_only:
            run_all(a)
            collect(a)
        found = study_report.write_report(a.records, a.doc)
    except (utility.RecordError, OSError) as e:  # MetricsError, StudyError, SaveError: each names its file
        return cli.say(PROG, str(e), cli.FAILED)
    for task in TASKS:
        print(study_report.table(found, task))
    print(f"{PROG}: {a.doc} and its plot written from {a.records}")
    return 0


if __name__ == "__main__":
    utility.collect_again()
    sys.exit(main())
