"""Extract a .zip or .tar(.gz/.bz2/.xz) archive of test images under one folder, refusing the
hostile ones: a member with an absolute path, ``..``, a control character, a link or a name used
twice; more than MAX_MEMBERS members; a member over MAX_MEMBER_BYTES or an archive over
MAX_EXTRACT_BYTES, checked as declared (before a byte is written) and as inflated (while copying).
"""
from __future__ import annotations

import functools
import itertools
import os
import re
import stat
import tarfile
import zipfile
import zlib
from collections.abc import Callable
from typing import BinaryIO

ARCHIVE_SUFFIXES = (".tar.gz", ".tar.bz2", ".tar.xz", ".tgz", ".tbz2", ".txz", ".tar", ".zip")
MAX_EXTRACT_BYTES = 8 * 2 ** 30  # the largest test set (SelfExSR's Urban100) holds about 1.2 GB
MAX_MEMBER_BYTES = 512 * 2 ** 20  # per member or image file; real test images are a few MB each
MAX_MEMBERS = 200_000
CHUNK_BYTES = 1 << 20
# Names refused in archives and folders: control characters (a newline would forge output lines)
# and lone surrogates (tarfile's stand-ins for bytes that are not UTF-8; they cannot be printed)
BAD_NAME_CHARS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\ud800-\udfff]")
ARCHIVE_ERRORS = (zipfile.BadZipFile, zipfile.LargeZipFile, tarfile.TarError, zlib.error, EOFError,
                  NotImplementedError, RuntimeError, OSError)
# (name, a folder, declared size, why it is refused or None, how to open it)
Member = tuple[str, bool, int, "str | None", Callable[[], BinaryIO]]


class ArchiveError(Exception):
    """An archive refused or unreadable, in one line naming it."""


def refused(archive: str, name: str, why: str, tail: str = "") -> ArchiveError:
    """``<archive>: member '<name>' <why>; archive refused<tail>``."""
    return ArchiveError(f"{archive}: member {name!r} {why}; archive refused{tail}")


def archive_stem(path: str) -> str | None:
    """The name of an archive without its suffix, or None if ``path`` is not named as one."""
    base = os.path.basename(path)
    return next((base[:-len(s)] for s in ARCHIVE_SUFFIXES if base.lower().endswith(s)), None)


def member_parts(archive: str, name: str) -> list[str]:
    """The path parts of member ``name`` (``\\`` a separator too); refused: absolute, ``..``, control."""
    if BAD_NAME_CHARS.search(name):
        raise refused(archive, name, "has a control character or bytes that are not UTF-8 in its name")
    clean = name.replace("\\", "/")
    if clean.startswith("/") or re.match(r"^[A-Za-z]:", clean):
        raise refused(archive, name, "has an absolute path")
    parts = [p for p in clean.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise refused(archive, name, "points outside the archive (..)")
    return parts


class Extractor:
    """Writes one archive's members under ``dest`` only, counting members and bytes."""

    def __init__(self, archive: str, dest: str):
        self.archive, self.dest = archive, os.path.realpath(dest)
        self.bytes = 0

    def run(self, members: list[Member]) -> None:
        """Check every member's name and declared size before anything is written, then write each
        in order; the first one refused stops the extraction."""
        if len(members) > MAX_MEMBERS:
            raise ArchiveError(f"{self.archive}: more than {MAX_MEMBERS} members; archive refused")
        files: dict[tuple[str, ...], str] = {}  # path parts -> the member written there
        total = 0
        for name, is_dir, size, _, _ in members:
            key = tuple(member_parts(self.archive, name))
            if not is_dir and key:
                if key in files:
                    raise ArchiveError(f"{self.archive}: two members named {name!r} (the first: "
                                       f"{files[key]!r}); archive refused: remove one")
                files[key] = name
            if size > MAX_MEMBER_BYTES:
                raise refused(self.archive, name, f"declares {size} bytes, more than any test image "
                                                  f"({MAX_MEMBER_BYTES})")
            total += size
            if total > MAX_EXTRACT_BYTES:  # as soon as it passes: the rest is not even read
                raise ArchiveError(f"{self.archive}: declares more than {MAX_EXTRACT_BYTES} bytes "
                                   "once extracted; archive refused")
        for name, is_dir, _, problem, open_member in members:
            if problem:
                raise refused(self.archive, name, problem)
            parts = member_parts(self.archive, name)
            if not parts or is_dir:
                os.makedirs(os.path.join(self.dest, *parts), exist_ok=True)
                continue
            with open_member() as stream:
                self.write(stream, os.path.join(self.dest, *parts), name)

    def write(self, stream: BinaryIO, path: str, name: str) -> None:
        """Copy ``stream`` to a new file ``path``, stopped (and removed) once past a limit."""
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "xb") as out:
            try:
                size = 0
                while chunk := stream.read(CHUNK_BYTES):
                    size += len(chunk)
                    self.bytes += len(chunk)
                    if size > MAX_MEMBER_BYTES:
                        raise refused(self.archive, name, f"holds more than {MAX_MEMBER_BYTES} bytes "
                                      "once extracted, more than any test image",
                                      " (a decompression bomb?)")
                    if self.bytes > MAX_EXTRACT_BYTES:
                        raise ArchiveError(f"{self.archive}: more than {MAX_EXTRACT_BYTES} bytes "
                                           "once extracted; archive refused (a decompression bomb?)")
                    out.write(chunk)
            except BaseException:
                os.remove(path)
                raise


def zip_problem(info: zipfile.ZipInfo) -> str | None:
    """Why a zip member is refused (a link, encrypted), or None."""
    if stat.S_ISLNK(info.external_attr >> 16):  # a zip member's st_mode
        return "is a symbolic link"
    return "is encrypted" if info.flag_bits & 0x1 else None


def tar_problem(member: tarfile.TarInfo, dest: str) -> str | None:
    """Why a tar member is refused (a link, a device, what tarfile's own checks refuse), or None."""
    if member.issym() or member.islnk():
        return "is a link"
    if not (member.isfile() or member.isdir()):
        return "is not a file or folder"
    try:
        if hasattr(tarfile, "data_filter"):  # tarfile's own path checks (3.12, 3.11.4, 3.10.12)
            tarfile.data_filter(member, dest)
    except tarfile.FilterError as e:
        return f"is refused by tarfile ({e})"
    return None


def extract(archive: str, dest: str) -> None:
    """Extract a .zip or .tar(.gz/.bz2/.xz) archive safely under ``dest``."""
    try:
        if zipfile.is_zipfile(archive):
            with zipfile.ZipFile(archive) as zf:
                Extractor(archive, dest).run([(i.filename, i.is_dir(), i.file_size, zip_problem(i),
                                               functools.partial(zf.open, i)) for i in zf.infolist()])
        elif tarfile.is_tarfile(archive):
            with tarfile.open(archive, "r:*") as tf:
                # every header read (and counted) before the first member is written
                members = list(itertools.islice(tf, MAX_MEMBERS + 1))
                dest = os.path.realpath(dest)
                Extractor(archive, dest).run([(m.name, m.isdir(), m.size if m.isfile() else 0,
                                               tar_problem(m, dest), functools.partial(tf.extractfile, m))
                                              for m in members])
        else:
            raise ArchiveError(f"{archive}: not a folder, .zip or .tar archive")
    except ARCHIVE_ERRORS as e:
        raise ArchiveError(f"{archive}: cannot extract: {e}") from None
