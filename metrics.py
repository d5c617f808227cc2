"""PSNR and SSIM as the IPT authors and BasicSR compute them, and the 8-bit quantisation before
them: small pure functions of (C, H, W) or (B, C, H, W) tensors, on any device."""
from __future__ import annotations

import math

import torch


def quantize(x: torch.Tensor, rgb_range: float = 255) -> torch.Tensor:
    """Clamp to [0, rgb_range] and round to the 256 levels of 8-bit images."""
    scale = 255 / rgb_range
    return x.mul(scale).clamp(0, 255).round().div(scale)


# PSNR: the authors' (EDSR's) Y weights, applied to the difference, so the offset cancels
PSNR_Y_WEIGHTS = (65.738 / 256, 129.057 / 256, 25.064 / 256)
# SSIM: MATLAB's rgb2ycbcr Y (BT.601) on 0..255 values, as BasicSR's calculate_ssim
SSIM_Y_WEIGHTS = (65.481 / 255, 128.553 / 255, 24.966 / 255)
SSIM_Y_OFFSET = 16.0
SSIM_WINDOW = 11
SSIM_SIGMA = 1.5
SSIM_C1 = (0.01 * 255) ** 2
SSIM_C2 = (0.03 * 255) ** 2


def _as_batch(sr: torch.Tensor, hr: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Both images as float64 (B, C, H, W); a ValueError when their shapes differ."""
    if sr.shape != hr.shape:
        raise ValueError(f"image shapes differ: sr {tuple(sr.shape)} vs hr {tuple(hr.shape)}")
    if sr.dim() not in (3, 4):
        raise ValueError(f"expected (C, H, W) or (B, C, H, W) images, got shape {tuple(sr.shape)}")
    if sr.dim() == 3:
        sr, hr = sr.unsqueeze(0), hr.unsqueeze(0)
    return sr.to(torch.float64), hr.to(torch.float64)


def rgb_to_y(x: torch.Tensor, weights: tuple[float, float, float] = SSIM_Y_WEIGHTS,
             offset: float = SSIM_Y_OFFSET) -> torch.Tensor:
    """Y of (..., 3, H, W) as (..., 1, H, W): offset + the weighted channel sum; 1 channel passes."""
    if x.shape[-3] == 1:
        return x
    if x.shape[-3] != 3:
        raise ValueError(f"expected 1 or 3 channels, got shape {tuple(x.shape)}")
    w = torch.tensor(weights, dtype=x.dtype, device=x.device).view(3, 1, 1)
    return (x * w).sum(dim=-3, keepdim=True) + offset


def _shave(x: torch.Tensor, scale: int) -> torch.Tensor:
    """``x`` without ``scale`` pixels on each side (none at scale 1)."""
    return x[..., scale:-scale, scale:-scale] if scale > 1 else x


def calc_psnr(sr: torch.Tensor, hr: torch.Tensor, scale: int, rgb_range: float = 255,
              y_channel: bool = True) -> list[float]:
    """PSNR per image, the authors' way: Y of (sr - hr) / rgb_range, `scale` px shaved (none at 1)."""
    sr, hr = _as_batch(sr, hr)
    diff = (sr - hr) / rgb_range
    if y_channel:
        diff = rgb_to_y(diff, PSNR_Y_WEIGHTS, offset=0.0)
    mse = _shave(diff, scale).pow(2).flatten(1).mean(dim=1)
    return [float("inf") if m == 0 else -10 * math.log10(m) for m in mse.tolist()]


def _ssim_maps(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """SSIM maps ('valid' filtering) of (N, 1, H, W) images on the 0..255 scale."""
    # the 11 taps of the normalised Gaussian of sigma 1.5 (as cv2.getGaussianKernel)
    r = torch.arange(SSIM_WINDOW, dtype=x.dtype, device=x.device) - SSIM_WINDOW // 2
    g = torch.exp(-(r ** 2) / (2 * SSIM_SIGMA ** 2))
    g = g / g.sum()

    def filt(z: torch.Tensor) -> torch.Tensor:
        # the 11x11 window (the outer product of g with itself) as a column pass then a row pass:
        # the same weighted sums, 22 products a pixel instead of 121 (float64 conv2d is slow on CPU)
        return torch.nn.functional.conv2d(torch.nn.functional.conv2d(z, g.view(1, 1, -1, 1)),
                                          g.view(1, 1, 1, -1))

    mu_x, mu_y = filt(x), filt(y)
    var_x = filt(x * x) - mu_x ** 2
    var_y = filt(y * y) - mu_y ** 2
    cov = filt(x * y) - mu_x * mu_y
    num = (2 * mu_x * mu_y + SSIM_C1) * (2 * cov + SSIM_C2)
    den = (mu_x ** 2 + mu_y ** 2 + SSIM_C1) * (var_x + var_y + SSIM_C2)
    return num / den


def calc_ssim(sr: torch.Tensor, hr: torch.Tensor, scale: int, rgb_range: float = 255,
              y_channel: bool = True) -> list[float]:
    """SSIM per image, MATLAB/BasicSR way: Y (or mean over RGB), `scale` px shaved, 11x11 window."""
    sr, hr = _as_batch(sr, hr)
    sr, hr = sr * (255 / rgb_range), hr * (255 / rgb_range)
    if y_channel:
        sr, hr = rgb_to_y(sr), rgb_to_y(hr)
    sr, hr = _shave(sr, scale), _shave(hr, scale)
    b, c, h, w = sr.shape
    if h < SSIM_WINDOW or w < SSIM_WINDOW:
        raise ValueError(f"SSIM needs at least {SSIM_WINDOW}x{SSIM_WINDOW} pixels after shaving "
                         f"{scale if scale > 1 else 0}, got {h}x{w}")
    maps = _ssim_maps(sr.reshape(b * c, 1, h, w), hr.reshape(b * c, 1, h, w))
    return maps.reshape(b, -1).mean(dim=1).tolist()
