"""A folder's image files at ImageNet's size: found at any depth, kept compact, cached.

`walk_images` finds the files; `PathIndex` keeps them in two numpy arrays that forked loader
workers share. `list_folder` caches a walk in a file (`FILE_LIST`, in the run folder: the data
folder may be read-only) and uses it while no folder it entered has changed (`read_file_list`,
the file's one validating reader). A file replaced in place, its folder's entries unchanged, is
not noticed.
"""
from __future__ import annotations

import hashlib
import itertools
import logging
import os
import time
import zipfile
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import numpy as np

import records
import runfolder

from .images import IMAGE_EXTENSIONS, open_regular, why_unreadable

log = logging.getLogger("ipt")


def walk_images(root: str, folders: list | None = None) -> tuple[list[str], list[str]]:
    """(image files (IMAGE_EXTENSIONS, any case), other entries named like images: pipes, devices,
    broken or looping links) under ``root`` at any depth, each sorted. Links are followed, but
    each folder is entered once (the first time in sorted order), so links to a folder itself or
    to its parent end.
    ``folders`` gets (path, os.stat_result) of every folder entered, each stat taken before the
    folder is listed, ``root`` first."""
    seen: set[tuple[int, int]] = set()
    if not _first_visit(root, seen, folders):  # missing or unreadable: nothing under it
        return [], []
    found, other, pending = [], [], [root]
    while pending:  # depth first, sub-folders in sorted order, as os.walk(followlinks=True)
        folder = pending.pop()
        try:
            with os.scandir(folder) as listing:
                entries = list(listing)
        except OSError:  # unreadable: nothing under it
            continue
        dirs = []
        for entry in entries:
            if _entry_is(entry, os.DirEntry.is_dir):
                dirs.append(entry.name)
            elif entry.name.lower().endswith(IMAGE_EXTENSIONS):  # no stat unless a link
                (found if _entry_is(entry, os.DirEntry.is_file) else other).append(entry.path)
        subs = [os.path.join(folder, d) for d in sorted(dirs)]
        pending += reversed([d for d in subs if _first_visit(d, seen, folders)])
    return sorted(found), sorted(other)


def _entry_is(entry: os.DirEntry, test: Callable[[os.DirEntry], bool]) -> bool:
    """``test(entry)`` (links followed), False where it cannot be told."""
    try:
        return test(entry)
    except OSError:
        return False


def _first_visit(path: str, seen: set, folders: list | None = None) -> bool:
    """Whether the folder at ``path`` (links followed) is new to ``seen`` (then added, and noted
    in ``folders`` with its stat); False if it cannot be read."""
    try:
        info = os.stat(path)
    except OSError:
        return False
    key = info.st_dev, info.st_ino
    if key in seen:
        return False
    seen.add(key)
    if folders is not None:
        folders.append((path, info))
    return True


class PathIndex(Sequence):
    """Paths as two numpy arrays: their bytes one after another (uint8) and where each starts
    (int64, one more than there are paths); each path is ``prefix`` + its bytes, decoded when
    asked for. A list of a million str objects is copied into every forked loader worker page by
    page as their reference counts change; these two arrays are only read, so workers share them.
    """

    def __init__(self, blob: np.ndarray, offsets: np.ndarray, prefix: str = ""):
        self.blob, self.offsets, self.prefix = blob, offsets, prefix

    @classmethod
    def pack(cls, paths: Sequence[str]) -> PathIndex:
        """The paths (str, any bytes a file name can have) packed in order."""
        encoded = [os.fsencode(p) for p in paths]
        offsets = np.cumsum([0, *map(len, encoded)], dtype=np.int64)
        return cls(np.frombuffer(b"".join(encoded), dtype=np.uint8), offsets)

    def under(self, root: str) -> PathIndex:
        """The same paths joined to ``root`` (as os.path.join), sharing the arrays."""
        return PathIndex(self.blob, self.offsets, os.path.join(root, ""))

    def __len__(self) -> int:
        return len(self.offsets) - 1

    def __getitem__(self, i: int | slice) -> str | list[str]:
        if isinstance(i, slice):
            return [self[j] for j in range(len(self))[i]]
        i = range(len(self))[i]  # from the end if negative; IndexError past either end
        return self.prefix + os.fsdecode(self.blob[self.offsets[i]:self.offsets[i + 1]].tobytes())


# -- a folder's listing, and its cache in the run folder -----------------------------------
FILE_LIST = "file_list.npz"  # the cached listing's usual name in a run folder (listing_cache)
FILE_LIST_FORMAT = 1  # the layout of that file; bump when it changes
FILE_LIST_MAX_BYTES = 4 << 30  # ~50 bytes a file: ~80M files; anything larger is not one
STAMP_FIELDS = 3  # a folder's (inode, mtime_ns, ctime_ns)
# A folder modified this shortly before its walk may be modified again within the same tick of
# the file system's clock (ext4: a few ms) with no change of its mtime: its listing is not cached.
RECENT_CHANGE_NS = 2_000_000_000
INT64, BYTES = np.dtype("<i8"), np.dtype("|u1")
# a FolderListing's PathIndex fields, in the order of their counts in "meta": (blob, offsets) arrays
PATH_ARRAYS = {"names": "name_offsets", "folders": "folder_offsets", "other": "other_offsets"}
# the arrays of a file list: (dtype, number of dimensions); a PathIndex's blob is bytes, its offsets int64
FILE_LIST_ARRAYS = {"meta": (INT64, 1), "root": (BYTES, 1), "stamps": (INT64, 2), "digest": (BYTES, 1),
                    **dict.fromkeys(PATH_ARRAYS, (BYTES, 1)),
                    **dict.fromkeys(PATH_ARRAYS.values(), (INT64, 1))}


