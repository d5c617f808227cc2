"""Names in results.md, metrics.json and index.html: shown literally, whatever they hold (tags,
Markdown punctuation, line breaks, bytes that are not UTF-8), never breaking a file or the run."""
from __future__ import annotations

import html
import html.parser
import json
import os
import re

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

import evaluation
import main as cli
import report
from run_settings import EvalSettings, InferenceSettings

TINY = ["--n_feats", "16", "--num_heads", "4", "--num_layers", "1", "--chop", "fast", "--cpu"]
NASTY = ["<img src=x onerror=alert(1)>", "a`b``c", "x|y", "two\nlines", "*bold* _em_ [l](u) ![i](u)",
         "# head", "\\", "&amp; &lt;", "~~s~~ $x$", " edge ", "\u202egnp.exe", "\x00\x1b[31m",
         os.fsdecode(b"\xff\xfe.png"), "\ud800", "<!-- c -->", "img_001", "a__b", "\u2028"]
# Markdown of ``report.markdown_text``: backslash escapes, entities, other characters as such
TOKEN = re.compile(r"\\([\\*_\[\]#])|&(amp|lt|gt|#\d+);|(.)", re.S)
SPECIAL = set("\\&<>`|~$*[]#")  # never bare in the Markdown of a name
MARKDOWN_TAGS = {"table", "thead", "tbody", "tr", "th", "td", "p", "h1", "h2", "h3"}


def unescape_markdown(text: str) -> str:
    """What a renderer shows for ``markdown_text``'s Markdown (a reference reader of it, which
    also checks that nothing else is in it: no bare special character, no emphasis)."""
    shown = []
    for m in TOKEN.finditer(text):
        escaped, entity, char = m.groups()
        assert char is None or char not in SPECIAL, (char, text)
        if char == "_":  # a bare underscore: only inside a word, where it never emphasises
            assert re.fullmatch(r"[A-Za-z0-9]_[A-Za-z0-9]", text[max(m.start() - 1, 0):m.end() + 1]), text
        shown.append(escaped or (html.unescape(f"&{entity};") if entity else char))
    return "".join(shown)


any_text = st.text(st.characters(exclude_categories=()), max_size=20)  # surrogates included
names = st.one_of(any_text, st.sampled_from(NASTY),
                  st.lists(st.sampled_from(NASTY + list("ab_-. |`<&")), max_size=6).map("".join))


@settings(max_examples=400)
@given(names)
def test_markdown_text_shows_any_name_literally(name):
    text = report.markdown_text(name)
    assert "<" not in text and "`" not in text and "|" not in text and "\n" not in text
    assert text == text.strip()  # no edge spaces for a renderer to strip
    text.encode("utf-8")  # valid UTF-8: no surrogate left
    assert unescape_markdown(text) == report.display(name)


def test_ordinary_names_are_written_as_they_are():
    for name in ("img_001", "baby", "0801", "Set5", "a b", "model_latest.pt", "x-1.png", "ünï"):
        assert report.markdown_text(name) == name == report.display(name)
    assert report.markdown_text("<img src=x onerror=alert(1)>") == "&lt;img src=x onerror=alert(1)&gt;"
    assert report.markdown_text("a`b") == "a&#96;b" and report.markdown_text("x|y") == "x&#124;y"
    assert report.markdown_text("two\nlines") == "two\\\\nlines"  # shown as two\nlines
    assert report.display(os.fsdecode(b"\xff.png")) == "\\xff.png"


@settings(max_examples=300)
@given(st.binary(max_size=12))
def test_undecodable_file_names_show_as_their_bytes(raw):
    """A Linux file name (os.fsdecode, surrogate escapes) as Python's backslashreplace shows it."""
    assert report.printable(os.fsdecode(raw)) == raw.decode("utf-8", "backslashreplace")


class Page(html.parser.HTMLParser):
    """Tags, and the text of each <td>, <th>, <b>, <h3> and <p> (nested text included)."""

    def __init__(self):
        super().__init__()
        self.tags: list[tuple[str, dict]] = []
        self.cells: dict[str, list[str]] = {}
        self._open: list[str] = []

    def handle_starttag(self, tag, attrs):
        self.tags.append((tag, dict(attrs)))
        if tag in ("td", "th", "b", "h3", "p", "title"):
            self._open.append(tag)
            self.cells.setdefault(tag, []).append("")

    def handle_endtag(self, tag):
        if self._open and self._open[-1] == tag:
            self._open.pop()

    def handle_data(self, data):
        for tag in self._open:
            self.cells[tag][-1] += data


def parse(text: str) -> Page:
    page = Page()
    page.feed(text)
    page.close()
    return page


