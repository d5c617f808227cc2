"""Comparison sheets and an HTML index of an evaluation, to compare restorations by eye.

- ``comparison_sheet``: input | output | target side by side with their PSNR, and below them
  the three zoomed on the window where the output gains most over the input
  (``best_gain_window``); ``write_sheet`` saves one as PNG;
- ``write_index``: ``RUN/index.html``, plain HTML (no script, no external resource) with the
  metrics table and, per set and task, the sheets; ``index_entries`` lists them from the results;
- ``display`` / ``markdown_text`` / ``markdown_table``: names (of images, sets, files) as shown in
  results.md and index.html: literally, whatever characters or undecodable bytes they hold.

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
MARKDOWN_ENTITIES = {"&": "&amp;", "<": "&lt;", ">": "&gt;", "`": "&#96;", "|": "&#124;",
                     "~": "&#126;", "$": "&#36;"}
MARKDOWN_BACKSLASHED = "\\*_[]#"


def _escape_char(c: str) -> str:
    """One character as a Python escape; an escaped undecodable byte as that byte (``\\xff``)."""
    if ord(c) in ESCAPED_BYTES:
        return f"\\x{ord(c) - 0xDC00:02x}"
    return c.encode("unicode_escape").decode("ascii")


def printable(text: str) -> str:
    """``text`` as valid Unicode: the undecodable bytes of a file name (surrogate escapes) written
    ``\\xNN``, as ``os.fsencode(text).decode("utf-8", "backslashreplace")`` does."""
    return SURROGATE.sub(lambda m: _escape_char(m[0]), text)


def display(text: str) -> str:
    """``printable(text)`` on one line: line breaks, control and bidirectional characters written
    as Python escapes (``\\n``, ``\\x00``, ``\\u202e``)."""
    return UNPRINTABLE.sub(lambda m: _escape_char(m[0]), text)


def _markdown_char(text: str, i: int) -> str:
    """The Markdown of ``text[i]``: an entity, a backslash escape or the character itself."""
    c = text[i]
    if c in MARKDOWN_ENTITIES:
        return MARKDOWN_ENTITIES[c]
    if c == "_" and 0 < i < len(text) - 1 and _word(text[i - 1]) and _word(text[i + 1]):
        return c  # an underscore inside a word never emphasises (img_001)
    if c in MARKDOWN_BACKSLASHED:
        return "\\" + c
    if c.isspace() and (i == 0 or i == len(text) - 1):
        return f"&#{ord(c)};"  # Markdown strips the spaces around a cell or a line
    return c


def _word(c: str) -> bool:
    """An ASCII letter or digit."""
    return c.isascii() and c.isalnum()


def markdown_text(text: str) -> str:
    """``display(text)`` as Markdown text that renders as exactly that, in a table cell or a line:
    no tag, code span, emphasis, link or cell break; ordinary names (img_001, Set5) unchanged."""
    shown = display(text)
    return "".join(_markdown_char(shown, i) for i in range(len(shown)))


def markdown_row(cells: list[str]) -> str:
    """A Markdown table row ``| a | b |`` of the cells, each as ``markdown_text``."""
    return "| " + " | ".join(markdown_text(c) for c in cells) + " |"


def markdown_table(rows: list[list[str]]) -> str:
    """A Markdown table of rows of plain cells, the first row the header."""
    return "\n".join([markdown_row(rows[0]), "|" + "---|" * len(rows[0]),
                      *(markdown_row(r) for r in rows[1:])])


def html_text(text: str) -> str:
    """``display(text)`` escaped for HTML text and attribute values."""
    return html.escape(display(text))


def table_html(rows: list[list[str]]) -> str:
    """An HTML table of rows of plain cells, the first row the header."""
    out = ["<table>", "<tr>" + "".join(f"<th>{html_text(c)}</th>" for c in rows[0]) + "</tr>"]
    out += ["<tr>" + "".join(f"<td>{html_text(c)}</td>" for c in r) + "</tr>" for r in rows[1:]]
    return "\n".join(out + ["</table>"])


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


def index_html(entries: list[dict], table: list[list[str]], notes: str, title: str) -> str:
    """The page: title, metrics table (rows of plain cells, the header first) with its notes and,
    per set and task (in the entries' order), the sheets."""
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
    return "\n".join(parts)


def write_index(save_dir: str, entries: list[dict], table: list[list[str]], notes: str,
                title: str) -> str:
    """Write ``save_dir/index.html`` atomically (see ``index_html``); its path."""
    path = os.path.join(save_dir, INDEX_NAME)
    os.makedirs(save_dir, exist_ok=True)
    utility.write_text(path, index_html(entries, table, notes, title))
    return path
