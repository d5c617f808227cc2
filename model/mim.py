"""Masked image modelling (MIM) as a pre-training task of IPT: masks, the loss, the extra keys.

A ``mim`` head is a scale-1 task like ``derain``. Its input is a clean crop in which a fraction of
the body's tokens (one patch_dim x patch_dim cell each) is masked, at random positions per sample
(MAE found random masking better than blocks or grids). A masked cell's input pixels are set to
the mean colour before the head, and its head features are replaced by a learned mask token
before the body (SimMIM), so the encoder-decoder and the task query keep their shapes and the
head's receptive field (19 pixels across) cannot leak masked pixels into their neighbours. The
target is the clean crop, scored on the pixels of masked cells only (MAE).

The six-task keys of a ``+mim`` checkpoint stay exactly the authors'; the ``mim`` head, tail,
query row and ``mask_token`` are extra entries that ``checkpoint.strip_mim`` removes.
"""
from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from tasks import MIM

MASK_TOKEN_KEY = "mask_token"


def random_token_mask(batch: int, grid: int, ratio: float,
                      generator: torch.Generator | None = None) -> Tensor:
    """A (batch, grid, grid) bool mask with exactly round(ratio * grid**2) True cells per sample,
    at positions drawn independently for each sample."""
    if not 0 < ratio < 1:
        raise ValueError(f"mask ratio must be between 0 and 1 (exclusive), got {ratio}")
    cells = grid * grid
    masked = min(max(round(ratio * cells), 1), cells - 1)
    order = torch.rand(batch, cells, generator=generator).argsort(dim=1)
    mask = torch.zeros(batch, cells, dtype=torch.bool).scatter_(1, order[:, :masked], True)
    return mask.view(batch, grid, grid)


def pixel_mask(mask: Tensor, cell: int) -> Tensor:
    """A (B, grid, grid) token mask as a (B, 1, grid*cell, grid*cell) pixel mask."""
    return mask.repeat_interleave(cell, dim=1).repeat_interleave(cell, dim=2).unsqueeze(1)


def masked_l1(output: Tensor, target: Tensor, mask: Tensor, cell: int) -> Tensor:
    """Mean absolute error over the pixels (all channels) of the masked cells only."""
    m = pixel_mask(mask.to(output.device), cell).expand_as(output)
    return (output.float() - target.float()).abs()[m].mean()


def mim_heads(task_names: Sequence[str]) -> list[int]:
    """The indices of the ``mim`` heads among a model's task names."""
    return [i for i, name in enumerate(task_names) if name == MIM]
