"""Whole-image inference for a network whose body takes fixed-size patches (the modes: docs/DESIGN.md).

One entry point, ``restore``: the tilers split the image into patch-sized tiles, run them through
the network ``crop_batch_size`` at a time, and blend the outputs back into one image.

``official`` is the authors' ``forward_chop``, output for output. Its rule (each output pixel the
mean of the central crops that cover it, the last rows and columns from an extra strip flush with
the far edges) is separable, one 0/1 weight per tile row and column, so each distinct tile is
evaluated once (the authors re-run the top and left strips). One quirk is kept: the authors paste
their left strip after their top strip, so the output rows above the first margin and left of the
first tile's far edge come from tile (0, 0) alone.

Precision: ``bf16`` runs only the network's forward under ``torch.autocast`` (the weights fp32, as
``--amp bf16`` trains), its output cast back to fp32. The tilers' weights, sums and division by
the coverage, and the x8 ensemble's mean, stay fp32: bf16 keeps 8 significant bits, so a sum of
four overlapping tiles near 255 would be held to steps of 4 grey levels. ``single`` and ``half``
run the network in the weights' dtype with autocast off, so that an autocast around the caller
(a training step's) cannot change an evaluation.
"""
from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from tqdm import tqdm

FAST_OVERLAP = 8  # input pixels shared by neighbouring tiles in `fast` mode
OFFICIAL_TILE_MULTIPLE = 4  # the authors' tiling steps by a quarter of the patch
PROGRESS_DELAY_S = 2.0  # a tile progress bar appears once one image has taken this long
MODES = ("auto", "official", "fast", "whole")
PRECISIONS = ("single", "half", "bf16")  # --precision
AUTOCAST = {"bf16": torch.bfloat16}  # precision -> the dtype its forward autocasts to

# The default cap on tiles per network call on the CPU (restore's cpu_tiles_per_call), below
# any larger crop_batch_size. Bigger calls allocate activations past glibc's 32 MiB mmap
# threshold, which go back to the kernel after each call and are page-faulted in afresh by the
# next: 64 tiles of the tiny model cost 1.5-1.6x per tile what 8 do. Eight tiles keep the
# full-size model's attention scores (8 x 12 heads x 256^2 floats, 25 MiB) under that threshold
# too. Where malloc keeps freed blocks (utility.keep_freed_memory, as main.py sets) 8 and 64 run
# equally fast, and 8 still holds a third to a seventh of the memory (docs/BENCHMARKS.md).
CPU_TILES_PER_CALL = 8


@dataclass
class AxisPlan:
    """Where the tiles sit along one axis and how much each output pixel of a tile counts."""

    starts: list[int]  # input offset of each tile
    weights: Tensor  # (len(starts), patch * scale): weight of each output pixel of each tile
    boundary: int  # official mode: first output pixel taken from the extra edge strip


def restore(model: nn.Module, x: Tensor, task_id: int = 0, mode: str = "auto",
            crop_batch_size: int = 64, self_ensemble: bool = False,
            tile_size: int | None = None, progress: bool = False,
            cpu_tiles_per_call: int = CPU_TILES_PER_CALL, precision: str = "single") -> Tensor:
    """Restore whole images x (B, C, H, W, 0..rgb_range) with task ``task_id``; unquantised
    fp32 output.

    A network with a fixed input size (``model.patch_size``, IPT) is tiled at that size; one
    that takes any size (Restormer) runs whole, or in ``fast`` tiles of ``tile_size``.
    ``progress``: show a bar of the tiles done when an image takes more than a few seconds.
    ``cpu_tiles_per_call``: see CPU_TILES_PER_CALL; ``precision``: see the module's docstring.
    """
    if x.dim() != 4:
        raise ValueError(f"restore expects a (B, C, H, W) batch, got shape {tuple(x.shape)}")
    if cpu_tiles_per_call < 1:
        raise ValueError(f"cpu_tiles_per_call must be at least 1, got {cpu_tiles_per_call}")
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choose one of {', '.join(PRECISIONS)}")
    autocast = AUTOCAST.get(precision)
    mode = resolve_mode(model, mode)
    patch = getattr(model, "patch_size", None) or tile_size
    if mode != "whole" and not patch:
        raise ValueError(f"{mode} tiling of {type(model).__name__} needs a tile_size")
    if mode == "official" and not getattr(model, "patch_size", None):
        raise ValueError(f"official tiling is IPT's forward_chop; {type(model).__name__} runs "
                         "whole, or in fast tiles")
    if mode == "fast" and not getattr(model, "patch_size", None) and patch >= max(x.shape[-2:]):
        mode = "whole"  # one tile holds the image: it would only add padding, up to tile_size squared
    scale = model.scale[task_id] if hasattr(model, "scale") else 1

    def run(v: Tensor) -> Tensor:
        if mode == "whole":
            return _forward(model, v, task_id, autocast)
        return tile(lambda t: _forward(model, t, task_id, autocast), v, patch, scale, mode,
                    crop_batch_size, progress, cpu_tiles_per_call)

    with torch.no_grad():
        return ensemble_x8(run, x) if self_ensemble else run(x)