def test_python_markdown_renders_the_names_literally():
    """Python-Markdown (tensorboard's dependency) as a second reader: each name is one cell with
    exactly its shown text, and no tag of its own."""
    markdown = pytest.importorskip("markdown")
    rows = [["image", "PSNR"], *([name, "1.00"] for name in NASTY)]
    rendered = markdown.markdown(report.markdown_table(rows) + "\n\nsee " + report.markdown_text(
        NASTY[0] + NASTY[1]), extensions=["tables"])
    page = parse(rendered)
    assert {tag for tag, _ in page.tags} <= MARKDOWN_TAGS, rendered
    assert page.cells["td"][::2] == [report.display(n) for n in NASTY]
    assert page.cells["p"] == ["see " + report.display(NASTY[0] + NASTY[1])]


@settings(max_examples=150)
@given(names)
def test_python_markdown_renders_any_name_literally(name):
    markdown = pytest.importorskip("markdown")
    rendered = markdown.markdown(report.markdown_table([["image"], [name]]), extensions=["tables"])
    page = parse(rendered)
    assert {tag for tag, _ in page.tags} <= MARKDOWN_TAGS, rendered
    assert page.cells["td"] == [report.display(name)]


# ----------------------------------------------------------------------------------------
# The writers: write_reports (metrics.json, results.md, stdout) and write_index
# ----------------------------------------------------------------------------------------
METRICS = {"psnr": 30.0, "ssim": 0.9, "psnr_y": 30.0, "ssim_y": 0.9, "psnr_rgb": 29.0,
           "ssim_rgb": 0.8, "baseline_psnr": 28.0, "baseline_ssim": 0.7, "gain_psnr": 2.0}


def tiny_results(dataset: str, images: list[str]) -> dict:
    return {dataset: {"sr2": {**METRICS, "n_images": len(images),
                              "per_image": {i: dict(METRICS) for i in images}}}}


def eval_settings(save: str) -> EvalSettings:
    return EvalSettings(data_test=["Set5"], dir_data="data", dir_demo="demo", test_range=(801, 810),
                        clip_noise=True, seed=1, save=save, save_results=True, save_gt=False,
                        workers=0, task_id=None, model_name="ipt", record={})


def table_cells(markdown: str, heading: str) -> list[list[str]]:
    """The rows (cells) of the first table after the line starting with ``heading``, its header
    and rule left out."""
    lines = markdown.split("\n")
    start = next(i for i, line in enumerate(lines) if line.startswith(heading))
    start = next(i for i in range(start + 1, len(lines)) if lines[i].startswith("|"))
    rows = []
    for line in lines[start + 2:]:
        if not line.startswith("|"):
            break
        rows.append([c.strip() for c in line.strip("|").split("|")])  # no bare | in a cell
    return rows


def check_reports(run: str, dataset: str, images: list[str], checkpoint: str, printed: str) -> None:
    """metrics.json, results.md and the printed copy show every name as ``report.display``."""
    with open(os.path.join(run, "metrics.json"), "rb") as f:
        meta_results = json.loads(f.read().decode("utf-8"))
    assert list(meta_results["results"]) == [report.printable(dataset)]
    assert list(meta_results["results"][report.printable(dataset)]["sr2"]["per_image"]) == [
        report.printable(i) for i in images]
    assert meta_results["meta"]["checkpoint"] == (report.printable(checkpoint) or None)
    with open(os.path.join(run, "results.md"), "rb") as f:
        text = f.read().decode("utf-8")
    assert printed == text  # few rows: all printed
    heading = f"### {report.markdown_text(dataset)} sr2"
    rows = table_cells(text, heading)
    assert [unescape_markdown(r[0]) for r in rows] == [report.display(i) for i in images]
    assert [unescape_markdown(r[0]) for r in table_cells(text, "training: ")] == [report.display(dataset)]
    line = next(x for x in text.split("\n") if x.startswith("model: "))
    if checkpoint:
        shown = unescape_markdown(line.split(", checkpoint: ", 1)[1].rsplit(", tiling: ", 1)[0])
        assert shown == report.display(checkpoint)


def check_index(path: str, dataset: str, images: list[str], title: str) -> None:
    with open(path, "rb") as f:
        page = parse(f.read().decode("utf-8"))
    assert not any(tag == "script" for tag, _ in page.tags)
    assert page.cells["title"] == [report.display(title)]
    assert page.cells["b"] == [report.display(i) for i in images]  # each sheet's caption
    assert [a["alt"] for tag, a in page.tags if tag == "img"] == [report.display(i) for i in images]
    assert page.cells["h3"] == [f"{report.display(dataset)}: sr2"]
    assert page.cells["td"][0] == report.display(dataset)  # the metrics table, escaped once


