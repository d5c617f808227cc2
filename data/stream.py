"""Pre-training pairs streamed from the sources of `data.sources` (folders, shards, photos).

Each batch is of one task, drawn at random per step (or fixed by ``task_id``): random HR crops of
patch * s for sr<s> (LR patch, 48 by default) and of patch for derain and denoise<sigma>, randomly
flipped and transposed, then degraded on the fly (`data.degrade`). A `PairStream` yields whole
batches: use it as ``DataLoader(stream, batch_size=None, num_workers=W)``.

How the work is split. Every loader worker owns a *slot* ``k % W`` of the step numbers k, so the
DataLoader's round robin returns steps in order. Slot ``s`` of rank ``r`` is global worker
``r * W + s`` of ``world_size * W``. Each epoch the files are shuffled by a generator seeded by
(seed, epoch) and cut into ``world_size * W`` contiguous, disjoint runs (`epoch_files`); a worker
reads its run front to back, epoch after epoch, ``batch_size`` files a batch (a batch may run over
into the next epoch). So every file is read exactly once an epoch across all ranks and workers, and
batch k depends only on (seed, k, rank, world_size, W): it can be rebuilt after a restart
(`start_step`) without reading what came before. A run resumed at another world size or worker
count re-splits the files from the step it reached (`split_origin`): a new epoch starts there, in
an order no earlier epoch had, so every file is again read once an epoch from that step on (the
files the interrupted epoch had not reached yet wait for the next epoch). Each file read gives one
random crop (`crops_per_file` crops with the option); a file that cannot be decoded, or that is
smaller than the batch task's crop, is skipped, counted, and its place in the batch is taken by
another crop of a usable image of the same batch. A worker's run of tar shard members is
contiguous in a per-epoch shuffle of the shards; members keep their order inside a shard
(`python -m scripts.scale.make_shards` shuffles them when it packs).
"""
from __future__ import annotations

import copy
import functools
import itertools
import logging
import math
import os
from collections.abc import Callable, Iterator, Sequence

import torch
from torch import Tensor
from torch.utils.data import IterableDataset, get_worker_info

from tasks import task_family, task_kind, task_scale

from .degrade import add_noise, add_rain, bicubic_lr, procedural_streaks
from .images import ImageReadError, crop_to_lr, read_image
from .listing import walk_images
from .sources import TrainingDataError, open_source, seeded, worker_bounds

log = logging.getLogger("ipt")

STREAK_PREFIX = "rainstreak-"  # RainTrainL's streak layers; preferred in a streaks folder
DEFAULT_PATCH = 48
DEFAULT_SEED = 1

Views = tuple[Tensor, Tensor | None]  # (target HR image, given LR input or None), uint8


# -- Inputs made from clean crops ----------------------------------------------------------
def synthesize_lr(hr: Tensor, task: str, generator: torch.Generator | None = None) -> Tensor:
    """The input of an SR, denoising or mim task made from clean (B, C, H, W) crops on their device."""
    family, value = task_kind(task)
    if family == "sr":  # MATLAB's imresize of the 8-bit crops
        levels = hr if hr.dtype == torch.uint8 else hr.round().clamp(0, 255).to(torch.uint8)
        return bicubic_lr(levels, int(value)).float()
    if family == "denoise":
        return add_noise(hr.float(), value, generator=generator)
    if family == "mim":  # the clean crop: the network masks it (model/mim.py)
        return hr.float()
    raise ValueError(f"{task}: rain is added from streak layers in the loader, not here")


# -- Crops, augmentation, degradation ------------------------------------------------------
def random_crop(views: Views, patch: int, scale: int, g: torch.Generator) -> Views:
    """An aligned random crop: HR patch * scale, and the given LR patch when there is one."""
    hr, lr = views
    base = lr if lr is not None else hr
    size = patch if lr is not None else patch * scale
    y = int(torch.randint(base.shape[-2] - size + 1, (1,), generator=g))
    x = int(torch.randint(base.shape[-1] - size + 1, (1,), generator=g))
    if lr is None:
        return hr[:, y:y + size, x:x + size], None
    return (hr[:, y * scale:(y + patch) * scale, x * scale:(x + patch) * scale],
            lr[:, y:y + patch, x:x + patch])


