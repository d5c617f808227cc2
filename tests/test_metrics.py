"""PSNR and SSIM against hand computation and scikit-image."""
from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from skimage.metrics import structural_similarity

from metrics import calc_psnr, calc_ssim, quantize

W_PSNR = (65.738, 129.057, 25.064)  # the authors' Y weights, divided by 256
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def image(seed: int, shape=(3, 24, 20)) -> torch.Tensor:
    return torch.randint(0, 256, shape, generator=torch.Generator().manual_seed(seed)).float()


# ----------------------------------------------------------------------------------------
# PSNR
# ----------------------------------------------------------------------------------------
def test_psnr_constant_difference_by_hand():
    hr = image(0).clamp(10, 240)
    d = (3.0, -2.0, 5.0)  # per-channel offsets
    sr = hr + torch.tensor(d).view(3, 1, 1)
    y_diff = sum(w * di for w, di in zip(W_PSNR, d, strict=False)) / 256 / 255
    expected = -10 * math.log10(y_diff ** 2)
    assert calc_psnr(sr, hr, 2) == [pytest.approx(expected, abs=1e-9)]
    rgb_mse = sum((di / 255) ** 2 for di in d) / 3
    assert calc_psnr(sr, hr, 2, y_channel=False) == [pytest.approx(-10 * math.log10(rgb_mse), abs=1e-9)]


def test_psnr_same_difference_everywhere():
    hr = image(1).clamp(0, 250)
    d = 4.0
    expected = -10 * math.log10((d * sum(W_PSNR) / 256 / 255) ** 2)
    assert calc_psnr(hr + d, hr, 3)[0] == pytest.approx(expected, abs=1e-9)


def test_psnr_shaves_scale_pixels_and_none_at_scale_1():
    hr = image(2)
    sr = hr.clone()
    sr[:, :3, :] += 50  # only the 3-pixel top border differs
    sr[:, :, -3:] -= 50
    assert calc_psnr(sr, hr, 3) == [float("inf")]
    assert calc_psnr(sr, hr, 3, y_channel=False) == [float("inf")]
    assert math.isfinite(calc_psnr(sr, hr, 2)[0])  # a 2-pixel shave keeps part of it
    assert math.isfinite(calc_psnr(sr, hr, 1)[0])  # scale 1: nothing shaved
    one = hr.clone()
    one[0, 0, 0] += 255  # a corner pixel counts at scale 1
    y = W_PSNR[0] / 256
    expected = -10 * math.log10(y ** 2 / (24 * 20))
    assert calc_psnr(one, hr, 1)[0] == pytest.approx(expected, abs=1e-9)


def test_psnr_identical_is_inf_and_batched():
    hr = torch.stack([image(3), image(4)])
    assert calc_psnr(hr, hr, 2) == [float("inf"), float("inf")]
    sr = hr.clone()
    sr[1] += 1
    values = calc_psnr(sr, hr, 2)
    assert len(values) == 2 and values[0] == float("inf")
    assert values[1] == pytest.approx(calc_psnr(sr[1], hr[1], 2)[0], abs=1e-12)


def test_psnr_rgb_range_and_uint8_inputs():
    hr, sr = image(5), image(6)
    value = calc_psnr(sr, hr, 2)[0]
    unit = calc_psnr(sr.double() / 255, hr.double() / 255, 2, rgb_range=1)[0]
    assert unit == pytest.approx(value, abs=1e-9)
    assert calc_psnr(sr.to(torch.uint8), hr.to(torch.uint8), 2)[0] == pytest.approx(value, abs=1e-9)


@pytest.mark.parametrize("metric", [calc_psnr, calc_ssim])
def test_shape_mismatch_names_both_shapes(metric):
    with pytest.raises(ValueError, match=r"\(3, 24, 20\).*\(3, 24, 21\)"):
        metric(torch.zeros(3, 24, 20), torch.zeros(3, 24, 21), 2)


