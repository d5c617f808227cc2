"""Read images from disk as RGB uint8 tensors, whatever their mode."""
from __future__ import annotations

import os
import re

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError

IMAGE_EXTENSIONS = (".png", ".jpg", ".jpeg", ".bmp", ".tif", ".tiff")
UINT16_TO_UINT8 = 257  # 65535 / 255


class ImageReadError(RuntimeError):
    """An image file that cannot be decoded."""


class DataLayoutError(RuntimeError):
    """A data set that is missing, empty or not in the expected layout."""


def list_images(folder: str) -> list[str]:
    """Image files directly inside ``folder``, sorted by name."""
    if not os.path.isdir(folder):
        raise FileNotFoundError(f"image folder {folder!r} does not exist")
    names = sorted(n for n in os.listdir(folder) if n.lower().endswith(IMAGE_EXTENSIONS))
    return [os.path.join(folder, n) for n in names]


def stem(path: str) -> str:
    """The file name without folder and extension."""
    return os.path.splitext(os.path.basename(path))[0]


def rain_pairs(folder: str, layout: str,
               error: type[DataLayoutError] = DataLayoutError) -> list[tuple[str, str]]:
    """(rain, clean) files of a folder pairing ``rain-<id>`` with ``norain-<id>``, sorted by id.

    An unpaired file, or a folder without pairs, raises ``error`` naming it and ``layout``.
    """
    files = list_images(folder)
    rain = {m.group(1): f for f in files if (m := re.match(r"^rain-(.+)$", stem(f)))}
    clean = {m.group(1): f for f in files if (m := re.match(r"^norain-(.+)$", stem(f)))}
    lonely = sorted(set(rain) ^ set(clean))
    if lonely:
        names = [rain.get(k) or clean.get(k) for k in lonely]
        raise error(f"{names[0]} has no partner ({len(names)} unpaired file(s)); "
                              f"layout: {layout}")
    if not rain:
        raise error(f"no rain-*.png / norain-*.png pairs in {folder} (layout: {layout})")
    return [(rain[k], clean[k]) for k in sorted(rain)]


def read_image(path: str) -> torch.Tensor:
    """The image at ``path`` as a (3, H, W) uint8 tensor; greyscale, RGBA, CMYK, 16-bit made RGB."""
    try:
        with Image.open(path) as img:
            img.load()
            return pil_to_tensor(img)
    except (OSError, UnidentifiedImageError, ValueError, SyntaxError) as e:
        raise ImageReadError(f"cannot read image {path!r}: {e}") from None


def pil_to_tensor(img: Image.Image) -> torch.Tensor:
    """A PIL image of any mode as a (3, H, W) uint8 RGB tensor (alpha dropped, not blended)."""
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        arr = np.asarray(img, dtype=np.float64) / UINT16_TO_UINT8
        arr = np.repeat(np.clip(np.rint(arr), 0, 255).astype(np.uint8)[..., None], 3, axis=2)
    else:
        arr = np.array(img.convert("RGB"))
    return torch.from_numpy(arr).permute(2, 0, 1).contiguous()


class ImageFolder:
    """The images directly inside a folder as (stem, image); a read error is returned, not raised."""

    def __init__(self, folder: str):
        self.paths = list_images(folder)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[str, torch.Tensor | ImageReadError]:
        path = self.paths[index]
        stem = os.path.splitext(os.path.basename(path))[0]
        try:
            return stem, read_image(path)
        except ImageReadError as e:
            return stem, e


def save_image(tensor: torch.Tensor, path: str) -> None:
    """Write a (3, H, W) tensor of quantised 0..255 values as a PNG (or the extension's format)."""
    arr = tensor.detach().clamp(0, 255).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    Image.fromarray(arr).save(path)
