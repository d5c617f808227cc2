"""Comparison sheets and index.html of an evaluation (report.py)."""
from __future__ import annotations

import html.parser
import os
import shutil

import numpy as np
import pytest
import torch
from PIL import Image

import report

H, W = 96, 128  # crop_side: 24; zoom factor 128 // 24 = 5
PLANTED = (40, 72)  # (top, left) of the square where the output equals the target
CHROMIUM = "/usr/bin/chromium"
TABLE = [["dataset", "task", "images", "PSNR (Y)", "SSIM (Y)", "input PSNR", "input SSIM"],
         ["Set5", "sr2", "2", "31.25", "0.8876", "29.12", "0.8411"],
         ["CBSD68", "denoise30", "1", "28.03", "0.7990", "18.59", "0.3001"]]
NOTES = "Y: the IPT paper's convention (scale pixels shaved); <b>not bold</b>."


def planted(side: int, h: int = H, w: int = W) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """8-bit (input, output, target): the output is the input but for the target in one square."""
    target = torch.randint(0, 256, (3, h, w)).float()
    inputs = (target + torch.randint(-40, 41, (3, h, w))).clamp(0, 255)
    output = inputs.clone()
    top, left = PLANTED
    output[:, top:top + side, left:left + side] = target[:, top:top + side, left:left + side]
    return inputs, output, target


def pixels(image: Image.Image, box: tuple[int, int, int, int]) -> np.ndarray:
    """(H, W, 3) uint8 pixels of a region (left, top, right, bottom) of an image."""
    return np.asarray(image.crop(box).convert("RGB"))


def as_array(x: torch.Tensor) -> np.ndarray:
    """A (3, H, W) tensor of 8-bit values as (H, W, 3) uint8."""
    return x.permute(1, 2, 0).to(torch.uint8).numpy()


def results() -> dict:
    """Results as evaluate_benchmark gives them, with awkward image names."""
    metrics = {"psnr": 31.25, "ssim": 0.8876, "baseline_psnr": 29.12, "baseline_ssim": 0.8411}
    return {"Set5": {"sr2": {"per_image": {"<script>alert(1)": metrics,
                                           "a b&c#1?": {**metrics, "psnr": 33.5}}}},
            "CBSD68": {"denoise30": {"per_image": {"zebra": {**metrics, "psnr": 28.03}}}}}


def write_run(run: str) -> list[dict]:
    """A run directory with the sheets of ``results()`` and its index.html; the entries."""
    entries = report.index_entries(results())
    for e in entries:
        inputs, output, target = planted(16, 64, 80)
        report.write_sheet(os.path.join(run, e["sheet"]), inputs, output, target, 29.12, e["psnr"])
    report.write_index(run, entries, TABLE, NOTES, "IPT <tiny> & co")
    return entries


class Page(html.parser.HTMLParser):
    """The tags and text of a page."""

    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.text: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))

    def handle_data(self, data):
        self.text.append(data)


def parse(path: str) -> Page:
    page = Page()
    with open(path, encoding="utf-8") as f:
        page.feed(f.read())
    return page


@pytest.mark.parametrize("side", [8, 16, 24])
def test_best_gain_window_finds_the_planted_square(side):
    inputs, output, target = planted(side)
    assert report.best_gain_window(inputs, output, target, side) == PLANTED


def test_best_gain_window_takes_the_top_left_of_equal_windows():
    inputs, output, target = planted(16)
    assert report.best_gain_window(target, target, target, 16) == (0, 0)  # no gain anywhere
    assert report.best_gain_window(inputs, inputs, target, 16) == (0, 0)
    two = output.clone()  # a second, equal square lower down: the first one wins
    two[:, 70:86, 10:26] = target[:, 70:86, 10:26]
    inputs2 = inputs.clone()
    inputs2[:, 70:86, 10:26] = inputs[:, 40:56, 72:88] - target[:, 40:56, 72:88] + target[:, 70:86, 10:26]
    assert report.best_gain_window(inputs2, two, target, 16) == PLANTED
    assert report.best_gain_window(inputs, output, target, 500) == (0, 0)  # the whole image