class FileListDamage(ValueError):
    """A cached file list that is not one `write_file_list` wrote."""


@dataclass
class FolderListing:
    """A walk of a folder: paths relative to it, and the stamp of every folder it entered."""

    names: PathIndex  # the image files, sorted
    other: PathIndex  # entries named like images that are not regular files, sorted
    folders: PathIndex  # the sub-folders entered, in walk order (not the folder itself)
    stamps: np.ndarray  # (1 + len(folders), STAMP_FIELDS) int64: the folder itself first


def list_folder(root: str, listing_cache: str | None = None) -> FolderListing:
    """The images under ``root``: from ``listing_cache`` while it is valid (`read_file_list`),
    else walked (`walk_images`) and saved there. Logs one line saying how many, how long, how."""
    start, started_ns = time.monotonic(), time.time_ns()
    listing = read_file_list(listing_cache, root) if listing_cache else None
    how = f"from the cache {listing_cache}"
    if listing is None:
        listing, how = walk_folder(root), "not cached"
        recent = int(listing.stamps[:, 1].max(initial=0)) > started_ns - RECENT_CHANGE_NS
        if listing_cache and recent:
            how = f"not cached: a folder changed less than {RECENT_CHANGE_NS / 1e9:.0f} s before"
        elif listing_cache and len(listing.names) \
                and write_file_list(listing_cache, root, listing):
            how = f"cached in {listing_cache}"
    log.info("listed %d images under %s in %.1f s (%s)", len(listing.names), root,
             time.monotonic() - start, how)
    return listing


def walk_folder(root: str) -> FolderListing:
    """`walk_images` of ``root``, packed, with the stamp of each folder taken before it was read."""
    folders: list[tuple[str, os.stat_result]] = []
    files, other = walk_images(root, folders)
    cut = len(os.path.join(root, ""))  # every path walked starts with this
    names = PathIndex.pack([f[cut:] for f in files])
    del files
    stamps = np.array([_stamp(info) for _, info in folders], dtype=INT64)
    return FolderListing(names, PathIndex.pack([f[cut:] for f in other]),
                         PathIndex.pack([p[cut:] for p, _ in folders[1:]]),
                         stamps.reshape(-1, STAMP_FIELDS))


def _stamp(info: os.stat_result) -> tuple[int, int, int]:
    """What changes when entries are added to, removed from or renamed in a folder."""
    return info.st_ino, info.st_mtime_ns, info.st_ctime_ns


def write_file_list(path: str, root: str, listing: FolderListing) -> bool:
    """Save the listing of ``root`` to ``path`` (an uncompressed .npz, written atomically);
    False, with one warning, when it cannot be written."""
    paths = {key: getattr(listing, key) for key in PATH_ARRAYS}
    arrays = {"meta": np.array([FILE_LIST_FORMAT, *map(len, paths.values())]),
              "root": np.frombuffer(os.fsencode(os.path.abspath(root)), dtype=BYTES),
              "stamps": listing.stamps}
    for key, index in paths.items():
        arrays[key], arrays[PATH_ARRAYS[key]] = index.blob, index.offsets
    arrays = {k: np.ascontiguousarray(a, dtype=FILE_LIST_ARRAYS[k][0]) for k, a in arrays.items()}
    arrays["digest"] = np.frombuffer(_digest(arrays), dtype=BYTES)

    def save(tmp: str) -> None:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)

    try:
        runfolder.atomic_write(path, save)
    except OSError as e:  # SaveError names the file, the reason and the free space
        log.warning("not caching the file list: %s; the folder will be walked again next time", e)
        return False
    return True


def _digest(arrays: dict[str, np.ndarray]) -> bytes:
    """SHA-256 of a file list's arrays (but the digest): their names, types, shapes and bytes."""
    h = hashlib.sha256()
    for key in sorted(FILE_LIST_ARRAYS):
        if key != "digest":
            a = arrays[key]
            h.update(f"{key} {a.dtype.str} {a.shape}\n".encode())
            h.update(np.ascontiguousarray(a))
    return h.digest()


