"""The training sets a run reads, by name, and how many loader workers read it.

``training_stream`` builds the `PairStream` of a named set under ``dir_data``:
- ``Sample``: scikit-image's training photos, in memory (nothing to download);
- ``ImageNet``: ``ImageNet/train`` (or ``ImageNet``), a folder of images at any depth or of tar
  shards, for pre-training;
- ``DIV2K`` (DIV2K_LAYOUT) for SR and denoising: SR crops are aligned crops of the HR and LR files
  where the LR file is there, else LR is made with MATLAB bicubic;
- ``RainTrainL`` (RAIN_LAYOUT; other files, such as ``rainstreak-<id>.png``, are ignored) for
  deraining: aligned crops of the rainy input and the clean target.
The authors' fine-tuning sets, DIV2K and RainTrainL, are `PairStream`s over a file list, so they
yield the same one-task batches, split the files over ranks and workers, and resume the same way.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence

from torch import Tensor

from tasks import task_family, task_scale
from utility import usable_cpus

from .images import crop_to_lr, list_images, numbered_files, rain_pairs, read_image, read_rain_pair, stem
from .sample import sample_photos
from .sources import FileSource, TrainingDataError
from .stream import DEFAULT_PATCH, PairStream, Views

log = logging.getLogger("ipt")

TRAINING_SETS = ("Sample", "ImageNet", "DIV2K", "RainTrainL")
IMAGENET = "ImageNet"
IMAGENET_TRAIN = "train"
DIV2K_HR = os.path.join("DIV2K", "DIV2K_train_HR")
DIV2K_LR = os.path.join("DIV2K", "DIV2K_train_LR_bicubic", "X{scale}")
DIV2K_TRAIN_RANGE = (1, 800)  # the authors' --data_range train part
DIV2K_LAYOUT = ("DIV2K/DIV2K_train_HR/0001.png ... "
                "[+ DIV2K/DIV2K_train_LR_bicubic/X<s>/0001x<s>.png]")
RAINTRAINL = "RainTrainL"
RAIN_LAYOUT = "RainTrainL/rain-<id>.png with RainTrainL/norain-<id>.png"


def training_stream(name: str, dir_data: str, tasks: Sequence[str], *,
                    train_range: tuple[int, int] = DIV2K_TRAIN_RANGE, **options: object) -> PairStream:
    """The stream of training set ``name`` (one of TRAINING_SETS) for the heads ``tasks``;
    ``options`` are PairStream's (batch_size, patch_size, seed, rank, ..., listing_cache).

    Raises ValueError for an unknown name or impossible sizes, DataLayoutError (TrainingDataError)
    or FileNotFoundError for data that is missing or not in the set's layout.
    """
    if name == "Sample":
        return PairStream(sample_photos("train"), tasks, **options)
    if name == "ImageNet":
        return PairStream(imagenet_root(dir_data), tasks, **options)
    if name == "DIV2K":
        return DIV2K(dir_data, tasks, data_range=train_range, **options)
    if name == "RainTrainL":
        return RainTrainL(dir_data, tasks=tasks, **options)
    raise ValueError(f"unknown training set {name!r}; use {', '.join(TRAINING_SETS[:-1])} "
                     f"or {TRAINING_SETS[-1]}")


def imagenet_root(dir_data: str) -> str:
    """ImageNet's train folder (or its shards): DIR/ImageNet/train if present, else DIR/ImageNet."""
    base = os.path.join(dir_data, IMAGENET)
    train = os.path.join(base, IMAGENET_TRAIN)
    return train if os.path.isdir(train) else base


