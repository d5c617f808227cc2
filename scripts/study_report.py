"""The study's design (its rows and tasks), its records read back (metrics.json, study.json, logs), and
its report from them: per-task tables with paired-by-seed intervals, a plot, and STUDY.md's text."""
from __future__ import annotations

import itertools
import math
import os
import pathlib
import re
import shlex
import statistics
from dataclasses import dataclass

import records
import runfolder
import utility
from report import markdown_text


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
# the trainer's line; a step of more digits than any run takes, or no number, is no such line
VALIDATION = re.compile(r"step (\d{1,15}): validation PSNR (-?\d+(?:\.\d+)?|nan|-?inf) dB")
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


# The report: tables, plot and text from the records alone
TEMPLATE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "study_report.md")
BASELINE = {"sr2": "bicubic", "denoise30": "noisy input"}


# Statistics: mean, spread, and paired-by-seed intervals of differences
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
    """The PSNR difference of ``row`` to ``reference``: mean [95% interval], bold when it leaves out 0."""
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
    for row in table_rows(found, task):
        runs = [found[s][row.name][task] for s in seeds]
        fine = runs[0].steps - (runs[0].curve[0][0] if row.pretraining else 0)  # the first seed's
        pre = f"{runs[0].steps - fine} + " if row.pretraining else ""
        steps = sorted({r.steps for r in runs})  # the same for every seed but the equal-seconds row's
        steps_text = pre + (f"{fine}" if len(steps) == 1 else f"{min(steps)}–{max(steps)}")
        cells = [row.name, steps_text, spread([r.seconds for r in runs], 0),
                 spread([r.scores["psnr_y"] for r in runs]),
                 spread([r.scores["ssim_y"] for r in runs], 4)]
        for ref, other in ((REFERENCE, SECONDS_REFERENCE), (SECONDS_REFERENCE, REFERENCE)):  # the Δ columns
            cells.append("reference" if row is ref else "" if row is other else
                         difference(found, row.name, ref.name, task))
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def table_rows(found: dict, task: str) -> list:
    """The rows of a task's table: the references, the pre-trained rows, and the EMA variant's
    when its records are there."""
    variant = [EMA_ROW] if task in found[next(iter(found))].get(EMA_ROW.name, {}) else []
    return [REFERENCE, SECONDS_REFERENCE, *ROWS[1:], *variant]


def plot(found: dict, path: str) -> None:
    """Validation PSNR against training step (pre-training included), one panel per task, mean over seeds."""
    from matplotlib.figure import Figure  # no pyplot: no backend to pick, no figure to close
    fig = Figure(figsize=(5.5 * len(TASKS), 3.8))
    axes = fig.subplots(1, len(TASKS))
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


def report(m: dict, found: dict, plot_name: str) -> str:
    """STUDY.md's text around the tables and the plot: study_report.md with the study's figures."""
    tables = "\n\n".join(f"### {task}: {TASKS[task]}{' x2' if task == 'sr2' else ' σ30'}\n\n"
                         f"{table(found, task)}" for task in TASKS)
    clear = [f"- {row.name} ({task}, to {ref.name}): {diff.strip('*')} dB" for task in TASKS
             for row in table_rows(found, task)[2:] for ref in (REFERENCE, SECONDS_REFERENCE)
             if (diff := difference(found, row.name, ref.name, task)).startswith("**")]  # bold: excludes 0
    return pathlib.Path(TEMPLATE).read_text(encoding="utf-8").format_map({**m, **dict(
        command=markdown_text(" ".join(shlex.quote(x) for x in m["command"])),
        machine=markdown_text(m["machine"]), seeds="+".join(map(str, m["seeds"])),
        options=", " + markdown_text(m["options"]) if m["options"] else "",
        pool=markdown_text(", ".join(m["pool"]) or "no --pool"), tile=POOL_TILE,
        reference=REFERENCE.name, seconds_reference=SECONDS_REFERENCE.name,
        match=SECONDS_MATCH, plot_name=plot_name,
        total=m["pretrain_steps"] + m["finetune_steps"], clear="\n".join(clear) or "- none", tables=tables,
        hours=sum(r.seconds for s in found for row in found[s].values() for r in row.values()) / 3600)})


CONCLUSIONS = "## What the numbers show"  # written by a person: kept when the study is remade


def kept_conclusions(doc: str) -> str:
    """The doc's CONCLUSIONS section as it stands (empty when there is none yet)."""
    try:
        text = open(doc, encoding="utf-8").read() if os.path.isfile(doc) else ""
    except UnicodeError:
        raise StudyError(f"{doc}: not UTF-8 text, so no report this writes: give another --doc") from None
    return "\n" + text[text.index(CONCLUSIONS):] if CONCLUSIONS in text else ""


def write_report(records: str, doc: str) -> dict:
    """--doc and its plot (beside it, .png) from the records alone; what was found."""
    manifest = read_manifest(records)
    found = gather(records, manifest)
    plot_path, kept = os.path.splitext(doc)[0] + ".png", kept_conclusions(doc)  # read before any write
    os.makedirs(os.path.dirname(os.path.abspath(doc)), exist_ok=True)
    plot(found, plot_path)
    runfolder.write_text(doc, report(manifest, found, os.path.basename(plot_path)) + kept)
    return found
