"""The standard test sets as users download them: images that are greyscale in the standard
versions, the sets' other names (CSet14, BSD100, any case) in scripts.prepare_data and --data_test,
and the recorded SHA-256 of the standard pixels. Tiny tables and trees under tmp_path."""
from __future__ import annotations

import hashlib
import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

import main as cli
from data import standard_sets
from data.benchmark import BenchmarkError, BenchmarkSet, canonical_test_set
from data.images import read_image
from option import parse_args
from test_prepare_data import rgb, run, save, tiny_table  # noqa: F401 (autouse: its tiny table)

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SHIPPED_TABLE = os.path.join(ROOT, "data", "standard_sets.json")
SET5_BIRD = os.path.join(ROOT, "tests", "fixtures", "set5_bird", "benchmark", "Set5")
TINY_MODEL = ["--n_feats", "16", "--num_heads", "4", "--num_layers", "1", "--chop", "fast", "--cpu"]
SIDE = 16  # the fake images' width and height


def shipped() -> dict:
    """data/standard_sets.json as parsed JSON."""
    with open(SHIPPED_TABLE, encoding="utf-8") as f:
        return json.load(f)


def use_table(tmp_path, monkeypatch, table: dict) -> None:
    """scripts.prepare_data reads ``table`` instead of data/standard_sets.json."""
    path = tmp_path / "sets.json"
    path.write_text(json.dumps(table))
    monkeypatch.setattr(standard_sets, "STANDARD_SETS_FILE", str(path))


def grey_rgb(seed: int) -> np.ndarray:
    """A random greyscale image as three equal channels, (SIDE, SIDE, 3) uint8."""
    return np.repeat(rgb(SIDE, SIDE, seed)[..., :1], 3, axis=2)


# ----------------------------------------------------------------------------------------
# Greyscale images of the standard versions
# ----------------------------------------------------------------------------------------
FAKE_SET14 = {"Set14": {"count": 3, "greyscale": ["bridge", "man"],
                        "images": {n: [SIDE, SIDE] for n in ("bridge", "comic", "man")}}}


def check_fake_set14(tmp_path, monkeypatch, capsys, images: dict[str, Image.Image]):
    """--check --make_lr of a Set14 holding ``images``: exit status and the problem lines."""
    use_table(tmp_path, monkeypatch, FAKE_SET14)
    for name, img in images.items():
        os.makedirs(tmp_path / "data/benchmark/Set14/HR", exist_ok=True)
        img.save(tmp_path / f"data/benchmark/Set14/HR/{name}.png")
    rc, out, err = run(capsys, "--check", tmp_path / "data", "--make_lr")
    assert err == "" and out.startswith("Set14: 3 of 3 images, LR x2 x3 x4 complete"), out
    return rc, [line.strip() for line in out.splitlines() if line.startswith("  ")]


def test_only_a_greyscale_copy_of_a_colour_image_is_reported(tmp_path, monkeypatch, capsys):
    rc, problems = check_fake_set14(tmp_path, monkeypatch, capsys, {
        "bridge": Image.fromarray(rgb(SIDE, SIDE, 1)[..., 0]),  # mode L, greyscale as standard
        "man": Image.fromarray(grey_rgb(2)),  # RGB with three equal channels, as standard
        "comic": Image.fromarray(rgb(SIDE, SIDE, 3)[..., 0])})  # a greyscale copy of a colour one
    comic = tmp_path / "data/benchmark/Set14/HR/comic.png"
    assert rc == 1
    assert problems == [f"{comic}: greyscale (mode L); Set14's comic is in colour in the standard "
                        "version: a wrong version"]


@pytest.mark.parametrize("copy", ["recoloured", "reencoded"])
def test_a_colour_copy_of_a_greyscale_standard_image_is_reported(tmp_path, monkeypatch, capsys,
                                                                 copy):
    bridge = grey_rgb(1)
    if copy == "recoloured":
        bridge = rgb(SIDE, SIDE, 1)
    else:  # a lossy re-encoding leaves the channels a level apart here and there
        bridge[3, 5, 2] = bridge[3, 5, 2] ^ 1
    rc, problems = check_fake_set14(tmp_path, monkeypatch, capsys, {
        "bridge": Image.fromarray(bridge), "man": Image.fromarray(grey_rgb(2)),
        "comic": Image.fromarray(rgb(SIDE, SIDE, 3))})
    path = tmp_path / "data/benchmark/Set14/HR/bridge.png"
    assert rc == 1
    assert problems == [f"{path}: in colour; Set14's bridge is greyscale in the standard version: a "
                        "re-coloured or re-encoded copy, a wrong version"]


