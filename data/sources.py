"""Where pre-training images come from, and which of them each rank and loader worker reads.

Sources: image files (a folder searched at any depth, through a cached listing), (name, tensor)
pairs in memory, or tar shards, whose member counts come from the ``shards.json`` that make_shards
writes (checked by records.SHARDS), else a scan. `epoch_files` is the split that `data.stream`
describes.
"""
from __future__ import annotations

import functools
import io
import logging
import os
import reprlib
import tarfile
from collections.abc import Callable, Sequence

import torch
from torch import Tensor

import records

from .degrade import hashed_generator
from .images import (
    IMAGE_EXTENSIONS,
    DataLayoutError,
    ImageReadError,
    decode_image,
    read_image,
    why_unreadable,
)
from .listing import PathIndex, list_folder

log = logging.getLogger("ipt")

SHARD_SUFFIX = ".tar"
SHARD_INDEX = "shards.json"  # {"shards": {basename: image member count}}, written by make_shards
SHARD_INDEX_MAX_BYTES = 16 << 20  # ~40 bytes a shard: 400000 shards; anything larger is not one
TAR_BLOCK = 512  # every tar member takes at least one header block of this many bytes
REMAKE_INDEX = "re-run python -m scripts.scale.make_shards, or delete it to have the shards scanned"


class TrainingDataError(DataLayoutError):
    """Training data that is missing, empty or not in the expected layout."""


# -- The split of files over epochs, ranks and workers -------------------------------------
def seeded(*keys: object) -> torch.Generator:
    """A CPU generator seeded from the keys by SHA-256 (the same in every process and run)."""
    return hashed_generator(repr(keys).encode("utf-8"))


def epoch_order(n: int, epoch: int, seed: int) -> list[int]:
    """The shuffled order of n files in an epoch, the same on every rank and worker."""
    return torch.randperm(n, generator=seeded(seed, "epoch", epoch)).tolist()


def worker_bounds(n: int, index: int, count: int) -> tuple[int, int]:
    """[start, stop) of global worker ``index``'s contiguous run of n items among ``count``."""
    return index * n // count, (index + 1) * n // count


def epoch_files(files: Sequence, epoch: int, seed: int, rank: int, world_size: int,
                worker: int, num_workers: int) -> list:
    """The files that loader worker (slot) ``worker`` of ``rank`` reads in ``epoch``, in order."""
    order = epoch_order(len(files), epoch, seed)
    lo, hi = worker_bounds(len(files), rank * num_workers + worker, world_size * num_workers)
    return [files[i] for i in order[lo:hi]]


# -- Sources: folders of files, in-memory photos, tar shards -------------------------------
class FileSource:
    """Items read one by one: image paths (or, for subclasses, tuples of paths)."""

    def __init__(self, items: Sequence, names: Sequence[str]):
        self.items = items if isinstance(items, PathIndex) else list(items)
        self.names = names if isinstance(names, PathIndex) else list(names)

    def __len__(self) -> int:
        return len(self.items)

    def epoch_refs(self, epoch: int, seed: int, index: int, count: int) -> list:
        """Item indices of global worker ``index`` of ``count`` in ``epoch``."""
        return epoch_files(range(len(self)), epoch, seed, index, count, 0, 1)

    def name(self, ref: int) -> str:
        return self.names[ref]

    def opener(self) -> Callable[[int], Tensor]:
        """A function reading one item (one per worker: shard readers keep state)."""
        return lambda ref: read_image(self.items[ref])


class MemorySource(FileSource):
    """(name, (3, H, W) uint8 tensor) pairs, such as `data.sample.sample_photos("train")`."""

    def __init__(self, pairs: Sequence[tuple[str, Tensor]]):
        bad = [name for name, image in pairs if image.dtype != torch.uint8 or image.dim() != 3]
        if bad:
            raise TrainingDataError(f"in-memory images must be (3, H, W) uint8: {bad[:3]}")
        super().__init__([image for _, image in pairs], [name for name, _ in pairs])

    def opener(self) -> Callable[[int], Tensor]:
        return lambda ref: self.items[ref]


class ShardSource:
    """Tar shards of encoded images, read member after member."""

    def __init__(self, shards: Sequence[str]):
        self.shards = list(shards)
        self.counts = shard_counts(self.shards)
        self.total = sum(self.counts)

    def __len__(self) -> int:
        return self.total

    def epoch_refs(self, epoch: int, seed: int, index: int, count: int) -> list[tuple[int, int]]:
        """(shard, member) of global worker ``index``: a contiguous run over shuffled shards."""
        lo, hi = worker_bounds(self.total, index, count)
        refs, start = [], 0
        for s in epoch_order(len(self.shards), epoch, seed):
            stop = start + self.counts[s]
            refs += [(s, m - start) for m in range(max(lo, start), min(hi, stop))]
            start = stop
        return refs

    def name(self, ref: tuple[int, int]) -> str:
        return f"{os.path.basename(self.shards[ref[0]])}#{ref[1]}"

    def opener(self) -> Callable[[tuple[int, int]], Tensor]:
        return _ShardReader(self.shards).load


def _is_image_member(member: tarfile.TarInfo) -> bool:
    return member.isfile() and member.name.lower().endswith(IMAGE_EXTENSIONS)


