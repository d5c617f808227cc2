"""Turn test sets as downloaded into the layout ``--dir_data`` expects, and check them.

    python scripts/prepare_data.py SRC... --out DIR_DATA      # convert, make missing LR, check
    python scripts/prepare_data.py --check DIR_DATA [--make_lr]
    python scripts/prepare_data.py --download SET --out DIR_DATA [--url URL --sha256 HEX]

A SRC is a folder or a .zip/.tar(.gz/.bz2/.xz) archive named after a set (Set5, Set14, B100,
Urban100, Manga109, CBSD68, Rain100L, DIV2K) or one of its aliases in data/standard_sets.json
(CSet5, CSet14, CUrban100, CManga109, BSD100, BSDS100); case ignored, e.g. ``Set5``, ``cset14``,
``Urban100_SR``, ``DIV2K_valid_HR.zip``; or one holding such folders (EDSR's ``benchmark``).
Inside, it reads: ``HR/`` (or ``original/``, ``GT/``, ``*_HR/``) and ``LR_bicubic/X<s>/``
(``<name>x<s>.png`` or ``<name>.png``, also ``LRbicx<s>/``); flat folders of images; SelfExSR's
``image_SRF_<s>/<name>_SRF_<s>_{HR,LR}.png`` (its method outputs are skipped); Rain100L as
``rain-<id>``/``norain-<id>`` files or ``rainy/``+``norain/`` (``input/``+``target/``) folders.
Folders named ``*train*`` are skipped: these are test sets.

Sources are converted into a temporary folder beside --out (``.prepare_data.*``, the same
filesystem), and the files are moved into --out once every source converted; the missing LR files
are then made in that folder and moved in last. On any error, or a stop signal (SIGINT, SIGTERM,
SIGUSR1: one line, exit status 130) in any of these steps, the files moved in are moved out again
and the ones they replaced put back: --out is left as it was, and the temporary folder is removed.
Refused, with one line: two sources of one set under two of its names (``CSet14`` and ``Set14``,
``BSD100`` and ``B100``: versions of one set, whose same-named images would replace each other), or
two files that would be one file in --out; a SRC or image file that is not a regular file or
folder once links are followed (a named pipe, a device: never opened); archive members with an
absolute path, ``..``, a control character, a link, or a name used twice; a member declaring or
holding more than 512 MiB (no test image comes near), an archive more than 8 GiB in all (both
checked before extracting, and again while copying); images that do not decode.

It writes the layout of data/benchmark.py: ``benchmark/<set>/HR/<name>.png`` with
``benchmark/<set>/LR_bicubic/X<s>/<name>x<s>.png`` (SR sets), ``benchmark/CBSD68/HR``,
``Rain100L/{rain,norain}-<id>.png``, ``DIV2K/DIV2K_valid_HR`` with
``DIV2K/DIV2K_valid_LR_bicubic/X<s>``; missing LR files are made with MATLAB-exact bicubic.

``--check`` compares each set found with data/standard_sets.json: images missing or extra, sizes,
a greyscale copy of an image that is in colour in the standard version and a colour copy of one
that is greyscale there, LR files missing or of the wrong size, unpaired rain files, an entry
named like an image that cannot be read (a pipe, a device, a folder, a broken link: never opened);
and says how many images have the pixels recorded for the standard version (Set5, CBSD68; a
differing image is a note, not a problem: no checksum is published). ``--make_lr`` moves the LR
files it makes in at the end, as converting does. Exit status: 0 all well; 1 problems found (each
named, with its file); 2 an error (one line); 130 stopped by a signal (nothing written).
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import http.client
import json
import os
import re
import shutil
import stat
import struct
import sys
import tarfile
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile
import zlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import BinaryIO

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
if ROOT not in sys.path:
    sys.path.insert(0, ROOT)

import stops  # noqa: E402  (loads no torch)

if __name__ == "__main__":  # a stop signal while torch loads is kept, not a silent kill
    stops.early()

import torch  # noqa: E402
from PIL import Image  # noqa: E402

import utility  # noqa: E402
from data.benchmark import SR_SETS, BenchmarkError, set_aliases, set_names  # noqa: E402 (SR_SETS: with LR)
from data.degrade import bicubic_lr  # noqa: E402
from data.images import (  # noqa: E402
    DECODE_ERRORS,
    IMAGE_EXTENSIONS,
    ImageReadError,
    list_entries,
    list_images,
    read_image,
    save_image,
    stem,
)

PROG = "prepare_data.py"
STANDARD_SETS_FILE = os.path.join(ROOT, "data", "standard_sets.json")
SCALES = (2, 3, 4)  # the LR files made and checked for SR sets
SET_ORDER = ("Set5", "Set14", "B100", "Urban100", "Manga109", "CBSD68", "Rain100L", "DIV2K")
RAIN_SET = "Rain100L"
# Where each set goes under DIR_DATA, and where --check (like data/benchmark.py) looks for it
OUT_DIRS = {**{s: f"benchmark/{s}/HR" for s in SET_ORDER}, "DIV2K": "DIV2K/DIV2K_valid_HR",
            RAIN_SET: RAIN_SET}
READ_DIRS = {**{s: (d,) for s, d in OUT_DIRS.items()}, "CBSD68": ("benchmark/CBSD68/HR", "CBSD68"),
             RAIN_SET: (RAIN_SET, f"benchmark/{RAIN_SET}")}
LR_DIRS = {**{s: f"benchmark/{s}/LR_bicubic/X{{s}}" for s in SR_SETS},
           "DIV2K": "DIV2K/DIV2K_valid_LR_bicubic/X{s}"}

# Source layouts. HR files by preference: an HR-named folder, the set's own folder (flat), a
# BasicSR GTmod<n> crop, a SelfExSR *_HR file (the largest of its scales)
HR_DIR = re.compile(r"^(hr|original|gt|groundtruth|.*_hr)$", re.I)
GTMOD_DIR = re.compile(r"^gtmod\d+$", re.I)
RANK_HR_DIR, RANK_SET_DIR, RANK_GTMOD, RANK_SELFEXSR = 0, 1, 2, 3
SELFEXSR_NAME = re.compile(r"^(?P<name>.+)_SRF_(?P<scale>\d+)_(?P<kind>.+)$")
SELFEXSR_NUMBERED = re.compile(r"^img_\d+$")
LR_SCALE_DIR = re.compile(r"^x(\d+)$", re.I)  # X2 under a folder whose name holds "lr"
LR_NAMED_DIR = re.compile(r"lr.*x(\d+)$", re.I)  # LRbicx2, DIV2K_valid_LR_bicubic_X2
TRAIN_DIR = re.compile(r"train", re.I)
SKIPPED_DIRS = ("__MACOSX",)
RAIN_NAME = re.compile(r"^(no)?rain[-_](.+)$", re.I)  # not rainregion-*/rainstreak-* (JORDER)
RAINY_DIRS = ("rain", "rainy", "input")
CLEAN_DIRS = ("norain", "target", "gt", "clean", "groundtruth")
SEARCH_DEPTH = 3  # folders searched for set-named folders below a SRC that is not one
GREY_MODES = ("1", "L", "LA", "P;L", "I", "I;16", "I;16B", "I;16L", "F")
SHA256_OF_PIXELS = "pixels_sha256"  # the table's key: {image: SHA-256 of pixel_sha256's bytes}

# Archives: extracted member by member into a temporary folder beside --out, never outside it;
# sizes checked as declared (before a byte is written) and as read (while copying each member)
ARCHIVE_SUFFIXES = (".tar.gz", ".tar.bz2", ".tar.xz", ".tgz", ".tbz2", ".txz", ".tar", ".zip")
MAX_EXTRACT_BYTES = 8 * 2 ** 30  # the largest test set (SelfExSR's Urban100) holds about 1.2 GB
MAX_MEMBER_BYTES = 512 * 2 ** 20  # per member or image file; real test images are a few MB each
MAX_MEMBERS = 200_000
CHUNK_BYTES = 1 << 20
# Names refused in archives and folders: control characters (a newline would forge output lines)
# and lone surrogates (tarfile's stand-ins for bytes that are not UTF-8; they cannot be printed)
BAD_NAME_CHARS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
SCRATCH_PREFIX = ".prepare_data."  # the temporary folder beside --out, removed whatever happens
ARCHIVE_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, tarfile.TarError, zlib.error, EOFError,
                  NotImplementedError, RuntimeError, OSError)

# Downloads: urllib only, into a temporary file checked against its SHA-256 before use
MAX_DOWNLOAD_BYTES = 4 * 2 ** 30
DOWNLOAD_TIMEOUT_S = 60
URL_SCHEMES = ("http", "https")
SHA256_HEX = re.compile(r"^[0-9a-f]{64}$")
DIV2K_URL = "https://data.vision.ee.ethz.ch/cvl/DIV2K"
EDSR_BENCHMARK_URL = "https://cv.snu.ac.kr/research/EDSR/benchmark.tar"


@dataclass(frozen=True)
class Download:
    """One file to fetch: its address, SHA-256 and byte size (None where unknown), what it holds."""

    url: str | None
    sha256: str | None
    size: int | None
    layout: str


EDSR_BENCHMARK = Download(EDSR_BENCHMARK_URL, None, None,
                          "benchmark/{Set5,Set14,B100,Urban100}/HR + LR_bicubic/X2..X4 "
                          "(EDSR's release; no SHA-256 published: pass --sha256)")
# The DIV2K checksums and sizes are those of tensorflow/datasets (url_checksums/div2k.txt)
DOWNLOADS: dict[str, tuple[Download, ...]] = {
    "DIV2K": (
        Download(f"{DIV2K_URL}/DIV2K_valid_HR.zip",
                 "20dd31fd84d777bc1cf5d6b7654a3f569c0aec74458ae094122ad1d0489900fc", 448993893,
                 "DIV2K_valid_HR/0801.png ..."),
        Download(f"{DIV2K_URL}/DIV2K_valid_LR_bicubic_X2.zip",
                 "60eed9875c697df51204aa579e2a699e1d5215095788a097ff54dd17e2664d57", 117763600,
                 "DIV2K_valid_LR_bicubic/X2/0801x2.png ..."),
        Download(f"{DIV2K_URL}/DIV2K_valid_LR_bicubic_X3.zip",
                 "04b9a2ed3b4a0715d3924d3ae8514830c3328fac8d30512ce716d6f419e052a3", 54513392,
                 "DIV2K_valid_LR_bicubic/X3/0801x3.png ..."),
        Download(f"{DIV2K_URL}/DIV2K_valid_LR_bicubic_X4.zip",
                 "a50a5d1c4b88de4e8d300d8fb2b904c52fe93b2b298a4899697760d7cbb6d553", 31505881,
                 "DIV2K_valid_LR_bicubic/X4/0801x4.png ..."),
    ),
    "Set5": (EDSR_BENCHMARK,), "Set14": (EDSR_BENCHMARK,), "B100": (EDSR_BENCHMARK,),
    "Urban100": (EDSR_BENCHMARK,),
    "Manga109": (Download(None, None, None, "given by its authors on request (manga109.org), "
                                            "for academic use"),),
    "CBSD68": (Download(None, None, None, "no archive with a published checksum known"),),
    "Rain100L": (Download(None, None, None, "no stable address with a published checksum known"),),
}


class PrepareError(Exception):
    """A fatal error, reported as one line naming the file or option."""


# ----------------------------------------------------------------------------------------
# The expected contents of the sets
# ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class SetSpec:
    """What a standard set holds: a count and its names and sizes (width, height), where known;
    the images that are greyscale in the standard version (the others are in colour); the SHA-256
    of some images' pixels."""

    name: str
    count: int
    sizes: dict[str, tuple[int, int]] | None = None  # per image
    names: tuple[str, ...] | None = None  # names known, sizes not
    allowed: tuple[tuple[int, int], ...] | None = None  # sizes any image may have
    greyscale: frozenset[str] = frozenset()
    pixels_sha256: dict[str, str] = field(default_factory=dict)

    def expected_names(self) -> tuple[str, ...] | None:
        """The image names, or None where they are not recorded."""
        return tuple(self.sizes) if self.sizes is not None else self.names

    def sizes_of(self, name: str) -> tuple[tuple[int, int], ...]:
        """The sizes image ``name`` may have; empty where not recorded."""
        if self.sizes is not None:
            return (self.sizes[name],) if name in self.sizes else ()
        return self.allowed or ()


