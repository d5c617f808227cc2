"""data/stream.py: the compact file index of a folder source and its cached listing."""
from __future__ import annotations

import logging
import os
import pathlib
import zipfile

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from PIL import Image

import runfolder
from data import listing as listing_module
from data.listing import FILE_LIST_ARRAYS, FolderListing, PathIndex, read_file_list, walk_folder, walk_images
from data.sources import FileSource, open_source
from data.stream import PairStream

FILES = ("n01/b.png", "n01/a.JPEG", "n01/deep/c.jpg", "n02/d.png", "n02/é.png", "top.bmp")
OLD_NS = 1_000_000_000 * 1_000_000_000  # 2001: folder times far from any walk's
DAMAGE = "ignoring the cached file list"


def make_tree(root) -> str:
    """A tiny folder of images, each a different colour, its folders' times set in the past."""
    for i, name in enumerate(FILES):
        path = root / name
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (8 + i, 8), (i * 40, 0, 0)).save(path)
    age(root)
    return str(root)


def age(root) -> None:
    """Set the times of ``root`` and of every folder under it far in the past."""
    for folder, _, _ in os.walk(root):
        os.utime(folder, ns=(OLD_NS, OLD_NS))


def list_source(folder: str) -> FileSource:
    """The source as the code before the compact index built it: two Python lists."""
    files, _ = walk_images(folder)
    return FileSource(files, [os.path.relpath(f, folder) for f in files])


def names_of(source) -> list[str]:
    return [source.name(i) for i in range(len(source))]


def damage_lines(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.levelno == logging.WARNING and DAMAGE in r.getMessage()]


@pytest.fixture
def tree(tmp_path):
    return make_tree(tmp_path / "data")


@pytest.fixture
def cache(tmp_path):
    (tmp_path / "run").mkdir()
    return str(tmp_path / "run" / "file_list.npz")


def test_compact_index_equals_the_list_index(tree):
    compact, lists = open_source(tree), list_source(tree)
    assert isinstance(compact.items, PathIndex) and isinstance(compact.names, PathIndex)
    assert len(compact) == len(lists) == len(FILES)
    assert names_of(compact) == names_of(lists) == sorted(FILES)
    assert list(compact.items) == list(lists.items)
    assert list(compact.names) == list(lists.names)
    for epoch in range(3):
        for index, count in [(0, 1), (0, 2), (1, 2), (0, 3), (2, 3), (5, 6)]:
            assert compact.epoch_refs(epoch, 7, index, count) == \
                lists.epoch_refs(epoch, 7, index, count)
    load_compact, load_lists = compact.opener(), lists.opener()
    for ref in range(len(compact)):
        assert torch.equal(load_compact(ref), load_lists(ref))
    assert compact.names[-1] == "top.bmp" and compact.names[1:3] == sorted(FILES)[1:3]
    with pytest.raises(IndexError):
        compact.names[len(FILES)]


def test_compact_index_streams_the_same_batches(tree):
    def batches(source):
        stream = PairStream(source, ["sr2", "denoise30"], batch_size=2, patch_size=4, seed=3)
        return [next(it) for it in [iter(stream)] for _ in range(4)]

    for a, b in zip(batches(tree), batches(list_source(tree)), strict=False):
        assert a["files"] == b["files"] and torch.equal(a["hr"], b["hr"])


def test_path_index_packs_any_file_name():
    names = ["a/b.png", "é/ü.jpg", os.fsdecode(b"x/\xff\xfe.png"), "z" * 300 + ".png"]
    index = PathIndex.pack(names)
    assert list(index) == names and list(index.under("/r")) == [f"/r/{n}" for n in names]
    assert len(PathIndex.pack([])) == 0


