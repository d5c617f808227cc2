"""The training set a run reads, by name, and how many loader workers read it.

``training_stream`` builds the `PairStream` of a named set under ``dir_data``:
- ``Sample``: scikit-image's training photos, in memory (nothing to download);
- ``ImageNet``: ``ImageNet/train`` (or ``ImageNet``), a folder of images at any depth or of tar
  shards, for pre-training;
- ``DIV2K``: ``DIV2K/DIV2K_train_HR`` (numbers within ``train_range``), for SR and denoising;
- ``RainTrainL``: ``RainTrainL/rain-<id>.png`` with ``norain-<id>.png``, for deraining.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Sequence

from utility import usable_cpus

from .finetune import DIV2K, DIV2K_TRAIN_RANGE, RainTrainL
from .sample import sample_photos
from .stream import DEFAULT_PATCH, DEFAULT_SEED, PairStream

log = logging.getLogger("ipt")

TRAINING_SETS = ("Sample", "ImageNet", "DIV2K", "RainTrainL")
IMAGENET = "ImageNet"
IMAGENET_TRAIN = "train"


def training_stream(name: str, dir_data: str, tasks: Sequence[str], *, batch_size: int,
                    train_range: tuple[int, int] = DIV2K_TRAIN_RANGE,
                    patch_size: int = DEFAULT_PATCH, seed: int = DEFAULT_SEED,
                    rank: int | None = None, world_size: int | None = None,
                    augment: bool = True, task_id: int | None = None,
                    streaks_dir: str | None = None, lr_in_loader: bool = True,
                    listing_cache: str | None = None) -> PairStream:
    """The stream of training set ``name`` (one of TRAINING_SETS) for the heads ``tasks``.

    Raises ValueError for an unknown name or impossible sizes, DataLayoutError (TrainingDataError)
    or FileNotFoundError for data that is missing or not in the set's layout.
    """
    common = dict(batch_size=batch_size, patch_size=patch_size, seed=seed, rank=rank,
                  world_size=world_size, augment=augment, task_id=task_id,
                  streaks_dir=streaks_dir or None, lr_in_loader=lr_in_loader)
    if name == "Sample":
        return PairStream(sample_photos("train"), tasks, **common)
    if name == "ImageNet":
        return PairStream(imagenet_root(dir_data), tasks, listing_cache=listing_cache, **common)
    if name == "DIV2K":
        return DIV2K(dir_data, tasks, data_range=train_range, **common)
    if name == "RainTrainL":
        return RainTrainL(dir_data, tasks=tasks, **common)
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
