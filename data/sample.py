"""The colour photos shipped with scikit-image: a built-in stand-in for real data sets."""
from __future__ import annotations

import importlib.resources

import numpy as np
import torch
from PIL import Image

# each photo's file in scikit-image's data folder, read with Pillow: the pixels skimage.data's
# function of that name gives, without importing skimage.io (0.2 s) in every training process
FILES = {"astronaut": "astronaut.png", "coffee": "coffee.png", "chelsea": "chelsea.png",
         "rocket": "rocket.jpg", "immunohistochemistry": "ihc.png",
         "hubble_deep_field": "hubble_deep_field.jpg", "retina": "retina.jpg",
         "motorcycle_left": "motorcycle_left.png", "motorcycle_right": "motorcycle_right.png",
         "colorwheel": "color.png"}
TEST_PHOTOS = ("astronaut", "coffee")
TRAIN_PHOTOS = ("chelsea", "rocket", "immunohistochemistry", "hubble_deep_field", "retina",
                "motorcycle_left", "motorcycle_right", "colorwheel")


def sample_photo(name: str) -> torch.Tensor:
    """One scikit-image photo as a (3, H, W) uint8 tensor."""
    with Image.open(importlib.resources.files("skimage") / "data" / FILES[name]) as image:
        pixels = np.array(image.convert("RGB"))
    return torch.from_numpy(pixels).permute(2, 0, 1).contiguous()


def sample_photos(split: str = "test") -> list[tuple[str, torch.Tensor]]:
    """(name, image) for the test or train photos."""
    names = {"test": TEST_PHOTOS, "train": TRAIN_PHOTOS}[split]
    return [(n, sample_photo(n)) for n in names]