def load_standard_sets(path: str | None = None) -> dict[str, SetSpec]:
    """The SetSpec of each set in ``path`` (data/standard_sets.json by default)."""
    path = path or STANDARD_SETS_FILE
    try:
        with open(path, encoding="utf-8") as f:
            raw = json.load(f)
        return {name: _spec(name, entry) for name, entry in raw.items() if not name.startswith("_")}
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise PrepareError(f"{path}: cannot read the table of standard sets: {e}") from None


def _spec(name: str, entry: dict) -> SetSpec:
    """One set's SetSpec from its JSON entry; a ValueError for a greyscale or hashed image that
    is not one of its images, or a hash that is not 64 hexadecimal digits."""
    images = entry.get("images")
    spec = SetSpec(name, int(entry["count"]),
                   {k: (int(v[0]), int(v[1])) for k, v in images.items()} if images else None,
                   tuple(entry["names"]) if "names" in entry else None,
                   tuple((int(w), int(h)) for w, h in entry["sizes"]) if "sizes" in entry else None,
                   frozenset(entry.get("greyscale", ())),
                   {str(k): str(v) for k, v in entry.get(SHA256_OF_PIXELS, {}).items()})
    known = spec.expected_names()
    for key, listed in (("greyscale", spec.greyscale), (SHA256_OF_PIXELS, spec.pixels_sha256)):
        stray = sorted(n for n in listed if known is None or n not in known)
        if stray:
            raise ValueError(f"{name}: {key} names {stray[0]!r}, not one of its images")
    bad = sorted(n for n, h in spec.pixels_sha256.items() if not SHA256_HEX.match(h))
    if bad:
        raise ValueError(f"{name}: {SHA256_OF_PIXELS} of {bad[0]!r} is not 64 hexadecimal digits")
    return spec


def folder_aliases() -> list[tuple[str, str]]:
    """(lower-case name, set) of every name a set's folder or archive may start with."""
    try:
        return [(alias, s) for alias, s in set_names().items() if s in SET_ORDER]
    except BenchmarkError as e:
        raise PrepareError(str(e)) from None


def alias_text() -> str:
    """``CSet5, CSet14, ...``: the sets' other names, as data/standard_sets.json spells them."""
    try:
        return ", ".join(alias for set_name, aliases in set_aliases().items()
                         if set_name in SET_ORDER for alias in aliases)
    except BenchmarkError as e:
        raise PrepareError(str(e)) from None


def set_alias(name: str) -> tuple[str, str] | None:
    """(the name, lower-cased, and the set) a folder or archive name stands for (``BSD100_x`` ->
    ("bsd100", "B100"), ``CSet14`` -> ("cset14", "Set14")), or None; the name must end there or
    go on with a character that is not a letter or digit."""
    low = name.lower()
    for alias, set_name in folder_aliases():
        if low == alias or (low.startswith(alias) and not low[len(alias)].isalnum()):
            return alias, set_name
    return None


def canonical_set(name: str) -> str | None:
    """The set a folder or archive name stands for (``BSD100_x`` -> B100), or None."""
    found = set_alias(name)
    return found[1] if found else None


# ----------------------------------------------------------------------------------------
# Archives
# ----------------------------------------------------------------------------------------
def archive_stem(path: str) -> str | None:
    """The name of an archive without its suffix, or None if ``path`` is not named as one."""
    base = os.path.basename(path)
    for suffix in ARCHIVE_SUFFIXES:
        if base.lower().endswith(suffix):
            return base[:-len(suffix)]
    return None