def augment(views: Views, g: torch.Generator) -> Views:
    """The same random horizontal flip, vertical flip and transpose of every view."""
    hflip, vflip, transpose = torch.randint(2, (3,), generator=g).tolist()

    def apply(t: Tensor | None) -> Tensor | None:
        if t is None:
            return None
        t = t.flip(-1) if hflip else t
        t = t.flip(-2) if vflip else t
        return t.transpose(-1, -2).contiguous() if transpose else t.contiguous()

    return apply(views[0]), apply(views[1])


@functools.cache  # said once a process
def _say_procedural() -> None:
    log.warning("derain: no rain-streak folder given (streaks_dir), adding PROCEDURAL rain "
                "streaks: a stand-in, not the authors' RainTrainL streak layers")


def _distributed(rank: int | None, world_size: int | None) -> tuple[int, int]:
    """(rank, world size): as given, else from torch.distributed when initialised, else (0, 1)."""
    dist = torch.distributed
    on = dist.is_available() and dist.is_initialized()
    rank = rank if rank is not None else (dist.get_rank() if on else 0)
    world_size = world_size if world_size is not None else (dist.get_world_size() if on else 1)
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in 0..{world_size - 1}")
    return rank, world_size


# -- The stream ----------------------------------------------------------------------------
class PairStream(IterableDataset):
    """Endless one-task batches of (LR, HR) pairs made on the fly; see the module docstring.

    ``source``: anything `open_source` takes. ``tasks``: the heads in head order. ``task_id``:
    None draws the task of step k from (seed, k), the same on every rank; an int fixes it.
    ``split_origin``: the step at which this split of the files began (0, or the step a run
    resumed at another world size or worker count). ``accumulate``: the batches (micro-batches)
    of one optimiser step, which share a task; a step here is a micro-batch. Each item: ``lr``
    float (B, 3, patch, patch) and ``hr`` float (B, 3, patch * s, patch * s) in 0..255 (noisy LR
    unclamped), ``task_id``, ``step``, ``skipped`` (files this worker has skipped so far),
    ``worker`` (its global index), ``files`` [(epoch, name)] of the files read for the batch.
    With ``lr_in_loader=False`` SR and denoising batches come with ``lr`` None, for the trainer to
    make on its device (``synthesize_lr``).
    """

    SYNTHETIC_RAIN = True  # derain inputs are made by adding streak layers to clean crops

    def __init__(self, source: object, tasks: Sequence[str], batch_size: int,
                 patch_size: int = DEFAULT_PATCH, seed: int = DEFAULT_SEED,
                 rank: int | None = None, world_size: int | None = None,
                 augment: bool = True, task_id: int | None = None,
                 streaks_dir: str | None = None, start_step: int = 0, crops_per_file: int = 1,
                 lr_in_loader: bool = True, split_origin: int = 0,
                 listing_cache: str | None = None, accumulate: int = 1):
        super().__init__()
        self.source = open_source(source, listing_cache)
        self.tasks = list(tasks)
        try:  # an unknown name is an error now, not in a worker later
            for task in self.tasks:
                task_family(task)
        except ValueError as e:
            raise TrainingDataError(str(e)) from None
        if min(batch_size, patch_size, crops_per_file, accumulate) < 1 or start_step < 0:
            raise ValueError("batch_size, patch_size, crops_per_file and accumulate must be positive, "
                             "start_step not negative")
        if task_id is not None and not 0 <= task_id < len(self.tasks):
            raise ValueError(f"task_id {task_id} is not a head of {self.tasks}")
        self.batch_size, self.patch_size, self.seed = batch_size, patch_size, seed
        self.accumulate = accumulate
        self.rank, self.world_size = _distributed(rank, world_size)
        self.augment, self.task_id = augment, task_id
        self._start(start_step, split_origin)
        self.crops_per_file = crops_per_file
        self.lr_in_loader = lr_in_loader  # False: SR and noise inputs are left to the trainer
        rain = self.SYNTHETIC_RAIN and any(task_family(t) == "derain" for t in self.used_tasks)
        self.streaks = []  # the streak folder's rainstreak-* images if any, else all its images
        if rain and streaks_dir:
            files = walk_images(streaks_dir)[0] if os.path.isdir(streaks_dir) else []
            self.streaks = [f for f in files if os.path.basename(f).startswith(STREAK_PREFIX)] or files
            if not self.streaks:
                raise TrainingDataError(f"no rain-streak layers (images) in {streaks_dir!r}")
        elif rain:
            _say_procedural()

    @property
    def used_tasks(self) -> list[str]:
        """The tasks this stream's batches can have."""
        return self.tasks if self.task_id is None else [self.tasks[self.task_id]]

    @property
    def steps_per_epoch(self) -> int:
        """Steps for every file to be read once (``crops_per_file`` times) across all ranks."""
        crops = len(self.source) * self.crops_per_file
        return math.ceil(crops / (self.batch_size * self.world_size))

    def task_of(self, step: int) -> int:
        """The head of step ``step``: drawn from (seed, optimiser step), so the same on every rank
        and for every micro-batch of an optimiser step."""
        if self.task_id is not None:
            return self.task_id
        g = seeded(self.seed, "task", step // self.accumulate)
        return int(torch.randint(len(self.tasks), (1,), generator=g))

    def with_start(self, start_step: int, split_origin: int | None = None) -> PairStream:
        """This stream, resumed at ``start_step`` (with its files re-split there when
        ``split_origin`` says so)."""
        resumed = copy.copy(self)
        resumed._start(start_step, self.split_origin if split_origin is None else split_origin)
        return resumed

    def _start(self, start_step: int, split_origin: int) -> None:
        """Begin at ``start_step``, in the split of the files that began at ``split_origin``."""
        if not 0 <= split_origin <= start_step:
            raise ValueError(f"split_origin {split_origin} is not in 0..start_step ({start_step})")
        self.start_step, self.split_origin = start_step, split_origin

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        reader = _Worker(self, (self.start_step - self.split_origin + worker) % workers, workers)
        for step in itertools.count(self.start_step + worker, workers):
            yield reader.batch(step)

    # -- the per-item recipe, which subclasses may change --------------------------------
    def read(self, ref: object, task: str, load: Callable[[object], Tensor]) -> Views:
        """The image(s) of one item for ``task``: (HR, given LR or None), uint8."""
        return load(ref), None

    def usable(self, views: Views, task: str) -> bool:
        """Whether the task's crop (of the given LR, else of HR patch * scale) fits in the item."""
        (hr, lr), scale = views, task_scale(task)
        if lr is not None:  # a given LR image must fit its HR image: TrainingDataError otherwise
            crop_to_lr(hr, lr, scale, error=TrainingDataError)
            return min(lr.shape[-2:]) >= self.patch_size
        return min(hr.shape[-2:]) >= self.patch_size * scale

    def crop(self, views: Views, task: str, g: torch.Generator) -> Views:
        """A random aligned crop, randomly flipped and transposed when ``augment``."""
        views = random_crop(views, self.patch_size, task_scale(task), g)
        return augment(views, g) if self.augment else views

    def degrade(self, crops: list[Views], task: str, g: torch.Generator,
                streaks: Callable[[int, int, torch.Generator], Tensor]) -> tuple[Tensor, Tensor]:
        """(LR, HR) float batches in 0..255 from the crops: the given LR crops, else MATLAB bicubic
        for SR, unclipped Gaussian noise for denoising, streak layers added and clipped for rain."""
        hr = torch.stack([c[0] for c in crops])
        given = [i for i, c in enumerate(crops) if c[1] is not None]
        rain = task_family(task) == "derain"
        if len(given) == len(crops):
            lr = torch.stack([c[1] for c in crops]).float()
        elif not rain and not self.lr_in_loader and not given:
            return None, hr.float()  # made on the training device (--gpu_degrade)
        elif not rain:
            lr = synthesize_lr(hr, task, g)
        else:
            lr = add_rain(hr.float(), streaks(len(crops), hr.shape[-1], g))
        if 0 < len(given) < len(crops):  # some items had an LR file, others not
            for i in given:
                lr[i] = crops[i][1].float()
        return lr, hr.float()


class _Worker:
    """One loader worker: its slot, its run of files each epoch, and its skip count."""

    def __init__(self, stream: PairStream, slot: int, slots: int):
        self.stream, self.slots = stream, slots
        self.index, self.count = stream.rank * slots + slot, stream.world_size * slots
        lo, hi = worker_bounds(len(stream.source), self.index, self.count)
        if hi == lo:
            raise TrainingDataError(
                f"{len(stream.source)} training files cannot feed {self.count} loader workers "
                f"({stream.world_size} rank(s) x {slots}): use fewer workers or more files")
        self.per_epoch, self.load = hi - lo, stream.source.opener()
        self.refs: dict[int, list] = {}
        self.cached: tuple[object, Views | None] = (None, None)
        self.skipped, self.last_skip, self.layers = 0, -1, {}

    def locate(self, position: int) -> tuple[int, object, int]:
        """(epoch, item ref, file number) of a position in this worker's endless stream."""
        q = position // self.stream.crops_per_file
        epoch, offset = divmod(q, self.per_epoch)
        # the split's first epoch is numbered past any epoch a run that reached split_origin can
        # have begun (a worker reads at most batch_size files a step)
        epoch += self.stream.split_origin * self.stream.batch_size
        if epoch not in self.refs:
            self.refs = {e: r for e, r in self.refs.items() if e == epoch - 1}
            self.refs[epoch] = self.stream.source.epoch_refs(epoch, self.stream.seed,
                                                             self.index, self.count)
        return epoch, self.refs[epoch][offset], q

    def views_at(self, position: int, task: str) -> tuple[Views | None, tuple[int, str]]:
        """The image(s) at a position, None if unreadable or too small; and (epoch, name)."""
        epoch, ref, q = self.locate(position)
        if self.cached[0] != (q, task):
            try:
                views = self.stream.read(ref, task, self.load)
                views = views if self.stream.usable(views, task) else None
            except ImageReadError as e:
                log.warning("skipping %s", e)
                views = None
            if views is None and q != self.last_skip:
                self.skipped, self.last_skip = self.skipped + 1, q
            self.cached = ((q, task), views)
        return self.cached[1], (epoch, self.stream.source.name(ref))

    def gather(self, local: int, task: str, g: torch.Generator) -> tuple[list[Views], list]:
        """The crops of local batch ``local``; skipped places refilled from a usable image."""
        size = self.stream.batch_size
        crops, files, spare = [], [], None
        for position in range(local * size, (local + 1) * size):
            views, ident = self.views_at(position, task)
            crops.append(None if views is None else self.stream.crop(views, task, g))
            files.append(ident)
            spare = views if views is not None else spare
        position = (local + 1) * size
        limit = position + self.per_epoch * self.stream.crops_per_file
        while spare is None:  # the whole batch was unusable: look further ahead
            if position >= limit:
                raise TrainingDataError(f"no image in worker {self.index}'s {self.per_epoch} "
                                        f"files is readable and large enough for {task}")
            spare, ident = self.views_at(position, task)
            files.append(ident)
            position += 1
        return [c if c is not None else self.stream.crop(spare, task, g) for c in crops], files

    def streak_layers(self, n: int, size: int, g: torch.Generator) -> Tensor:
        """n rain-streak layers (n, C, size, size): crops of real layers, or procedural ones."""
        files = self.stream.streaks
        if not files:
            return torch.stack([procedural_streaks((size, size), generator=g) for _ in range(n)])
        layers = []
        for _ in range(n):
            i = int(torch.randint(len(files), (1,), generator=g))
            if i not in self.layers:
                self.layers[i] = read_image(files[i])  # kept: streak folders are small
            h, w = self.layers[i].shape[-2:]  # tiled first where it is smaller than the crop
            tiled = self.layers[i].repeat(1, math.ceil(size / h), math.ceil(size / w))
            layers.append(random_crop((tiled, None), size, 1, g)[0])
        return torch.stack(layers)

    def batch(self, step: int) -> dict:
        """The batch of step ``step`` (a step of this worker's slot)."""
        stream = self.stream
        task_id = stream.task_of(step)
        task = stream.tasks[task_id]
        g = seeded(stream.seed, "batch", stream.rank, step)
        crops, files = self.gather((step - stream.split_origin) // self.slots, task, g)
        lr, hr = stream.degrade(crops, task, g, self.streak_layers)
        return {"lr": lr, "hr": hr, "task_id": task_id, "step": step, "skipped": self.skipped,
                "worker": self.index, "files": files}
