"""Masked image modelling (MIM) as a pre-training task of IPT: masks, the loss, the extra keys.

A ``mim`` head is a scale-1 task like ``derain``. Its input is a clean crop in which a fraction of
the body's tokens (one patch_dim x patch_dim cell each) is masked, at random positions per sample
(MAE found random masking better than blocks or grids). A masked cell's input pixels are set to
the mean colour before the head, and its head features are replaced by a learned mask token
before the body (SimMIM), so the encoder-decoder and the task query keep their shapes and the
head's receptive field (19 pixels across) cannot leak masked pixels into their neighbours. The
target is the clean crop, scored on the pixels of masked cells only (MAE).

The six-task keys of a ``+mim`` checkpoint stay exactly the authors'; the ``mim`` head, tail,
query row and ``mask_token`` are extra entries that ``strip_mim`` removes.
"""
from __future__ import annotations

import re
from collections.abc import Mapping, Sequence

import torch
from torch import Tensor

MIM_TASK = "mim"
MASK_TOKEN_KEY = "mask_token"
QUERY_KEY = "body.query_embed.weight"
PER_HEAD = re.compile(r"^(head|tail)\.(\d+)\.(.*)$")


def random_token_mask(batch: int, grid: int, ratio: float,
                      generator: torch.Generator | None = None) -> Tensor:
    """A (batch, grid, grid) bool mask with exactly round(ratio * grid**2) True cells per sample,
    at positions drawn independently for each sample."""
    if not 0 < ratio < 1:
        raise ValueError(f"mask ratio must be between 0 and 1 (exclusive), got {ratio}")
    cells = grid * grid
    masked = min(max(round(ratio * cells), 1), cells - 1)
    order = torch.rand(batch, cells, generator=generator).argsort(dim=1)
    mask = torch.zeros(batch, cells, dtype=torch.bool)
    mask.scatter_(1, order[:, :masked], True)
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
    return [i for i, name in enumerate(task_names) if name == MIM_TASK]


def strip_mim(state: Mapping[str, Tensor], task_names: Sequence[str]) -> dict[str, Tensor]:
    """A checkpoint without its MIM entries: the mim heads, tails and query rows and the mask
    token go; the other heads are renumbered in order (the authors' code loads the result)."""
    drop = set(mim_heads(task_names))
    if len(task_names) != _head_count(state):
        raise ValueError(f"the task names ({'+'.join(task_names)}) do not match the checkpoint's "
                         f"{_head_count(state)} heads")
    kept = [i for i in range(len(task_names)) if i not in drop]
    renumber = {old: new for new, old in enumerate(kept)}
    out = {}
    for key, value in state.items():
        m = PER_HEAD.match(key)
        if key == MASK_TOKEN_KEY:
            continue
        if m is None:
            out[key] = value
        elif int(m.group(2)) in renumber:
            out[f"{m.group(1)}.{renumber[int(m.group(2))]}.{m.group(3)}"] = value
    if QUERY_KEY in state:
        out[QUERY_KEY] = state[QUERY_KEY][kept]
    return out


def _head_count(state: Mapping[str, Tensor]) -> int:
    """How many heads a state_dict has."""
    return len({int(m.group(2)) for k in state if (m := PER_HEAD.match(k)) and m.group(1) == "head"})