def test_cache_is_used_on_the_second_open(tree, cache, monkeypatch, caplog):
    caplog.set_level(logging.INFO, logger="ipt")
    first = open_source(tree, listing_cache=cache)
    assert os.path.isfile(cache) and f"(cached in {cache})" in caplog.text

    def no_walk(*args, **kwargs):
        raise AssertionError("walked although the cache is valid")

    monkeypatch.setattr(listing_module, "walk_images", no_walk)
    second = open_source(tree + os.sep, listing_cache=cache)  # the same folder, spelt otherwise
    assert f"(from the cache {cache})" in caplog.text
    assert names_of(second) == names_of(first) and list(second.items) == \
        [os.path.join(tree, n) for n in sorted(FILES)]
    assert not damage_lines(caplog)


def add(root):
    Image.new("RGB", (8, 8)).save(os.path.join(root, "n01", "new.png"))


def remove(root):
    os.remove(os.path.join(root, "n02", "d.png"))


def rename(root):
    os.rename(os.path.join(root, "n01", "a.JPEG"), os.path.join(root, "n01", "z.JPEG"))


def add_deep(root):
    Image.new("RGB", (8, 8)).save(os.path.join(root, "n01", "deep", "new.png"))


def add_folder(root):
    os.makedirs(os.path.join(root, "n03"))
    Image.new("RGB", (8, 8)).save(os.path.join(root, "n03", "x.png"))


def replace_root(root):
    os.rename(root, root + ".old")
    make_tree(pathlib.Path(root))
    os.remove(os.path.join(root, "top.bmp"))


@pytest.mark.parametrize("change", [add, remove, rename, add_deep, add_folder, replace_root])
def test_cache_is_invalidated_when_a_folder_changes(tree, cache, change, caplog):
    caplog.set_level(logging.INFO, logger="ipt")
    open_source(tree, listing_cache=cache)
    change(tree)
    source = open_source(tree, listing_cache=cache)
    assert "is out of date" in caplog.text
    assert list(source.items) == walk_images(tree)[0]


def test_a_folder_changed_just_before_the_walk_is_not_cached(tmp_path, cache, caplog):
    caplog.set_level(logging.INFO, logger="ipt")
    tree = str(tmp_path / "fresh")
    os.makedirs(os.path.join(tree, "n01"))
    Image.new("RGB", (8, 8)).save(os.path.join(tree, "n01", "a.png"))
    open_source(tree, listing_cache=cache)
    assert not os.path.exists(cache) and "not cached: a folder changed" in caplog.text
    age(tree)
    open_source(tree, listing_cache=cache)
    assert os.path.isfile(cache)


def test_cache_of_another_folder_is_not_used(tmp_path, cache):
    one, two = make_tree(tmp_path / "one"), make_tree(tmp_path / "two")
    os.remove(os.path.join(two, "top.bmp"))
    age(two)
    open_source(one, listing_cache=cache)
    assert names_of(open_source(two, listing_cache=cache)) == sorted(FILES)[:-1]


def assert_walked_once_warned(tree, cache, caplog, warnings=1):
    """The listing is correct and the damaged cache gave ``warnings`` warning lines naming it."""
    caplog.clear()
    source = open_source(tree, listing_cache=cache)
    assert names_of(source) == sorted(FILES)
    lines = damage_lines(caplog)
    assert len(lines) <= 1 and all(cache in line and "\n" not in line for line in lines)
    if warnings:
        assert len(lines) == 1


@settings(max_examples=100)
@given(data=st.binary(max_size=2048))
def test_any_bytes_as_the_cache_give_one_warning(tree, cache, caplog, data):
    with open(cache, "wb") as f:
        f.write(data)
    assert_walked_once_warned(tree, cache, caplog)