def member_parts(archive: str, name: str) -> list[str]:
    """The path parts of archive member ``name``; a PrepareError for an absolute path, ``..`` or
    a control character."""
    if BAD_NAME_CHARS.search(name):
        raise PrepareError(f"{archive}: member {name!r} has a control character or bytes that are "
                           "not UTF-8 in its name; archive refused")
    clean = name.replace("\\", "/")
    if clean.startswith("/") or re.match(r"^[A-Za-z]:", clean):
        raise PrepareError(f"{archive}: member {name!r} has an absolute path; archive refused")
    parts = [p for p in clean.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise PrepareError(f"{archive}: member {name!r} points outside the archive (..); "
                           "archive refused")
    return parts


class Extractor:
    """Writes archive members under ``dest`` only, counting members and bytes against the limits."""

    def __init__(self, archive: str, dest: str):
        self.archive, self.dest = archive, os.path.realpath(dest)
        self.members = self.bytes = 0
        self.files: dict[tuple[str, ...], str] = {}  # path parts -> the member written there

    def target(self, name: str, is_file: bool = True) -> str | None:
        """The path for member ``name`` under dest (None for the archive's root folder); a second
        file member at one path is refused."""
        parts = member_parts(self.archive, name)
        self.members += 1
        if self.members > MAX_MEMBERS:
            raise PrepareError(f"{self.archive}: more than {MAX_MEMBERS} members; archive refused")
        if not parts:
            return None
        key = tuple(parts)
        if is_file and key in self.files:
            raise PrepareError(f"{self.archive}: two members named {name!r} (the first: "
                               f"{self.files[key]!r}); archive refused: remove one")
        if is_file:
            self.files[key] = name
        path = os.path.join(self.dest, *parts)
        if not os.path.realpath(path).startswith(self.dest + os.sep):
            raise PrepareError(f"{self.archive}: member {name!r} would land outside the "
                               "extraction folder; archive refused")
        return path

    def declared(self, name: str, size: int) -> None:
        """A PrepareError if member ``name`` declares more than MAX_MEMBER_BYTES."""
        if size > MAX_MEMBER_BYTES:
            raise PrepareError(f"{self.archive}: member {name!r} declares {size} bytes, more than "
                               f"any test image ({MAX_MEMBER_BYTES}); archive refused")

    def declared_total(self, size: int) -> None:
        """A PrepareError if the members declare more than MAX_EXTRACT_BYTES in all."""
        if size > MAX_EXTRACT_BYTES:
            raise PrepareError(f"{self.archive}: declares more than {MAX_EXTRACT_BYTES} bytes once "
                               "extracted; archive refused")

    def write(self, stream: BinaryIO, path: str, name: str) -> None:
        """Copy ``stream`` to a new file ``path`` in chunks, refused (and removed) as soon as the
        member passes MAX_MEMBER_BYTES or the archive MAX_EXTRACT_BYTES, whatever it declared."""
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "xb") as out:
            try:
                size = 0
                while chunk := stream.read(CHUNK_BYTES):
                    size += len(chunk)
                    self.count(name, size, len(chunk))
                    out.write(chunk)
            except BaseException:
                os.remove(path)
                raise

    def count(self, name: str, size: int, more: int) -> None:
        """Add ``more`` bytes read to the archive's total; a PrepareError once member ``name``
        (``size`` bytes so far) or the archive passes its limit."""
        self.bytes += more
        if size > MAX_MEMBER_BYTES:
            raise PrepareError(f"{self.archive}: member {name!r} holds more than "
                               f"{MAX_MEMBER_BYTES} bytes once extracted, more than any test "
                               "image; archive refused (a decompression bomb?)")
        if self.bytes > MAX_EXTRACT_BYTES:
            raise PrepareError(f"{self.archive}: more than {MAX_EXTRACT_BYTES} bytes once "
                               "extracted; archive refused (a decompression bomb?)")


def extract_zip(archive: str, dest: str) -> None:
    """Extract a zip member by member under ``dest``; links and encrypted members refused."""
    ex = Extractor(archive, dest)
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        if len(infos) > MAX_MEMBERS:
            raise PrepareError(f"{archive}: more than {MAX_MEMBERS} members; archive refused")
        for info in infos:
            ex.declared(info.filename, info.file_size)
        ex.declared_total(sum(i.file_size for i in infos))
        for info in infos:
            path = ex.target(info.filename, not info.is_dir())
            if (info.external_attr >> 16) & 0o170000 == 0o120000:
                raise PrepareError(f"{archive}: member {info.filename!r} is a symbolic link; "
                                   "archive refused")
            if info.flag_bits & 0x1:
                raise PrepareError(f"{archive}: member {info.filename!r} is encrypted")
            if path is None or info.is_dir():
                os.makedirs(path or ex.dest, exist_ok=True)
                continue
            with zf.open(info) as stream:
                ex.write(stream, path, info.filename)


def tar_members(ex: Extractor, tf: tarfile.TarFile) -> list[tarfile.TarInfo]:
    """The members of ``tf``, their number and declared sizes checked before anything is written."""
    members, total = [], 0
    for member in tf:
        members.append(member)
        if len(members) > MAX_MEMBERS:
            raise PrepareError(f"{ex.archive}: more than {MAX_MEMBERS} members; archive refused")
        if member.isfile():
            ex.declared(member.name, member.size)
            total += member.size
            ex.declared_total(total)  # as soon as it passes: the rest is not even decompressed
    return members


def extract_tar(archive: str, dest: str) -> None:
    """Extract a tar (any compression) member by member under ``dest``; links, devices refused."""
    ex = Extractor(archive, dest)
    with tarfile.open(archive, "r:*") as tf:
        for member in tar_members(ex, tf):
            path = ex.target(member.name, not member.isdir())
            if member.issym() or member.islnk():
                raise PrepareError(f"{archive}: member {member.name!r} is a link; archive refused")
            if member.isdir() or path is None:
                os.makedirs(path or ex.dest, exist_ok=True)
                continue
            if not member.isfile():
                raise PrepareError(f"{archive}: member {member.name!r} is not a file or folder; "
                                   "archive refused")
            stream = tf.extractfile(member)
            if stream is not None:
                with stream:
                    ex.write(stream, path, member.name)


def extract(archive: str, dest: str) -> None:
    """Extract a .zip or .tar(.gz/.bz2/.xz) archive safely under ``dest``."""
    try:
        if zipfile.is_zipfile(archive):
            extract_zip(archive, dest)
        elif tarfile.is_tarfile(archive):
            extract_tar(archive, dest)
        else:
            raise PrepareError(f"{archive}: not a folder, .zip or .tar archive")
    except ARCHIVE_ERRORS as e:
        raise PrepareError(f"{archive}: cannot extract: {e}") from None


# ----------------------------------------------------------------------------------------
# Reading a source
# ----------------------------------------------------------------------------------------
@dataclass
class Found:
    """What a source holds of one set: files by image name (rank: how sure it is an HR image)."""

    hr: dict[str, tuple[int, str]] = field(default_factory=dict)  # name -> (rank, path)
    lr: dict[tuple[int, str], str] = field(default_factory=dict)  # (scale, file stem) -> path
    rainy: dict[str, str] = field(default_factory=dict)  # id -> path
    clean: dict[str, str] = field(default_factory=dict)
    ignored: list[str] = field(default_factory=list)