def test_shipped_table_lists_the_greyscale_images_of_the_standard_versions():
    specs = standard_sets.load_standard_sets(SHIPPED_TABLE)
    assert {n: sorted(s.greyscale) for n, s in specs.items() if s.greyscale} == {
        "Set14": ["bridge", "man"],
        "Urban100": ["img_011", "img_028", "img_036", "img_042", "img_045", "img_072", "img_095"],
        "Manga109": ["LoveHina_vol01"]}
    assert not any("colour" in entry for name, entry in shipped().items() if name[0] != "_")


@pytest.mark.parametrize("key, value, named", [
    ("greyscale", ["brige"], "'brige'"),
    ("pixels_sha256", {"baby": "0" * 64}, "'baby'"),
    ("pixels_sha256", {"comic": "xyz"}, "64 hexadecimal digits"),
])
def test_table_entries_naming_no_image_are_refused(tmp_path, monkeypatch, capsys, key, value,
                                                   named):
    use_table(tmp_path, monkeypatch, {"Set14": {**FAKE_SET14["Set14"], key: value}})
    rc, out, err = run(capsys, "--check", tmp_path)
    assert rc == 2 and out == "" and err.count("\n") == 1 and named in err and "sets.json" in err


# ----------------------------------------------------------------------------------------
# Other names of the sets
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("name, expected", [
    ("CSet5", "Set5"), ("set5", "Set5"), ("SET5", "Set5"), ("cset14", "Set14"),
    ("CUrban100", "Urban100"), ("CManga109", "Manga109"), ("BSD100", "B100"), ("bsds100", "B100"),
    ("CBSD68", "CBSD68"), ("sample", "Sample"), ("Demo", "Demo"),
    ("BSD68", None), ("Set50", None), ("CSet", None)])  # BSD68 is the greyscale set: another one
def test_set_names_and_aliases(name, expected):
    assert canonical_test_set(name) == expected


def test_prepare_data_takes_folders_by_their_aliases(tmp_path, capsys):
    src = tmp_path / "src"
    for i, name in enumerate(("baby", "bird")):  # tests/test_prepare_data.py's tiny table
        save(src / f"CSet5/{name}.png", *((24, 20), (20, 24))[i], i)
    save(src / "CBSD68/3096.png", 20, 14, 2)
    save(src / "CBSD68/12084.png", 14, 20, 3)
    save(src / "BSDS100/HR/1.png", 25, 17, 4)
    save(src / "BSDS100/HR/2.png", 17, 25, 5)
    rc, out, err = run(capsys, src / "CSet5", src / "CBSD68", src / "BSDS100", "--out",
                       tmp_path / "data")
    assert (rc, err) == (0, ""), out
    assert f"Set5 <- {src / 'CSet5'} (CSet5 -> Set5): 2 HR images" in out
    assert f"CBSD68 <- {src / 'CBSD68'}: 2 HR images" in out
    assert f"B100 <- {src / 'BSDS100'} (BSDS100 -> B100): 2 HR images" in out
    rc, out, err = run(capsys, "--check", tmp_path / "data")
    assert (rc, err) == (0, "")
    assert out.splitlines() == ["Set5: 2 of 2 images, LR x2 x3 x4 complete",
                                "B100: 2 of 2 images, LR x2 x3 x4 complete",
                                "CBSD68: 2 of 2 images"]


def test_unknown_folder_names_the_aliases(tmp_path, capsys):
    save(tmp_path / "BSD68/a.png", 8, 8)
    rc, _, err = run(capsys, tmp_path / "BSD68", "--out", tmp_path / "data")
    assert rc == 2 and "no test set found" in err and "CSet14" in err and "BSDS100" in err


TWO_COPIES = {  # case: (images made under src/ at (w, h), the SRCs, what the refusal names)
    "CSet14+Set14": ({"CSet14/comic.png": (25, 19), "Set14/HR/comic.png": (25, 19)},
                     ["CSet14", "Set14"], ["CSet14 and ", "Set14 are both Set14; give each set once"]),
    "BSD100+B100": ({"BSD100/1.png": (25, 17), "B100/HR/1.png": (25, 17)},
                    ["BSD100", "B100"], ["BSD100 and ", "B100 are both B100"]),
    "one folder": ({"benchmark/CSet14/comic.png": (25, 19), "benchmark/Set14/comic.png": (25, 19)},
                   ["benchmark"], ["benchmark/CSet14 and ", "benchmark/Set14 are both Set14"]),
    "zip+folder": ({"zip/CSet14/comic.png": (25, 19), "Set14/comic.png": (25, 19)},
                   ["CSet14.zip", "Set14"], ["Set14 and ", "CSet14.zip are both Set14"]),
    "same name twice": ({"a/Set14/comic.png": (25, 19), "b/Set14/comic.png": (25, 19)},
                        ["a/Set14", "b/Set14"],
                        ["a/Set14/comic.png and ", "b/Set14/comic.png would both be "
                         "benchmark/Set14/HR/comic.png in --out"]),
}


