"""A plain strip-by-strip rendition of the authors' forward_chop, kept as an independent reference.

It follows their procedure step by step, repeated tiles included: the main grid, the top and
left strips, the bottom and right strips and the corner tile are each evaluated and averaged on
their own, then pasted in the authors' order. ``model.tiling`` must give the same output while
evaluating each distinct tile once: the tests check it against this module, and
python -m scripts.benchmark times it as the baseline. It needs only torch, and nothing else of the
project, so that it stays independent of the tiler it checks.
"""
from __future__ import annotations

from collections.abc import Callable

import torch
from torch import Tensor


def grid_average(fn: Callable[[Tensor], Tensor], x: Tensor, rows: list[int], cols: list[int],
                 patch: int, scale: int, batch: int) -> Tensor:
    """Tiles at rows x cols, each pixel the mean of the tiles' central crops that cover it.

    Along an axis with several tiles a tile keeps its central half, the first and last tile
    also their outer quarter; along an axis with a single tile, the tile is kept whole.
    """
    starts = [(r, c) for r in rows for c in cols]
    tiles = torch.cat([x[..., r:r + patch, c:c + patch] for r, c in starts])
    outs = torch.cat([fn(tiles[i:i + batch]) for i in range(0, len(tiles), batch)])
    quarter, size = patch // 4 * scale, patch * scale
    height, width = (rows[-1] - rows[0]) * scale + size, (cols[-1] - cols[0]) * scale + size
    total = x.new_zeros(x.shape[0], x.shape[1], height, width)
    count = x.new_zeros(height, width)
    for (r, c), out in zip(starts, outs.split(x.shape[0]), strict=False):
        r0 = 0 if r == rows[0] else quarter
        r1 = size if r == rows[-1] else size - quarter
        c0 = 0 if c == cols[0] else quarter
        c1 = size if c == cols[-1] else size - quarter
        top, left = (r - rows[0]) * scale, (c - cols[0]) * scale
        total[..., top + r0:top + r1, left + c0:left + c1] += out[..., r0:r1, c0:c1]
        count[top + r0:top + r1, left + c0:left + c1] += 1
    return total / count


def reference_chop(fn: Callable[[Tensor], Tensor], x: Tensor, scale: int, patch: int = 48,
                   batch: int = 64) -> Tensor:
    """The authors' whole-image procedure for inputs of at least ``patch`` pixels a side."""
    h, w = x.shape[-2:]
    stride = patch // 4
    h_cut, w_cut = (h - patch) % stride, (w - patch) % stride
    rows = list(range(0, h - h_cut - patch + 1, stride))
    cols = list(range(0, w - w_cut - patch + 1, stride))
    main = grid_average(fn, x, rows, cols, patch, scale, batch)
    top = grid_average(fn, x, [0], cols, patch, scale, batch)
    left = grid_average(fn, x, rows, [0], patch, scale, batch)
    bottom = grid_average(fn, x, [h - patch], cols, patch, scale, batch)
    right = grid_average(fn, x, rows, [w - patch], patch, scale, batch)
    corner = fn(x[..., h - patch:, w - patch:])

    q, size = patch // 4 * scale, patch * scale
    canvas = main.clone()
    canvas[..., :size, :] = top
    canvas[..., :, :size] = left
    canvas[..., q:-q, q:-q] = main[..., q:-q, q:-q]
    # the last rows and columns come from the strips flush with the far borders
    keep_h = (h - h_cut) * scale - int((patch - h_cut) / 2 * scale)
    keep_w = (w - w_cut) * scale - int((patch - w_cut) / 2 * scale)
    skip_h, skip_w = size - (h * scale - keep_h), size - (w * scale - keep_w)
    left_part = torch.cat([canvas[..., :keep_h, :keep_w], bottom[..., skip_h:, :keep_w]], dim=-2)
    right_part = torch.cat([right[..., :keep_h, skip_w:], corner[..., skip_h:, skip_w:]], dim=-2)
    return torch.cat([left_part, right_part], dim=-1)