def find_sets(root: str, label: str, hint: str | None) -> list[tuple[str, str, str]]:
    """(set, folder, folder's name) of each set in ``root`` (named ``label``).

    ``root`` itself if its name names a set; else the set-named folders below it (EDSR's
    benchmark/); else ``hint`` (the set given to --download); else a PrepareError.
    """
    set_name = canonical_set(label)
    if set_name:
        return [(set_name, root, label)]
    found: list[tuple[str, str, str]] = []
    level = [root]
    for _ in range(SEARCH_DEPTH):
        below = []
        for folder in level:
            with os.scandir(folder) as it:
                entries = sorted(it, key=lambda e: e.name)
            for entry in entries:
                if not entry.is_dir(follow_symlinks=False) or entry.name in SKIPPED_DIRS \
                        or entry.name.startswith("."):  # hidden, as walk_images; our scratch folder
                    continue
                if canonical_set(entry.name):
                    found.append((canonical_set(entry.name), entry.path, entry.name))
                else:
                    below.append(entry.path)
        level = below
    if found:
        return found
    if hint:
        return [(hint, root, label)]
    raise PrepareError(f"{label}: no test set found: name the folder or archive after one of "
                       f"{', '.join(SET_ORDER)} or {alias_text()}, any case (or give a folder "
                       "holding such folders)")


def special_kind(path: str) -> str | None:
    """What ``path`` is (links followed) if neither a regular file nor a folder, else None.

    Only stat()s it: a named pipe opened would block, a device (/dev/zero) never ends.
    """
    mode = os.stat(path).st_mode
    if stat.S_ISREG(mode) or stat.S_ISDIR(mode):
        return None
    kind = utility.file_kind(mode, "not a regular file")
    return f"a link to {os.path.realpath(path)}, {kind}" if os.path.islink(path) else kind


def check_source(src: str) -> None:
    """A PrepareError unless ``src`` is a folder or a regular file, links followed; never opened."""
    if not os.path.exists(src):
        broken = " (a broken link)" if os.path.islink(src) else ""
        raise PrepareError(f"{src}: no such file or folder{broken}")
    kind = special_kind(src)
    if kind:
        raise PrepareError(f"{src}: {kind}, not a file or folder; give a folder or a .zip/.tar "
                           "archive")


def check_image_file(root: str, path: str) -> None:
    """A PrepareError unless image file ``path`` is a regular file of at most MAX_MEMBER_BYTES
    whose name below ``root`` holds no control character."""
    if BAD_NAME_CHARS.search(os.path.relpath(path, root)):
        raise PrepareError(f"{path!r}: a control character or bytes that are not UTF-8 in the "
                           "name; rename or remove it")
    if not os.path.exists(path):
        raise PrepareError(f"{path}: a broken link; remove it")
    kind = special_kind(path)
    if kind:
        raise PrepareError(f"{path}: {kind}, not an image file; remove it")
    size = os.path.getsize(path)
    if size > MAX_MEMBER_BYTES:
        raise PrepareError(f"{path}: {size} bytes, more than any test image ({MAX_MEMBER_BYTES}); "
                           "remove it")


def walk_images(root: str) -> list[tuple[list[str], str]]:
    """(folder parts below root, path) of every image file, sorted; train, hidden folders skipped.

    A PrepareError for an image-named entry that is not a regular file (a pipe, a device, a link
    to one) or is larger than any test image: such a file is never opened.
    """
    images = []
    for folder, dirs, files in os.walk(root):
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in SKIPPED_DIRS
                         and not TRAIN_DIR.search(d))
        rel = os.path.relpath(folder, root)
        parts = [] if rel == "." else rel.split(os.sep)
        for name in sorted(files):
            if name.lower().endswith(IMAGE_EXTENSIONS) and not name.startswith("."):
                check_image_file(root, os.path.join(folder, name))
                images.append((parts, os.path.join(folder, name)))
    return images


def lr_scale(parts: list[str]) -> int | None:
    """The scale of an LR folder (``LR_bicubic/X2``, ``LRbicx2``) among ``parts``, deepest first."""
    for i in range(len(parts) - 1, -1, -1):
        m = LR_NAMED_DIR.search(parts[i])
        if m:
            return int(m.group(1))
        m = LR_SCALE_DIR.match(parts[i])
        if m and any("lr" in p.lower() for p in parts[:i]):
            return int(m.group(1))
    return None


def hr_rank(parts: list[str]) -> int | None:
    """How sure a file in folder ``parts`` (the source's name first) is an HR image; None: not one."""
    parent = parts[-1]
    if HR_DIR.match(parent):
        return RANK_HR_DIR
    if len(parts) == 1 or canonical_set(parent):
        return RANK_SET_DIR
    if GTMOD_DIR.match(parent):
        return RANK_GTMOD
    return None


def image_size(path: str) -> tuple[int, int]:
    """(width, height) from the file's header; ImageReadError if it is not an image."""
    try:
        with Image.open(path) as img:
            return img.size
    except DECODE_ERRORS as e:
        raise ImageReadError(f"cannot read image {path!r}: {e}") from None


def collect(folder: str, set_name: str, label: str) -> Found:
    """The HR, LR and rain files of ``set_name`` in ``folder`` (named ``label``), by layout."""
    found = Found()
    for parts, path in walk_images(folder):
        parts = [label] + parts
        if set_name == RAIN_SET:
            _add_rain(found, parts, path)
            continue
        name = stem(path)
        selfexsr = SELFEXSR_NAME.match(name)
        if selfexsr:
            kind = selfexsr["kind"].upper()
            if kind == "HR":
                _add_hr(found, selfexsr["name"], RANK_SELFEXSR, path)
            elif kind == "LR":
                found.lr[(int(selfexsr["scale"]), selfexsr["name"])] = path
            continue  # SelfExSR's method outputs (bicubic, A+, SRCNN ...)
        scale = lr_scale(parts)
        rank = hr_rank(parts)
        if scale is not None:
            _add_once(found.lr, (scale, name), path, f"LR x{scale} image")
        elif rank is not None:
            _add_hr(found, name, rank, path)
        else:
            found.ignored.append(path)
    return found


def _add_once(table: dict, key, path: str, what: str) -> None:
    """table[key] = path; a PrepareError if another file already has that key."""
    if key in table:
        name = key[-1] if isinstance(key, tuple) else key
        raise PrepareError(f"{path}: a second {what} named {name!r} (the first: {table[key]}); "
                           "keep one")
    table[key] = path


def _add_hr(found: Found, name: str, rank: int, path: str) -> None:
    """Record an HR file unless a surer one (lower rank) or, for SelfExSR, a larger one is known."""
    if name in found.hr:
        old_rank, old_path = found.hr[name]
        if rank > old_rank:
            return
        if rank == old_rank and rank != RANK_SELFEXSR:
            _add_once({name: old_path}, name, path, "HR image")
        if rank == old_rank and _area(image_size(path)) <= _area(image_size(old_path)):
            return  # SelfExSR: each scale's HR may be cropped to a multiple of it; keep the largest
    found.hr[name] = (rank, path)


def _area(size: tuple[int, int]) -> int:
    """width * height."""
    return size[0] * size[1]


def _add_rain(found: Found, parts: list[str], path: str) -> None:
    """Record a rainy or clean image by id: ``rain-<id>``/``norain-<id>`` or rainy/ and norain/."""
    name, parent = stem(path), parts[-1].lower()
    m = RAIN_NAME.match(name)
    if m:
        clean = bool(m.group(1))
    elif parent in RAINY_DIRS or parent in CLEAN_DIRS:
        clean = parent in CLEAN_DIRS
    else:
        found.ignored.append(path)
        return
    key = m.group(2) if m else name
    _add_once(found.clean if clean else found.rainy, key, path, "clean image" if clean else
              "rainy image")


def lr_name(file_stem: str, scale: int, hr_names: set[str]) -> str:
    """The HR name an LR file belongs to: its stem, less a trailing ``x<scale>``."""
    suffix = f"x{scale}"
    if file_stem in hr_names or not file_stem.lower().endswith(suffix):
        return file_stem
    return file_stem[:-len(suffix)]


def standard_names(hr: dict[str, str], spec: SetSpec | None) -> dict[str, str]:
    """SelfExSR's img_001... mapped to the set's names by order, when every size agrees; else {}."""
    if spec is None or spec.sizes is None or len(hr) != len(spec.sizes):
        return {}
    ours = sorted(hr)
    if set(ours) == set(spec.sizes) or not all(SELFEXSR_NUMBERED.match(n) for n in ours):
        return {}
    theirs = sorted(spec.sizes, key=str.lower)
    for mine, name in zip(ours, theirs, strict=False):
        size, want = image_size(hr[mine]), spec.sizes[name]
        if size != want and not any(size == cropped(want, s) for s in SCALES):
            return {}
    return dict(zip(ours, theirs, strict=False))


