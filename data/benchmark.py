"""Test sets on disk in the layouts people have (EDSR convention), as (input, target) pairs.

Under ``dir_data`` (HR_DIRS, LR_DIRS: the first folder is where ``python -m scripts.prepare_data``
writes a set, the others are read too):
- super-resolution: ``benchmark/{Set5,Set14,B100,Urban100,Manga109}/HR/<name>.png`` with
  ``benchmark/<set>/LR_bicubic/X<s>/<name>x<s>.png`` (made from HR with MATLAB bicubic when
  missing); ``DIV2K/DIV2K_valid_HR`` (or ``DIV2K_train_HR``) with ``DIV2K_*_LR_bicubic/X<s>``;
- denoising: ``benchmark/CBSD68/HR`` (or a flat ``CBSD68/``), ``benchmark/Urban100/HR``; noise is
  added at test time, per image, from a generator seeded by (seed, set, image name);
- deraining: ``Rain100L/`` (or ``benchmark/Rain100L/``) with ``rain-<id>.png`` / ``norain-<id>.png``;
- ``Sample``: scikit-image's astronaut and coffee, degraded like the others (rain procedurally).

A set may be named in any case or by an alias of standard_sets.json (``CSet14`` -> Set14).
"""
from __future__ import annotations

import functools
import json
import logging
import os
from dataclasses import dataclass

import torch
from torch import Tensor

import utility
from metrics import SSIM_WINDOW
from tasks import task_family

from .degrade import add_eval_noise, add_rain, bicubic_lr, eval_noise_generator, procedural_streaks
from .images import (
    DataLayoutError,
    ImageReadError,
    crop_to_lr,
    list_entries,
    numbered_files,
    rain_pairs,
    read_image,
    read_rain_pair,
    second_images,
    stem,
)
from .sample import TEST_PHOTOS, sample_photo

log = logging.getLogger("ipt")

PAPER_SR_SETS = ("Set5", "Set14", "B100", "Urban100")  # the IPT paper's SR tables, in order
SR_SETS = (*PAPER_SR_SETS, "Manga109", "DIV2K")
NOISE_SETS = ("CBSD68", "Urban100")
RAIN_SETS = ("Rain100L",)
DIV2K_TEST_RANGE = (801, 810)  # the authors' --data_range test part
ALL_SETS = tuple(dict.fromkeys(SR_SETS + NOISE_SETS + RAIN_SETS + ("Sample",)))
DEMO = "Demo"  # --data_test Demo: the images of --dir_demo, not a benchmark set
# The table of standard sets; its per-set "aliases" (CSet14, BSD100 ...) name the sets too
STANDARD_SETS_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "standard_sets.json")
# by task family; mim (masked image modelling) is a pre-training task without a test set
SETS_OF_FAMILY = {"sr": SR_SETS, "denoise": NOISE_SETS, "derain": RAIN_SETS, "mim": ()}
HR_DIRS = {**{s: (f"benchmark/{s}/HR",) for s in SR_SETS + NOISE_SETS},
           "DIV2K": ("DIV2K/DIV2K_valid_HR", "DIV2K/DIV2K_train_HR"),
           "CBSD68": ("benchmark/CBSD68/HR", "CBSD68"), "Rain100L": ("Rain100L", "benchmark/Rain100L")}
LR_DIRS = {**{s: (f"benchmark/{s}/LR_bicubic/X{{s}}",) for s in SR_SETS},
           "DIV2K": ("DIV2K/DIV2K_valid_LR_bicubic/X{s}", "DIV2K/DIV2K_train_LR_bicubic/X{s}")}

# The paper's results, (PSNR in dB, SSIM or None where it gives none), by (dataset, task); the
# denoising and deraining ones are not confirmed by the authors' released code
PAPER_RESULTS: dict[tuple[str, str], tuple[float, float | None]] = {
    **{(d, "sr2"): (p, None) for d, p in zip(PAPER_SR_SETS, (38.37, 34.43, 32.48, 33.76), strict=True)},
    **{(d, "sr3"): (p, None) for d, p in zip(PAPER_SR_SETS, (34.81, 30.85, 29.38, 29.49), strict=True)},
    **{(d, "sr4"): (p, None) for d, p in zip(PAPER_SR_SETS, (32.64, 29.01, 27.82, 27.26), strict=True)},
    ("CBSD68", "denoise30"): (32.32, None), ("Urban100", "denoise30"): (33.75, None),
    ("CBSD68", "denoise50"): (29.88, None), ("Urban100", "denoise50"): (31.12, None),
    ("Rain100L", "derain"): (41.62, 0.9880),
}


