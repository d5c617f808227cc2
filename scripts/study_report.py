"""The study's report: per-task tables with paired-by-seed intervals, a plot, and STUDY.md's text."""
from __future__ import annotations

import math
import os
import pathlib
import shlex
import statistics

import runfolder
from report import markdown_text
from scripts import study_records
from scripts.study_records import EMA_ROW, REFERENCE, ROWS, SECONDS_REFERENCE, TASKS, gather, read_manifest

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
        pool=markdown_text(", ".join(m["pool"]) or "no --pool"), tile=study_records.POOL_TILE,
        reference=REFERENCE.name, seconds_reference=SECONDS_REFERENCE.name,
        match=study_records.SECONDS_MATCH, plot_name=plot_name,
        total=m["pretrain_steps"] + m["finetune_steps"], clear="\n".join(clear) or "- none", tables=tables,
        hours=sum(r.seconds for s in found for row in found[s].values() for r in row.values()) / 3600)})


CONCLUSIONS = "## What the numbers show"  # written by a person: kept when the study is remade


def kept_conclusions(doc: str) -> str:
    """The doc's CONCLUSIONS section as it stands (empty when there is none yet)."""
    text = open(doc, encoding="utf-8").read() if os.path.isfile(doc) else ""
    return "\n" + text[text.index(CONCLUSIONS):] if CONCLUSIONS in text else ""


def write_report(records: str, doc: str) -> dict:
    """--doc and its plot (beside it, .png) from the records alone; what was found."""
    manifest = read_manifest(records)
    found = gather(records, manifest)
    plot_path = os.path.splitext(doc)[0] + ".png"
    os.makedirs(os.path.dirname(os.path.abspath(doc)), exist_ok=True)
    plot(found, plot_path)
    runfolder.write_text(doc, report(manifest, found, os.path.basename(plot_path)) + kept_conclusions(doc))
    return found
