"""The study's design (its rows and tasks) and its records read back: metrics.json, study.json, logs."""
from __future__ import annotations

import itertools
import math
import os
import re
from dataclasses import dataclass

import records
import utility


@dataclass(frozen=True)
class Row:
    """One way to reach a fine-tuned model: which pre-training, where the task's head comes
    from, and how many fine-tuning steps (--finetune_steps; 'steps': as many as pre-training and
    fine-tuning together; 'seconds': as many as fit into the SECONDS_MATCH row's seconds)."""

    name: str
    pretraining: str | None = None
    init_from: str = ""  # --init_from of the fine-tuning: '' the task's own head
    budget: str = "finetune"
    ema_decay: float = 0.0  # --ema_decay of the fine-tuning: 0, none


REFERENCE = Row("none", budget="steps")  # fine-tuning alone, at equal steps
SECONDS_REFERENCE = Row("none, equal seconds", budget="seconds")
SECONDS_MATCH = "six"  # the paper's pre-training: the row whose seconds SECONDS_REFERENCE gets
ROWS = (REFERENCE, Row("six", "six"), Row("mim, head from mim", "mim", "mim"), Row("six+mim", "six+mim"))
RUN_ROWS = (*ROWS, SECONDS_REFERENCE)  # in the order they run: SECONDS_REFERENCE needs the others
TASKS = {"sr2": "Set5", "denoise30": "CBSD68"}  # fine-tuning task -> its test set
# --variant ema: the reference again with a moving average of its weights, on sr2. Its decay
# suits the run's 1,400 steps: the start then weighs 0.995^1400 < 0.1% (0.999 would keep 25%)
EMA_ROW = Row("none, EMA 0.995", budget="steps", ema_decay=0.995)
VARIANTS = {"main": (RUN_ROWS, tuple(TASKS)), "ema": ((EMA_ROW,), ("sr2",))}  # -> (rows, tasks)
POOL_TILE = 256  # training photos are cut into squares of this side (sr4 crops 192)
PROG = "study.py"
VALIDATION = re.compile(r"step (\d+): validation PSNR ([-\d.]+) dB")
METRICS = "metrics.json"
METRICS_MAX_BYTES = 16 << 20  # a metrics.json of a few hundred images is tens of kB
SCORES = records.SCORES  # what the table and plot read
MANIFEST = "study.json"
LOG_MAX_BYTES = 16 << 20  # a run's log.txt at --print_every 100 is a few kB
MANIFEST_COUNTS, MANIFEST_TEXTS = tuple(records.STUDY_COUNTS), records.STUDY_TEXTS


# a metrics.json that is not what an evaluation writes; a run's records that do not fit the study:
# records' own one-line error, naming the file (and key) and what to do
MetricsError = StudyError = utility.RecordError


def run_dir(root: str, seed: int, what: str) -> str:
    """ROOT/seedN/WHAT: where one run of the study lives (its records keep the same layout)."""
    return os.path.join(root, f"seed{seed}", what)


def finetune_name(row: Row, task: str) -> str:
    """The folder of a row's fine-tuning of ``task`` (the row's name made folder-safe)."""
    return f"finetune_{re.sub(r'[^a-z0-9+]+', '_', row.name.lower()).strip('_')}_{task}"


def redo(run: str) -> str:
    """What to do about a run's damaged record."""
    return f"delete the run's folder {os.path.abspath(run)} to redo it"


# The fields of each record: metrics.json, study.json, training.json and log.txt
def read_metrics(path: str) -> dict[str, dict[str, dict[str, float]]]:
    """A run's metrics.json, checked by records.METRICS: {set: {task: {metric: value}}} of the
    SCORES (other entries, like per_image, are left out); MetricsError names what is wrong."""
    record = records.read_json(path, records.METRICS, redo(os.path.dirname(os.path.abspath(path))),
                               METRICS_MAX_BYTES)
    return {name: {task: {k: float(found[k]) for k in SCORES} for task, found in tasks.items()}
            for name, tasks in record["results"].items()}