def read_file_list(path: str, root: str) -> FolderListing | None:
    """The listing of ``root`` that `write_file_list` saved in ``path``, if it is still valid.

    None when there is no such file, when it lists another folder (by absolute path), or when a
    folder it entered has changed since (inode, mtime or ctime): ``root`` must then be walked. A
    file that is not such a listing (`_read_arrays`, `_checked_listing`) is None with one warning
    naming it. Nothing else is raised; nothing is unpickled; a pipe or device is never opened.
    """
    if not os.path.lexists(path):
        return None
    try:
        listing = _checked_listing(_read_arrays(path), root)
    except Exception as e:  # all that a damaged zip or .npy raises (an encrypted member: RuntimeError)
        why = str(e) if isinstance(e, FileListDamage) else (
            why_unreadable(path, e) if isinstance(e, OSError) else f"{type(e).__name__}: {e}")
        log.warning("ignoring the cached file list %s (%s); walking the folder again", path,
                    " ".join(why.split())[:200])
        return None
    if listing is None:
        log.info("the cached file list %s is of another folder; walking %s", path, root)
        return None
    changed = _changed_folder(root, listing)
    if changed is not None:
        log.info("the cached file list %s is out of date (%s changed); walking the folder again",
                 path, changed)
        return None
    return listing


def _read_arrays(path: str) -> dict[str, np.ndarray]:
    """The arrays of a file list, each of the type FILE_LIST_ARRAYS says; FileListDamage (or
    what zipfile or numpy raise) otherwise. Arrays are read only from an uncompressed .npz of at
    most FILE_LIST_MAX_BYTES, so reading stops at the end of the file whatever a header claims."""
    if os.stat(path).st_size > FILE_LIST_MAX_BYTES:
        raise FileListDamage(f"it is larger than {FILE_LIST_MAX_BYTES} bytes")
    with open_regular(path) as f, np.load(f, allow_pickle=False) as npz:
        if sorted(npz.zip.namelist()) != sorted(k + ".npy" for k in FILE_LIST_ARRAYS):
            raise FileListDamage(f"it does not hold the arrays {', '.join(FILE_LIST_ARRAYS)}")
        if any(member.compress_type != zipfile.ZIP_STORED for member in npz.zip.infolist()):
            raise FileListDamage("its arrays are compressed")
        arrays = {key: npz[key] for key in FILE_LIST_ARRAYS}
    for key, (dtype, ndim) in FILE_LIST_ARRAYS.items():
        if arrays[key].dtype != dtype or arrays[key].ndim != ndim:
            raise FileListDamage(f"array {key!r} is not a {ndim}-D {dtype} array")
    return arrays


def _checked_listing(arrays: dict[str, np.ndarray], root: str) -> FolderListing | None:
    """The listing in a file list's arrays; None if it is of another folder than ``root``;
    FileListDamage if it is not what `write_file_list` wrote."""
    meta = arrays["meta"].tolist()  # format, then the counts of names, folders and other files
    found = records.problem(meta, records.FILE_LIST_META)
    if found or meta[0] != FILE_LIST_FORMAT:
        raise FileListDamage(f"it is not a file list of format {FILE_LIST_FORMAT} ({found or 'meta'})")
    if arrays["digest"].tobytes() != _digest(arrays):
        raise FileListDamage("its digest does not match its contents")
    if arrays["root"].tobytes() != os.fsencode(os.path.abspath(root)):
        return None
    counts = dict(zip(PATH_ARRAYS, meta[1:], strict=True))
    stamps = arrays["stamps"]
    if stamps.shape != (counts["folders"] + 1, STAMP_FIELDS):
        raise FileListDamage(f"'stamps' is not {counts['folders'] + 1} x {STAMP_FIELDS}")
    return FolderListing(**{key: _checked_paths(arrays, key, n) for key, n in counts.items()},
                         stamps=stamps)


def _checked_paths(arrays: dict[str, np.ndarray], key: str, count: int) -> PathIndex:
    """``count`` relative paths packed in two arrays, each non-empty, in range, with no NUL, no
    empty, '.' or '..' part and no leading or trailing separator; else FileListDamage."""
    offsets_key = PATH_ARRAYS[key]
    blob, offsets = arrays[key], arrays[offsets_key]
    if offsets.shape != (count + 1,) or offsets[0] != 0 or offsets[-1] != len(blob) \
            or np.any(offsets[1:] <= offsets[:-1]):
        raise FileListDamage(f"'{offsets_key}' are not {count + 1} increasing offsets into "
                             f"'{key}' ({len(blob)} bytes)")
    sep = os.fsencode(os.sep)
    framed = np.insert(blob, offsets, sep[0]).tobytes()  # SEP name SEP name ... SEP
    if b"\0" in framed or any(p in framed for p in (sep * 2, sep + b"." + sep,
                                                    sep + b".." + sep)):
        raise FileListDamage(f"a path in '{key}' is absolute, holds a NUL byte or an empty, "
                             f"'.' or '..' part")
    return PathIndex(blob, offsets)


def _changed_folder(root: str, listing: FolderListing) -> str | None:
    """The first folder of the listing that is gone or whose stamp differs, else None."""
    folders = itertools.chain([root], listing.folders.under(root))
    for path, stamp in zip(folders, listing.stamps, strict=False):
        try:
            if list(_stamp(os.stat(path))) != stamp.tolist():
                return path
        except OSError:
            return path
    return None