def loader_workers(requested: int, n_files: int, world: int, saved: int | None = None) -> int:
    """Loader workers per process: ``requested``, capped by the cores each process may use and by
    the files (each worker of each process reads its own run of them); one INFO line says why.
    A resumed run passes the ``saved`` count it started with: batch k depends on it."""
    if n_files < world:
        raise ValueError(f"{n_files} training file(s) cannot feed {world} processes: give more "
                         f"files or fewer processes")
    if saved is not None:
        if saved != requested:
            log.info("loader workers: %d, as when this run started (--n_threads %d)", saved, requested)
        return saved
    by_cpu, by_files = max(usable_cpus() // world, 1), n_files // world
    workers = min(requested, by_cpu, by_files)
    if workers < requested:
        why = (f"{usable_cpus()} usable core(s) for {world} process(es)" if workers == by_cpu
               else f"{n_files} training files for {world} process(es)")
        log.info("loader workers: %d per process instead of --n_threads %d (%s)", workers,
                 requested, why)
    return workers


# -- The fine-tuning sets ------------------------------------------------------------------
def _images_in(folder: str, what: str, layout: str) -> list[str]:
    """The images directly inside ``folder``, sorted; an error naming the layout if none."""
    if not os.path.isdir(folder):
        raise TrainingDataError(f"{what}: no folder {folder} (check --dir_data; layout: {layout})")
    files = list_images(folder)
    if not files:
        raise TrainingDataError(f"{what}: no images in {folder} (layout: {layout})")
    return files


class DIV2K(PairStream):
    """DIV2K training crops for SR (from the LR files when present) and denoising."""

    def __init__(self, dir_data: str, tasks: Sequence[str], batch_size: int,
                 patch_size: int = DEFAULT_PATCH,
                 data_range: tuple[int, int] | None = DIV2K_TRAIN_RANGE, **kwargs):
        folder = os.path.join(dir_data, DIV2K_HR)
        files = _images_in(folder, "DIV2K", DIV2K_LAYOUT)
        if data_range is not None:  # None: all
            files = numbered_files(files, data_range, folder, error=TrainingDataError)
            if len(files) < data_range[1] - data_range[0] + 1:  # a partial download
                log.warning("DIV2K: %d of the %d images numbered %d..%d are in %s", len(files),
                            data_range[1] - data_range[0] + 1, *data_range, folder)
        super().__init__(FileSource(files, [os.path.basename(f) for f in files]), tasks,
                         batch_size, patch_size, **kwargs)
        self.lr_dirs = {}
        for scale in sorted({task_scale(t) for t in self.used_tasks if task_family(t) == "sr"}):
            folder = os.path.join(dir_data, DIV2K_LR.format(scale=scale))
            if not os.path.isdir(folder):
                log.info("DIV2K x%d: no %s, LR made from HR with MATLAB bicubic", scale, folder)
                continue
            self.lr_dirs[scale] = folder
            missing = sum(not os.path.isfile(self._lr_in(folder, f, scale)) for f in files)
            log.info("DIV2K x%d: LR crops from %s (%d of %d missing: made with MATLAB bicubic)",
                     scale, folder, missing, len(files))

    @staticmethod
    def _lr_in(folder: str, hr_path: str, scale: int) -> str:
        return os.path.join(folder, f"{stem(hr_path)}x{scale}.png")

    def read(self, ref: int, task: str, load: Callable[[int], Tensor]) -> Views:
        """The HR image, and its LR file for an SR task when there is one."""
        path = self.source.items[ref]
        hr, scale = read_image(path), task_scale(task)
        folder = self.lr_dirs.get(scale) if task_family(task) == "sr" else None
        lr_path = self._lr_in(folder, path, scale) if folder else None
        if lr_path is None or not os.path.isfile(lr_path):
            return hr, None
        lr = read_image(lr_path)
        crop_to_lr(hr, lr, scale, (path, lr_path), TrainingDataError)
        return hr, lr


class RainTrainL(PairStream):
    """RainTrainL crops: the rainy image as input, its clean image as target."""

    SYNTHETIC_RAIN = False

    def __init__(self, dir_data: str, batch_size: int, patch_size: int = DEFAULT_PATCH,
                 tasks: Sequence[str] = ("derain",), **kwargs):
        folder = os.path.join(dir_data, RAINTRAINL)
        _images_in(folder, RAINTRAINL, RAIN_LAYOUT)  # the folder is there and holds images
        pairs = rain_pairs(folder, RAIN_LAYOUT, TrainingDataError)
        super().__init__(FileSource(pairs, [os.path.basename(r) for r, _ in pairs]), tasks,
                         batch_size, patch_size, **kwargs)
        other = [t for t in self.used_tasks if task_family(t) != "derain"]
        if other:
            raise TrainingDataError(f"RainTrainL trains derain only, not {', '.join(other)}: "
                                    "give task_id of the derain head")

    def read(self, ref: int, task: str, load: Callable[[int], Tensor]) -> Views:
        """(clean, rainy) images of one pair; they must be the same size."""
        rain, clean = read_rain_pair(*self.source.items[ref], TrainingDataError)
        return clean, rain