def test_crop_side_is_a_quarter_within_bounds():
    assert report.crop_side(H, W) == 24
    assert report.crop_side(40, 300) == report.MIN_CROP
    assert report.crop_side(1356, 2040) == report.MAX_CROP
    assert report.crop_side(10, 12) == 10  # an image smaller than MIN_CROP: all of it


def test_sheet_layout_panels_and_zoom():
    inputs, output, target = planted(24)
    sheet = report.comparison_sheet(inputs, output, target, 28.42, 30.1)
    side, zoom = 24, 24 * 5
    m, gap, caption = report.MARGIN, report.GAP, report.CAPTION_HEIGHT
    assert sheet.size == (2 * m + 3 * W + 2 * gap, 2 * m + H + caption + gap + zoom + caption)
    top, left = PLANTED
    ring = np.zeros((H, W), dtype=bool)  # the outline, drawn just outside the window
    o = report.OUTLINE_WIDTH
    ring[max(top - o, 0):top + side + o, max(left - o, 0):left + side + o] = True
    ring[top:top + side, left:left + side] = False
    zoom_y = m + H + caption + gap
    for i, image in enumerate((inputs, output, target)):
        x = m + i * (W + gap)
        panel = pixels(sheet, (x, m, x + W, m + H))
        assert (panel[~ring] == as_array(image)[~ring]).all()
        assert (panel[ring] == report.OUTLINE_COLOR).all()
        crop = as_array(image)[top:top + side, left:left + side]
        zoomed = pixels(sheet, (x, zoom_y, x + zoom, zoom_y + zoom))
        assert (zoomed == crop.repeat(5, axis=0).repeat(5, axis=1)).all()
    caption_strip = pixels(sheet, (m, m + H + o, sheet.width - m, m + H + caption))
    assert (caption_strip != report.BACKGROUND).any(axis=-1).sum() > 50  # some text is drawn


def test_sheet_is_deterministic_and_small_images_work():
    inputs, output, target = planted(16)
    a = report.comparison_sheet(inputs, output, target, 28.42, float("inf"))
    b = report.comparison_sheet(inputs, output, target, 28.42, float("inf"))
    assert a.tobytes() == b.tobytes()
    tiny = report.comparison_sheet(inputs[:, :12, :10], output[:, :12, :10], target[:, :12, :10],
                                   20.0, 21.0)  # captions wider than the panels: columns widen
    assert tiny.width > 3 * 10 + 2 * report.MARGIN
    grey = report.comparison_sheet(inputs[:1], output[:1], target[:1], 20.0, 21.0, crop=32)
    assert grey.mode == "RGB" and grey.height > H + 32


def test_write_sheet_is_a_png_and_leaves_no_temporary(tmp_path):
    inputs, output, target = planted(16)
    path = tmp_path / "results-Set5" / report.sheet_name("baby", "sr2")
    report.write_sheet(str(path), inputs, output, target, 28.42, 30.1)
    assert os.listdir(path.parent) == ["baby_sr2_compare.png"]
    with Image.open(path) as image:
        assert image.format == "PNG"
        assert image.size == report.comparison_sheet(inputs, output, target, 28.42, 30.1).size


def test_table_html_and_markdown_of_the_same_cells():
    page = report.table_html(TABLE)
    assert page.count("<tr>") == 3 and page.count("<th>") == 7 and page.count("<td>") == 14
    assert "<td>31.25</td>" in page and "<td>denoise30</td>" in page
    odd = report.table_html([["image"], ["<b>x</b> & a|b"]])  # escaped once: no tag, no &amp;lt;
    assert "<td>&lt;b&gt;x&lt;/b&gt; &amp; a|b</td>" in odd and "<b>" not in odd
    markdown = report.markdown_table(TABLE).splitlines()
    assert markdown[:3] == ["| dataset | task | images | PSNR (Y) | SSIM (Y) | input PSNR | input SSIM |",
                            "|---|---|---|---|---|---|---|",
                            "| Set5 | sr2 | 2 | 31.25 | 0.8876 | 29.12 | 0.8411 |"]


