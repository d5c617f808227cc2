"""python -m scripts.prepare_data: each download layout converted, --check's findings, safe archives,
checked downloads. Tiny trees under tmp_path, a tiny table of expected sets; nothing leaves
127.0.0.1."""
from __future__ import annotations

import functools
import hashlib
import http.server
import json
import os
import re
import tarfile
import tempfile
import threading
import zipfile

import numpy as np
import pytest
from PIL import Image

from data import archives, benchmark, downloads, prepare, standard_sets
from scripts import prepare_data

# name -> (width, height) of the fake sets; the real table is data/standard_sets.json
TINY_SETS = {
    "Set5": {"count": 2, "images": {"baby": [24, 20], "bird": [20, 24]}},
    "Set14": {"count": 1, "images": {"comic": [25, 19]}},
    "B100": {"count": 2, "sizes": [[25, 17], [17, 25]]},
    "Urban100": {"count": 2, "images": {"img_001": [24, 24], "img_002": [32, 24]}},
    "Manga109": {"count": 2, "images": {"ARMS": [16, 24], "Akuhamu": [16, 24]}},
    "CBSD68": {"count": 2, "images": {"3096": [20, 14], "12084": [14, 20]}},
    "Rain100L": {"count": 2, "sizes": [[16, 12], [12, 16]]},
    "DIV2K": {"count": 2, "names": ["0801", "0802"]},
}
SCALES = (2, 3, 4)
SHIPPED_TABLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "data",
                             "standard_sets.json")


@pytest.fixture(autouse=True)
def tiny_table(tmp_path, monkeypatch):
    """The script reads TINY_SETS instead of data/standard_sets.json."""
    path = tmp_path / "sets.json"
    path.write_text(json.dumps(TINY_SETS))
    monkeypatch.setattr(standard_sets, "STANDARD_SETS_FILE", str(path))


def rgb(w: int, h: int, seed: int = 0) -> np.ndarray:
    """A random colour image, (h, w, 3) uint8."""
    return np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8)