def distinct(values: list[str]) -> bool:
    return len({report.printable(v) for v in values}) == len(values)


@settings(max_examples=60)
@given(dataset=names, images=st.lists(names, min_size=1, max_size=3).filter(distinct),
       checkpoint=st.one_of(st.just(""), names))
def test_write_reports_and_index_show_any_names(tmp_path_factory, monkeypatch, capsys, dataset,
                                                images, checkpoint):
    monkeypatch.setattr(evaluation.utility, "git_commit", lambda folder: None)  # no git per example
    run = str(tmp_path_factory.mktemp("run"))
    results = tiny_results(dataset, images)
    ev = eval_settings(run)
    _, printed = report.write_reports("fast", ev, InferenceSettings(mode="fast"), results,
                                      checkpoint=checkpoint, checkpoint_sha256="0" * 64)
    check_reports(run, dataset, images, checkpoint, printed)
    title = f"IPT evaluation: ipt, {checkpoint}"
    index = report.write_index(run, report.index_entries(results), report.summary_rows(results),
                               report.table_notes(), title)
    check_index(index, dataset, images, title)


def test_odd_names_in_the_written_reports(tmp_path, monkeypatch, capsys):
    """The names the issue gives, through write_reports: a tag, a backtick, a bar, bytes."""
    monkeypatch.setattr(evaluation.utility, "git_commit", lambda folder: None)
    images = ["<img src=x onerror=alert(1)>", "x|y`z", os.fsdecode(b"\xff\xfe"), "two\nlines"]
    checkpoint = os.fsdecode(b"/runs/a`b|<i>\xff/model_best.pt")
    _, printed = report.write_reports("fast", eval_settings(str(tmp_path)), InferenceSettings(mode="fast"),
                                      tiny_results("Set5", images), checkpoint=checkpoint)
    text = (tmp_path / "results.md").read_text(encoding="utf-8")
    assert "<img" not in text and "<i>" not in text and "`" not in text
    assert "checkpoint: /runs/a&#96;b&#124;&lt;i&gt;\\\\xff/model_best.pt, tiling" in text
    assert "| &lt;img src=x onerror=alert(1)&gt; | 30.00 |" in text
    assert "| \\\\xff\\\\xfe | 30.00 |" in text and "| two\\\\nlines | 30.00 |" in text
    check_reports(str(tmp_path), "Set5", images, checkpoint, printed)
    meta = json.loads((tmp_path / "metrics.json").read_text(encoding="utf-8"))["meta"]
    assert meta["checkpoint"] == "/runs/a`b|<i>\\xff/model_best.pt"


def test_benchmark_image_with_an_undecodable_name(tmp_path, capsys):
    """A Set5 HR image named b'\\xff<b>`x|.png' (not UTF-8): evaluated, its sheet written under
    its own bytes, every report readable UTF-8 showing it as \\xff<b>`x|."""
    hr = tmp_path / "data" / "benchmark" / "Set5" / "HR"
    hr.mkdir(parents=True)
    pixels = np.random.default_rng(0).integers(0, 256, (24, 24, 3), dtype=np.uint8)
    stem = os.fsdecode(b"\xff<b>`x|")
    Image.fromarray(pixels).save(os.path.join(str(hr), stem + ".png"))
    run = tmp_path / "run"
    code = cli.main(["--test_only", "--dir_data", str(tmp_path / "data"), "--save", str(run),
                     "--save_results", *TINY, "--scale", "2", "--data_test", "Set5"])
    assert code == 0
    shown = "\\xff<b>`x|"
    per_image = json.loads((run / "metrics.json").read_bytes().decode("utf-8"))["results"]["Set5"]["sr2"]
    assert list(per_image["per_image"]) == [shown]
    text = (run / "results.md").read_bytes().decode("utf-8")
    assert [unescape_markdown(r[0]) for r in table_cells(text, "### Set5 sr2")] == [shown]
    assert capsys.readouterr().out.strip() == text.strip()
    page_text = (run / "index.html").read_bytes().decode("utf-8")
    page = parse(page_text)
    assert page.cells["b"] == [shown]
    src = [a["src"] for tag, a in page.tags if tag == "img"]
    assert src == ["results-Set5/%FF%3Cb%3E%60x%7C_sr2_compare.png"]
    sheet = os.path.join(os.fsencode(str(run)), b"results-Set5", b"\xff<b>`x|_sr2_compare.png")
    assert os.path.isfile(sheet)  # the link names the file written