def scores(run: str, set_name: str | None = None, task: str | None = None) -> dict[str, float]:
    """The SCORES of ``task`` on ``set_name`` in RUN/metrics.json (None: its only set / task)."""
    path = os.path.join(run, METRICS)
    found: dict = read_metrics(path)
    where = "results"
    for key, what in ((set_name, "test sets"), (task, "tasks")):
        if key is None:
            if len(found) != 1:
                raise MetricsError(f"{path}: {where}: {len(found)} {what}, expected one; {redo(run)}")
            key = next(iter(found))
        if key not in found:
            raise MetricsError(f"{path}: {where}.{key}: missing; {redo(run)}")
        where, found = f"{where}.{key if key.isprintable() else repr(key)}", found[key]
    return found


def read_manifest(folder: str) -> dict:
    """FOLDER/study.json, checked by records.STUDY; StudyError naming the file and key otherwise.
    It says how the study was run (the report's text), never where anything is written."""
    fix = "re-make it by running the study (finished runs are kept), or give another --records"
    record = records.read_json(os.path.join(folder, MANIFEST), records.STUDY, fix)  # at most 1 MiB
    return {k: record[k] for k in ("seeds", *MANIFEST_COUNTS, *MANIFEST_TEXTS, "pool", "command")}


def finished_record(run: str) -> dict:
    """A finished run's training.json, with its training seconds; StudyError otherwise."""
    record = records.read_training_record(os.path.join(run, "model", "model_latest.pt"), strict=True)
    if not record or not record.get("finished") or "train_seconds" not in record:
        raise StudyError(f"{os.path.join(run, 'model', utility.TRAINING_RECORD)}: not the record of a "
                         f"finished run with its training seconds; {redo(run)}")
    return record


def curve(run: str) -> list[tuple[int, float]]:
    """(step, validation PSNR) of a training run, from its log (a step validated twice, before
    and after a resume: the later); step 0 is the input's PSNR."""
    path = os.path.join(run, "log.txt")
    try:
        text = utility.read_small_file(path, LOG_MAX_BYTES).decode("utf-8", errors="replace")
    except utility.RecordError as e:  # a FIFO is never read
        raise StudyError(f"{e}; {redo(run)}") from None
    except OSError as e:
        raise StudyError(f"{path}: not a regular file ({type(e).__name__}); {redo(run)}") from None
    points = {int(m.group(1)): float(m.group(2)) for m in VALIDATION.finditer(text)}
    start = scores(run)["baseline_psnr"]  # the last validation's metrics.json
    return [(0, start), *((k, v) for k, v in sorted(points.items()) if math.isfinite(v))]


@dataclass(frozen=True)
class Result:
    """One row's fine-tuning of one task with one seed, as its records tell it."""

    scores: dict[str, float]  # the evaluation's SCORES
    steps: int  # training steps, the pre-training's included
    seconds: float  # training seconds, the pre-training's included
    curve: list[tuple[int, float]]  # (training step, pre-training included; validation PSNR)


def gather(records: str, manifest: dict) -> dict[int, dict[str, dict[str, Result]]]:
    """{seed: {row: {task: Result}}} from the records of every run (the variants' when there)."""
    found: dict[int, dict[str, dict[str, Result]]] = {seed: {} for seed in manifest["seeds"]}
    variant = all(os.path.isdir(run_dir(records, s, finetune_name(EMA_ROW, "sr2"))) for s in found)
    for seed, (rows, tasks) in itertools.product(found, VARIANTS.values() if variant else [VARIANTS["main"]]):
        for row in rows:
            pre_steps, pre_seconds = 0, 0.0
            if row.pretraining:
                pre = finished_record(run_dir(records, seed, f"pretrain_{row.pretraining}"))
                pre_steps, pre_seconds = int(pre.get("step", 0)), float(pre["train_seconds"])
            for task in tasks:
                run = run_dir(records, seed, finetune_name(row, task))
                fine = finished_record(run)
                found[seed].setdefault(row.name, {})[task] = Result(
                    scores(run + "_eval", TASKS[task], task), pre_steps + int(fine.get("step", 0)),
                    pre_seconds + float(fine["train_seconds"]),
                    [(pre_steps + k, v) for k, v in curve(run)])
    return found