def cropped(size: tuple[int, int], multiple: int) -> tuple[int, int]:
    """``size`` cut down to a multiple of ``multiple`` on each side."""
    return size[0] - size[0] % multiple, size[1] - size[1] % multiple


# ----------------------------------------------------------------------------------------
# Writing
# ----------------------------------------------------------------------------------------
def lr_dir(dir_data: str, set_name: str, scale: int) -> str:
    """The folder of a set's LR files at ``scale``."""
    return os.path.join(dir_data, LR_DIRS[set_name].format(s=scale))


def verify_image(path: str) -> None:
    """ImageReadError unless ``path`` is an image file whose header and chunks read whole."""
    try:
        with Image.open(path) as img:
            img.verify()  # a PNG's chunk checksums, without decoding
    except DECODE_ERRORS + (struct.error,) as e:
        raise ImageReadError(f"cannot read image {path!r}: {e}") from None


def copy_image(src: str, dst: str) -> None:
    """``src`` at ``dst`` as PNG, atomically: PNG bytes copied as they are (once they read as an
    image), other formats decoded."""
    if os.path.exists(dst) and os.path.samefile(src, dst):
        return
    os.makedirs(os.path.dirname(dst), exist_ok=True)
    if src.lower().endswith(".png"):
        verify_image(src)
        utility.atomic_write(dst, lambda tmp: shutil.copyfile(src, tmp))
    else:
        save_image(read_image(src), dst)


def image_stems(folder: str) -> set[str]:
    """The names of the images in ``folder``; empty where it does not exist."""
    return {stem(p) for p in list_images(folder)} if os.path.isdir(folder) else set()


@dataclass
class Sources:
    """What the sources of one run gave, so that nothing they hold silently replaces another:
    each set is taken under one of its names only (CSet14 and Set14 are two versions of one set,
    not two parts of it: their same-named images would replace each other), each file once."""

    sets: dict[str, tuple[str, str]] = field(default_factory=dict)  # set -> (its name, folder)
    files: dict[str, str] = field(default_factory=dict)  # file under --out -> the file it is from
    shown: tuple[str, str] = ("", "")  # (extraction folder, the archive named in its place)

    def show(self, path: str) -> str:
        """``path`` as the user knows it: a file extracted from an archive as <archive>/<member>."""
        root, src = self.shown
        return src + path[len(root):] if root and path.startswith(root) else path

    def take_sets(self, found: Sequence[tuple[str, str, str]]) -> None:
        """Note each (set, folder, folder's name) of ``found``; a PrepareError naming both folders
        for a set taken before under another of its names (the rule of ``--data_test``)."""
        for set_name, folder, name in found:
            alias = set_alias(name)  # None: a --download archive, named by the set it is for
            key = alias[0] if alias else set_name.lower()
            first_key, first = self.sets.setdefault(set_name, (key, self.show(folder)))
            if first_key != key:
                raise PrepareError(f"{first} and {self.show(folder)} are both {set_name}; give "
                                   "each set once")

    def take_file(self, path: str, rel: str) -> None:
        """Note that ``path`` becomes ``rel`` under --out; a PrepareError naming both if another
        file did already (two copies of one image: which one to keep is not for us to guess)."""
        first = self.files.setdefault(rel, self.show(path))
        if first != self.show(path):
            raise PrepareError(f"{first} and {self.show(path)} would both be {rel} in --out; give "
                               "one of them")


def write_found(found: Found, set_name: str, out: str, spec: SetSpec | None,
                existing: str | None = None, sources: Sources | None = None) -> str:
    """Write what ``found`` holds into ``out`` in the expected layout (LR files matched to HR
    images written before, there or in DIR_DATA ``existing``); a summary of what was written.
    Each file is noted in ``sources`` first: one written before is refused, not replaced."""

    def put(path: str, dst: str) -> None:
        """copy_image, ``dst`` noted in ``sources`` first."""
        if sources is not None:
            sources.take_file(path, os.path.relpath(dst, out))
        copy_image(path, dst)

    if set_name == RAIN_SET:
        folder = os.path.join(out, OUT_DIRS[RAIN_SET])
        for key, path in found.rainy.items():
            put(path, os.path.join(folder, f"rain-{key}.png"))
        for key, path in found.clean.items():
            put(path, os.path.join(folder, f"norain-{key}.png"))
        return f"{len(found.rainy)} rainy and {len(found.clean)} clean images"
    hr = {name: path for name, (_, path) in found.hr.items()}
    renamed = standard_names(hr, spec)
    hr_folder = os.path.join(out, OUT_DIRS[set_name])
    for name, path in hr.items():
        put(path, os.path.join(hr_folder, f"{renamed.get(name, name)}.png"))
    known = set(hr) | image_stems(hr_folder)
    if existing:
        known |= image_stems(os.path.join(existing, OUT_DIRS[set_name]))
    n_lr = 0
    for (scale, file_stem), path in found.lr.items():
        if set_name not in SR_SETS:
            continue
        name = lr_name(file_stem, scale, known)
        name = renamed.get(name, name)
        put(path, os.path.join(lr_dir(out, set_name, scale), f"{name}x{scale}.png"))
        n_lr += 1
    note = f" (SelfExSR's {min(renamed)}..{max(renamed)} named as the set's images)" if renamed else ""
    return f"{len(hr)} HR images, {n_lr} LR files{note}"


# ----------------------------------------------------------------------------------------
# Checking
# ----------------------------------------------------------------------------------------
@dataclass
class SetReport:
    """What --check found of one set: counts, LR state per scale and the problems, each named."""

    name: str
    found: int
    expected: int
    unit: str = "images"
    lr_missing: dict[int, int] = field(default_factory=dict)
    lr_wrong: dict[int, int] = field(default_factory=dict)
    lr_made: int = 0
    problems: list[str] = field(default_factory=list)
    hashed: int = 0  # images found whose standard pixels' SHA-256 is recorded
    hash_matched: int = 0  # ... and whose pixels have it
    notes: list[str] = field(default_factory=list)  # worth knowing, not problems

    def line(self) -> str:
        """``Set5: 5 of 5 images, LR x2 x3 x4 complete``."""
        text = f"{self.name}: {self.found} of {self.expected} {self.unit}"
        if self.name not in SR_SETS or not self.found:
            return text
        complete = [f"x{s}" for s in SCALES if not self.lr_missing.get(s) and not self.lr_wrong.get(s)]
        parts = [" ".join(complete) + " complete"] if complete else []
        for s in SCALES:
            bad = [f"{n} {what}" for n, what in ((self.lr_missing.get(s, 0), "missing"),
                                                  (self.lr_wrong.get(s, 0), "wrong size")) if n]
            if bad:
                parts.append(f"x{s}: " + ", ".join(bad))
        made = f" ({self.lr_made} made)" if self.lr_made else ""
        return f"{text}, LR {', '.join(parts)}{made}"

    def hash_line(self) -> str | None:
        """``Set5: 5 of 5 images match the standard version's pixels``; None if none is recorded."""
        if not self.hashed:
            return None
        return f"{self.name}: {self.hash_matched} of {self.hashed} images match the standard " \
               "version's pixels"


def locate(dir_data: str, set_name: str) -> str | None:
    """The folder of ``set_name`` under ``dir_data`` where data/benchmark.py looks, or None."""
    for rel in READ_DIRS[set_name]:
        if os.path.isdir(os.path.join(dir_data, rel)):
            return os.path.join(dir_data, rel)
    return None


