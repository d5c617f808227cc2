"""Read images from disk as RGB uint8 tensors, whatever their mode."""
from __future__ import annotations

import collections
import os
import re
import stat
from typing import IO, BinaryIO

import numpy as np
import torch
from PIL import Image, ImageOps, UnidentifiedImageError

import runfolder
import utility

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff", ".webp")
UINT16_MAX = 65535
UINT8_MAX = 255
INT_MODES = ("I;16", "I;16B", "I;16L", "I")  # integer greyscale read as 16-bit
FLOAT_MODE = "F"  # 32-bit float greyscale, read as 0..1
# What decoding a corrupt, truncated, unknown or oversized image raises. Image.open raises
# DecompressionBombError (not an OSError) when the header declares more than twice
# Image.MAX_IMAGE_PIXELS pixels.
DECODE_ERRORS = (OSError, EOFError, UnidentifiedImageError, ValueError, SyntaxError,
                 Image.DecompressionBombError)


class ImageReadError(RuntimeError):
    """An image file that cannot be decoded."""


class DataLayoutError(RuntimeError):
    """A data set that is missing, empty or not in the expected layout."""


def _require_regular(mode: int) -> None:
    """OSError saying what ``mode`` is (a folder, a pipe, a device...) unless it is a regular file's."""
    if not stat.S_ISREG(mode):
        raise OSError(f"it is {utility.file_kind(mode)}, not a regular file")


def open_regular(path: str) -> BinaryIO:
    """``path`` opened for binary reading if it is, or links to, a regular file; else OSError.

    A pipe or device is never opened: the path is checked with os.stat first, and the open
    descriptor again (opened non-blocking), so one swapped in between is not read either.
    """
    _require_regular(os.stat(path).st_mode)
    f = open(path, "rb", opener=lambda p, flags: os.open(p, flags | utility.O_NONBLOCK))
    try:
        _require_regular(os.fstat(f.fileno()).st_mode)
        if utility.O_NONBLOCK:
            os.set_blocking(f.fileno(), True)
    except BaseException:
        f.close()
        raise
    return f


def why_unreadable(path: str, error: Exception) -> str:
    """A short reason ``open_regular(path)`` failed: what it is instead, or the system's words."""
    if isinstance(error, FileNotFoundError) and os.path.islink(path):
        return "it is a link to a missing file"
    return getattr(error, "strerror", None) or str(error)


def list_entries(folder: str) -> list[str]:
    """Everything directly inside ``folder`` named like an image, sorted by name, whatever it is
    (pipes, devices, folders, broken links included: reading them is an error to report)."""
    if not os.path.exists(folder):
        raise FileNotFoundError(f"image folder {folder!r} does not exist")
    if not os.path.isdir(folder):
        raise DataLayoutError(f"image folder {folder!r} is not a folder")
    return [os.path.join(folder, n) for n in sorted(os.listdir(folder))
            if n.lower().endswith(IMAGE_EXTENSIONS)]


def list_images(folder: str) -> list[str]:
    """Image files directly inside ``folder``, sorted by name (pipes, sockets, folders left out)."""
    return [p for p in list_entries(folder) if os.path.isfile(p)]


def stem(path: str) -> str:
    """The file name without folder and extension."""
    return os.path.splitext(os.path.basename(path))[0]


def second_images(paths: list[str]) -> list[str]:
    """A problem line for each path whose stem an earlier one has (``a.png``, ``a.bmp``: the
    second), which would share one name in the results and in the files written."""
    seen: set[str] = set()
    problems = []
    for path in paths:
        if stem(path) in seen:
            problems.append(f"{path}: a second image named {stem(path)!r} in "
                            f"{os.path.dirname(path)}; keep one")
        seen.add(stem(path))
    return problems


def rain_pairs(folder: str, layout: str,
               error: type[DataLayoutError] = DataLayoutError) -> list[tuple[str, str]]:
    """(rain, clean) files of a folder pairing ``rain-<id>`` with ``norain-<id>``, sorted by id.

    An unpaired file, or a folder without pairs, raises ``error`` naming it and ``layout``.
    """
    files = list_images(folder)
    if twice := second_images(files):
        raise error(twice[0])
    rain = {m.group(1): f for f in files if (m := re.match(r"^rain-(.+)$", stem(f)))}
    clean = {m.group(1): f for f in files if (m := re.match(r"^norain-(.+)$", stem(f)))}
    lonely = sorted(set(rain) ^ set(clean))
    if lonely:
        names = [rain.get(k) or clean.get(k) for k in lonely]
        raise error(f"{names[0]} has no partner ({len(names)} unpaired file(s)); layout: {layout}")
    if not rain:
        raise error(f"no rain-*.png / norain-*.png pairs in {folder} (layout: {layout})")
    return [(rain[k], clean[k]) for k in sorted(rain)]


def read_rain_pair(rain_path: str, clean_path: str,
                   error: type[DataLayoutError] = DataLayoutError) -> tuple[torch.Tensor, torch.Tensor]:
    """(rainy, clean) images of a pair; ``error`` naming both files when their sizes differ."""
    rain, clean = read_image(rain_path), read_image(clean_path)
    if rain.shape != clean.shape:
        raise error(f"sizes differ: {rain_path} is {tuple(rain.shape[1:])}, "
                    f"{clean_path} is {tuple(clean.shape[1:])}")
    return rain, clean