@pytest.mark.parametrize("case", TWO_COPIES)
def test_two_copies_of_one_set_are_refused(tmp_path, capsys, case):
    """The second copy's same-named images silently replaced the first's (two 'Set14 <-' lines)."""
    images, srcs, named = TWO_COPIES[case]
    src = tmp_path / "src"
    for i, (path, (w, h)) in enumerate(images.items()):
        save(src / path, w, h, i)  # other pixels in each copy
    if "zip" in case:
        shutil.make_archive(str(src / "CSet14"), "zip", src / "zip")
    rc, _, err = run(capsys, *[src / s for s in srcs], "--out", tmp_path / "data")
    assert rc == 2 and err.count("\n") == 1 and err.startswith("prepare_data.py: "), err
    assert all(text in err for text in named), err
    assert sorted(os.listdir(tmp_path)) == ["sets.json", "src"]  # no --out, no scratch folder


def test_data_test_aliases_are_their_sets():
    args = parse_args(["--data_test", "cset14+BSDS100+sample+demo+CBSD68"])
    assert args.data_test == ["Set14", "B100", "Sample", "Demo", "CBSD68"]


@pytest.mark.parametrize("data_test, named", [
    ("Set14+CSet14", "Set14 and CSet14 are both Set14"),
    ("Set5+set5", "Set5 and set5 are both Set5"),
    ("Set5+BSD68", "BSD68: unknown test set")])
def test_data_test_refuses_one_set_twice_and_unknown_names(capsys, data_test, named):
    with pytest.raises(SystemExit) as stop:
        parse_args(["--data_test", data_test])
    lines = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(lines) == 1 and named in lines[0]


def test_benchmark_set_by_alias_is_the_set(tmp_path):
    save(tmp_path / "CBSD68/3096.png", 20, 14)
    by_alias = BenchmarkSet(str(tmp_path), "cbsd68", "denoise30", 1)[0]
    by_name = BenchmarkSet(str(tmp_path), "CBSD68", "denoise30", 1)[0]
    assert by_alias.lr.equal(by_name.lr)  # noise is seeded by the set's own name


def test_evaluated_under_the_sets_own_name(tmp_path):
    save(tmp_path / "data/benchmark/Set14/HR/comic.png", 32, 24)
    code = cli.main(["--test_only", "--dir_data", str(tmp_path / "data"), "--save",
                     str(tmp_path / "run"), *TINY_MODEL, "--scale", "2", "--data_test", "CSet14"])
    assert code == 0
    report = json.loads((tmp_path / "run/metrics.json").read_text())
    assert list(report["results"]) == ["Set14"]


def test_an_hr_link_to_dev_zero_is_an_unreadable_image(tmp_path):
    """It was left out of the set: exit 0, '1 images', z.png never named."""
    save(tmp_path / "data/benchmark/Set14/HR/a.png", 32, 24)
    os.symlink("/dev/zero", tmp_path / "data/benchmark/Set14/HR/z.png")
    code = cli.main(["--test_only", "--dir_data", str(tmp_path / "data"), "--save",
                     str(tmp_path / "run"), *TINY_MODEL, "--scale", "2", "--data_test", "Set14"])
    log = (tmp_path / "run/log.txt").read_text()
    assert code == 1 and "HR/z.png': it is a character device, not a regular file" in log, log