@settings(max_examples=100)
@given(data=st.data())
def test_a_damaged_cache_gives_one_warning_or_the_same_listing(tree, cache, caplog, data):
    if not os.path.isfile(cache + ".good"):
        open_source(tree, listing_cache=cache)
        os.replace(cache, cache + ".good")
    good = open(cache + ".good", "rb").read()
    kind = data.draw(st.sampled_from(["truncate", "flip", "splice"]))
    at = data.draw(st.integers(0, len(good) - 1))
    if kind == "truncate":
        bad = good[:at]
    elif kind == "flip":
        bad = good[:at] + bytes([good[at] ^ data.draw(st.integers(1, 255))]) + good[at + 1:]
    else:
        bad = good[:at] + data.draw(st.binary(min_size=1, max_size=64)) + good[at:]
    with open(cache, "wb") as f:
        f.write(bad)
    assert_walked_once_warned(tree, cache, caplog, warnings=kind == "truncate")


def crafted(tree, cache, **change) -> None:
    """Write a cache of ``tree`` whose arrays are those of a true one with ``change`` applied
    (and the digest recomputed, so that only the change is wrong)."""
    listing = walk_folder(tree)
    listing_module.write_file_list(cache, tree, listing)
    with np.load(cache, allow_pickle=False) as saved:
        arrays = {k: saved[k] for k in FILE_LIST_ARRAYS}
    arrays.update(change)
    arrays["digest"] = np.frombuffer(listing_module._digest(arrays), dtype=np.uint8)
    with open(cache, "wb") as f:
        np.savez(f, **arrays)


def packed(*names: bytes) -> dict:
    blob = b"".join(names)
    offsets = np.cumsum([0] + [len(n) for n in names]).astype(np.int64)
    return {"names": np.frombuffer(blob, dtype=np.uint8), "name_offsets": offsets}


N = len(FILES)
ELSEWHERE = os.path.join(os.sep, "etc", "passwd").encode()
DAMAGES = {
    "absolute name": packed(*[ELSEWHERE] * N),
    "dotdot name": packed(*[b"../../x.png"] * N),
    "dotdot part": packed(*[b"n01/../../x.png"] * N),
    "NUL in a name": packed(*[b"a\0b.png"] * N),
    "empty part": packed(*[b"n01//a.png"] * N),
    "trailing separator": packed(*[b"n01/"] * N),
    "offsets out of order": {"name_offsets": np.array([0, 9, 4, 20, 30, 40, 50], np.int64)},
    "offsets past the end": {"name_offsets": np.arange(N + 1, dtype=np.int64) * 10 ** 9},
    "offsets do not start at 0": {"name_offsets": np.arange(1, N + 2, dtype=np.int64)},
    "too few offsets": {"name_offsets": np.array([0, 5], np.int64)},
    "int32 offsets": {"name_offsets": np.arange(N + 1, dtype=np.int32)},
    "2-D names": {"names": np.zeros((2, 2), np.uint8)},
    "stamps of another shape": {"stamps": np.zeros((1, 2), np.int64)},
    "another format": {"meta": np.array([99, N, 3, 0], np.int64)},
    "a negative count": {"meta": np.array([1, -1, 3, 0], np.int64)},
    "a float meta": {"meta": np.zeros(4, np.float64)},
}


@pytest.mark.parametrize("damage", list(DAMAGES))
def test_a_crafted_cache_gives_one_warning(tree, cache, caplog, damage):
    crafted(tree, cache, **DAMAGES[damage])
    assert_walked_once_warned(tree, cache, caplog)


class Mark:
    """Unpickling this makes a folder: proof that a pickle was run."""

    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return os.mkdir, (self.path,)


def test_a_pickle_in_the_cache_is_never_run(tree, cache, caplog, tmp_path):
    marker = str(tmp_path / "pickle-ran")
    names = np.empty(N, dtype=object)
    names[:] = [Mark(marker)] * N
    crafted(tree, cache, names=names)
    assert_walked_once_warned(tree, cache, caplog)
    assert not os.path.exists(marker)


def test_a_cache_that_is_no_regular_file_or_too_large_gives_one_warning(tree, cache, caplog,
                                                                         monkeypatch):
    os.mkfifo(cache)  # opening it for reading would wait for a writer for ever
    assert_walked_once_warned(tree, cache, caplog)
    assert os.path.isfile(cache)  # rewritten
    monkeypatch.setattr(listing_module, "FILE_LIST_MAX_BYTES", 100)
    assert_walked_once_warned(tree, cache, caplog)
    assert "larger than 100 bytes" in caplog.text