def resolve_mode(model: nn.Module, mode: str) -> str:
    """The tiler that ``mode`` means for this model: auto is official for IPT, whole otherwise."""
    if mode not in MODES:
        raise ValueError(f"unknown tiling mode {mode!r}; choose one of {', '.join(MODES)}")
    if mode == "auto":
        return "official" if getattr(model, "patch_size", None) else "whole"
    return mode


def _forward(model: nn.Module, x: Tensor, task_id: int,
             autocast: torch.dtype | None = None) -> Tensor:
    """The network on x: under autocast to ``autocast``, else in its weights' dtype with autocast
    off; the output in fp32."""
    dtype = next(model.parameters()).dtype
    with torch.autocast(x.device.type, dtype=autocast or torch.bfloat16, enabled=autocast is not None):
        return model(x.to(dtype), task_id).float()


def ensemble_x8(fn: Callable[[Tensor], Tensor], x: Tensor) -> Tensor:
    """Mean of fn over the 8 flips/transposes of x, each output transformed back."""
    outputs = [_dihedral(fn(_dihedral(x, i, inverse=False)), i, inverse=True) for i in range(8)]
    return torch.stack(outputs).mean(dim=0)


def _dihedral(x: Tensor, i: int, inverse: bool) -> Tensor:
    """Transform i of 8: bit 0 flips width, bit 1 flips height, bit 2 transposes (authors' order)."""
    ops = [(i & 1, lambda t: t.flip(-1)), (i & 2, lambda t: t.flip(-2)),
           (i & 4, lambda t: t.transpose(-1, -2))]
    for active, op in (reversed(ops) if inverse else ops):
        if active:
            x = op(x)
    return x


def tile(fn: Callable[[Tensor], Tensor], x: Tensor, patch: int, scale: int, mode: str,
         crop_batch_size: int = 64, progress: bool = False,
         cpu_tiles_per_call: int = CPU_TILES_PER_CALL) -> Tensor:
    """Apply a patch-to-patch network fn to a whole batch by tiling (official or fast); on the
    CPU at most ``cpu_tiles_per_call`` tiles go to fn at a time."""
    h, w = x.shape[-2:]
    ph, pw = max(patch - h, 0), max(patch - w, 0)
    if ph or pw:  # smaller than one patch: pad, run, crop at the end
        x = F.pad(x, (0, pw, 0, ph), mode="reflect" if ph < h and pw < w else "replicate")
    b, c, height, width = x.shape
    plan = official_plan if mode == "official" else fast_plan
    rows, cols = plan(height, patch, scale), plan(width, patch, scale)
    grid = _TileGrid(rows, cols, scale, width * scale, x.device)
    windows = x.unfold(2, patch, 1).unfold(3, patch, 1)  # (b, c, h', w', patch, patch), a view
    out = x.new_zeros(b, c, height * scale, width * scale)
    coverage = x.new_zeros(1, 1, height * scale, width * scale)  # the total weight of each output pixel
    size = min(crop_batch_size, cpu_tiles_per_call) if x.device.type == "cpu" else crop_batch_size
    # The authors run their bottom-right tile on its own; so do we, which keeps the float
    # arithmetic of that tile identical to theirs (a batch of one takes other CPU kernels).
    with tqdm(total=grid.count, desc="tiles", unit="tile", leave=False, dynamic_ncols=True,
              delay=PROGRESS_DELAY_S, disable=not progress) as bar:
        for first, end in _chunks(grid.count, size, alone_last=mode == "official"):
            r, q = grid.row[first:end], grid.col[first:end]
            tiles = windows[:, :, grid.row_start[r], grid.col_start[q]].transpose(1, 2)
            y = fn(tiles.flatten(0, 1)).unflatten(0, (b, end - first))  # (b, k, c, P, P)
            if first == 0:
                top_left = y[:, 0]
            grid.accumulate(out, y, r, q)
            grid.accumulate(coverage, y.new_ones(()).expand(1, end - first, 1, *y.shape[-2:]), r, q)
            bar.update(end - first)
    out /= coverage
    if mode == "official":  # the authors' left strip overwrites part of their top strip
        margin, right = patch // 4 * scale, min(patch * scale, cols.boundary)
        out[..., :margin, margin:right] = top_left[..., :margin, margin:right]
    return out[..., :h * scale, :w * scale]