def save(path, w: int, h: int, seed: int = 0, grey: bool = False) -> None:
    """A random PNG of size w x h at ``path`` (mode L if grey)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    img = Image.fromarray(rgb(w, h, seed)[..., 0]) if grey else Image.fromarray(rgb(w, h, seed))
    img.save(path)


def size(path) -> tuple[int, int]:
    """(width, height) of an image file."""
    with Image.open(path) as img:
        return img.size


def set_tree(root, set_name: str, lr: bool = True) -> None:
    """EDSR's layout of a fake set under root: HR/ and, if lr, LR_bicubic/X<s>/<name>x<s>.png."""
    for i, (name, (w, h)) in enumerate(TINY_SETS[set_name]["images"].items()):
        save(os.path.join(root, "HR", f"{name}.png"), w, h, i)
        for s in SCALES if lr else ():
            save(os.path.join(root, "LR_bicubic", f"X{s}", f"{name}x{s}.png"), w // s, h // s, i)


def make_zip(path, files: dict[str, str]) -> None:
    """A zip holding each file at its archive name."""
    with zipfile.ZipFile(path, "w") as zf:
        for arcname, src in files.items():
            zf.write(src, arcname)


def tree_files(root) -> dict[str, str]:
    """Archive name (relative to root's parent, so the top folder is kept) -> file, for every file."""
    root = str(root)
    base = os.path.dirname(root)
    return {os.path.relpath(os.path.join(d, f), base): os.path.join(d, f)
            for d, _, fs in os.walk(root) for f in fs}


def run(capsys, *argv) -> tuple[int, str, str]:
    """main(argv): exit status, stdout, stderr."""
    rc = prepare_data.main([str(a) for a in argv])
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_edsr_benchmark_tree_copied_as_is(tmp_path, capsys):
    src = tmp_path / "benchmark"
    set_tree(src / "Set5", "Set5")
    set_tree(src / "Urban100", "Urban100", lr=False)
    rc, out, _ = run(capsys, src, "--out", tmp_path / "data")
    assert rc == 0, out
    hr = tmp_path / "data/benchmark/Set5/HR/baby.png"
    assert hr.read_bytes() == (src / "Set5/HR/baby.png").read_bytes()
    assert (tmp_path / "data/benchmark/Set5/LR_bicubic/X3/birdx3.png").read_bytes() == \
        (src / "Set5/LR_bicubic/X3/birdx3.png").read_bytes()
    assert size(tmp_path / "data/benchmark/Urban100/LR_bicubic/X4/img_002x4.png") == (8, 6)  # made
    assert "Set5: 2 of 2 images, LR x2 x3 x4 complete" in out
    assert "Urban100: 2 of 2 images, LR x2 x3 x4 complete (6 made)" in out


def test_flat_folder_in_a_zip(tmp_path, capsys):
    flat = tmp_path / "src/Set5"  # as denoising repositories ship sets: Set5/*.png
    for i, (name, (w, h)) in enumerate(TINY_SETS["Set5"]["images"].items()):
        save(flat / f"{name}.bmp" if i else flat / f"{name}.png", w, h, i)
    make_zip(tmp_path / "set5.zip", tree_files(flat))
    rc, out, _ = run(capsys, tmp_path / "set5.zip", "--out", tmp_path / "data")
    assert rc == 0, out
    assert size(tmp_path / "data/benchmark/Set5/HR/bird.png") == (20, 24)  # bmp decoded to PNG
    assert size(tmp_path / "data/benchmark/Set5/LR_bicubic/X3/babyx3.png") == (8, 6)


def test_flat_cbsd68_in_a_tar_gz(tmp_path, capsys):
    for i, (name, (w, h)) in enumerate(TINY_SETS["CBSD68"]["images"].items()):
        save(tmp_path / f"src/{name}.png", w, h, i)
    with tarfile.open(tmp_path / "CBSD68.tar.gz", "w:gz") as tf:
        for name in TINY_SETS["CBSD68"]["images"]:
            tf.add(tmp_path / f"src/{name}.png", f"{name}.png")
    rc, out, _ = run(capsys, tmp_path / "CBSD68.tar.gz", "--out", tmp_path / "data")
    assert rc == 0, out
    assert sorted(os.listdir(tmp_path / "data/benchmark/CBSD68/HR")) == ["12084.png", "3096.png"]
    assert "CBSD68: 2 of 2 images\n" in out  # a denoising set: no LR files


def test_selfexsr_naming(tmp_path, capsys):
    src = tmp_path / "Urban100_SR"
    for s in (2, 4):
        folder = src / f"image_SRF_{s}"
        for i, (name, (w, h)) in enumerate(TINY_SETS["Urban100"]["images"].items()):
            save(folder / f"{name}_SRF_{s}_HR.png", w, h, i)
            save(folder / f"{name}_SRF_{s}_LR.png", w // s, h // s, i)
            save(folder / f"{name}_SRF_{s}_bicubic.png", w, h, i)  # a method's output: skipped
    rc, out, _ = run(capsys, src, "--out", tmp_path / "data")
    assert rc == 0, out
    data = tmp_path / "data/benchmark/Urban100"
    assert sorted(os.listdir(data / "HR")) == ["img_001.png", "img_002.png"]
    assert (data / "LR_bicubic/X2/img_001x2.png").read_bytes() == \
        (src / "image_SRF_2/img_001_SRF_2_LR.png").read_bytes()
    assert size(data / "LR_bicubic/X3/img_002x3.png") == (10, 8)  # x3 is not in the release: made


def test_selfexsr_numbers_named_as_the_set(tmp_path, capsys):
    """SelfExSR's Set5 is img_001... in the set's alphabetical order: renamed when sizes agree."""
    folder = tmp_path / "Set5/image_SRF_2"
    for i, (w, h) in enumerate(TINY_SETS["Set5"]["images"].values()):
        save(folder / f"img_00{i + 1}_SRF_2_HR.png", w, h, i)
        save(folder / f"img_00{i + 1}_SRF_2_LR.png", w // 2, h // 2, i)
    rc, out, _ = run(capsys, tmp_path / "Set5", "--out", tmp_path / "data")
    assert rc == 0, out
    assert sorted(os.listdir(tmp_path / "data/benchmark/Set5/HR")) == ["baby.png", "bird.png"]
    assert size(tmp_path / "data/benchmark/Set5/LR_bicubic/X2/birdx2.png") == (10, 12)


@pytest.mark.parametrize("layout", ["flat", "rainy_norain", "input_target"])
def test_rain100l_layouts(tmp_path, capsys, layout):
    src = tmp_path / "Rain100L"
    for i, key in enumerate(("001", "002")):
        w, h = TINY_SETS["Rain100L"]["sizes"][i]
        rainy, clean = {"flat": (src / f"rain-{key}.png", src / f"norain-{key}.png"),
                        "rainy_norain": (src / f"rainy/rain-{key}.png", src / f"norain/norain-{key}.png"),
                        "input_target": (src / f"input/{key}.png", src / f"target/{key}.png")}[layout]
        save(rainy, w, h, i)
        save(clean, w, h, i + 10)
    if layout == "flat":
        save(src / "rainstreak-001.png", 16, 12)  # JORDER's streak layers: skipped
    with tarfile.open(tmp_path / "Rain100L.tar", "w") as tf:
        tf.add(src, "Rain100L")
    rc, out, _ = run(capsys, tmp_path / "Rain100L.tar", "--out", tmp_path / "data")
    assert rc == 0, out
    assert sorted(os.listdir(tmp_path / "data/Rain100L")) == [
        "norain-001.png", "norain-002.png", "rain-001.png", "rain-002.png"]
    assert "Rain100L: 2 of 2 pairs" in out


def test_div2k_zips(tmp_path, capsys):
    for i, name in enumerate(("0801", "0802")):
        save(tmp_path / f"src/DIV2K_valid_HR/{name}.png", 36, 24, i)
        save(tmp_path / f"src/DIV2K_valid_LR_bicubic/X2/{name}x2.png", 18, 12, i)
    make_zip(tmp_path / "DIV2K_valid_HR.zip", tree_files(tmp_path / "src/DIV2K_valid_HR"))
    make_zip(tmp_path / "DIV2K_valid_LR_bicubic_X2.zip",
             tree_files(tmp_path / "src/DIV2K_valid_LR_bicubic"))
    rc, out, _ = run(capsys, tmp_path / "DIV2K_valid_HR.zip", tmp_path / "DIV2K_valid_LR_bicubic_X2.zip",
                     "--out", tmp_path / "data")
    assert rc == 0, out
    div2k = tmp_path / "data/DIV2K"
    assert (div2k / "DIV2K_valid_LR_bicubic/X2/0802x2.png").read_bytes() == \
        (tmp_path / "src/DIV2K_valid_LR_bicubic/X2/0802x2.png").read_bytes()
    assert size(div2k / "DIV2K_valid_LR_bicubic/X3/0801x3.png") == (12, 8)
    assert "DIV2K: 2 of 2 images, LR x2 x3 x4 complete (4 made)" in out


def test_check_good_tree_and_manga109(tmp_path, capsys):
    for set_name in ("Set5", "Manga109"):
        set_tree(tmp_path / f"benchmark/{set_name}", set_name)
    rc, out, err = run(capsys, "--check", tmp_path)
    assert (rc, err) == (0, "")
    assert out.splitlines() == ["Set5: 2 of 2 images, LR x2 x3 x4 complete",
                                "Manga109: 2 of 2 images, LR x2 x3 x4 complete"]


def test_check_names_every_problem(tmp_path, capsys):
    root = tmp_path / "benchmark/Set5"
    set_tree(root, "Set5")
    os.remove(root / "HR/bird.png")  # a missing image
    save(root / "LR_bicubic/X2/babyx2.png", 11, 10)  # wrong size: 24x20 // 2 is 12x10
    save(root / "HR/baby.png", 24, 20, grey=True)  # a greyscale version
    rc, out, _ = run(capsys, "--check", tmp_path)
    assert rc == 1
    assert "Set5: 1 of 2 images, LR x3 x4 complete, x2: 1 wrong size" in out
    assert f"{root / 'HR/bird.png'}: missing" in out
    assert f"{root / 'LR_bicubic/X2/babyx2.png'}: 11x10, expected 12x10" in out
    assert f"{root / 'HR/baby.png'}: greyscale (mode L)" in out
    assert f"{root / 'LR_bicubic/X2/birdx2.png'}: no HR image" in out


def test_check_make_lr_and_rain_pairs(tmp_path, capsys):
    set_tree(tmp_path / "benchmark/Set5", "Set5", lr=False)
    save(tmp_path / "Rain100L/rain-001.png", 16, 12)
    rc, out, _ = run(capsys, "--check", tmp_path)
    assert rc == 1
    assert f"{tmp_path / 'benchmark/Set5/LR_bicubic/X2'}: missing (2 LR x2 files" in out
    assert f"{tmp_path / 'Rain100L/rain-001.png'}: unpaired (no norain-001 image)" in out
    save(tmp_path / "Rain100L/norain-001.png", 16, 12, grey=False, seed=3)
    save(tmp_path / "Rain100L/rain-002.png", 12, 16)
    save(tmp_path / "Rain100L/norain-002.png", 12, 16, seed=4)
    rc, out, _ = run(capsys, "--check", tmp_path, "--make_lr")
    assert rc == 0, out
    assert "Set5: 2 of 2 images, LR x2 x3 x4 complete (6 made)" in out


@pytest.mark.parametrize("kind", ["zip", "tar"])
def test_archive_escaping_its_folder_refused(tmp_path, capsys, kind):
    save(tmp_path / "a.png", 8, 8)
    archive = tmp_path / f"Set5.{kind}"
    if kind == "zip":
        make_zip(archive, {"Set5/a.png": str(tmp_path / "a.png"), "../evil.png": str(tmp_path / "a.png")})
    else:
        with tarfile.open(archive, "w") as tf:
            tf.add(tmp_path / "a.png", "Set5/a.png")
            tf.add(tmp_path / "a.png", "../evil.png")
    rc, out, err = run(capsys, archive, "--out", tmp_path / "out/data")
    assert rc == 2 and out == ""
    assert err.count("\n") == 1 and "'../evil.png'" in err and str(archive) in err
    assert not (tmp_path / "out/evil.png").exists() and not (tmp_path / "evil.png").exists()


def test_archive_links_and_bombs_refused(tmp_path, capsys, monkeypatch):
    with tarfile.open(tmp_path / "Set5.tar", "w") as tf:
        link = tarfile.TarInfo("Set5/a.png")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tf.addfile(link)
    rc, _, err = run(capsys, tmp_path / "Set5.tar", "--out", tmp_path / "data")
    assert rc == 2 and "is a link" in err
    with zipfile.ZipFile(tmp_path / "Set14.zip", "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("Set14/comic.png", b"\0" * 100_000)  # compresses to a few hundred bytes
    monkeypatch.setattr(archives, "MAX_EXTRACT_BYTES", 50_000)
    rc, _, err = run(capsys, tmp_path / "Set14.zip", "--out", tmp_path / "data")
    assert rc == 2 and "more than 50000 bytes" in err and err.count("\n") == 1


class QuietHandler(http.server.SimpleHTTPRequestHandler):
    """Serves a folder without logging each request."""

    def log_message(self, *args) -> None:
        """Say nothing."""


@pytest.fixture
def local_server(tmp_path, monkeypatch):
    """An HTTP server on 127.0.0.1 serving tmp_path/www; yields its base address."""
    www = tmp_path / "www"
    www.mkdir()
    for var in ("no_proxy", "NO_PROXY"):
        monkeypatch.setenv(var, "*")  # never through a proxy
    server = http.server.ThreadingHTTPServer(
        ("127.0.0.1", 0), functools.partial(QuietHandler, directory=str(www)))
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", www
    server.shutdown()
    server.server_close()
    thread.join()


def test_download_checks_sha256(tmp_path, capsys, monkeypatch, local_server):
    base, www = local_server
    set_tree(tmp_path / "src/Set5", "Set5", lr=False)
    make_zip(www / "Set5.zip", tree_files(tmp_path / "src/Set5"))
    good = hashlib.sha256((www / "Set5.zip").read_bytes()).hexdigest()
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))  # where the partial download goes
    rc, out, err = run(capsys, "--download", "Set5", "--url", f"{base}/Set5.zip", "--sha256", "0" * 64,
                       "--out", tmp_path / "bad")
    assert rc == 2 and f"SHA-256 is {good}, expected {'0' * 64}" in err and err.count("\n") == 1
    assert os.listdir(scratch) == [] and not (tmp_path / "bad/benchmark").exists()
    rc, out, err = run(capsys, "--download", "Set5", "--url", f"{base}/Set5.zip", "--sha256", good,
                       "--out", tmp_path / "good")
    assert rc == 0, err
    assert "Set5: 2 of 2 images, LR x2 x3 x4 complete (6 made)" in out
    assert re.search(r"Set5\.zip: +\d+%\|", err) and "\n" not in err  # a progress bar, cleared at its end
    assert os.listdir(scratch) == []
    rc, _, err = run(capsys, "--download", "Set5", "--url", f"{base}/nothing.zip", "--sha256", good,
                     "--out", tmp_path / "none")
    assert rc == 2 and "nothing.zip: download failed" in err and os.listdir(scratch) == []


def test_download_refuses_what_it_cannot_verify(tmp_path, capsys):
    rc, _, err = run(capsys, "--download", "Manga109", "--out", tmp_path)
    assert rc == 2 and "no public address known" in err
    rc, _, err = run(capsys, "--download", "Set5", "--out", tmp_path)
    assert rc == 2 and "no SHA-256 known for https://cv.snu.ac.kr" in err
    table = {s: [downloads.Download(**d) for d in entry["download"]]
             for s, entry in benchmark.standard_entries().items()}
    assert all(d.sha256 and len(d.sha256) == 64 for d in table["DIV2K"])  # from tensorflow/datasets
    assert {d.sha256 for s in ("Set5", "Set14", "B100", "Urban100", "Manga109", "CBSD68", "Rain100L")
            for d in table[s]} == {None}


@pytest.mark.parametrize("argv, named", [
    ([], "--check"), (["x"], "--out"), (["--check", "a", "--out", "b"], "--check"),
    (["--download", "Set6", "--out", "o"], "Set6"), (["--url", "http://h/a.zip"], "--url"),
    (["--download", "Set5", "--url", "file:///etc/passwd", "--sha256", "0" * 64, "--out", "o"], "--url"),
    (["--download", "Set5", "--sha256", "xyz", "--out", "o"], "--sha256"),
    (["/no/such/Set5", "--out", "o"], "/no/such/Set5"),
])
def test_errors_are_one_line(tmp_path, capsys, monkeypatch, argv, named):
    monkeypatch.chdir(tmp_path)
    rc, out, err = run(capsys, *argv)
    assert rc == 2 and out == "" and err.count("\n") == 1 and named in err
    assert os.listdir(tmp_path) == ["sets.json"]  # nothing written


def test_unknown_source_and_empty_check(tmp_path, capsys):
    save(tmp_path / "photos/a.png", 8, 8)
    rc, _, err = run(capsys, tmp_path / "photos", "--out", tmp_path / "data")
    assert rc == 2 and "no test set found" in err
    (tmp_path / "empty").mkdir()
    rc, out, _ = run(capsys, "--check", tmp_path / "empty")
    assert rc == 1 and "no test sets found" in out


def test_shipped_table_lists_the_sets(monkeypatch):
    monkeypatch.setattr(standard_sets, "STANDARD_SETS_FILE", SHIPPED_TABLE)
    specs = standard_sets.load_standard_sets()
    assert {n: s.count for n, s in specs.items()} == {
        "Set5": 5, "Set14": 14, "B100": 100, "Urban100": 100, "Manga109": 109, "CBSD68": 68,
        "Rain100L": 100, "DIV2K": 100}
    assert len(specs["Manga109"].sizes) == 109 and specs["B100"].allowed == ((481, 321), (321, 481))
    assert specs["DIV2K"].names[0] == "0801" and specs["DIV2K"].names[-1] == "0900"
    assert prepare.canonical_set("BSDS100") == "B100" and prepare.canonical_set("set50") is None
    assert prepare.canonical_set("CSet14_HR") == "Set14"
    assert prepare.canonical_set("BSD68") is None  # the greyscale set, not CBSD68