def test_a_compressed_cache_member_gives_one_warning(tree, cache, caplog):
    open_source(tree, listing_cache=cache)
    with zipfile.ZipFile(cache) as z:
        members = {n: z.read(n) for n in z.namelist()}
    with zipfile.ZipFile(cache, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            z.writestr(name, data)
    assert_walked_once_warned(tree, cache, caplog)


def test_a_cache_that_cannot_be_written_only_warns(tree, tmp_path, caplog, monkeypatch):
    missing = str(tmp_path / "no-such-run" / "file_list.npz")
    assert names_of(open_source(tree, listing_cache=missing)) == sorted(FILES)
    assert "not caching the file list: cannot write" in caplog.text

    def read_only(path, write):
        raise runfolder.SaveError(f"cannot write {path} (Read-only file system)")

    caplog.clear()
    monkeypatch.setattr(runfolder, "atomic_write", read_only)
    cache = str(tmp_path / "file_list.npz")
    assert names_of(open_source(tree, listing_cache=cache)) == sorted(FILES)
    assert "Read-only file system" in caplog.text and not os.path.exists(cache)


def test_read_file_list_without_a_file_is_none(tree, tmp_path):
    assert read_file_list(str(tmp_path / "none.npz"), tree) is None
    listing = walk_folder(tree)
    assert isinstance(listing, FolderListing) and listing.stamps.shape == (4, 3)
    assert list(listing.folders) == ["n01", "n02", "n01/deep"]  # each stat before its listing


def os_walk_images(root: str) -> tuple[list[str], list[str]]:
    """walk_images as it was written with os.walk and a stat of each image file."""
    from data.images import IMAGE_EXTENSIONS

    def first_visit(path, seen):
        try:
            info = os.stat(path)
        except OSError:
            return False
        key = info.st_dev, info.st_ino
        return not (key in seen or seen.add(key))

    try:
        seen = {(os.stat(root).st_dev, os.stat(root).st_ino)}
    except OSError:
        return [], []
    found, other = [], []
    for folder, dirs, names in os.walk(root, followlinks=True):
        dirs[:] = [d for d in sorted(dirs) if first_visit(os.path.join(folder, d), seen)]
        for name in names:
            if name.lower().endswith(IMAGE_EXTENSIONS):
                path = os.path.join(folder, name)
                (found if os.path.isfile(path) else other).append(path)
    return sorted(found), sorted(other)


def test_the_scandir_walk_finds_what_os_walk_found(tree, tmp_path):
    base = pathlib.Path(tree)
    (base / "n01" / "deep" / "loop").symlink_to(base / "n01")  # a link to an ancestor
    (base / "again").symlink_to(base / "n02")  # a second way into n02: entered once
    (base / "outside").symlink_to(tmp_path / "elsewhere")  # broken, then a folder
    (base / "gone.png").symlink_to(tmp_path / "missing.png")  # a broken link named like an image
    (base / "linked.png").symlink_to(base / "top.bmp")  # a link to an image
    (base / "folder.png").mkdir()  # a folder named like an image
    (base / "folder.png" / "in.PNG").write_bytes(b"x")
    os.mkfifo(base / "n02" / "pipe.jpg")
    for path in (tree, tree + os.sep, str(base / "n01"), str(tmp_path / "none")):
        assert walk_images(path) == os_walk_images(path)
    (tmp_path / "elsewhere").mkdir()
    (tmp_path / "elsewhere" / "e.png").write_bytes(b"x")
    found, other = walk_images(tree)
    assert (found, other) == os_walk_images(tree)
    assert os.path.join(tree, "outside", "e.png") in found
    assert other == [os.path.join(tree, "again", "pipe.jpg"), os.path.join(tree, "gone.png")]