def shard_counts(shards: Sequence[str]) -> list[int]:
    """Image members per shard, from make_shards' shards.json where it lists them, else a scan
    of its headers.

    A shards.json that is not make_shards' record, or that gives a shard more members than its
    size can hold, raises TrainingDataError.
    """
    index = functools.cache(read_shard_index)  # each folder's shards.json read once
    counts = []
    for path in shards:
        folder = os.path.dirname(os.path.abspath(path))
        count = (index(folder) or {}).get(os.path.basename(path))
        try:
            if count is None:
                with tarfile.open(path, "r:") as tar:
                    count = sum(_is_image_member(m) for m in tar)
            size = os.path.getsize(path)
        except (OSError, tarfile.TarError) as e:
            raise TrainingDataError(f"cannot read shard {path}: {why_unreadable(path, e)}") from None
        if count * TAR_BLOCK > size:  # a scan's count always fits
            name = reprlib.repr(os.path.basename(path))
            raise TrainingDataError(f"{os.path.join(folder, SHARD_INDEX)}: 'shards' -> {name} is "
                                    f"{count}, more members than its {size} bytes can hold; {REMAKE_INDEX}")
        counts.append(count)
    return counts


def read_shard_index(folder: str) -> dict[str, int] | None:
    """The image member count of each shard by file name, from ``folder``'s shards.json (None
    when there is none), checked by records.SHARDS; one TrainingDataError naming the file, the
    key and what to do otherwise."""
    path = os.path.join(folder, SHARD_INDEX)
    if not os.path.lexists(path):
        return None
    try:
        return dict(records.read_json(path, records.SHARDS, REMAKE_INDEX, SHARD_INDEX_MAX_BYTES)["shards"])
    except records.RecordError as e:
        raise TrainingDataError(str(e)) from None


class _ShardReader:
    """Reads shard members in order, keeping the current shard open between calls."""

    def __init__(self, shards: Sequence[str]):
        self.shards, self.shard, self.tar, self.next, self.size = shards, None, None, 0, 0

    def _member(self, shard: int, index: int) -> tarfile.TarInfo:
        if shard != self.shard or index < self.next or self.tar is None:  # (re)open the shard
            if self.tar is not None:
                self.tar.close()
            self.shard, self.tar, self.next = shard, None, 0
            self.tar = tarfile.open(self.shards[shard], "r:")
            self.size = os.fstat(self.tar.fileobj.fileno()).st_size
        while True:
            member = self.tar.next()
            if member is None:
                raise ImageReadError(f"{self.shards[shard]} has no image member {index}")
            if _is_image_member(member):
                self.next += 1
                if self.next > index:
                    return member

    def load(self, ref: tuple[int, int]) -> Tensor:
        """Member ``ref[1]`` of shard ``ref[0]``, decoded; ImageReadError if unreadable."""
        name = f"{self.shards[ref[0]]}#{ref[1]}"
        try:
            member = self._member(*ref)
            if member.offset_data + member.size > self.size:  # a damaged header: read, a MemoryError
                raise tarfile.ReadError(f"member {member.name!r} of {member.size} bytes ends past the "
                                        f"shard's {self.size}")
            data = self.tar.extractfile(member).read()
        except (OSError, EOFError, tarfile.TarError) as e:
            self.shard = None  # reopen on the next call
            raise ImageReadError(f"cannot read {name}: {e}") from None
        return decode_image(io.BytesIO(data), f"{name} ({member.name})")


Source = FileSource | ShardSource


def open_source(source: object, listing_cache: str | None = None) -> Source:
    """A source from a folder, a shard, a list of shards or images, or (name, tensor) pairs.
    ``listing_cache``: a file (in the run folder) keeping a folder's listing between runs."""
    if isinstance(source, (FileSource, ShardSource)):
        return source
    if isinstance(source, (str, os.PathLike)):
        return _source_at(os.fspath(source), listing_cache)
    items = list(source)
    if not items:
        raise TrainingDataError("the training source is an empty list")
    if all(isinstance(i, tuple) and len(i) == 2 and isinstance(i[1], Tensor) for i in items):
        return MemorySource(items)
    paths = [os.fspath(p) for p in items]
    if all(p.lower().endswith(SHARD_SUFFIX) for p in paths):
        return ShardSource(paths)
    return FileSource(paths, paths)


def _source_at(path: str, listing_cache: str | None = None) -> Source:
    """The shards or the images at a path: a .tar file, or a folder of shards or of images
    (listed through ``listing_cache``, see `list_folder`; shards have shards.json)."""
    if os.path.isfile(path) and path.lower().endswith(SHARD_SUFFIX):
        return ShardSource([path])
    if not os.path.exists(path):
        raise TrainingDataError(f"training data {path!r} does not exist")
    if not os.path.isdir(path):
        raise TrainingDataError(f"training data {path!r} is not a folder (nor a {SHARD_SUFFIX} shard)")
    shards = sorted(os.path.join(path, n) for n in os.listdir(path)
                    if n.lower().endswith(SHARD_SUFFIX) and os.path.isfile(os.path.join(path, n)))
    if shards:
        return ShardSource(shards)
    listing = list_folder(path, listing_cache)
    if len(listing.other):
        log.warning("skipping %d path(s) under %s named like images that are not regular files "
                    "(first: %r)", len(listing.other), path, listing.other.under(path)[0])
    if not len(listing.names):
        raise TrainingDataError(f"no images ({', '.join(IMAGE_EXTENSIONS)}) or {SHARD_SUFFIX} "
                                f"shards under {path}")
    return FileSource(listing.names.under(path), listing.names)
