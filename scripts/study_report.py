"""The study's report: per-task tables with paired-by-seed intervals, a plot, and STUDY.md's text."""
from __future__ import annotations

import math
import os
import shlex
import statistics

import utility
from report import markdown_text
from scripts.study_records import (
    POOL_TILE,
    REFERENCE,
    ROWS,
    RUN_ROWS,
    SECONDS_MATCH,
    SECONDS_REFERENCE,
    TASKS,
    gather,
    read_manifest,
)

BASELINE = {"sr2": "bicubic", "denoise30": "noisy input"}


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

Made by `python -m scripts.study` with {markdown_text(command)} on {markdown_text(m['machine'])},
seeds {seeds}; the document and its plot are re-made from the committed records in
`docs/study/` by `python -m scripts.study --report_only`.

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
`python -m scripts.prepare_data Set5 CBSD68 --out DATA` (folders or archives as downloaded),
then run `python -m scripts.study --pool CSun_Hays80 --dir_data DATA`.
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


def write_report(records: str, doc: str) -> dict:
    """--doc and its plot (beside it, .png) from the records alone; what was found."""
    manifest = read_manifest(records)
    found = gather(records, manifest)
    plot_path = os.path.splitext(doc)[0] + ".png"
    os.makedirs(os.path.dirname(os.path.abspath(doc)), exist_ok=True)
    plot(found, plot_path)
    utility.write_text(doc, report(manifest, found, os.path.basename(plot_path)) + kept_conclusions(doc))
    return found
