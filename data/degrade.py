"""Degradations: MATLAB-exact bicubic downsampling, Gaussian noise, rain streaks.

- SR input: HR cropped to a multiple of s, then MATLAB ``imresize(hr, 1/s, 'bicubic')`` (Keys'
  cubic, a = -0.5, kernel widened by s, mirrored borders) on the uint8 image, which rounds to uint8
  after each 1-D pass (``imresize_uint8``): for evaluation, for fine-tuning pairs, for training
  crops (they are uint8 until degraded) and for the bicubic-upscaled baseline. ``imresize`` is the
  unrounded float path, for float inputs.
- Noise: ``hr + N(0, 1) * sigma``, float; at test time drawn on the CPU from a generator seeded by
  (seed, test set, image name), clamped to [0, 255] as IPT's evaluation does (Restormer's is not).
- Rain: a streak layer added to the clean image, clipped to [0, 255]. The authors add real layers
  from RainTrainL; `procedural_streaks` is our stand-in when none are at hand.

All functions are pure, batched ((C, H, W) or (B, C, H, W)) and run on the input's device.
Pixel values are on the 0..255 scale. See docs/DESIGN.md, "Degradations".
"""
from __future__ import annotations

import hashlib
import math

import torch
import torch.nn.functional as F
from torch import Tensor

# -- MATLAB imresize(..., 'bicubic') -------------------------------------------------------
CUBIC_A = -0.5  # Keys' cubic convolution parameter used by MATLAB
CUBIC_WIDTH = 4.0  # support of the cubic kernel, in input pixels, at scale 1
UINT8_MAX = 255.0


def cubic(x: Tensor) -> Tensor:
    """Keys' cubic kernel with a = CUBIC_A, zero outside [-2, 2] (MATLAB's `cubic`)."""
    a, t = CUBIC_A, x.abs()
    t2, t3 = t * t, t * t * t
    near = ((a + 2) * t3 - (a + 3) * t2 + 1) * (t <= 1)
    far = (a * t3 - 5 * a * t2 + 8 * a * t - 4 * a) * ((t > 1) & (t <= 2))
    return near + far


def resize_matrix(in_len: int, out_len: int, scale: float,
                  device: torch.device | str | None = None) -> Tensor:
    """The (out_len, in_len) float64 matrix of MATLAB's 1-D bicubic resize by `scale`."""
    antialias = scale < 1  # shrinking: a kernel stretched by 1/scale
    width = CUBIC_WIDTH / scale if antialias else CUBIC_WIDTH
    x = torch.arange(1, out_len + 1, dtype=torch.float64, device=device)  # 1-based, as MATLAB
    u = x / scale + 0.5 * (1 - 1 / scale)  # output pixel centres in input coordinates
    left = torch.floor(u - width / 2)
    taps = math.ceil(width) + 2
    idx = left[:, None] + torch.arange(taps, dtype=torch.float64, device=device)
    dist = u[:, None] - idx
    w = scale * cubic(scale * dist) if antialias else cubic(dist)
    w = w / w.sum(dim=1, keepdim=True)
    # MATLAB's border rule: indices wrap into [1..n, n..1] (a mirror with the edge repeated)
    period = (idx.long() - 1) % (2 * in_len)
    src = torch.where(period < in_len, period, 2 * in_len - 1 - period)
    matrix = torch.zeros(out_len, in_len, dtype=torch.float64, device=device)
    return matrix.scatter_add_(1, src, w)


def _matrices(x: Tensor, scale: float) -> tuple[Tensor, Tensor]:
    """MATLAB's H and W resize matrices for `x`, in x's dtype and on x's device: (out, H) to
    apply as ``mh @ x``, (out, W) as ``x @ mw.T``."""
    if scale <= 0:
        raise ValueError(f"scale must be positive, got {scale}")
    return tuple(resize_matrix(n, math.ceil(n * scale), scale, x.device).to(x.dtype)
                 for n in x.shape[-2:])  # output sizes as MATLAB's: ceil(scale * n)


def imresize(x: Tensor, scale: float) -> Tensor:
    """MATLAB imresize(x, scale, 'bicubic') of float (C,H,W) or (B,C,H,W), unrounded."""
    if not x.is_floating_point():
        raise TypeError(f"imresize expects a float tensor, got {x.dtype}; use bicubic_lr for uint8")
    mh, mw = _matrices(x, scale)
    # MATLAB resizes the dimension with the smaller scale first: rows first for equal scales
    return (mh @ x) @ mw.T


def _to_uint8_levels(x: Tensor) -> Tensor:
    """MATLAB's conversion to uint8: saturate to [0, 255], round half away from zero."""
    return torch.floor(x.clamp(0, UINT8_MAX) + 0.5)


def imresize_uint8(x: Tensor, scale: float, per_pass_rounding: bool = True) -> Tensor:
    """MATLAB imresize(x, scale, 'bicubic') of a uint8 image, uint8.

    MATLAB returns uint8 after each 1-D pass (rows, then columns), rounding half away from zero;
    that is what the published LR files of the SR benchmarks are (Set5's, bit for bit at x2, x3
    and x4). ``per_pass_rounding=False`` rounds once at the end instead, as BasicSR's Python port
    does (it moves about one pixel in ten by one level).
    """
    if x.dtype != torch.uint8:
        raise TypeError(f"imresize_uint8 expects a uint8 image, got {x.dtype}")
    x = x.to(torch.float64)  # MATLAB works in double
    mh, mw = _matrices(x, scale)
    x = mh @ x
    if per_pass_rounding:
        x = _to_uint8_levels(x)
    return _to_uint8_levels(x @ mw.T).to(torch.uint8)