def grey_reason(path: str, img: torch.Tensor) -> str | None:
    """Why ``img`` (read from ``path``) is greyscale, or None: greyscale is three equal channels
    as read (read_image makes mode L, LA and 16-bit greyscale so), named by its mode if it has one."""
    if not (torch.equal(img[0], img[1]) and torch.equal(img[1], img[2])):
        return None
    try:
        with Image.open(path) as raw:
            mode = raw.mode
    except DECODE_ERRORS:
        mode = ""
    return f"mode {mode}" if mode in GREY_MODES else "its three channels are equal"


def size_text(sizes: Sequence[tuple[int, int]]) -> str:
    """``481x321 or 321x481``."""
    return " or ".join(f"{w}x{h}" for w, h in sizes)


def pixel_sha256(img: torch.Tensor) -> str:
    """SHA-256 of an image's pixels as read: ``<width>x<height> RGB8`` and a newline, then its
    uint8 R, G, B values pixel by pixel, row by row (a (height, width, 3) array's bytes)."""
    h, w = img.shape[1:]
    digest = hashlib.sha256(f"{w}x{h} RGB8\n".encode("ascii"))
    digest.update(img.permute(1, 2, 0).contiguous().numpy().tobytes())
    return digest.hexdigest()


def check_colour(path: str, img: torch.Tensor, spec: SetSpec, name: str | None,
                 problems: list[str]) -> None:
    """A problem if ``img`` is greyscale where the standard image is in colour, or the reverse."""
    reason = grey_reason(path, img)
    standard_grey = name in spec.greyscale
    what = f"{spec.name}'s {name}" if name is not None else f"every {spec.name} image"
    if reason and not standard_grey:
        problems.append(f"{path}: greyscale ({reason}); {what} is in colour in the standard "
                        "version: a wrong version")
    elif standard_grey and not reason:
        problems.append(f"{path}: in colour; {what} is greyscale in the standard version: a "
                        "re-coloured or re-encoded copy, a wrong version")


def check_image(path: str, allowed: Sequence[tuple[int, int]], spec: SetSpec,
                problems: list[str], name: str | None = None) -> torch.Tensor | None:
    """The image at ``path`` (image ``name`` of the set, None for a rain file), its size and
    colour checked (problems appended); None if unreadable."""
    try:
        img = read_image(path)
    except ImageReadError as e:
        problems.append(f"{path}: {e}")
        return None
    size = (img.shape[2], img.shape[1])
    if allowed and size not in allowed:
        crop = next((s for s in SCALES if any(size == cropped(a, s) for a in allowed)), None)
        note = f" (cropped to a multiple of {crop}: use the uncropped image)" if crop else ""
        problems.append(f"{path}: {size_text([size])}, expected {size_text(allowed)}{note}")
    check_colour(path, img, spec, name, problems)
    return img


def check_hash(path: str, img: torch.Tensor, spec: SetSpec, name: str, report: SetReport) -> None:
    """Count ``img`` against the SHA-256 recorded for the standard image ``name``, if there is one;
    a note (no checksum is published: the recorded one is of a single copy) when they differ."""
    recorded = spec.pixels_sha256.get(name)
    if recorded is None:
        return
    report.hashed += 1
    if pixel_sha256(img) == recorded:
        report.hash_matched += 1
    else:
        report.notes.append(f"{path}: its pixels differ from the standard {spec.name} {name}'s "
                            "(SHA-256 of the decoded pixels); its metrics may not compare with "
                            "published ones")