class BenchmarkError(DataLayoutError):
    """A test set that is missing or not in the expected layout."""


@functools.cache
def standard_entries() -> dict[str, dict]:
    """Each set's entry in the shipped standard_sets.json: its other names, its downloads."""
    try:
        table = json.loads(utility.read_small_file(STANDARD_SETS_FILE))
        return {s: entry for s, entry in table.items() if not s.startswith("_")}
    except (OSError, ValueError, AttributeError) as e:
        raise BenchmarkError(f"{STANDARD_SETS_FILE}: cannot read the table of sets: {e}") from None


def set_aliases() -> dict[str, tuple[str, ...]]:
    """Each set's other names, as standard_sets.json spells them (Set14: ("CSet14",))."""
    try:
        return {s: tuple(str(a) for a in entry.get("aliases", ())) for s, entry in standard_entries().items()}
    except (AttributeError, TypeError) as e:
        raise BenchmarkError(f"{STANDARD_SETS_FILE}: cannot read the set names: {e}") from None


@functools.cache
def set_names() -> dict[str, str]:
    """Every name a test set goes by, lower-cased, -> the set (``cset14`` -> Set14)."""
    names = {s.lower(): s for s in ALL_SETS + (DEMO,)}
    for set_name, aliases in set_aliases().items():
        for alias in aliases:
            if set_name not in ALL_SETS or names.setdefault(alias.lower(), set_name) != set_name:
                raise BenchmarkError(f"{STANDARD_SETS_FILE}: alias {alias!r} of {set_name} names "
                                     f"{names.get(alias.lower(), 'no known set')}; fix the table")
    return names


def canonical_test_set(name: str) -> str | None:
    """The test set ``name`` stands for, in any case (``CSet14``, ``set14`` -> Set14), or None."""
    return set_names().get(name.strip().lower())


@dataclass
class Pair:
    """One test image: the network input and the target, both (3, H, W) in 0..255."""

    name: str
    lr: Tensor  # uint8, or float for noisy inputs (clamped, not rounded)
    hr: Tensor  # uint8


def _family(task: str) -> str:
    """The task's family (sr, derain, denoise); a BenchmarkError for a name that is not a task."""
    try:
        return task_family(task)
    except ValueError as e:
        raise BenchmarkError(str(e)) from None


def supports(dataset: str, task: str) -> bool:
    """Whether ``dataset`` is a test set for ``task`` (Sample serves every task)."""
    sets = SETS_OF_FAMILY[_family(task)]
    return dataset in sets or (dataset == "Sample" and bool(sets))


