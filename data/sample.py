"""The colour photos shipped with scikit-image: a built-in stand-in for real data sets."""
from __future__ import annotations

import numpy as np
import torch

TEST_PHOTOS = ("astronaut", "coffee")
TRAIN_PHOTOS = ("chelsea", "rocket", "immunohistochemistry", "hubble_deep_field", "retina",
                "motorcycle_left", "motorcycle_right", "colorwheel")


def sample_photo(name: str) -> torch.Tensor:
    """One scikit-image photo as a (3, H, W) uint8 tensor."""
    import skimage.data

    if name.startswith("motorcycle_"):
        left, right, _ = skimage.data.stereo_motorcycle()
        arr = left if name.endswith("left") else right
    else:
        arr = getattr(skimage.data, name)()
    return torch.from_numpy(np.ascontiguousarray(arr[..., :3])).permute(2, 0, 1).contiguous()


def sample_photos(split: str = "test") -> list[tuple[str, torch.Tensor]]:
    """(name, image) for the test or train photos."""
    names = {"test": TEST_PHOTOS, "train": TRAIN_PHOTOS}[split]
    return [(n, sample_photo(n)) for n in names]
