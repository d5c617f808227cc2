"""Comparison sheets and an HTML index of an evaluation, to compare restorations by eye.

- ``comparison_sheet``: input | output | target side by side with their PSNR, and below them
  the three zoomed on the window where the output gains most over the input
  (``best_gain_window``); ``write_sheet`` saves one as PNG;
- ``write_index``: ``RUN/index.html``, plain HTML (no script, no external resource) with the
  metrics table and, per set and task, the sheets; ``index_entries`` lists them from the results.

Images are (C, H, W) tensors of 0..255 values on the CPU (C = 3, or 1 shown as grey).
"""
from __future__ import annotations

import functools
import html
import os
import posixpath
import re
import urllib.parse

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont
from torch import Tensor

import utility

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
SHEET_TAG = "compare"  # <image>_<task>_compare.png
RESULTS_FOLDER = "results-{}"  # the results of a set in the run directory, as evaluation writes them
INDEX_NAME = "index.html"
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


# ----------------------------------------------------------------------------------------
# Comparison sheets
# ----------------------------------------------------------------------------------------
def crop_side(h: int, w: int) -> int:
    """The side of the zoomed window for an h x w image (never more than the image's shorter side)."""
    side = min(max(min(h, w) // CROP_FRACTION, MIN_CROP), MAX_CROP)
    return max(1, min(side, h, w))


def gain_map(inputs: Tensor, output: Tensor, target: Tensor) -> Tensor:
    """(H, W) float64: how much the output's squared error is below the input's, summed over channels."""
    if not inputs.shape == output.shape == target.shape or inputs.dim() != 3:
        raise ValueError(f"expected three (C, H, W) images of one shape, got {tuple(inputs.shape)}, "
                         f"{tuple(output.shape)} and {tuple(target.shape)}")
    x, y, t = (z.detach().cpu().to(torch.float64) for z in (inputs, output, target))
    return ((x - t) ** 2 - (y - t) ** 2).sum(dim=0)


def best_gain_window(inputs: Tensor, output: Tensor, target: Tensor, side: int) -> tuple[int, int]:
    """(top, left) of the side x side window where the output gains most over the input: the
    largest windowed mean of (input error^2 - output error^2) against the target, over the
    channels; of equal windows the topmost, then the leftmost. Summed on an integral image in
    float64, so 8-bit images give exact sums and exact ties."""
    gain = gain_map(inputs, output, target)
    h, w = gain.shape
    side = max(1, min(side, h, w))
    integral = torch.zeros(h + 1, w + 1, dtype=torch.float64)
    integral[1:, 1:] = gain.cumsum(0).cumsum(1)
    sums = (integral[side:, side:] - integral[:-side, side:] - integral[side:, :-side]
            + integral[:-side, :-side])
    top, left = divmod(int(torch.argmax(sums)), sums.shape[1])  # argmax: the first maximum
    return top, left


def to_pil(image: Tensor) -> Image.Image:
    """A (C, H, W) tensor of 0..255 values as an RGB image (rounded, clamped; 1 channel as grey)."""
    x = image.detach().cpu().float().clamp(0, 255).round().to(torch.uint8)
    if x.shape[0] == 1:
        x = x.expand(3, -1, -1)
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
    for i, (image, caption) in enumerate(zip((inputs, output, target), captions)):
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
    utility.atomic_write(path, lambda tmp: image.save(tmp, format="PNG"))


def sheet_name(image: str, task: str) -> str:
    """The file name of an image's sheet for a task: ``<image>_<task>_compare.png``."""
    return f"{image}_{task}_{SHEET_TAG}.png"


# ----------------------------------------------------------------------------------------
# index.html
# ----------------------------------------------------------------------------------------
def index_entries(results: dict) -> list[dict]:
    """One entry per set, task and image of ``results`` ({set: {task: {"per_image": {image:
    metrics}}}}) for ``write_index``, the sheet at ``results-<set>/<image>_<task>_compare.png``."""
    entries = []
    for dataset, tasks in results.items():
        for task, r in tasks.items():
            for image, m in r.get("per_image", {}).items():
                sheet = posixpath.join(RESULTS_FOLDER.format(dataset), sheet_name(image, task))
                entries.append({"set": dataset, "task": task, "image": image, "sheet": sheet,
                                **{k: m.get(k) for k in ("psnr", "ssim", "baseline_psnr",
                                                         "baseline_ssim")}})
    return entries


def _cells(row: str) -> list[str]:
    """The cells of a Markdown table row ``| a | b |`` (``\\|`` is a literal bar)."""
    row = row.strip()
    row = row[1:] if row.startswith("|") else row
    row = row[:-1] if row.endswith("|") and not row.endswith("\\|") else row
    return [c.strip().replace("\\|", "|") for c in re.split(r"(?<!\\)\|", row)]


def markdown_row(cells: list[str]) -> str:
    """A Markdown table row ``| a | b |`` of the cells, a bar in one written ``\\|`` (``_cells``
    reads it back); line breaks become spaces."""
    return "| " + " | ".join(re.sub(r"[\r\n]+", " ", c).replace("|", "\\|") for c in cells) + " |"


def _is_rule(row: str) -> bool:
    """Whether a Markdown table row is the rule under the header (``|---|:--:|``)."""
    return all(re.fullmatch(r":?-+:?", c) for c in _cells(row))


def _inline(text: str) -> str:
    """Escaped text, with Markdown `code` spans as <code>."""
    return re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text))


