"""Running the network over data sets: restoring folders of images (training arrives later)."""
from __future__ import annotations

import logging
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from tqdm import tqdm

import utility
from data.images import ImageReadError, list_images, read_image, save_image
from model import restore

log = logging.getLogger("ipt")


@dataclass
class InferenceSettings:
    """How whole images go through the network (from --chop, --crop_batch_size, --self_ensemble)."""

    mode: str = "auto"
    crop_batch_size: int = 64
    self_ensemble: bool = False
    rgb_range: float = 255


def output_name(stem: str, task: str, scale: int, kind: str = "SR") -> str:
    """``<stem>_x<s>_SR.png`` for super-resolution, ``<stem>_<task>_SR.png`` for scale-1 tasks."""
    tag = f"x{scale}" if scale > 1 else task
    return f"{stem}_{tag}_{kind}.png"


def read_folder(folder: str) -> Iterator[tuple[str, Tensor | ImageReadError]]:
    """(stem, image) for each image file in ``folder``; an unreadable file yields its error."""
    for path in list_images(folder):
        stem = os.path.splitext(os.path.basename(path))[0]
        try:
            yield stem, read_image(path)
        except ImageReadError as e:
            yield stem, e


def restore_images(model: nn.Module, images: Iterable[tuple[str, Tensor | Exception]],
                   task_ids: list[int], settings: InferenceSettings, out_dir: str | None,
                   save_input: bool = False, total: int | None = None) -> tuple[int, int]:
    """Restore each image with each head, saving quantised results; returns (done, failed)."""
    device = next(model.parameters()).device
    done = failed = 0
    for stem, image in tqdm(images, total=total, desc="restoring", unit="img", dynamic_ncols=True):
        if isinstance(image, Exception):
            log.error("%s (skipped)", image)
            failed += 1
            continue
        x = image.float().unsqueeze(0).to(device) * (settings.rgb_range / 255)
        for task_id in task_ids:
            y = restore(model, x, task_id, settings.mode, settings.crop_batch_size, settings.self_ensemble)
            y = utility.quantize(y, settings.rgb_range) * (255 / settings.rgb_range)
            if out_dir is not None:
                task, scale = model.task_names[task_id], model.scale[task_id]
                save_image(y[0], os.path.join(out_dir, output_name(stem, task, scale)))
                if save_input:
                    save_image(image, os.path.join(out_dir, output_name(stem, task, scale, "LR")))
        done += 1
    return done, failed


def count_images(folder: str) -> int:
    """Number of image files in ``folder``."""
    return len(list_images(folder))
