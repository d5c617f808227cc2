"""Fine-tuning sets: DIV2K for SR and denoising, RainTrainL for deraining (the authors' choice).

Both are `PairStream`s over a file list, so they yield the same one-task batch dicts, split the
files over ranks and workers the same way, and resume the same way. Under ``dir_data``:
- ``DIV2K/DIV2K_train_HR/0001.png ...`` and, when present,
  ``DIV2K/DIV2K_train_LR_bicubic/X{s}/0001x{s}.png``: SR crops are then aligned LR/HR crops of
  the two files; otherwise (a missing folder or file) LR is made with MATLAB bicubic. Denoising
  adds noise to HR crops.
- ``RainTrainL/rain-<id>.png`` with ``RainTrainL/norain-<id>.png`` (other files, such as
  ``rainstreak-<id>.png``, are ignored): aligned crops of the rainy input and the clean target.
"""
from __future__ import annotations

import logging
import os
from collections.abc import Callable, Sequence

from torch import Tensor

from tasks import task_family, task_scale

from .images import list_images, numbered_files, rain_pairs, read_image, read_rain_pair, stem
from .sources import FileSource, TrainingDataError
from .stream import DEFAULT_PATCH, PairStream, Views, check_aligned

log = logging.getLogger("ipt")

DIV2K_HR = os.path.join("DIV2K", "DIV2K_train_HR")
DIV2K_LR = os.path.join("DIV2K", "DIV2K_train_LR_bicubic", "X{scale}")
DIV2K_TRAIN_RANGE = (1, 800)  # the authors' --data_range train part
DIV2K_LAYOUT = ("DIV2K/DIV2K_train_HR/0001.png ... "
                "[+ DIV2K/DIV2K_train_LR_bicubic/X<s>/0001x<s>.png]")
RAINTRAINL = "RainTrainL"
RAIN_LAYOUT = "RainTrainL/rain-<id>.png with RainTrainL/norain-<id>.png"


def _images_in(folder: str, what: str, layout: str) -> list[str]:
    """The images directly inside ``folder``, sorted; an error naming the layout if none."""
    if not os.path.isdir(folder):
        raise TrainingDataError(f"{what}: no folder {folder} (check --dir_data; layout: {layout})")
    files = list_images(folder)
    if not files:
        raise TrainingDataError(f"{what}: no images in {folder} (layout: {layout})")
    return files


def div2k_files(dir_data: str,
                data_range: tuple[int, int] | None = DIV2K_TRAIN_RANGE) -> list[str]:
    """The DIV2K training HR files whose number is in ``data_range`` (None: all)."""
    folder = os.path.join(dir_data, DIV2K_HR)
    files = _images_in(folder, "DIV2K", DIV2K_LAYOUT)
    if data_range is None:
        return files
    return numbered_files(files, data_range, folder, error=TrainingDataError)


class DIV2K(PairStream):
    """DIV2K training crops for SR (from the LR files when present) and denoising."""

    def __init__(self, dir_data: str, tasks: Sequence[str], batch_size: int,
                 patch_size: int = DEFAULT_PATCH,
                 data_range: tuple[int, int] | None = DIV2K_TRAIN_RANGE, **kwargs):
        files = div2k_files(dir_data, data_range)
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
        check_aligned((hr, lr), scale, (path, lr_path))
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