def _table_html(rows: list[str]) -> str:
    """An HTML table of Markdown table rows; the row before a rule is the header."""
    header = len(rows) > 1 and _is_rule(rows[1])
    out = ["<table>"]
    for i, row in enumerate(rows):
        if header and i == 1:
            continue
        tag = "th" if header and i == 0 else "td"
        out.append("<tr>" + "".join(f"<{tag}>{_inline(c)}</{tag}>" for c in _cells(row)) + "</tr>")
    return "\n".join(out + ["</table>"])


def markdown_to_html(markdown: str) -> str:
    """Markdown tables (``| a | b |`` rows) as HTML tables, other blocks as escaped paragraphs."""
    blocks, rows, lines = [], [], []
    for line in markdown.splitlines() + [""]:
        is_row = line.strip().startswith("|")
        if rows and not is_row:
            blocks.append(_table_html(rows))
            rows = []
        if lines and (is_row or not line.strip()):
            blocks.append("<p>" + _inline(" ".join(lines)) + "</p>")
            lines = []
        if is_row:
            rows.append(line)
        elif line.strip():
            lines.append(line.strip())
    return "\n".join(blocks)


def number(value: float | None, digits: int, unit: str = "") -> str:
    """A metric with ``digits`` decimals and its unit; '-' when missing."""
    return "-" if value is None else f"{value:.{digits}f}{unit}"


def _anchor(dataset: str, task: str) -> str:
    """The id of a set and task's section."""
    return "s-" + urllib.parse.quote(f"{dataset}-{task}", safe="")


def _figure(entry: dict) -> str:
    """One sheet as a linked <img> with its image name and the input's and output's metrics."""
    url = html.escape(urllib.parse.quote(entry["sheet"]))
    name = html.escape(str(entry["image"]))
    psnr, base = entry.get("psnr"), entry.get("baseline_psnr")
    gain = "" if psnr is None or base is None else f' <span class="gain">({psnr - base:+.2f} dB)</span>'
    return (f'<figure><a href="{url}"><img src="{url}" alt="{name}" loading="lazy"></a>\n'
            f"<figcaption><b>{name}</b>: input PSNR {number(base, 2, ' dB')}, SSIM "
            f"{number(entry.get('baseline_ssim'), 4)}; output PSNR {number(psnr, 2, ' dB')}, "
            f"SSIM {number(entry.get('ssim'), 4)}{gain}</figcaption></figure>")


def index_html(entries: list[dict], table_markdown: str, title: str) -> str:
    """The page: title, metrics table and, per set and task (in the entries' order), the sheets."""
    groups: dict[tuple[str, str], list[dict]] = {}
    for e in entries:
        groups.setdefault((str(e["set"]), str(e["task"])), []).append(e)
    toc = "".join(f'<li><a href="#{_anchor(s, t)}">{html.escape(s)} {html.escape(t)}</a> '
                  f"({len(g)})</li>" for (s, t), g in groups.items())
    parts = ["<!DOCTYPE html>", '<html lang="en"><head><meta charset="utf-8">',
             f"<title>{html.escape(title)}</title><style>{INDEX_CSS}</style></head><body>",
             f"<h1>{html.escape(title)}</h1>", "<h2>Metrics</h2>", markdown_to_html(table_markdown),
             "<h2>Comparison sheets</h2>",
             "<p>Input | output | target; below, the three zoomed on the outlined window where "
             "the output gains most over the input. Click a sheet for its full size.</p>",
             f"<ul>{toc}</ul>" if groups else "<p>No sheets.</p>"]
    for (s, t), group in groups.items():
        parts.append(f'<h3 id="{_anchor(s, t)}">{html.escape(s)}: {html.escape(t)}</h3>')
        parts.extend(_figure(e) for e in group)
    parts.append("</body></html>\n")
    return "\n".join(parts)


def write_index(save_dir: str, entries: list[dict], table_markdown: str, title: str) -> str:
    """Write ``save_dir/index.html`` atomically (see ``index_html``); its path."""
    path = os.path.join(save_dir, INDEX_NAME)
    os.makedirs(save_dir, exist_ok=True)
    utility.write_text(path, index_html(entries, table_markdown, title))
    return path