def check_lr(dir_data: str, set_name: str, name: str, hr: torch.Tensor, hr_path: str,
             make_lr: bool, report: SetReport, lr_into: str | None = None) -> None:
    """Check (or make, with make_lr) the LR files of one HR image at every scale; made ones are
    written under ``lr_into`` (in the layout of ``dir_data``) where given."""
    h, w = hr.shape[1:]
    for s in SCALES:
        folder = lr_dir(dir_data, set_name, s)
        path = os.path.join(folder, f"{name}x{s}.png")
        if not os.path.isfile(path):
            if make_lr:
                save_image(bicubic_lr(hr, s), os.path.join(lr_dir(lr_into or dir_data, set_name, s),
                                                           os.path.basename(path)))
                report.lr_made += 1
            else:
                report.lr_missing[s] = report.lr_missing.get(s, 0) + 1
                if os.path.isdir(folder):
                    report.problems.append(f"{path}: missing (LR x{s} of {hr_path})")
            continue
        try:
            size = image_size(path)
        except ImageReadError as e:
            report.problems.append(f"{path}: {e}")
            report.lr_wrong[s] = report.lr_wrong.get(s, 0) + 1
            continue
        if size != (w // s, h // s):
            report.problems.append(f"{path}: {size_text([size])}, expected "
                                   f"{size_text([(w // s, h // s)])} (HR {w}x{h} // {s})")
            report.lr_wrong[s] = report.lr_wrong.get(s, 0) + 1


def check_lr_folders(dir_data: str, set_name: str, names: set[str], report: SetReport) -> None:
    """One line per scale whose LR folder is missing entirely; LR files with no HR image named."""
    for s in SCALES:
        folder = lr_dir(dir_data, set_name, s)
        if not os.path.isdir(folder):
            if report.lr_missing.get(s):
                report.problems.append(f"{folder}: missing ({report.lr_missing[s]} LR x{s} "
                                       "files; --make_lr makes them)")
            continue
        for path in list_images(folder):
            if lr_name(stem(path), s, names) not in names or not stem(path).endswith(f"x{s}"):
                report.problems.append(f"{path}: no HR image for this LR file (expected "
                                       f"<name>x{s}.png for an HR <name>.png)")


def check_images(dir_data: str, folder: str, spec: SetSpec, make_lr: bool,
                 lr_into: str | None = None) -> SetReport:
    """Check a folder of HR images (and its LR files for SR sets) against ``spec``; an entry named
    like an image that is not a regular file (a pipe, a device, a folder, a broken link) is listed
    as data/benchmark.py lists it, so it is named as unreadable (never opened), not left out."""
    files = list_entries(folder)
    names = [stem(f) for f in files]
    expected = spec.expected_names()
    report = SetReport(spec.name, len(files), spec.count)
    report.problems += [f"{f}: a second image named {n!r} in {folder}; keep one"
                        for i, (f, n) in enumerate(zip(files, names, strict=False)) if n in names[:i]]
    if expected is not None:
        report.found = len(set(names) & set(expected))
        report.problems += [f"{os.path.join(folder, n + '.png')}: missing ({spec.name} has "
                            f"{spec.count} images)" for n in expected if n not in names]
        report.problems += [f"{f}: not an image of {spec.name}" for f, n in zip(files, names, strict=False)
                            if n not in expected]
    elif len(files) != spec.count:
        report.problems.append(f"{folder}: {len(files)} image(s), {spec.name} has {spec.count}")
    for path, name in zip(files, names, strict=False):
        img = check_image(path, spec.sizes_of(name), spec, report.problems, name)
        if img is not None:
            check_hash(path, img, spec, name, report)
        if img is not None and spec.name in SR_SETS:
            check_lr(dir_data, spec.name, name, img, path, make_lr, report, lr_into)
    if spec.name in SR_SETS:
        check_lr_folders(dir_data, spec.name, set(names), report)
    return report


def check_rain(folder: str, spec: SetSpec) -> SetReport:
    """Check a Rain100L folder: pairs, sizes (both the same), colour."""
    rainy, clean = {}, {}
    for path in list_entries(folder):  # a pipe or device named like an image: read, so named
        m = re.match(r"^(no)?rain-(.+)$", stem(path))  # the names data/images.rain_pairs reads
        if m:
            (clean if m.group(1) else rainy)[m.group(2)] = path
    pairs = sorted(set(rainy) & set(clean))
    report = SetReport(spec.name, len(pairs), spec.count, unit="pairs")
    for key in sorted(set(rainy) ^ set(clean)):
        path = rainy.get(key) or clean[key]
        partner = f"norain-{key}" if key in rainy else f"rain-{key}"
        report.problems.append(f"{path}: unpaired (no {partner} image)")
    if len(pairs) != spec.count:
        report.problems.append(f"{folder}: {len(pairs)} rain-/norain- pairs, {spec.name} has "
                               f"{spec.count}")
    for key in pairs:
        images = [check_image(p, spec.allowed or (), spec, report.problems)
                  for p in (rainy[key], clean[key])]
        if all(i is not None for i in images) and images[0].shape != images[1].shape:
            report.problems.append(f"{rainy[key]}: {images[0].shape[2]}x{images[0].shape[1]}, its "
                                   f"pair {clean[key]} is {images[1].shape[2]}x{images[1].shape[1]}")
    return report


def check_tree(dir_data: str, specs: dict[str, SetSpec], make_lr: bool,
               lr_into: str | None = None) -> list[SetReport]:
    """A SetReport for each set found under ``dir_data``, in SET_ORDER; the LR files made (with
    make_lr) are written under ``lr_into`` where given, to be moved in with `merge`."""
    reports = []
    for set_name in SET_ORDER:
        folder = locate(dir_data, set_name)
        if folder is None:
            continue
        spec = specs.get(set_name)
        if spec is None:
            raise PrepareError(f"{STANDARD_SETS_FILE}: no entry for {set_name}")
        reports.append(check_rain(folder, spec) if set_name == RAIN_SET
                       else check_images(dir_data, folder, spec, make_lr, lr_into))
    return reports


def print_reports(dir_data: str, reports: list[SetReport]) -> int:
    """Print one line per set (and one on its recorded pixels), every problem, then the notes;
    0 if there is no problem, else 1."""
    if not reports:
        print(f"{dir_data}: no test sets found (expected e.g. "
              f"{os.path.join(dir_data, OUT_DIRS['Set5'])}; see README, 'Evaluating')")
        return 1
    for report in reports:
        print(report.line())
        if report.hash_line():
            print(report.hash_line())
    problems = [p for r in reports for p in r.problems]
    for problem in problems:
        print(f"  {problem}")
    if problems:
        print(f"{len(problems)} problem(s) found")
    for note in (n for r in reports for n in r.notes):
        print(f"  note: {note}")
    return 1 if problems else 0


# ----------------------------------------------------------------------------------------
# Downloading
# ----------------------------------------------------------------------------------------
def download(url: str, sha256: str, folder: str, max_bytes: int = MAX_DOWNLOAD_BYTES) -> str:
    """Fetch ``url`` into ``folder``, checked against ``sha256``; the partial file removed on failure."""
    name = re.sub(r"[^A-Za-z0-9._-]", "_", os.path.basename(urllib.parse.urlparse(url).path))
    path = os.path.join(folder, name.lstrip(".") or "download")
    partial = path + ".part"
    digest = hashlib.sha256()
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as response, \
                open(partial, "wb") as out:
            total = 0
            while chunk := response.read(CHUNK_BYTES):
                total += len(chunk)
                if total > max_bytes:
                    raise PrepareError(f"{url}: more than {max_bytes} bytes; download stopped")
                digest.update(chunk)
                out.write(chunk)
        if digest.hexdigest() != sha256:
            raise PrepareError(f"{url}: SHA-256 is {digest.hexdigest()}, expected {sha256}; "
                               "the download was removed")
        os.replace(partial, path)
        return path
    except (urllib.error.URLError, http.client.HTTPException, OSError, ValueError) as e:
        raise PrepareError(f"{url}: download failed: {getattr(e, 'reason', e)}") from None
    finally:
        if os.path.exists(partial):
            os.remove(partial)


def planned_downloads(set_name: str, url: str | None, sha256: str | None) -> tuple[Download, ...]:
    """The files to fetch for ``set_name``; a PrepareError naming what is unknown."""
    if url:
        return (Download(url, sha256, None, "given by --url"),)
    table = DOWNLOADS[set_name]
    if sha256:
        if len(table) != 1:
            raise PrepareError(f"--sha256: {set_name} is {len(table)} files; give --url with it")
        table = (Download(table[0].url, sha256, table[0].size, table[0].layout),)
    for item in table:
        if item.url is None:
            raise PrepareError(f"--download {set_name}: no public address known ({item.layout}); "
                               "download it yourself and give the folder or archive as SRC, or "
                               "pass --url URL --sha256 HEX")
        if item.sha256 is None:
            raise PrepareError(f"--download {set_name}: no SHA-256 known for {item.url} "
                               f"({item.layout}); pass --sha256 HEX from a source you trust")
    return table


# ----------------------------------------------------------------------------------------
# Command line
# ----------------------------------------------------------------------------------------
class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (a PrepareError), not usage and exit."""

    def error(self, message: str) -> None:  # type: ignore[override]
        """Raise the message as a PrepareError."""
        raise PrepareError(message)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line, its combinations checked."""
    p = Parser(prog=PROG, description="Turn downloaded test sets into the layout --dir_data "
                                      "expects, and check them.")
    p.add_argument("src", nargs="*", help="folders or .zip/.tar(.gz) archives named after a set, "
                                          "or holding set-named folders")
    p.add_argument("--out", help="DIR_DATA to write (convert and --download)")
    p.add_argument("--check", metavar="DIR_DATA", help="only check DIR_DATA")
    p.add_argument("--make_lr", action="store_true",
                   help="with --check: make missing LR files (convert always does)")
    p.add_argument("--download", metavar="SET", help=f"fetch SET ({', '.join(SET_ORDER)})")
    p.add_argument("--url", help="with --download: fetch this address instead of the table's")
    p.add_argument("--sha256", help="with --download: the file's SHA-256 (64 hex digits)")
    args = p.parse_args(argv)
    if (args.url or args.sha256) and not args.download:
        raise PrepareError("--url and --sha256 go with --download")
    if args.check and (args.src or args.download or args.out):
        raise PrepareError("--check DIR_DATA takes no SRC, --out or --download")
    if not args.check and not args.out:
        raise PrepareError("give SRC... --out DIR_DATA, --check DIR_DATA or --download SET --out "
                           "DIR_DATA" if not (args.src or args.download) else "--out is required")
    if args.download and args.src:
        raise PrepareError("--download SET takes no SRC")
    if args.out and not (args.src or args.download):
        raise PrepareError("--out: give SRC... or --download SET")
    if args.url and urllib.parse.urlparse(args.url).scheme not in URL_SCHEMES:
        raise PrepareError(f"--url {args.url}: only http and https addresses")
    if args.url and not args.sha256:
        raise PrepareError("--url needs --sha256 (the file's SHA-256)")
    if args.sha256:
        args.sha256 = args.sha256.lower()
        if not SHA256_HEX.match(args.sha256):
            raise PrepareError(f"--sha256 {args.sha256}: not 64 hexadecimal digits")
    if args.download:
        set_name = dict(folder_aliases()).get(args.download.lower())
        if set_name is None:
            raise PrepareError(f"--download {args.download}: unknown set; known: "
                               f"{', '.join(SET_ORDER)} (or {alias_text()})")
        args.download = set_name
    return args


def folder_label(src: str) -> str:
    """The name a folder SRC is read by (``downloads/CSet14/`` -> CSet14)."""
    return os.path.basename(os.path.normpath(os.path.abspath(src)))


def convert_tree(src: str, root: str, label: str, out: str, specs: dict[str, SetSpec],
                 hint: str | None, existing: str | None, sources: Sources) -> None:
    """Write the sets in folder ``root`` (read from ``src``, named ``label``) to ``out``."""
    sets = find_sets(root, label, hint)
    sources.shown = (root, src) if root != src else ("", "")
    sources.take_sets(sets)  # all of them before any is read: a set given twice writes nothing
    for set_name, folder, name in sets:
        found = collect(folder, set_name, name)
        summary = write_found(found, set_name, out, specs.get(set_name), existing, sources)
        ignored = f"; {len(found.ignored)} files in no known layout skipped (first: " \
                  f"{found.ignored[0].replace(root, src, 1)})" if found.ignored else ""
        taken = f" ({name} -> {set_name})" if name != set_name else ""
        print(f"{set_name} <- {src}{taken}: {summary}{ignored}")


def convert_source(src: str, out: str, specs: dict[str, SetSpec], hint: str | None,
                   scratch: str, existing: str | None, sources: Sources) -> None:
    """Read one folder or archive (extracted in a new folder in ``scratch``, removed after) and
    write the sets in it to ``out``."""
    check_source(src)
    if os.path.isdir(src):
        convert_tree(src, src, folder_label(src), out, specs, hint, existing, sources)
        return
    root = tempfile.mkdtemp(prefix="extract.", dir=scratch)
    try:
        extract(src, root)
        convert_tree(src, root, archive_stem(src) or stem(src), out, specs, hint, existing, sources)
    except (PrepareError, ImageReadError) as e:  # the members named as <archive>/<member>
        raise PrepareError(str(e).replace(root, src)) from None
    finally:
        shutil.rmtree(root, ignore_errors=True)


def run_download(set_name: str, out: str, specs: dict[str, SetSpec], url: str | None,
                 sha256: str | None, scratch: str, existing: str | None,
                 sources: Sources) -> None:
    """Fetch the set's files (checked) into ``scratch`` and convert them into ``out``."""
    folder = tempfile.mkdtemp(prefix="download.", dir=scratch)
    for item in planned_downloads(set_name, url, sha256):
        print(f"downloading {item.url}")
        path = download(item.url, item.sha256, folder, item.size or MAX_DOWNLOAD_BYTES)
        convert_source(path, out, specs, set_name, scratch, existing, sources)
        os.remove(path)


def make_scratch(out: str) -> str:
    """A new temporary folder beside ``out`` (one filesystem: files move in by renaming), or in
    it where its parent is not writable."""
    try:
        return tempfile.mkdtemp(prefix=SCRATCH_PREFIX, dir=os.path.dirname(os.path.realpath(out)))
    except PermissionError:
        return tempfile.mkdtemp(prefix=SCRATCH_PREFIX, dir=out)


Undo = list[tuple[str, str | None]]  # merge's steps: (made under --out, its old file kept in)


def merge(staged: str, out: str, scratch: str, undo: Undo) -> None:
    """Move every file under ``staged`` to the same place under ``out``, replacing files there.

    Each step is noted in ``undo`` as it is made, for `unmerge`: a folder or file made under
    ``out``, and where the file it replaced is kept meanwhile (a new folder in ``scratch``). The
    moves are not cut short by a stop signal: it is acted on once they are over (renames, quick).
    """
    moves = [(os.path.join(folder, name),
              os.path.normpath(os.path.join(out, os.path.relpath(folder, staged), name)))
             for folder, _, files in os.walk(staged) for name in files]
    for _, dst in moves:
        if os.path.isdir(dst):
            raise PrepareError(f"{dst}: a folder where an image goes; remove it")
    if not moves:
        return
    kept = tempfile.mkdtemp(prefix="kept.", dir=scratch)
    with stops.StopSignals() as held:
        for src, dst in moves:
            for folder in missing_folders(os.path.dirname(dst), os.path.normpath(out)):
                os.mkdir(folder)
                undo.append((folder, None))
            old = None
            if os.path.lexists(dst):
                old = os.path.join(kept, os.path.relpath(dst, out))
                os.makedirs(os.path.dirname(old), exist_ok=True)
                shutil.move(dst, old)
            undo.append((dst, old))  # before the move: a failed one leaves nothing to remove
            shutil.move(src, dst)
    if held.received is not None:
        raise stops.Interrupted(held.received)


def missing_folders(folder: str, top: str) -> list[str]:
    """The folders from ``top`` (excluded) down to ``folder`` that do not exist, outermost first."""
    missing = []
    while folder != top and not os.path.lexists(folder) and os.path.dirname(folder) != folder:
        missing.append(folder)
        folder = os.path.dirname(folder)
    return missing[::-1]


def unmerge(undo: Undo) -> None:
    """Undo `merge`'s steps, last first: each file moved in removed and the file it replaced put
    back, each folder made removed. What cannot be put back is named on stderr."""
    for path, old in reversed(undo):
        try:
            if os.path.isdir(path) and not os.path.islink(path):
                os.rmdir(path)
            elif os.path.lexists(path):
                os.remove(path)
            if old is not None:
                shutil.move(old, path)
        except OSError as e:
            print(f"{PROG}: cannot put back {path} as it was: {e}", file=sys.stderr)
    undo.clear()


@contextlib.contextmanager
def transaction(out: str) -> Iterator[tuple[str, Undo]]:
    """A scratch folder beside ``out`` and a list for `merge`'s steps: on any exception (a stop
    signal's included) the steps are undone, so ``out`` is as it was, and the scratch folder is
    removed whatever happens; both with the stop signals held off (a second one cannot cut the
    undoing short)."""
    scratch = make_scratch(out)
    undo: Undo = []
    try:
        yield scratch, undo
    except BaseException:
        with stops.StopSignals():
            unmerge(undo)
        raise
    finally:
        with stops.StopSignals():
            shutil.rmtree(scratch, ignore_errors=True)


def convert(args: argparse.Namespace, specs: dict[str, SetSpec]) -> list[SetReport]:
    """Convert the download and SRCs into a scratch folder beside --out, move the files in, then
    check --out, the missing LR files made in the scratch folder and moved in last; the reports.
    On any failure or a stop signal, in any of these steps, the files moved in are moved out and
    those they replaced put back: --out is left as it was, and the scratch folder is gone."""
    for src in args.src:
        check_source(src)
    if os.path.lexists(args.out) and not os.path.isdir(args.out):
        raise PrepareError(f"--out {args.out}: not a folder")
    sources = Sources()
    for src in args.src:  # a set given twice (CSet14 and Set14) is refused before any is read
        if os.path.isdir(src):
            sources.take_sets(find_sets(src, folder_label(src), None))
    created = not os.path.lexists(args.out)
    try:
        with stops.StopSignals(raise_=True):
            os.makedirs(args.out, exist_ok=True)
            with transaction(args.out) as (scratch, undo):
                staged, made = os.path.join(scratch, "out"), os.path.join(scratch, "lr")
                if args.download:
                    run_download(args.download, staged, specs, args.url, args.sha256, scratch,
                                 args.out, sources)
                for src in args.src:
                    convert_source(src, staged, specs, None, scratch, args.out, sources)
                merge(staged, args.out, scratch, undo)
                reports = check_tree(args.out, specs, make_lr=True, lr_into=made)
                merge(made, args.out, scratch, undo)
        return reports
    except BaseException:
        if created:
            with contextlib.suppress(OSError):
                os.rmdir(args.out)  # only if empty
        raise


def check(dir_data: str, specs: dict[str, SetSpec], make_lr: bool) -> list[SetReport]:
    """--check: the reports of ``dir_data``; the LR files made (make_lr) moved in at the end, so a
    failure or a stop signal leaves it as it was."""
    if not os.path.isdir(dir_data):
        what = "not a folder" if os.path.lexists(dir_data) else "no such folder"
        raise PrepareError(f"--check {dir_data}: {what}")
    with stops.StopSignals(raise_=True):
        if not make_lr:
            return check_tree(dir_data, specs, make_lr)
        with transaction(dir_data) as (scratch, undo):
            reports = check_tree(dir_data, specs, make_lr, lr_into=os.path.join(scratch, "lr"))
            merge(os.path.join(scratch, "lr"), dir_data, scratch, undo)
        return reports


def main(argv: Sequence[str] | None = None) -> int:
    """Convert, check or download; 0 all well, 1 problems found, 2 an error (one line)."""
    try:
        args = parse_args(argv)
        specs = load_standard_sets()
        if args.check:
            return print_reports(args.check, check(args.check, specs, args.make_lr))
        return print_reports(args.out, convert(args, specs))
    except (PrepareError, ImageReadError, OSError, UnicodeError) as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as stop:  # after the undoing: nothing of this run is left
        print(f"{PROG}: stopped by {stops.signal_name(stops.stop_signal(stop))}; nothing was "
              "written", file=sys.stderr)
        return stops.INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
