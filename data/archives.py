"""Extract a .zip or .tar(.gz/.bz2/.xz) archive of test images under one folder, refusing the
hostile ones: a member with an absolute path, ``..``, a control character, a link or a name used
twice; more than MAX_MEMBERS members; a member over MAX_MEMBER_BYTES or an archive over
MAX_EXTRACT_BYTES, checked as declared (before a byte is written) and as inflated (while copying).
"""
from __future__ import annotations

import os
import re
import tarfile
import zipfile
import zlib
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
ZIP_LINK, FILE_TYPE_BITS = 0o120000, 0o170000  # a zip member's st_mode, in external_attr >> 16


class ArchiveError(Exception):
    """An archive refused or unreadable, in one line naming it."""


def archive_stem(path: str) -> str | None:
    """The name of an archive without its suffix, or None if ``path`` is not named as one."""
    base = os.path.basename(path)
    return next((base[:-len(s)] for s in ARCHIVE_SUFFIXES if base.lower().endswith(s)), None)


def member_parts(archive: str, name: str) -> list[str]:
    """The path parts of member ``name`` (``\\`` a separator too); refused: absolute, ``..``, control."""
    if BAD_NAME_CHARS.search(name):
        raise ArchiveError(f"{archive}: member {name!r} has a control character or bytes that are "
                           "not UTF-8 in its name; archive refused")
    clean = name.replace("\\", "/")
    if clean.startswith("/") or re.match(r"^[A-Za-z]:", clean):
        raise ArchiveError(f"{archive}: member {name!r} has an absolute path; archive refused")
    parts = [p for p in clean.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise ArchiveError(f"{archive}: member {name!r} points outside the archive (..); "
                           "archive refused")
    return parts


class Extractor:
    """Writes one archive's members under ``dest`` only, counting members and bytes."""

    def __init__(self, archive: str, dest: str):
        self.archive, self.dest = archive, os.path.realpath(dest)
        self.bytes = 0
        self.files: dict[tuple[str, ...], str] = {}  # path parts -> the member written there

    def plan(self, members: list[tuple[str, bool, int]]) -> None:
        """Check each (name, is a file, declared size) before anything is written."""
        if len(members) > MAX_MEMBERS:
            raise ArchiveError(f"{self.archive}: more than {MAX_MEMBERS} members; archive refused")
        total = 0
        for name, is_file, size in members:
            key = tuple(member_parts(self.archive, name))
            if is_file and key and key in self.files:
                raise ArchiveError(f"{self.archive}: two members named {name!r} (the first: "
                                   f"{self.files[key]!r}); archive refused: remove one")
            if is_file and key:
                self.files[key] = name
            if size > MAX_MEMBER_BYTES:
                raise ArchiveError(f"{self.archive}: member {name!r} declares {size} bytes, more "
                                   f"than any test image ({MAX_MEMBER_BYTES}); archive refused")
            total += size
            if total > MAX_EXTRACT_BYTES:  # as soon as it passes: the rest is not even read
                raise ArchiveError(f"{self.archive}: declares more than {MAX_EXTRACT_BYTES} bytes "
                                   "once extracted; archive refused")

    def path(self, name: str) -> str | None:
        """Where member ``name`` goes under dest; None for the archive's root folder."""
        parts = member_parts(self.archive, name)
        return os.path.join(self.dest, *parts) if parts else None

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
                        raise ArchiveError(f"{self.archive}: member {name!r} holds more than "
                                           f"{MAX_MEMBER_BYTES} bytes once extracted, more than any "
                                           "test image; archive refused (a decompression bomb?)")
                    if self.bytes > MAX_EXTRACT_BYTES:
                        raise ArchiveError(f"{self.archive}: more than {MAX_EXTRACT_BYTES} bytes "
                                           "once extracted; archive refused (a decompression bomb?)")
                    out.write(chunk)
            except BaseException:
                os.remove(path)
                raise


def extract_zip(archive: str, dest: str) -> None:
    """Extract a zip under ``dest``; links and encrypted members refused."""
    ex = Extractor(archive, dest)
    with zipfile.ZipFile(archive) as zf:
        infos = zf.infolist()
        ex.plan([(i.filename, not i.is_dir(), i.file_size) for i in infos])
        for info in infos:
            if (info.external_attr >> 16) & FILE_TYPE_BITS == ZIP_LINK:
                raise ArchiveError(f"{archive}: member {info.filename!r} is a symbolic link; "
                                   "archive refused")
            if info.flag_bits & 0x1:
                raise ArchiveError(f"{archive}: member {info.filename!r} is encrypted")
            path = ex.path(info.filename)
            if path is None or info.is_dir():
                os.makedirs(path or ex.dest, exist_ok=True)
                continue
            with zf.open(info) as stream:
                ex.write(stream, path, info.filename)


def extract_tar(archive: str, dest: str) -> None:
    """Extract a tar (any compression) under ``dest``; links, devices refused."""
    ex = Extractor(archive, dest)
    with tarfile.open(archive, "r:*") as tf:
        members = []
        for member in tf:  # every header read (and counted) before the first member is written
            members.append(member)
            if len(members) > MAX_MEMBERS:
                break
        ex.plan([(m.name, not m.isdir(), m.size if m.isfile() else 0) for m in members])
        for member in members:
            if member.issym() or member.islnk():
                raise ArchiveError(f"{archive}: member {member.name!r} is a link; archive refused")
            if not (member.isfile() or member.isdir()):
                raise ArchiveError(f"{archive}: member {member.name!r} is not a file or folder; "
                                   "archive refused")
            if hasattr(tarfile, "data_filter"):  # tarfile's own path checks (3.12, 3.11.4, 3.10.12)
                tarfile.data_filter(member, ex.dest)
            path = ex.path(member.name)
            if path is None or member.isdir():
                os.makedirs(path or ex.dest, exist_ok=True)
                continue
            with tf.extractfile(member) as stream:
                ex.write(stream, path, member.name)


def extract(archive: str, dest: str) -> None:
    """Extract a .zip or .tar(.gz/.bz2/.xz) archive safely under ``dest``."""
    try:
        if zipfile.is_zipfile(archive):
            extract_zip(archive, dest)
        elif tarfile.is_tarfile(archive):
            extract_tar(archive, dest)
        else:
            raise ArchiveError(f"{archive}: not a folder, .zip or .tar archive")
    except ARCHIVE_ERRORS as e:
        raise ArchiveError(f"{archive}: cannot extract: {e}") from None