def bicubic_lr(hr: Tensor, s: int, per_pass_rounding: bool = True) -> Tensor:
    """The LR image of uint8 `hr`: cropped to a multiple of s, MATLAB bicubic by 1/s (`imresize_uint8`)."""
    h, w = hr.shape[-2:]
    return imresize_uint8(hr[..., :h // s * s, :w // s * s], 1 / s, per_pass_rounding)


# -- Gaussian noise ------------------------------------------------------------------------
SEED_BYTES = 8  # bytes of the SHA-256 digest used as a generator seed


def add_noise(x: Tensor, sigma: float, generator: torch.Generator | None = None,
              clamp: bool = False) -> Tensor:
    """x + N(0, 1) * sigma on the 0..255 scale, float; clamped to [0, 255] only if `clamp`."""
    base = x if x.is_floating_point() else x.float()
    device = generator.device if generator is not None else x.device
    noise = torch.randn(x.shape, generator=generator, device=device)  # float32, as the authors
    noisy = base + noise.to(device=x.device, dtype=base.dtype) * sigma
    return noisy.clamp(0, UINT8_MAX) if clamp else noisy


def hashed_generator(key: bytes) -> torch.Generator:
    """A CPU generator seeded from the SHA-256 of ``key``: the same in every process and run."""
    digest = hashlib.sha256(key).digest()
    generator = torch.Generator(device="cpu")
    generator.manual_seed(int.from_bytes(digest[:SEED_BYTES], "little") >> 1)  # 63-bit seed
    return generator


def eval_noise_generator(seed: int, dataset: str, name: str) -> torch.Generator:
    """A CPU generator seeded from (seed, dataset, image name) by SHA-256 (stable across runs)."""
    return hashed_generator(f"{seed}\0{dataset}\0{name}".encode())


def add_eval_noise(hr: Tensor, sigma: float, seed: int, dataset: str, name: str,
                   clip: bool = True) -> Tensor:
    """Test-time noisy input: hr + CPU-drawn noise * sigma, not rounded; clamped to [0, 255] if clip."""
    return add_noise(hr, sigma, eval_noise_generator(seed, dataset, name), clamp=clip)


# -- Rain ----------------------------------------------------------------------------------
def add_rain(x: Tensor, streaks: Tensor) -> Tensor:
    """A clean image plus a rain-streak layer (0..255, broadcastable), clipped to [0, 255]."""
    base = x if x.is_floating_point() else x.float()
    return (base + streaks.to(device=x.device, dtype=base.dtype)).clamp(0, UINT8_MAX)


# PROCEDURAL STAND-IN: the authors only add real streak layers from RainTrainL. The generator
# below (sparse random drops -> motion blur along a tilted line -> scaled) is ours, for when no
# streak layers are at hand; images made with it are not the authors' data.
DENSITY_RANGE = (0.001, 0.004)  # fraction of pixels that start a streak
LENGTH_RANGE = (10.0, 30.0)  # streak length, pixels
ANGLE_RANGE = (-30.0, 30.0)  # degrees from vertical
INTENSITY_RANGE = (100.0, 200.0)  # brightness of a streak's core, 0..255


def _line_kernel(length: float, angle: float, device: torch.device) -> Tensor:
    """A (1, 1, k, k) kernel: a line of `length` px tilted `angle` degrees from vertical, peak 1."""
    half = math.ceil(length / 2)
    r = torch.arange(-half, half + 1, dtype=torch.float32, device=device)
    yy, xx = torch.meshgrid(r, r, indexing="ij")
    theta = math.radians(angle)
    along = yy * math.cos(theta) + xx * math.sin(theta)  # position along the streak
    across = -yy * math.sin(theta) + xx * math.cos(theta)  # distance from its axis
    kernel = (1 - across.abs()).clamp(min=0) * (along.abs() <= length / 2)
    return kernel[None, None]


def procedural_streaks(shape: tuple[int, int], generator: torch.Generator | None = None,
                       density: float | None = None, length: float | None = None,
                       angle: float | None = None, intensity: float | None = None,
                       device: torch.device | str | None = None) -> Tensor:
    """PROCEDURAL STAND-IN rain layer (1, H, W) in 0..255, not the authors' RainTrainL streaks."""
    gen_device = generator.device if generator is not None else torch.device(device or "cpu")
    u = torch.rand(4, generator=generator, device=gen_device).tolist()  # for parameters left as None
    ranges = DENSITY_RANGE, LENGTH_RANGE, ANGLE_RANGE, INTENSITY_RANGE
    density, length, angle, intensity = (
        value if value is not None else low + (high - low) * draw
        for value, (low, high), draw in zip((density, length, angle, intensity), ranges, u, strict=True))
    h, w = shape
    drops = (torch.rand(1, 1, h, w, generator=generator, device=gen_device) < density).float()
    drops = drops.to(device or gen_device)
    kernel = _line_kernel(length, angle, drops.device)
    pad = kernel.shape[-1] // 2
    streaks = F.conv2d(F.pad(drops, (pad, pad, pad, pad)), kernel)
    return (streaks[0] * intensity).clamp(0, UINT8_MAX)
