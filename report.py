"""Every report of an evaluation: results.md and metrics.json with their tables beside the paper's,
comparison sheets and an HTML index (plain HTML: no script, no external resource), to compare
restorations by eye. Names (of images, sets, files) are shown literally (``display``), whatever
characters or undecodable bytes they hold.
"""
from __future__ import annotations

import dataclasses
import functools
import html
import itertools
import logging
import os
import posixpath
import re
import urllib.parse

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

import runfolder
import utility
from data.benchmark import PAPER_RESULTS
from run_settings import EvalSettings, InferenceSettings

log = logging.getLogger("ipt")

# the zoomed window: a quarter of the shorter image side, within [MIN_CROP, MAX_CROP] pixels
CROP_FRACTION = 4
MIN_CROP = 16
MAX_CROP = 96
MARGIN = 8  # pixels around the sheet
GAP = 8  # pixels between panels and between the rows
CAPTION_HEIGHT = 20  # pixels of the caption strip under each row
CAPTION_PAD = 3  # pixels above a caption's text
FONT_SIZE = 13
OUTLINE_WIDTH = 2  # pixels of the crop's outline, drawn just outside the window
BACKGROUND = (255, 255, 255)
TEXT_COLOR = (20, 20, 20)
OUTLINE_COLOR = (255, 0, 0)
RESULTS_FOLDER = "results-{}"  # the results of a set in the run directory, as evaluation writes them
INDEX_CSS = """
body { font-family: sans-serif; margin: 1.5em; color: #141414; }
table { border-collapse: collapse; margin: 1em 0; }
th, td { border: 1px solid #bbb; padding: 0.25em 0.6em; text-align: right; }
th { background: #eee; }
th:first-child, th:nth-child(2), td:first-child, td:nth-child(2) { text-align: left; }
figure { margin: 1em 0 2em 0; }
figure img { max-width: 100%; height: auto; border: 1px solid #ddd; }
figcaption { margin-top: 0.3em; }
.gain { font-weight: bold; }
"""