def _chunks(count: int, size: int, alone_last: bool) -> list[tuple[int, int]]:
    """(first, end) spans of at most ``size`` tiles; the last tile alone when ``alone_last``."""
    last = count - 1 if alone_last else count
    spans = [(a, min(a + size, last)) for a in range(0, last, size)]
    return spans + [(last, count)] if alone_last else spans


class _TileGrid:
    """The tiles of two axis plans in row-major order, their weights and output offsets."""

    def __init__(self, rows: AxisPlan, cols: AxisPlan, scale: int, width: int,
                 device: torch.device):
        self.scale, self.width = scale, width
        n_r, n_c = len(rows.starts), len(cols.starts)
        self.count = n_r * n_c
        self.row = torch.arange(n_r, device=device).repeat_interleave(n_c)  # tile -> row index
        self.col = torch.arange(n_c, device=device).repeat(n_r)  # tile -> column index
        self.row_start = torch.tensor(rows.starts, device=device)  # input offsets
        self.col_start = torch.tensor(cols.starts, device=device)
        self.row_weight, self.col_weight = rows.weights.to(device), cols.weights.to(device)
        a = torch.arange(rows.weights.shape[1], device=device)
        self.pixel = a[:, None] * width + a[None, :]  # offset of a tile's pixels in the output

    def accumulate(self, out: Tensor, y: Tensor, r: Tensor, q: Tensor) -> None:
        """out += each tile output of y (b, k, c, P, P) times its weights, at its place."""
        b, k, c = y.shape[:3]
        weight = self.row_weight[r][:, :, None] * self.col_weight[q][:, None, :]  # (k, P, P)
        src = (y * weight[:, None]).transpose(1, 2).reshape(b * c, -1)
        corner = (self.row_start[r] * self.width + self.col_start[q]) * self.scale
        index = corner[:, None, None] + self.pixel
        out.view(b * c, -1).index_add_(1, index.flatten(), src)


def official_plan(n: int, patch: int, scale: int) -> AxisPlan:
    """The authors' forward_chop along one axis of n >= patch input pixels."""
    if patch % OFFICIAL_TILE_MULTIPLE:
        raise ValueError(f"official tiling needs a patch size divisible by {OFFICIAL_TILE_MULTIPLE}, "
                         f"got {patch}")
    stride = patch // OFFICIAL_TILE_MULTIPLE
    margin = stride * scale  # output pixels a tile gives up on each side inside the grid
    out_patch = patch * scale
    cut = (n - patch) % stride
    grid = list(range(0, n - cut - patch + 1, stride))
    edge = n - patch  # the extra strip, flush with the far border
    boundary = (n - cut) * scale - int((patch - cut) / 2 * scale)  # first output row of the strip
    starts = grid + ([edge] if edge != grid[-1] else [])
    a = torch.arange(out_patch)
    k = torch.arange(len(grid))[:, None]
    lo = torch.where(k == 0, 0, margin)  # the first tile also owns its outer quarter
    hi = torch.where(k == len(grid) - 1, out_patch, out_patch - margin)  # and so does the last
    inside = (a >= lo) & (a < hi) & (torch.tensor(grid)[:, None] * scale + a < boundary)
    weights = torch.zeros(len(starts), out_patch)
    weights[:len(grid)] = inside.float()
    weights[starts.index(edge)] += (edge * scale + a >= boundary).float()
    return AxisPlan(starts, weights, boundary)


def fast_plan(n: int, patch: int, scale: int) -> AxisPlan:
    """Evenly spread tiles overlapping by at least FAST_OVERLAP pixels (a quarter of a small
    patch, so tiles always advance by most of a patch), linear-ramp weights."""
    overlap = min(FAST_OVERLAP, patch // 4)
    count = 1 if n == patch else math.ceil((n - patch) / (patch - overlap)) + 1
    starts = sorted({round(i * (n - patch) / max(count - 1, 1)) for i in range(count)})
    out_patch = patch * scale
    a = torch.arange(out_patch, dtype=torch.float32)
    ramp = torch.minimum(a + 1, out_patch - a) / (overlap * scale + 1)
    weights = ramp.clamp(max=1.0).expand(len(starts), -1).clone()
    return AxisPlan(starts, weights, n * scale)