@pytest.mark.parametrize("dataset,task,files", [
    ("Set14", "sr2", ["benchmark/Set14/HR/a.png", "benchmark/Set14/HR/a.bmp", "benchmark/Set14/HR/b.png"]),
    ("Rain100L", "derain", ["Rain100L/rain-1.png", "Rain100L/rain-1.bmp", "Rain100L/norain-1.png"]),
])
def test_two_images_of_one_name_in_a_test_set_are_refused(tmp_path, capsys, dataset, task, files):
    """a.png and a.bmp were both restored under the name a: one result and one output file
    replaced the other, and the set's mean was over 2 of its 3 images, with exit status 0."""
    for name in files:
        save(tmp_path / "data" / name, 16, 16)
    second = (tmp_path / "data" / files[0]).as_posix()  # sorted by name: a.bmp before a.png
    named = os.path.basename(second)[:-len(".png")]
    line = f"{second}: a second image named {named!r} in {os.path.dirname(second)}; keep one"
    with pytest.raises(BenchmarkError) as refused:
        BenchmarkSet(str(tmp_path / "data"), dataset, task, 2)
    assert str(refused.value) == line
    if dataset == "Set14":  # prepare_data --check says it too, with the set's other lines
        rc, out, err = run(capsys, "--check", tmp_path / "data")
        assert rc == 1 and f"  {line}" in out.splitlines(), out


# ----------------------------------------------------------------------------------------
# SHA-256 of the standard pixels
# ----------------------------------------------------------------------------------------
def bird_table() -> dict:
    """A Set5 of one image, bird, with the shipped table's size and SHA-256 for it."""
    set5 = shipped()["Set5"]
    return {"Set5": {"count": 1, "images": {"bird": set5["images"]["bird"]},
                     "pixels_sha256": {"bird": set5["pixels_sha256"]["bird"]}}}


def test_pixel_sha256_is_of_the_size_and_rgb_bytes():
    path = os.path.join(SET5_BIRD, "HR/bird.png")
    img = np.asarray(Image.open(path).convert("RGB"))
    expected = hashlib.sha256(b"288x288 RGB8\n" + img.tobytes()).hexdigest()
    assert standard_sets.pixel_sha256(read_image(path)) == expected
    assert expected == bird_table()["Set5"]["pixels_sha256"]["bird"]  # the fixture is the standard bird


def test_shipped_hashes_cover_set5_and_cbsd68():
    specs = standard_sets.load_standard_sets(SHIPPED_TABLE)
    assert {n: len(s.pixels_sha256) for n, s in specs.items() if s.pixels_sha256} == {
        "Set5": 5, "CBSD68": 68}


def test_standard_set5_and_cbsd68_from_aliased_folders(tmp_path, monkeypatch, capsys):
    """The issue's acceptance: CSet5 (the standard bird, re-encoded PNG) and CBSD68 folders
    converted, then --check: exit 0, each as the set it is, the standard pixels recognised."""
    use_table(tmp_path, monkeypatch, {**bird_table(), "CBSD68": {
        "count": 1, "greyscale": [], "images": {"3096": [20, 14]}}})
    shutil.copytree(SET5_BIRD, tmp_path / "src/CSet5")
    with Image.open(tmp_path / "src/CSet5/HR/bird.png") as img:  # other bytes, the same pixels
        img.convert("RGB").save(tmp_path / "src/CSet5/HR/bird.png", compress_level=1)
    save(tmp_path / "src/CBSD68/3096.png", 20, 14)
    rc, out, err = run(capsys, tmp_path / "src/CSet5", tmp_path / "src/CBSD68", "--out",
                       tmp_path / "data")
    assert (rc, err) == (0, "")
    assert f"Set5 <- {tmp_path / 'src/CSet5'} (CSet5 -> Set5): 1 HR images, 3 LR files" in out
    rc, out, err = run(capsys, "--check", tmp_path / "data")
    assert (rc, err) == (0, "")
    assert out.splitlines() == ["Set5: 1 of 1 images, LR x2 x3 x4 complete",
                                "Set5: 1 of 1 images match the standard version's pixels",
                                "CBSD68: 1 of 1 images"]


def test_other_pixels_are_a_note_not_a_problem(tmp_path, monkeypatch, capsys):
    use_table(tmp_path, monkeypatch, bird_table())
    hr = tmp_path / "benchmark/Set5/HR/bird.png"
    shutil.copytree(SET5_BIRD, tmp_path / "benchmark/Set5")
    arr = np.array(Image.open(hr))
    arr[0, 0, 0] ^= 1  # one level of one pixel
    Image.fromarray(arr).save(hr)
    rc, out, err = run(capsys, "--check", tmp_path)
    assert (rc, err) == (0, "")
    assert out.splitlines() == [
        "Set5: 1 of 1 images, LR x2 x3 x4 complete",
        "Set5: 0 of 1 images match the standard version's pixels",
        f"  note: {hr}: its pixels differ from the standard Set5 bird's (SHA-256 of the decoded "
        "pixels); its metrics may not compare with published ones"]