# ---- Comparison sheets ----
def crop_side(h: int, w: int) -> int:
    """The side of the zoomed window for an h x w image (never more than the image's shorter side)."""
    side = min(max(min(h, w) // CROP_FRACTION, MIN_CROP), MAX_CROP)
    return max(1, min(side, h, w))


def best_gain_window(inputs: Tensor, output: Tensor, target: Tensor, side: int) -> tuple[int, int]:
    """(top, left) of the side x side window where the output gains most over the input: the
    largest windowed mean of (input error^2 - output error^2) against the target, over the
    channels; of equal windows the topmost, then the leftmost. Summed on an integral image in
    float64, so 8-bit images give exact sums and exact ties."""
    if not inputs.shape == output.shape == target.shape or inputs.dim() != 3:
        raise ValueError(f"expected three (C, H, W) images of one shape, got {tuple(inputs.shape)}, "
                         f"{tuple(output.shape)} and {tuple(target.shape)}")
    x, y, t = (z.detach().cpu().to(torch.float64) for z in (inputs, output, target))
    gain = ((x - t) ** 2 - (y - t) ** 2).sum(dim=0)
    h, w = gain.shape
    side = max(1, min(side, h, w))
    integral = torch.nn.functional.pad(gain.cumsum(0).cumsum(1), (1, 0, 1, 0))  # a zero row and column first
    sums = (integral[side:, side:] - integral[:-side, side:] - integral[side:, :-side]
            + integral[:-side, :-side])
    return divmod(int(torch.argmax(sums)), sums.shape[1])  # argmax: the first maximum


def to_pil(image: Tensor) -> Image.Image:
    """A (C, H, W) tensor of 0..255 values as an RGB image (rounded, clamped; 1 channel as grey)."""
    x = image.detach().cpu().float().clamp(0, 255).round().to(torch.uint8).expand(3, -1, -1)
    return Image.fromarray(np.ascontiguousarray(x.permute(1, 2, 0).numpy()), mode="RGB")


@functools.lru_cache(maxsize=1)
def caption_font() -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    """PIL's default font at FONT_SIZE (its fixed-size bitmap font where FreeType is missing)."""
    try:
        return ImageFont.load_default(size=FONT_SIZE)
    except ImportError:
        return ImageFont.load_default()


def comparison_sheet(inputs: Tensor, output: Tensor, target: Tensor, psnr_input: float,
                     psnr_output: float, crop: int | None = None) -> Image.Image:
    """Input | output | target with their PSNR under each, and below them the three zoomed
    (nearest neighbour, an integer factor up to the panel width) on the ``crop`` x ``crop``
    window where the output gains most (``crop`` None: ``crop_side``); that window is outlined
    on the top row. Each top panel sits at x = MARGIN + i * (column + GAP), y = MARGIN."""
    h, w = inputs.shape[-2:]
    side = crop_side(h, w) if crop is None else max(1, min(crop, h, w))
    top, left = best_gain_window(inputs, output, target, side)
    factor = max(1, w // side)
    zoom = side * factor
    font = caption_font()
    captions = [f"input {psnr_input:.2f} dB", f"output {psnr_output:.2f} dB", "target"]
    note = f"zoom x{factor}: {side}x{side} px at x={left}, y={top}, where the output gains most"
    column = max(w, *(int(np.ceil(font.getlength(c))) for c in captions))
    width = max(2 * MARGIN + 3 * column + 2 * GAP, 2 * MARGIN + int(np.ceil(font.getlength(note))))
    zoom_y = MARGIN + h + CAPTION_HEIGHT + GAP
    sheet = Image.new("RGB", (width, zoom_y + zoom + CAPTION_HEIGHT + MARGIN), BACKGROUND)
    draw = ImageDraw.Draw(sheet)
    window = (left, top, left + side, top + side)
    for i, (image, caption) in enumerate(zip((inputs, output, target), captions, strict=False)):
        x = MARGIN + i * (column + GAP)
        panel = to_pil(image)
        sheet.paste(panel, (x, MARGIN))
        draw.rectangle((x + left - OUTLINE_WIDTH, MARGIN + top - OUTLINE_WIDTH,
                        x + left + side - 1 + OUTLINE_WIDTH, MARGIN + top + side - 1 + OUTLINE_WIDTH),
                       outline=OUTLINE_COLOR, width=OUTLINE_WIDTH)
        draw.text((x, MARGIN + h + CAPTION_PAD), caption, fill=TEXT_COLOR, font=font)
        sheet.paste(panel.crop(window).resize((zoom, zoom), Image.Resampling.NEAREST), (x, zoom_y))
    draw.text((MARGIN, zoom_y + zoom + CAPTION_PAD), note, fill=TEXT_COLOR, font=font)
    return sheet


def write_sheet(path: str, inputs: Tensor, output: Tensor, target: Tensor, psnr_input: float,
                psnr_output: float, crop: int | None = None) -> None:
    """Save ``comparison_sheet`` of the images as PNG at ``path`` atomically (folders made)."""
    image = comparison_sheet(inputs, output, target, psnr_input, psnr_output, crop)
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    runfolder.atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))


def sheet_name(image: str, task: str) -> str:
    """The file name of an image's sheet for a task: ``<image>_<task>_compare.png``."""
    return f"{image}_{task}_compare.png"


# ---- index.html ----
def index_entries(results: dict) -> list[dict]:
    """One entry per set, task and image of ``results`` ({set: {task: {"per_image": {image:
    metrics}}}}) for ``write_index``, the sheet at ``results-<set>/<image>_<task>_compare.png``."""
    entries = []
    for dataset, tasks in results.items():
        for task, r in tasks.items():
            for image, m in r.get("per_image", {}).items():
                sheet = posixpath.join(RESULTS_FOLDER.format(dataset), sheet_name(image, task))
                entries.append({"set": dataset, "task": task, "image": image, "sheet": sheet, **m})
    return entries


# Characters a shown name writes as escapes: C0 and C1 controls (line breaks among them), line and
# paragraph separators, bidirectional controls (which reorder the text around them) and surrogates
BIDI_CONTROLS = "\u061c\u200e\u200f\u202a-\u202e\u2066-\u2069"
UNPRINTABLE = re.compile(f"[\x00-\x1f\x7f-\x9f\u2028\u2029{BIDI_CONTROLS}\ud800-\udfff]")
SURROGATE = re.compile("[\ud800-\udfff]")
# A byte that is not UTF-8, as os.fsdecode gives it in a Linux file name (surrogateescape)
ESCAPED_BYTES = range(0xDC80, 0xDD00)
# Markdown: characters written as HTML entities (tags, code spans, table cells, strikethrough,
# GitHub's math) and those written with a backslash (emphasis, links, headings' closing #s);
# both forms read back literally in GitHub (CommonMark) and Python-Markdown
MARKDOWN = str.maketrans({"&": "&amp;", "<": "&lt;", ">": "&gt;", "`": "&#96;", "|": "&#124;",
                          "~": "&#126;", "$": "&#36;", **{c: "\\" + c for c in "\\*[]#"}})
# an underscore inside a word never emphasises (img_001): only the others are backslashed
MARKDOWN_UNDERSCORE = re.compile("(?<![0-9A-Za-z])_|_(?![0-9A-Za-z])")
# Markdown strips the spaces around a cell or a line: they are written as entities
MARKDOWN_END_SPACE = re.compile(r"^\s|\s\Z")


def _escape_char(match: re.Match) -> str:
    """One character as a Python escape; an escaped undecodable byte as that byte (``\\xff``)."""
    c = match[0]
    if ord(c) in ESCAPED_BYTES:
        return f"\\x{ord(c) - 0xDC00:02x}"
    return c.encode("unicode_escape").decode("ascii")


def printable(text: str) -> str:
    """``text`` as valid Unicode: the undecodable bytes of a file name (surrogate escapes) written
    ``\\xNN``, as ``os.fsencode(text).decode("utf-8", "backslashreplace")`` does."""
    return SURROGATE.sub(_escape_char, text)


def display(text: str) -> str:
    """``printable(text)`` on one line: line breaks, control and bidirectional characters written
    as Python escapes (``\\n``, ``\\x00``, ``\\u202e``)."""
    return UNPRINTABLE.sub(_escape_char, text)


def markdown_text(text: str) -> str:
    """``display(text)`` as Markdown text that renders as exactly that, in a table cell or a line:
    no tag, code span, emphasis, link or cell break; ordinary names (img_001, Set5) unchanged."""
    text = MARKDOWN_UNDERSCORE.sub(r"\\_", display(text).translate(MARKDOWN))
    return MARKDOWN_END_SPACE.sub(lambda m: f"&#{ord(m[0])};", text)


def markdown_table(rows: list[list[str]]) -> str:
    """A Markdown table of rows of plain cells (each as ``markdown_text``), the first row the header."""
    lines = ["| " + " | ".join(markdown_text(c) for c in row) + " |" for row in rows]
    return "\n".join([lines[0], "|" + "---|" * len(rows[0]), *lines[1:]])


def html_text(text: str) -> str:
    """``display(text)`` escaped for HTML text and attribute values."""
    return html.escape(display(text))


def table_html(rows: list[list[str]]) -> str:
    """An HTML table of rows of plain cells, the first row the header."""
    lines = ["<tr>" + "".join(f"<{tag}>{html_text(c)}</{tag}>" for c in row) + "</tr>"
             for tag, row in zip(["th"] + ["td"] * (len(rows) - 1), rows, strict=True)]
    return "\n".join(["<table>", *lines, "</table>"])


def url_path(path: str) -> str:
    """A relative file path as a URL path: its bytes (undecodable ones included) percent-encoded."""
    try:
        raw = path.encode("utf-8", "surrogateescape")  # the bytes of the file's name on Linux
    except UnicodeEncodeError:  # a surrogate no file name holds: any stable spelling will do
        raw = path.encode("utf-8", "surrogatepass")
    return urllib.parse.quote(raw)


def number(value: float | None, digits: int, unit: str = "") -> str:
    """A metric with ``digits`` decimals and its unit; '-' when missing."""
    return "-" if value is None else f"{value:.{digits}f}{unit}"


def _anchor(dataset: str, task: str) -> str:
    """The id of a set and task's section."""
    return "s-" + url_path(f"{dataset}-{task}").replace("/", "%2F")


def _figure(entry: dict) -> str:
    """One sheet as a linked <img> with its image name and the input's and output's metrics."""
    url = html.escape(url_path(entry["sheet"]))
    name = html_text(str(entry["image"]))
    psnr, base = entry.get("psnr"), entry.get("baseline_psnr")
    gain = "" if psnr is None or base is None else f' <span class="gain">({psnr - base:+.2f} dB)</span>'
    return (f'<figure><a href="{url}"><img src="{url}" alt="{name}" loading="lazy"></a>\n'
            f"<figcaption><b>{name}</b>: input PSNR {number(base, 2, ' dB')}, SSIM "
            f"{number(entry.get('baseline_ssim'), 4)}; output PSNR {number(psnr, 2, ' dB')}, "
            f"SSIM {number(entry.get('ssim'), 4)}{gain}</figcaption></figure>")


def write_index(save_dir: str, entries: list[dict], table: list[list[str]], notes: str,
                title: str) -> str:
    """Write ``save_dir/index.html`` atomically, its path: the title, the metrics table (rows of plain
    cells, the header first) with its notes and, per set and task (in the entries' order), the sheets."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for e in entries:
        groups.setdefault((str(e["set"]), str(e["task"])), []).append(e)
    toc = "".join(f'<li><a href="#{_anchor(s, t)}">{html_text(s)} {html_text(t)}</a> '
                  f"({len(g)})</li>" for (s, t), g in groups.items())
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>{html_text(title)}</title><style>{INDEX_CSS}</style></head><body>",
             f"<h1>{html_text(title)}</h1>", "<h2>Metrics</h2>", table_html(table),
             *([f"<p>{html_text(notes)}</p>"] if notes else []),
             "<h2>Comparison sheets</h2>",
             "<p>Input | output | target; below, the three zoomed on the outlined window where "
             "the output gains most over the input. Click a sheet for its full size.</p>",
             f"<ul>{toc}</ul>" if groups else "<p>No sheets.</p>"]
    for (s, t), group in groups.items():
        parts.append(f'<h3 id="{_anchor(s, t)}">{html_text(s)}: {html_text(t)}</h3>')
        parts.extend(_figure(e) for e in group)
    parts.append("</body></html>\n")
    path = os.path.join(save_dir, "index.html")
    os.makedirs(save_dir, exist_ok=True)
    runfolder.write_text(path, "\n".join(parts))
    return path


# ---- results.md, metrics.json and the tables of an evaluation ----
@dataclasses.dataclass
class Interruption:
    """An evaluation stopped by a signal or an error: what stopped it, the sets finished and those
    not evaluated."""

    cause: str  # SIGINT, ..., or "an error in <set>"
    finished: list[str]
    not_evaluated: list[str]

    def line(self) -> str:
        """One line: the signal, the sets finished and those not evaluated."""
        done = f"sets {', '.join(self.finished)} finished" if self.finished else "no set finished"
        left = f"{', '.join(self.not_evaluated)} not evaluated" if self.not_evaluated else "none left"
        return f"interrupted by {self.cause}: {done}; {left}"


PRINTED_IMAGE_ROWS = 40  # at most this many per-image rows are printed; all are in results.md


def write_reports(mode: str, ev: EvalSettings, inference: InferenceSettings, results: dict,
                  step: int | None = None, checkpoint: str = "", checkpoint_sha256: str | None = None,
                  training: dict | None = None, interrupted: Interruption | None = None,
                  title: str = "") -> tuple[list[str], str]:
    """RUN/metrics.json and RUN/results.md, of a checkpoint or (``step``) of a training run's
    validation at that step, and of a checkpoint with --save_results RUN/index.html titled
    ``title``; the files written and the Markdown to print (without the per-image rows when many).
    ``checkpoint_sha256``: the hash of the loaded bytes; ``training``: ``training_length`` of the
    checkpoint as read when it was loaded; ``interrupted``: the results are of the sets finished
    before a stop signal. Names are written as ``display`` shows them (in JSON as ``printable``)."""
    meta = {"checkpoint": checkpoint or None,
            "checkpoint_sha256": checkpoint_sha256 if checkpoint else None,
            "step": step, "commit": utility.git_commit(os.path.dirname(os.path.abspath(__file__))),
            "options": ev.record, "model": ev.model_name,
            "tiling": mode, "self_ensemble": inference.self_ensemble, "precision": inference.precision,
            "precision_auto": inference.precision_reason,
            "metric_channel": inference.metric_channel,
            "test_noise": "clipped" if ev.clip_noise else "unclipped", "training": training,
            "interrupted": interrupted is not None,
            "not_evaluated": interrupted.not_evaluated if interrupted else []}
    # an evaluation in a training run's directory writes metrics_test.json and results_test.md
    # beside the validation's reports, which it must not replace
    test = "_test" if step is None and os.path.isfile(os.path.join(ev.save, utility.STATE_NAME)) else ""
    metrics_path, table_path = (os.path.join(ev.save, f"metrics{test}.json"),
                                os.path.join(ev.save, f"results{test}.md"))
    runfolder.write_json(metrics_path, {"meta": printable_tree(meta), "results": printable_tree(results)})
    summary, notes = summary_rows(results), table_notes(inference.metric_channel)
    table = markdown_table(summary) + "\n\n" + markdown_text(notes) + "\n"
    weights = (markdown_text(checkpoint) if checkpoint else
               "none (the weights being trained)" if step is not None else "none (random weights)")
    stopped = f"{markdown_text(interrupted.line())}\n\n" if interrupted else ""
    head = (f"# Results\n\n{stopped}model: {markdown_text(ev.model_name)}, checkpoint: {weights}, "
            f"tiling: {mode}, self-ensemble: {inference.self_ensemble}, "
            f"precision: {inference.precision}\n\n"
            f"training: {markdown_text(training_note(checkpoint, step, training))}\n\n{table}")
    tables = []  # per set and task, a table of each image's metrics
    for dataset, tasks in results.items():
        for task, r in tasks.items():
            rows = [["image", *METRIC_COLUMNS],
                    *([image, *metric_cells(m)] for image, m in r["per_image"].items())]
            tables.append(f"### {markdown_text(dataset)} {markdown_text(task)}\n\n" + markdown_table(rows))
    images = "\n## Per image\n\n" + "\n\n".join(tables) + "\n"
    runfolder.write_text(table_path, head + images)
    if step is not None:  # an evaluation prints its tables to stdout instead (``evaluate``)
        log.info("\n%s", table)
    if interrupted is None:  # else the one line of the interruption names them
        log.info("metrics: %s, table: %s", metrics_path, table_path)
    written = [metrics_path, table_path]
    if step is None and ev.save_results:
        written.append(write_index(ev.save, index_entries(results), summary, notes,
                                   title + (" (interrupted)" if interrupted else "")))
        if interrupted is None:
            log.info("comparison sheets: %s", written[-1])
    rows = sum(r["n_images"] for tasks in results.values() for r in tasks.values())
    return written, head + (images if rows <= PRINTED_IMAGE_ROWS else
                            f"\nPer-image rows ({rows}) left out here: see {markdown_text(table_path)}\n")


def printable_tree(value: object) -> object:
    """Dicts and lists with every string, keys included, as ``printable`` (valid UTF-8);
    keys that would become equal get a `` (2)``, `` (3)``... after them."""
    if isinstance(value, str):
        return printable(value)
    if isinstance(value, (list, tuple)):
        return [printable_tree(v) for v in value]
    if not isinstance(value, dict):
        return value
    out: dict = {}
    for k, v in value.items():
        key, twins = printable(k), itertools.count(2)  # JSON keys: strings
        while key in out:
            key = f"{printable(k)} ({next(twins)})"
        out[key] = printable_tree(v)
    return out


def training_note(checkpoint: str, step: int | None, training: dict | None) -> str:
    """How long the evaluated weights were trained, in words (see ``training_length``)."""
    if step is not None:
        return f"validation of this training run at step {step}"
    if not checkpoint:
        return "random weights"
    if training is None:
        return "training length unknown (no training.json beside the checkpoint)"
    t, name = training, os.path.basename(checkpoint)
    if t["unverified"]:
        return f"training length unknown ({t['unverified']})"
    if t["steps"] is None:
        return f"training length unknown (the training.json beside it gives no step for {name})"
    state = ("finished" if t["finished"] else "interrupted" if t["interrupted"] else
             "not finished" if t["steps"] == t["run_steps"] else
             f"saved at step {t['steps']}; training.json records the run at step {t['run_steps']}")
    total = f" of {t['max_steps']}" if t["max_steps"] is not None else ""
    return f"trained {t['steps']}{total} steps ({state})"


METRIC_COLUMNS = ["PSNR (Y)", "SSIM (Y)", "PSNR (RGB)", "SSIM (RGB)", "input PSNR", "input SSIM",
                  "gain over input (dB)"]


def summary_rows(results: dict) -> list[list[str]]:
    """Our metrics per set and task (means), beside the paper's: plain cells, the header first."""
    rows = [["dataset", "task", "images", *METRIC_COLUMNS, "paper PSNR", "paper SSIM"]]
    for dataset, tasks in results.items():
        for task, r in tasks.items():
            paper_psnr, paper_ssim = PAPER_RESULTS.get((dataset, task), (None, None))
            rows.append([dataset, task, str(r["n_images"]), *metric_cells(r),
                         number(paper_psnr, 2), number(paper_ssim, 4)])
    return rows


def table_notes(channel: str = "y") -> str:
    """What the columns of ``summary_rows`` mean (plain text)."""
    return (f"Y: the IPT paper's convention (Y channel, as many pixels shaved as the scale for SR, "
            f"none for scale 1); RGB: all channels, same shave. Input: the network's input itself "
            f"(bicubic-upscaled for SR, the noisy or rainy image otherwise), scored on "
            f"{channel.upper()} (--metric_channel). Gain over input: our PSNR minus the input's, "
            f"both on {channel.upper()}. Paper: the IPT paper (CVPR 2021, Y channel); "
            f"- where it gives no number.")


def metric_cells(m: dict) -> list[str]:
    """The METRIC_COLUMNS cells of one image's or one set's metrics."""
    return [number(m["psnr_y"], 2), number(m["ssim_y"], 4), number(m["psnr_rgb"], 2),
            number(m["ssim_rgb"], 4), number(m["baseline_psnr"], 2),
            number(m["baseline_ssim"], 4), f"{m['gain_psnr']:+.2f}"]