def test_markdown_row_escapes_bars_and_line_breaks():
    row = report.markdown_table([["a|b", "plain", "two\nlines", "<i>x</i>"]]).splitlines()[0]
    assert row == "| a&#124;b | plain | two\\\\nlines | &lt;i&gt;x&lt;/i&gt; |"


def test_number_formats_or_dashes():
    assert report.number(31.254, 2) == "31.25" and report.number(0.88764, 4) == "0.8876"
    assert report.number(None, 2) == "-" and report.number(29.1, 2, " dB") == "29.10 dB"


def test_index_html_lists_every_sheet_escaped(tmp_path):
    entries = write_run(str(tmp_path))
    path = tmp_path / "index.html"
    text = path.read_text(encoding="utf-8")
    page = parse(str(path))
    images = [attrs for tag, attrs in page.tags if tag == "img"]
    assert len(images) == len(entries) == 3
    srcs = [a["src"] for a in images]
    assert srcs == ["results-Set5/%3Cscript%3Ealert%281%29_sr2_compare.png",
                    "results-Set5/a%20b%26c%231%3F_sr2_compare.png",
                    "results-CBSD68/zebra_denoise30_compare.png"]
    for src in srcs:  # relative paths that name the written files
        assert not src.startswith(("/", "file:")) and ".." not in src
    assert [e["sheet"] for e in entries] == [
        "results-Set5/<script>alert(1)_sr2_compare.png",
        "results-Set5/a b&c#1?_sr2_compare.png", "results-CBSD68/zebra_denoise30_compare.png"]
    assert all((tmp_path / e["sheet"]).is_file() for e in entries)
    assert "<script" not in text.lower() and "<tiny>" not in text
    assert not any(tag == "script" for tag, _ in page.tags)
    words = "".join(page.text)
    for number in ("31.25", "0.8876", "29.12", "0.8411", "28.03", "18.59", "0.3001", "33.50",
                   "+4.38 dB"):
        assert number in words
    assert "<script>alert(1)" in words and "IPT <tiny> & co" in words
    assert NOTES in words and "<b>not bold" not in text  # the notes as text
    assert [a["alt"] for a in images] == ["<script>alert(1)", "a b&c#1?", "zebra"]
    assert sum(1 for tag, _ in page.tags if tag == "h3") == 2  # one section per set and task


def find_chromium(sync_api) -> str | None:
    """A Chromium for Playwright: the system's, or Playwright's own download; None when neither."""
    if os.access(CHROMIUM, os.X_OK):
        return CHROMIUM
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found:
        return found
    with sync_api.sync_playwright() as p:
        own = p.chromium.executable_path
    return own if own and os.path.exists(own) else None


def test_index_opens_in_a_browser(tmp_path):
    sync_api = pytest.importorskip("playwright.sync_api")
    executable = find_chromium(sync_api)
    if executable is None:
        pytest.skip("no Chromium (apt-get install chromium, or playwright install chromium)")
    entries = write_run(str(tmp_path))
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=executable, headless=True)
        try:
            page = browser.new_page()
            page.goto((tmp_path / "index.html").as_uri())
            images = page.locator("img")
            assert images.count() == len(entries)
            for i in range(images.count()):  # loading="lazy": bring each into view first
                images.nth(i).scroll_into_view_if_needed()
            page.wait_for_function("[...document.images].every(i => i.complete)")
            widths = page.evaluate("[...document.images].map(i => i.naturalWidth)")
            assert all(w > 0 for w in widths), widths
            assert page.locator("script").count() == 0
            assert page.locator("table tr").count() == 3
        finally:
            browser.close()