# ----------------------------------------------------------------------------------------
# SSIM
# ----------------------------------------------------------------------------------------
def matlab_y(x: torch.Tensor) -> np.ndarray:
    """MATLAB rgb2ycbcr's Y of a (3, H, W) 0..255 image, in numpy."""
    r, g, b = x.double().numpy()
    return 16 + (65.481 * r + 128.553 * g + 24.966 * b) / 255


def skimage_ssim(a: np.ndarray, b: np.ndarray) -> float:
    """scikit-image's Gaussian SSIM, its map cut to the 'valid' part (5 px a side)."""
    _, smap = structural_similarity(a, b, gaussian_weights=True, sigma=1.5, use_sample_covariance=False,
                                    data_range=255, full=True)
    return float(smap[5:-5, 5:-5].mean())


def smooth_pair(seed: int, shape=(3, 40, 36)) -> tuple[torch.Tensor, torch.Tensor]:
    """A structured image and a noisy copy (quantised), so SSIM is well inside (0, 1)."""
    g = torch.Generator().manual_seed(seed)
    yy, xx = torch.meshgrid(torch.arange(shape[1]), torch.arange(shape[2]), indexing="ij")
    base = 128 + 80 * torch.sin(xx / 5.0 + torch.arange(3).view(3, 1, 1)) * torch.cos(yy / 7.0)
    noisy = base + torch.randn(shape, generator=g) * 20
    return quantize(noisy), quantize(base)


@pytest.mark.parametrize("scale", [1, 2, 4])
def test_ssim_y_matches_skimage(scale):
    sr, hr = smooth_pair(scale)
    s = scale if scale > 1 else 0
    crop = (slice(s, -s), slice(s, -s)) if s else (slice(None), slice(None))
    expected = skimage_ssim(matlab_y(sr)[crop], matlab_y(hr)[crop])
    assert 0.2 < expected < 0.99
    assert calc_ssim(sr, hr, scale)[0] == pytest.approx(expected, abs=1e-6)


def test_ssim_rgb_is_mean_over_channels():
    sr, hr = smooth_pair(7)
    expected = np.mean([skimage_ssim(sr[c].double().numpy()[2:-2, 2:-2], hr[c].double().numpy()[2:-2, 2:-2])
                        for c in range(3)])
    assert calc_ssim(sr, hr, 2, y_channel=False)[0] == pytest.approx(expected, abs=1e-6)


def test_ssim_identical_is_one_and_batched():
    sr, hr = smooth_pair(8)
    assert calc_ssim(hr, hr, 2) == [pytest.approx(1.0, abs=1e-12)]
    batch = calc_ssim(torch.stack([hr, sr]), torch.stack([hr, hr]), 2)
    assert len(batch) == 2 and batch[0] == pytest.approx(1.0, abs=1e-12)
    assert batch[1] == pytest.approx(calc_ssim(sr, hr, 2)[0], abs=1e-12)


def test_ssim_rgb_range():
    sr, hr = smooth_pair(9)
    expected = calc_ssim(sr, hr, 3)[0]
    unit = calc_ssim(sr.double() / 255, hr.double() / 255, 3, rgb_range=1)[0]
    assert unit == pytest.approx(expected, abs=1e-9)


def test_ssim_too_small_after_shave():
    with pytest.raises(ValueError, match="11x11"):
        calc_ssim(torch.zeros(3, 16, 16), torch.zeros(3, 16, 16), 3)


def test_quantize_levels():
    x = torch.tensor([-3.0, 0.4, 0.6, 127.5, 254.6, 300.0])
    torch.testing.assert_close(quantize(x), torch.tensor([0.0, 0.0, 1.0, 128.0, 255.0, 255.0]))
    torch.testing.assert_close(quantize(x / 255, rgb_range=1), quantize(x) / 255)


@cuda
def test_metrics_same_on_cuda():
    sr, hr = smooth_pair(10)
    assert calc_psnr(sr.cuda(), hr.cuda(), 2)[0] == pytest.approx(calc_psnr(sr, hr, 2)[0], abs=1e-9)
    assert calc_ssim(sr.cuda(), hr.cuda(), 2)[0] == pytest.approx(calc_ssim(sr, hr, 2)[0], abs=1e-9)