def numbered_files(files: list[str], bounds: tuple[int, int], folder: str, note: str = "",
                   error: type[DataLayoutError] = DataLayoutError) -> list[str]:
    """The files named by a number within ``bounds`` (DIV2K's 0001.png ...); ``error`` if none."""
    lo, hi = bounds
    chosen = [f for f in files if stem(f).isdigit() and lo <= int(stem(f)) <= hi]
    if not chosen:
        raise error(f"DIV2K: no image numbered {lo}..{hi}{note} in {folder}")
    return chosen


def crop_to_lr(hr: torch.Tensor, lr: torch.Tensor, scale: int, names: tuple[str, str] = ("HR", "LR"),
               error: type[DataLayoutError] = DataLayoutError) -> torch.Tensor:
    """HR cut to LR x scale; it may be larger by less than ``scale`` pixels a side (the authors'
    rule, ``hr[:lh * s, :lw * s]``), any other size raises ``error`` naming ``names`` (HR, LR)."""
    (h, w), (lh, lw) = hr.shape[-2:], lr.shape[-2:]
    if not (0 <= h - lh * scale < scale and 0 <= w - lw * scale < scale):
        raise error(f"sizes do not match for x{scale}: {names[0]} is {h}x{w}, {names[1]} is "
                    f"{lh}x{lw} (expected {lh * scale}x{lw * scale})")
    return hr[..., :lh * scale, :lw * scale]


def read_image(path: str) -> torch.Tensor:
    """The image at ``path`` as an upright (3, H, W) uint8 tensor; greyscale, RGBA, 16-bit made RGB.

    A path that is not (a link to) a readable regular file raises ImageReadError saying what it is.
    """
    try:
        f = open_regular(path)
    except (OSError, ValueError) as e:  # ValueError: a NUL in the path
        raise ImageReadError(f"cannot read image {path!r}: {why_unreadable(path, e)}") from None
    with f:
        return decode_image(f, path)


def decode_image(source: str | IO[bytes], name: str) -> torch.Tensor:
    """An image file or stream as (3, H, W) uint8, turned as its EXIF Orientation says.

    Anything that cannot be decoded (including a decompression bomb) raises ImageReadError naming
    ``name``.
    """
    try:
        with Image.open(source) as img:
            ImageOps.exif_transpose(img, in_place=True)  # loads it; rotates as viewers show it
            return pil_to_tensor(img, name)
    except DECODE_ERRORS as e:
        raise ImageReadError(f"cannot read image {name!r}: {e}") from None


def pil_to_tensor(img: Image.Image, name: str = "image") -> torch.Tensor:
    """A PIL image of any mode as a (3, H, W) uint8 RGB tensor (alpha dropped, not blended).

    Float images must hold 0..1 and 32-bit integer ones 0..65535; others raise ImageReadError.
    """
    if img.mode not in INT_MODES + (FLOAT_MODE,):
        return torch.from_numpy(np.array(img.convert("RGB"))).permute(2, 0, 1).contiguous()
    high = 1 if img.mode == FLOAT_MODE else UINT16_MAX
    arr = _checked_levels(np.asarray(img, dtype=np.float64), high, img.mode, name) * (UINT8_MAX / high)
    grey = torch.from_numpy(np.clip(np.rint(arr), 0, UINT8_MAX).astype(np.uint8))
    return grey.expand(3, -1, -1).contiguous()


def _checked_levels(arr: np.ndarray, high: float, mode: str, name: str) -> np.ndarray:
    """``arr`` if all its values are finite and in [0, high]; else ImageReadError naming the range."""
    if arr.size == 0 or (np.isfinite(arr).all() and 0 <= arr.min() and arr.max() <= high):
        return arr
    finite = arr[np.isfinite(arr)]
    found = f"{finite.min():g}..{finite.max():g}" if finite.size else "no finite values"
    if finite.size < arr.size:
        found += f", with {arr.size - finite.size} NaN/inf value(s)"
    raise ImageReadError(f"cannot read image {name!r}: mode {mode} with values {found}, "
                         f"expected 0..{high:g}; convert it to 8- or 16-bit")


class ImageFolder:
    """The entries of a folder named like images (`list_entries`) as (stem, image); a read error
    (an entry that is no readable regular file) is returned, to be counted, not raised. ``stems``
    are unique (`unique_stems`), so they can name output files."""

    def __init__(self, folder: str):
        self.paths = list_entries(folder)
        self.stems = unique_stems(self.paths)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[str, torch.Tensor | ImageReadError]:
        path, name = self.paths[index], self.stems[index]
        try:
            return name, read_image(path)
        except ImageReadError as e:
            return name, e


def unique_stems(paths: list[str]) -> list[str]:
    """Stems of ``paths``, unique case-insensitively: ``_<ext>`` added to shared ones (``same.png``,
    ``same.jpg``: ``same_png``, ``same_jpg``) and ``_<n>`` to any still equal."""
    counts = collections.Counter(stem(path).lower() for path in paths)
    names = [stem(p) if counts[stem(p).lower()] == 1 else f"{stem(p)}_{os.path.splitext(p)[1][1:]}"
             for p in paths]
    taken: set[str] = set()
    for i, name in enumerate(names):
        n = 1
        while names[i].lower() in taken:
            n += 1
            names[i] = f"{name}_{n}"
        taken.add(names[i].lower())
    return names


def save_image(tensor: torch.Tensor, path: str) -> None:
    """Write a (3, H, W) tensor of quantised 0..255 values as a PNG (or the extension's format)."""
    arr = tensor.detach().clamp(0, 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    image_format = Image.registered_extensions().get(os.path.splitext(path)[1].lower(), "PNG")
    # written beside and renamed into place: a symlink already at `path` is replaced, not followed
    runfolder.atomic_write(path, lambda tmp: Image.fromarray(arr).save(tmp, format=image_format))