class BenchmarkSet:
    """The (input, target) pairs of one test set for one task, read lazily."""

    def __init__(self, dir_data: str, dataset: str, task: str, scale: int, seed: int = 1,
                 div2k_range: tuple[int, int] = DIV2K_TEST_RANGE, clip_noise: bool = True):
        dataset = canonical_test_set(dataset) or dataset  # noise is seeded by the set's own name
        if dataset not in ALL_SETS:
            raise BenchmarkError(f"unknown test set {dataset!r}; known: {', '.join(ALL_SETS)}, "
                                 f"{DEMO}")
        if not supports(dataset, task):
            raise BenchmarkError(f"{dataset} is not a test set for {task}")
        self.dataset, self.task, self.scale, self.seed = dataset, task, scale, seed
        self.clip_noise = clip_noise  # denoising inputs clipped to [0, 255] (IPT) or not (Restormer)
        self.family = _family(task)  # sr, derain or denoise
        if dataset == "Sample":
            self.items = list(TEST_PHOTOS)
        elif self.family == "derain":
            self.items = rain_pairs(_first_dir(dir_data, dataset), LAYOUTS["Rain100L"], BenchmarkError)
        else:
            folder = _first_dir(dir_data, dataset)
            self.items = list_entries(folder)  # not list_images: no entry silently left out of the set
            if not self.items:
                raise BenchmarkError(f"{dataset}: no images (png, jpg, bmp, tif, webp) in {folder}")
            if twice := second_images(self.items):
                raise BenchmarkError(twice[0])
            if dataset == "DIV2K":
                self.items = numbered_files(self.items, div2k_range, folder,
                                            " (the test part of --data_range)", BenchmarkError)
        self.lr_dir = None
        if self.family == "sr" and dataset != "Sample":  # LR files may be on disk
            self.lr_dir = first_folder(dir_data, tuple(c.format(s=scale) for c in LR_DIRS[dataset]))
            missing = [f for f in self.items if not os.path.isfile(self._lr_path(f))]
            if missing:
                log.info("%s: %d of %d LR images missing (first: %s), making LR from HR with "
                         "MATLAB bicubic x1/%d", dataset, len(missing), len(self.items),
                         self._lr_path(missing[0]), scale)

    def _lr_path(self, hr_path: str) -> str:
        folder = self.lr_dir or os.path.join(os.path.dirname(os.path.dirname(hr_path)),
                                             "LR_bicubic", f"X{self.scale}")
        return os.path.join(folder, f"{stem(hr_path)}x{self.scale}.png")

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, index: int) -> Pair | Exception:
        """Pair ``index``; a layout or read error is returned, not raised (for loader workers)."""
        try:
            if self.dataset == "Sample":
                name = self.items[index]
                return self._degrade(name, self._scorable(sample_photo(name), name))
            if self.family == "derain":
                rain_path, clean_path = self.items[index]
                rain, clean = read_rain_pair(rain_path, clean_path, BenchmarkError)
                return Pair(stem(rain_path), rain, self._scorable(clean, clean_path))
            return self._pair_from_hr(self.items[index])
        except (BenchmarkError, ImageReadError) as e:
            return e

    def min_size(self) -> int:
        """The least target height and width that can be scored (an LR and SSIM's window)."""
        if self.family != "sr":
            return SSIM_WINDOW
        s = self.scale  # the target is cut to whole LR pixels, then `s` are shaved a side
        return -(-(SSIM_WINDOW + 2 * s) // s) * s

    def _scorable(self, hr: Tensor, name: str) -> Tensor:
        """``hr`` if it is large enough to be scored; else a BenchmarkError naming it."""
        h, w = hr.shape[-2:]
        least = self.min_size()
        if h < least or w < least:
            shave = f" after shaving {self.scale} pixels a side" if self.family == "sr" else ""
            raise BenchmarkError(f"{name} is {h}x{w}, too small to score {self.task}: the minimum "
                                 f"size is {least}x{least} (SSIM's {SSIM_WINDOW}x{SSIM_WINDOW} "
                                 f"window{shave})")
        return hr

    def _pair_from_hr(self, path: str) -> Pair:
        hr = self._scorable(read_image(path), path)
        if self.family != "sr" or not os.path.isfile(lr_path := self._lr_path(path)):
            return self._degrade(stem(path), hr)
        lr = read_image(lr_path)
        return Pair(stem(path), lr, crop_to_lr(hr, lr, self.scale, (path, lr_path), BenchmarkError))

    def _degrade(self, name: str, hr: Tensor) -> Pair:
        """The input made from a clean image, per the task's evaluation recipe."""
        if self.family == "sr":
            s = self.scale
            return Pair(name, bicubic_lr(hr, s), hr[:, :hr.shape[1] // s * s, :hr.shape[2] // s * s])
        if self.family == "denoise":
            sigma = float(self.task[len("denoise"):])
            return Pair(name, add_eval_noise(hr.float(), sigma, self.seed, self.dataset,
                                             seed_name(name), self.clip_noise), hr)
        generator = eval_noise_generator(self.seed, self.dataset, seed_name(name))  # Sample only
        streaks = procedural_streaks(tuple(hr.shape[-2:]), generator=generator)
        return Pair(name, add_rain(hr.float(), streaks).round().to(torch.uint8), hr)


def seed_name(name: str) -> str:
    """``name`` as text UTF-8 can encode, for seeding: unchanged if it can be, else with each lone
    surrogate (a byte os.listdir could not decode) written as ``\\udcff``."""
    return name.encode("utf-8", "backslashreplace").decode("utf-8")


def first_folder(dir_data: str, folders: tuple[str, ...]) -> str | None:
    """The first of ``folders`` (under ``dir_data``) that exists, or None."""
    return next((path for f in folders if os.path.isdir(path := os.path.join(dir_data, f))), None)


def _first_dir(dir_data: str, dataset: str) -> str:
    """The set's HR folder; a BenchmarkError naming where it was looked for and the layout."""
    found = first_folder(dir_data, HR_DIRS[dataset])
    if found is None:
        looked = " or ".join(os.path.join(dir_data, c) for c in HR_DIRS[dataset])
        raise BenchmarkError(f"{dataset}: no folder {looked} (check --dir_data; layout: "
                             f"{LAYOUTS.get(dataset, 'see README')})")
    return found


LAYOUTS = {
    **{d: f"{HR_DIRS[d][0]}/*.png and {LR_DIRS[d][0].format(s='<s>')}/<name>x<s>.png" for d in SR_SETS},
    "CBSD68": "benchmark/CBSD68/HR/*.png or CBSD68/*.png",
    "Rain100L": "Rain100L/rain-<id>.png with Rain100L/norain-<id>.png",
}
