"""Hostile input for the data readers: link loops, bad shard indexes, odd files and odd names."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

from data.benchmark import BenchmarkError, BenchmarkSet, Pair
from data.degrade import add_eval_noise
from data.images import IMAGE_EXTENSIONS, ImageFolder, ImageReadError, list_images, open_regular, read_image
from data.listing import walk_images
from data.sources import (
    SHARD_INDEX,
    SHARD_INDEX_MAX_BYTES,
    ShardSource,
    TrainingDataError,
    read_shard_index,
    shard_counts,
)
from data.stream import PairStream
from scripts.scale import make_shards

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROBE_TIMEOUT = 60  # seconds; a walk that loops never ends, the fixed one takes ~3 s (torch import)
SIDE = 16  # test images: big enough to score denoising (SSIM's 11x11 window)


def image(seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (SIDE, SIDE, 3), dtype=np.uint8)


def png_bytes(seed: int = 0) -> bytes:
    path = os.path.join(tempfile.mkdtemp(), "x.png")
    Image.fromarray(image(seed)).save(path)
    return open(path, "rb").read()


def save(path, seed: int = 0) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(image(seed)).save(path, "PNG")
    return os.fspath(path)


# ----------------------------------------------------------------------------------------
# 1. Links to "." or to an ancestor: the walks end and list each real file once
# ----------------------------------------------------------------------------------------
def looped_folder(root) -> str:
    """a.png, sub/b.png, two links to ".", a link to the parent and one to a sibling folder."""
    src = os.path.join(root, "src")
    save(os.path.join(src, "a.png"))
    save(os.path.join(src, "sub", "b.png"), 1)
    os.symlink(".", os.path.join(src, "here1"))
    os.symlink(".", os.path.join(src, "here2"))
    os.symlink("..", os.path.join(src, "sub", "up"))
    os.symlink("sub", os.path.join(src, "again"))
    return src


def test_links_to_the_folder_or_an_ancestor_end_make_shards(tmp_path):
    src = looped_folder(tmp_path)
    try:
        done = subprocess.run([sys.executable, "-m", "scripts.scale.make_shards", src, str(tmp_path / "out")],
                              cwd=ROOT, capture_output=True, text=True, timeout=PROBE_TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"make_shards on a folder with links to '.' did not end in {PROBE_TIMEOUT} s")
    assert done.returncode == 0, done.stderr
    assert "packed 2 images into 1 shard" in done.stdout.strip().splitlines()[-1]


def test_links_to_the_folder_or_an_ancestor_end_walk_images(tmp_path):
    src = looped_folder(tmp_path)
    found = []  # in a daemon thread: a walk that loops would keep it busy, the test still ends
    walker = threading.Thread(target=lambda: found.append(walk_images(src)[0]), daemon=True)
    walker.start()
    walker.join(PROBE_TIMEOUT)
    assert found, f"walk_images on a folder with links to '.' did not end in {PROBE_TIMEOUT} s"
    assert len(found[0]) == 2


# ----------------------------------------------------------------------------------------
# 2. shards.json: one validating reader, one error type
# ----------------------------------------------------------------------------------------
GOOD_NAME = "shard-000000.tar"
BAD_INDEXES = [  # (contents of shards.json, what the error names)
    ("[]", "'shards'"),
    ('{"shards": []}', "'shards'"),
    ('{"other": {}}', "'shards'"),
    ('{"shards": {"shard-000000.tar": "3"}}', GOOD_NAME),
    ('{"shards": {"shard-000000.tar": true}}', GOOD_NAME),
    ('{"shards": {"shard-000000.tar": -1}}', GOOD_NAME),
    ('{"shards": {"shard-000000.tar": 1.5}}', GOOD_NAME),
    ('{"shards": {"shard-000000.tar": 1e400}}', GOOD_NAME),
    (f'{{"shards": {{"shard-000000.tar": {10 ** 30}}}}}', GOOD_NAME),
    ('{"shards": {"../shard-000000.tar": 1}}', "../shard-000000.tar"),
    ('{"shards": {"/abs/shard-000000.tar": 1}}', "/abs/shard-000000.tar"),
    ('{"shards": {"": 1}}', "''"),
    ('{"shards": {"notes.txt": 1}}', "notes.txt"),
    ('{"shards": ', "JSON"),
    ("[" * 100_000 + "]" * 100_000, "JSON"),
    (b"\xff\xfe{}", "UTF-8"),
]


@pytest.mark.parametrize("text,named", BAD_INDEXES, ids=range(len(BAD_INDEXES)))
def test_a_bad_shard_index_is_one_error_naming_file_and_key(tmp_path, text, named):
    path = tmp_path / SHARD_INDEX
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    with pytest.raises(TrainingDataError) as e:
        read_shard_index(str(tmp_path))
    message = str(e.value)
    assert "\n" not in message and str(path) in message and named in message
    assert "make_shards" in message


def test_a_shard_index_that_is_no_regular_file_or_too_large_is_refused_unread(tmp_path):
    assert read_shard_index(str(tmp_path)) is None  # none: the shards are scanned
    path = str(tmp_path / SHARD_INDEX)
    os.mkfifo(path)  # opening it for reading would wait for a writer forever
    with pytest.raises(TrainingDataError, match="not a regular file"):
        read_shard_index(str(tmp_path))
    os.remove(path)
    os.symlink("missing.json", path)
    with pytest.raises(TrainingDataError, match="missing"):
        read_shard_index(str(tmp_path))
    os.remove(path)
    with open(path, "wb") as f:
        f.truncate(SHARD_INDEX_MAX_BYTES + 1)  # sparse: no disk used
    with pytest.raises(TrainingDataError, match="larger than"):
        read_shard_index(str(tmp_path))


def test_a_count_the_shard_cannot_hold_is_refused(tmp_path):
    shard = tmp_path / GOOD_NAME
    with tarfile.open(shard, "w") as tar:
        tar.add(save(tmp_path / "src" / "a.png"), arcname="a.png")
    (tmp_path / SHARD_INDEX).write_text(json.dumps({"shards": {GOOD_NAME: 1}}))
    assert shard_counts([str(shard)]) == [1]
    (tmp_path / SHARD_INDEX).write_text(json.dumps({"shards": {GOOD_NAME: 10 ** 6}}))
    with pytest.raises(TrainingDataError, match="make_shards"):
        shard_counts([str(shard)])
    with pytest.raises(TrainingDataError, match="more members than"):  # what main.py reports
        PairStream(str(tmp_path), ["sr2"], 1)


JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=4)
                    | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)
NAMES = st.sampled_from([GOOD_NAME, "a.TAR", "../x.tar", "/x.tar", "x/y.tar", ".", "..", "",
                         "x.tar\0", "\udcff.tar", "x.json"]) | st.text(max_size=12)
COUNTS = st.integers(-2 ** 70, 2 ** 70) | st.booleans() | st.floats() | st.text(max_size=3) | JSON
INDEXES = JSON | st.fixed_dictionaries({"shards": st.dictionaries(NAMES, COUNTS, max_size=4)})


@settings(max_examples=300)
@given(record=INDEXES, raw=st.none() | st.binary(max_size=64))
def test_any_shard_index_gives_a_valid_record_or_the_one_error(tmp_path, record, raw):
    path = tmp_path / SHARD_INDEX
    path.write_bytes(raw if raw is not None else json.dumps(record).encode())
    try:
        counts = read_shard_index(str(tmp_path))
    except TrainingDataError as e:
        assert "\n" not in str(e) and str(path) in str(e)
        return
    assert isinstance(counts, dict)
    for name, count in counts.items():
        assert isinstance(name, str) and os.path.basename(name) == name
        assert name.lower().endswith(".tar") and name not in ("", ".", "..") and "\0" not in name
        assert type(count) is int and count >= 0


# ----------------------------------------------------------------------------------------
# 3. make_shards: OUT a file; links packed as the files they point to
# ----------------------------------------------------------------------------------------
def test_make_shards_into_a_file_is_one_line_and_exit_2(tmp_path, capsys):
    save(tmp_path / "src" / "a.png")
    out = tmp_path / "out.txt"
    out.write_text("keep me")
    assert make_shards.main([str(tmp_path / "src"), str(out)]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and str(out) in err and "folder" in err
    assert out.read_text() == "keep me"


def test_make_shards_packs_what_links_point_to_and_counts_the_rest(tmp_path, capsys):
    """Before: a hard link to a file packed already was a link member of size 0 (no image)."""
    src = tmp_path / "src"
    real = save(src / "a.png")
    os.symlink("a.png", src / "b.png")  # packed as a.png's bytes, as a regular member
    os.link(real, src / "c.png")  # a hard link (simulate_imagenet's tree): the same
    os.symlink("missing.png", src / "dangling.png")
    os.symlink("loop.png", src / "loop.png")
    os.symlink("/dev/zero", src / "zero.png")
    os.mkfifo(src / "fifo.png")
    out = tmp_path / "out"
    assert make_shards.main([str(src), str(out), "--sorted"]) == 0
    captured = capsys.readouterr()
    assert "packed 3 images" in captured.out and "skipped 4" in captured.err
    with tarfile.open(out / GOOD_NAME) as tar:
        members = tar.getmembers()
        assert [m.name for m in members] == ["a.png", "b.png", "c.png"]
        assert all(m.isfile() for m in members)
        assert all(tar.extractfile(m).read() == open(real, "rb").read() for m in members)
    assert read_shard_index(str(out)) == {GOOD_NAME: 3}


def test_make_shards_stops_cleanly_and_the_same_command_finishes(tmp_path, capsys, monkeypatch):
    """SIGTERM while packing the second shard: one line, exit 130, no temporary; other options are
    refused (the kept shard is not theirs), the same command keeps the first shard and finishes.
    Before: exit 143 (a traceback for SIGINT), a temporary left, the same command refused."""
    src, out = tmp_path / "src", tmp_path / "out"
    for i in range(6):
        save(src / f"{i}.png", seed=i)
    command = [str(src), str(out), "--per_shard", "3"]
    opened = []

    def open_then_stop(path):
        opened.append(path)
        if len(opened) == 5:  # while the second shard is written
            os.kill(os.getpid(), signal.SIGTERM)
        return open_regular(path)

    monkeypatch.setattr(make_shards, "open_regular", open_then_stop)
    assert make_shards.main(command) == 130
    err = capsys.readouterr().err.strip()
    assert err.startswith("make_shards.py: stopped by SIGTERM") and len(err.splitlines()) == 1, err
    assert os.listdir(out) == [GOOD_NAME]  # no temporary, no lock
    first = os.stat(out / GOOD_NAME)
    monkeypatch.undo()
    assert make_shards.main([*command[:2], "--per_shard", "2"]) == 1
    assert "holds other files than this command packs" in capsys.readouterr().err
    assert make_shards.main(command) == 0
    assert os.stat(out / GOOD_NAME).st_ino == first.st_ino  # kept, not written again
    assert read_shard_index(str(out)) == {GOOD_NAME: 3, "shard-000001.tar": 3}
    packed = []
    for name in (GOOD_NAME, "shard-000001.tar"):
        with tarfile.open(out / name) as tar:
            packed += tar.getnames()
    assert sorted(packed) == [f"{i}.png" for i in range(6)]


# ----------------------------------------------------------------------------------------
# 4. Demo folder: what is not a readable regular image is listed, then counted as skipped
# ----------------------------------------------------------------------------------------
def test_demo_folder_lists_pipes_links_and_folders_as_errors_and_reads_webp(tmp_path):
    save(tmp_path / "good.png")
    Image.fromarray(image(2)).save(tmp_path / "photo.webp", lossless=True)
    os.mkfifo(tmp_path / "fifo.png")
    os.symlink("loop.png", tmp_path / "loop.png")
    os.symlink("/dev/zero", tmp_path / "zero.png")
    os.symlink("missing.png", tmp_path / "dangling.png")
    os.makedirs(tmp_path / "x.png")
    (tmp_path / "notes.txt").write_text("not an image")
    folder = ImageFolder(str(tmp_path))
    assert sorted(folder.stems) == ["dangling", "fifo", "good", "loop", "photo", "x", "zero"]
    items = dict(folder[i] for i in range(len(folder)))
    assert torch.equal(items.pop("photo"), torch.from_numpy(image(2)).permute(2, 0, 1))
    assert items.pop("good").shape == (3, SIDE, SIDE)
    assert all(isinstance(e, ImageReadError) for e in items.values())  # evaluation counts these
    assert "not a regular file" in str(items["fifo"]) and "device" in str(items["zero"])
    assert "folder" in str(items["x"]) and "missing" in str(items["dangling"])
    assert "symbolic links" in str(items["loop"])
    with pytest.raises(ImageReadError, match="named pipe"):
        read_image(str(tmp_path / "fifo.png"))  # never opened: opening it would wait forever
    assert ".webp" in IMAGE_EXTENSIONS and list_images(str(tmp_path))[-1].endswith("photo.webp")
    assert walk_images(str(tmp_path))[0] == list_images(str(tmp_path))


def test_a_pipe_swapped_in_after_the_check_is_not_read(tmp_path, monkeypatch):
    fifo = str(tmp_path / "swapped.png")
    os.mkfifo(fifo)
    holder = os.open(fifo, os.O_RDWR | os.O_NONBLOCK)  # a writer: a regression fails, not hangs
    os.write(holder, b"junk" * 16)
    regular = os.stat(save(tmp_path / "real.png"))
    monkeypatch.setattr(os, "stat", lambda *args, **kwargs: regular)  # it looked regular
    try:
        with pytest.raises(ImageReadError, match="named pipe"):
            read_image(fifo)
    finally:
        os.close(holder)


# ----------------------------------------------------------------------------------------
# 5. Names that are not UTF-8: the benchmark's noise seed
# ----------------------------------------------------------------------------------------
def test_a_benchmark_file_named_in_bytes_that_are_not_utf8_is_read(tmp_path):
    folder = tmp_path / "benchmark" / "CBSD68" / "HR"
    save(folder / "plain.png")
    with open(os.path.join(os.fsencode(folder), b"\xff.png"), "wb") as f:
        f.write(png_bytes(3))
    data = BenchmarkSet(str(tmp_path), "CBSD68", "denoise30", 1)
    pairs = [data[i] for i in range(len(data))]
    assert all(isinstance(p, Pair) for p in pairs), pairs
    assert [p.name for p in pairs] == ["plain", os.fsdecode(b"\xff")]
    hr = torch.from_numpy(image(0)).permute(2, 0, 1)  # an ASCII name keeps its seed
    assert torch.equal(pairs[0].lr, add_eval_noise(hr.float(), 30.0, 1, "CBSD68", "plain"))


# ----------------------------------------------------------------------------------------
# 5b. A test set's entry named like an image that is no regular file: an unreadable image
# ----------------------------------------------------------------------------------------
def special_entry(path, kind: str) -> str:
    """Make ``path`` a FIFO, a folder, a link to /dev/zero or a broken link; the words that name it."""
    if kind == "fifo":
        os.mkfifo(path)
        return "named pipe"
    if kind == "folder":
        os.makedirs(path)
        return "folder"
    os.symlink("/dev/zero" if kind == "dev_zero" else "missing.png", path)
    return "character device" if kind == "dev_zero" else "link to a missing file"


SPECIAL_KINDS = ("fifo", "folder", "dev_zero", "broken_link")


@pytest.mark.parametrize("kind", SPECIAL_KINDS)
def test_a_test_set_entry_that_is_no_regular_file_is_an_unreadable_image(tmp_path, kind):
    """The old listing dropped it, so a set with a.png and z.png -> /dev/zero was '1 images'."""
    save(tmp_path / "benchmark/Set14/HR/a.png")
    words = special_entry(tmp_path / "benchmark/Set14/HR/z.png", kind)
    data = BenchmarkSet(str(tmp_path), "Set14", "sr2", 2)
    assert len(data) == 2 and isinstance(data[0], Pair)
    assert isinstance(data[1], ImageReadError)  # never opened: a pipe or /dev/zero would not end
    assert "z.png" in str(data[1]) and words in str(data[1])


# ----------------------------------------------------------------------------------------
# 6b. Any file name in a Demo folder or a test set: listed and read, or counted as skipped
# ----------------------------------------------------------------------------------------
SPECIAL = [b"<b>bold</b>", b"`rm -rf`", b" spaced name ", b"-rf", b"--help", b"\xff\xfe", b"a\nb",
           b"\xe2\x80\xae", b"$(x)", b"%s%n", b"'quote\"", b"\\back"]
BYTE_NAMES = st.sampled_from(SPECIAL) | st.binary(min_size=1, max_size=24) | st.text(
    st.characters(exclude_categories=("Cs",)), min_size=1, max_size=24).map(os.fsencode)
SUFFIXES = st.sampled_from([s.encode() for s in IMAGE_EXTENSIONS] + [b".PNG", b".Jpg"])


def usable(name: bytes) -> bool:
    return b"/" not in name and b"\0" not in name


@settings(max_examples=100)
@given(files=st.lists(st.tuples(BYTE_NAMES.filter(usable), SUFFIXES, st.booleans()),
                      min_size=1, max_size=3, unique_by=lambda f: f[0] + f[1]))
def test_any_file_name_is_listed_and_read_or_counted(tmp_path, files):
    root = os.fsencode(tempfile.mkdtemp(dir=tmp_path))
    folder = os.path.join(root, b"benchmark", b"CBSD68", b"HR")
    os.makedirs(folder)
    for stem, suffix, readable in files:
        with open(os.path.join(folder, stem + suffix), "wb") as f:
            f.write(png_bytes() if readable else b"junk")
    demo = ImageFolder(os.fsdecode(folder))
    assert len(demo) == len(files) == len({s.lower() for s in demo.stems})
    items = [demo[i] for i in range(len(demo))]
    assert sum(isinstance(x, torch.Tensor) for _, x in items) == sum(r for *_, r in files)
    assert all(isinstance(x, (torch.Tensor, ImageReadError)) for _, x in items)
    if len({stem for stem, *_ in files}) < len(files):  # two images of one name: the set is refused
        with pytest.raises(BenchmarkError, match="a second image named"):
            BenchmarkSet(os.fsdecode(root), "CBSD68", "denoise30", 1)
        return
    data = BenchmarkSet(os.fsdecode(root), "CBSD68", "denoise30", 1)
    pairs = [data[i] for i in range(len(data))]
    assert sum(isinstance(p, Pair) for p in pairs) == sum(r for *_, r in files)
    assert all(isinstance(p, (Pair, BenchmarkError, ImageReadError)) for p in pairs)


def test_a_training_folder_says_what_it_skips(tmp_path, caplog):
    save(tmp_path / "a.png")
    save(tmp_path / "b.png", 1)
    os.mkfifo(tmp_path / "fifo.png")
    os.symlink("loop.png", tmp_path / "loop.png")
    with caplog.at_level("WARNING", logger="ipt"):
        stream = PairStream(str(tmp_path), ["sr2"], 2, 8)
    assert len(stream.source) == 2
    assert "skipping 2 path(s)" in caplog.text and "fifo.png" in caplog.text


def test_a_member_whose_header_claims_more_bytes_than_the_shard_holds_is_unreadable(tmp_path):
    """A damaged header claiming 2**44 bytes was read as it said: a MemoryError in the loader
    worker, a traceback, then a hang; now it is one unreadable image, skipped and counted."""
    shard = tmp_path / GOOD_NAME
    with tarfile.open(shard, "w", format=tarfile.PAX_FORMAT) as tar:
        tar.add(save(tmp_path / "src" / "a.png"), arcname="a.png")
        huge = tarfile.TarInfo("huge.png")
        huge.size = 2 ** 44
        tar.addfile(huge)  # the header only: the bytes it claims are not in the file
    (tmp_path / SHARD_INDEX).write_text(json.dumps({"shards": {GOOD_NAME: 2}}))  # so no scan refuses it
    load = ShardSource([str(shard)]).opener()
    assert load((0, 0)).shape == (3, *image().shape[:2])
    with pytest.raises(ImageReadError, match=r"huge.png' of 17592186044416 bytes ends past the shard's"):
        load((0, 1))
