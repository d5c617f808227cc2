"""Degradations against an independent, loop-by-loop reading of MATLAB's imresize algorithm."""
from __future__ import annotations

import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

from data.degrade import (
    add_eval_noise,
    add_noise,
    add_rain,
    bicubic_lr,
    eval_noise_generator,
    imresize,
    procedural_streaks,
    resize_matrix,
)
from data.images import read_image

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


# ----------------------------------------------------------------------------------------
# A plain reference: MATLAB's imresize.m (contributions + resizeAlongDim), one pixel at a time
# ----------------------------------------------------------------------------------------
def ref_cubic(t: float) -> float:
    t = abs(t)
    if t <= 1:
        return 1.5 * t ** 3 - 2.5 * t ** 2 + 1
    if t <= 2:
        return -0.5 * t ** 3 + 2.5 * t ** 2 - 4 * t + 2
    return 0.0


def ref_resize_1d(v: np.ndarray, scale: float) -> np.ndarray:
    """One line resized as MATLAB does: stretched kernel when shrinking, mirrored indices."""
    n = len(v)
    width = 4.0 / scale if scale < 1 else 4.0
    out = []
    for i in range(1, math.ceil(n * scale) + 1):
        u = i / scale + 0.5 * (1 - 1 / scale)
        left = math.floor(u - width / 2)
        acc = total = 0.0
        for j in range(left, left + math.ceil(width) + 2):
            w = scale * ref_cubic(scale * (u - j)) if scale < 1 else ref_cubic(u - j)
            aux = list(range(1, n + 1)) + list(range(n, 0, -1))  # MATLAB's [1:n, n:-1:1]
            src = aux[(j - 1) % (2 * n)] - 1
            acc += w * v[src]
            total += w
        out.append(acc / total)
    return np.array(out)


def ref_imresize(img: np.ndarray, scale: float, as_uint8: bool = False) -> np.ndarray:
    """A 2-D image: rows (dimension 1) first, then columns; uint8 rounding after each pass."""
    def to_uint8(a: np.ndarray) -> np.ndarray:
        return np.floor(np.clip(a, 0, 255) + 0.5)

    rows = np.stack([ref_resize_1d(img[:, c], scale) for c in range(img.shape[1])], axis=1)
    if as_uint8:
        rows = to_uint8(rows)
    out = np.stack([ref_resize_1d(rows[r, :], scale) for r in range(rows.shape[0])], axis=0)
    return to_uint8(out) if as_uint8 else out


SCALES = [1 / 2, 1 / 3, 1 / 4, 2, 3]


@pytest.mark.parametrize("scale", SCALES)
@pytest.mark.parametrize("size", [(13, 17), (9, 7)])
def test_imresize_matches_reference(scale, size):
    rng = np.random.default_rng(0)
    img = rng.uniform(0, 255, size)
    ours = imresize(torch.from_numpy(img)[None], scale)[0].numpy()
    np.testing.assert_allclose(ours, ref_imresize(img, scale), rtol=0, atol=1e-9)


@pytest.mark.parametrize("scale", [1 / 4, 1 / 3])
def test_imresize_tiny_input_wraps_like_matlab(scale):
    """A kernel wider than the image: indices wrap through the mirrored line more than once."""
    img = np.random.default_rng(1).uniform(0, 255, (3, 2))
    ours = imresize(torch.from_numpy(img)[None], scale)[0].numpy()
    np.testing.assert_allclose(ours, ref_imresize(img, scale), rtol=0, atol=1e-9)


def test_imresize_published_matlab_values():
    """imresize([0 0 1 1 0], [1 10]) in MATLAB (printed to 4 decimals, Stack Overflow 17380407).

    That post (2013) predates MATLAB's switch from replicated borders ("Clamp out-of-range
    indices") to mirrored ones ("Mirror out-of-bounds indices; equivalent of doing symmetric
    padding"), which only changes the last value: its taps 6 and 7 (weights cubic(0.75),
    cubic(1.75)) land on pixels 5 and 4 when mirrored, on pixel 5 twice when replicated.
    """
    matlab = [0, -0.0234, -0.0703, 0.2031, 0.7969, 1.0938, 1.0938, 0.7969, 0.2031]
    replicated_last = -0.0703
    mirrored_last = ref_cubic(1.25) * 1 + ref_cubic(1.75) * 1  # pixels 4 and 7->4 hold a 1
    row = torch.tensor([[[0.0, 0, 1, 1, 0]]], dtype=torch.float64)
    out = imresize(row, 2)  # one row becomes two equal rows; columns scale by 2 as in MATLAB
    assert out.shape == (1, 2, 10)
    torch.testing.assert_close(out[0, 0], out[0, 1])
    np.testing.assert_allclose(out[0, 0, :9].numpy(), matlab, atol=5e-5)
    assert out[0, 0, 9].item() == pytest.approx(mirrored_last, abs=1e-12)
    assert out[0, 0, 9].item() != pytest.approx(replicated_last, abs=1e-3)


@pytest.mark.parametrize("scale", SCALES)
def test_constant_stays_constant(scale):
    x = torch.full((3, 11, 14), 77.25, dtype=torch.float64)
    torch.testing.assert_close(imresize(x, scale), torch.full_like(imresize(x, scale), 77.25))


@pytest.mark.parametrize("scale,size,expected", [(1 / 3, (7, 10), (3, 4)), (1 / 4, (9, 6), (3, 2)),
                                                  (1 / 2, (5, 5), (3, 3)), (3, (2, 5), (6, 15))])
def test_output_size_is_ceil(scale, size, expected):
    assert imresize(torch.zeros(2, 1, *size), scale).shape == (2, 1, *expected)


@pytest.mark.parametrize("scale", [2, 3, 1 / 2, 1 / 3])
def test_ramp_stays_linear_away_from_borders(scale):
    """Keys' cubic reproduces straight lines: output = the ramp at MATLAB's sample positions."""
    w = 40
    ramp = torch.arange(w, dtype=torch.float64).expand(1, 6, w)
    out = imresize(ramp, scale)[0, 0]
    j = torch.arange(1, out.shape[-1] + 1, dtype=torch.float64)
    where = j / scale + 0.5 * (1 - 1 / scale) - 1  # 0-based input coordinate of output pixel j
    margin = math.ceil(2 / min(scale, 1)) + 1  # pixels whose kernel reaches the border
    inner = (where >= margin) & (where <= w - 1 - margin)
    torch.testing.assert_close(out[inner], where[inner])


def test_imresize_batched_and_dtype():
    x = torch.rand(2, 3, 12, 10) * 255
    out = imresize(x, 1 / 2)
    assert out.dtype == torch.float32 and out.shape == (2, 3, 6, 5)
    torch.testing.assert_close(out[1], imresize(x[1], 1 / 2))
    torch.testing.assert_close(out.double(), imresize(x.double(), 1 / 2), atol=1e-3, rtol=0)


def test_imresize_rejects_integers():
    with pytest.raises(TypeError):
        imresize(torch.zeros(1, 4, 4, dtype=torch.uint8), 0.5)


# ----------------------------------------------------------------------------------------
# bicubic_lr
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("s", [2, 3, 4])
def test_bicubic_lr_matches_reference_exactly(s):
    rng = np.random.default_rng(s)
    hr = rng.integers(0, 256, (2, 25, 22), dtype=np.uint8)
    lr = bicubic_lr(torch.from_numpy(hr), s, per_pass_rounding=True)
    assert lr.dtype == torch.uint8
    assert lr.shape == (2, 25 // s, 22 // s)
    for c in range(2):
        cropped = hr[c, :25 // s * s, :22 // s * s].astype(np.float64)
        np.testing.assert_array_equal(lr[c].numpy(), ref_imresize(cropped, 1 / s, as_uint8=True))


@pytest.mark.parametrize("s", [2, 3, 4])
def test_bicubic_lr_is_imresize_rounded(s):
    hr = torch.randint(0, 256, (3, 31, 29), dtype=torch.uint8, generator=torch.Generator().manual_seed(s))
    cropped = hr[:, :31 // s * s, :29 // s * s].double()
    once = imresize(cropped, 1 / s).clamp(0, 255).add(0.5).floor().to(torch.uint8)
    assert torch.equal(bicubic_lr(hr, s, per_pass_rounding=False), once)
    h, w = cropped.shape[-2:]  # per pass: rows, rounded to uint8, then columns, rounded
    rows = torch.matmul(resize_matrix(h, h // s, 1 / s), cropped).clamp(0, 255).add(0.5).floor()
    both = torch.matmul(rows, resize_matrix(w, w // s, 1 / s).T).clamp(0, 255).add(0.5).floor()
    assert torch.equal(bicubic_lr(hr, s), both.to(torch.uint8))


def test_bicubic_lr_crops_top_left_and_batches():
    hr = torch.randint(0, 256, (2, 3, 31, 29), dtype=torch.uint8)
    lr = bicubic_lr(hr, 4)
    assert lr.shape == (2, 3, 7, 7)
    torch.testing.assert_close(lr, bicubic_lr(hr[..., :28, :28].contiguous(), 4), rtol=0, atol=0)
    torch.testing.assert_close(lr[1], bicubic_lr(hr[1], 4), rtol=0, atol=0)


def test_bicubic_lr_saturates():
    hr = torch.zeros(1, 12, 12, dtype=torch.uint8)
    hr[:, :, 6:] = 255  # a hard edge overshoots below 0 and above 255 before saturation
    lr = bicubic_lr(hr, 2)
    assert lr.min() == 0 and lr.max() == 255


# ----------------------------------------------------------------------------------------
# Noise
# ----------------------------------------------------------------------------------------
def test_add_noise_is_scaled_randn_unclamped():
    x = torch.full((3, 16, 16), 128.0)
    noisy = add_noise(x, 50, torch.Generator().manual_seed(3))
    expected = 128 + torch.randn(3, 16, 16, generator=torch.Generator().manual_seed(3)) * 50
    torch.testing.assert_close(noisy, expected)
    assert noisy.min() < 0 and noisy.max() > 255  # training inputs are not clamped
    clamped = add_noise(x, 50, torch.Generator().manual_seed(3), clamp=True)
    assert clamped.min() == 0 and clamped.max() == 255


def test_add_noise_accepts_uint8():
    out = add_noise(torch.zeros(1, 4, 4, dtype=torch.uint8), 10)
    assert out.is_floating_point() and out.shape == (1, 4, 4)


def test_eval_noise_depends_on_seed_dataset_and_name():
    hr = torch.randint(0, 256, (3, 20, 24), dtype=torch.uint8).float()
    a = add_eval_noise(hr, 30, 1, "CBSD68", "0001")
    torch.testing.assert_close(a, add_eval_noise(hr, 30, 1, "CBSD68", "0001"), rtol=0, atol=0)
    for other in [(1, "CBSD68", "0002"), (1, "Urban100", "0001"), (2, "CBSD68", "0001")]:
        assert not torch.equal(a, add_eval_noise(hr, 30, *other))
    assert a.min() >= 0 and a.max() <= 255
    assert not torch.equal(a, a.round())  # not rounded


def test_eval_noise_generator_is_stable_across_processes():
    """Seeds come from hashlib, so a different PYTHONHASHSEED gives the same noise."""
    code = ("import torch; from data.degrade import eval_noise_generator as g; "
            "print(torch.randn(3, generator=g(1, 'CBSD68', 'x')).tolist())")
    env = {**os.environ, "PYTHONHASHSEED": "12345"}
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True,
                         text=True, check=True).stdout
    here = torch.randn(3, generator=eval_noise_generator(1, "CBSD68", "x")).tolist()
    assert out.strip() == str(here)


@cuda
def test_eval_noise_and_resize_same_on_cuda():
    hr = torch.randint(0, 256, (3, 30, 33), dtype=torch.uint8)
    cpu = add_eval_noise(hr.float(), 50, 1, "CBSD68", "a")
    gpu = add_eval_noise(hr.float().cuda(), 50, 1, "CBSD68", "a")
    assert gpu.device.type == "cuda"
    torch.testing.assert_close(gpu.cpu(), cpu, rtol=0, atol=0)
    torch.testing.assert_close(bicubic_lr(hr.cuda(), 3).cpu(), bicubic_lr(hr, 3), rtol=0, atol=0)
    x = hr.double()
    torch.testing.assert_close(imresize(x.cuda(), 1 / 3).cpu(), imresize(x, 1 / 3))
    streaks = procedural_streaks((30, 33), torch.Generator().manual_seed(0), device="cuda")
    assert streaks.device.type == "cuda"


# ----------------------------------------------------------------------------------------
# Rain
# ----------------------------------------------------------------------------------------
def test_add_rain_adds_broadcasts_and_clips():
    clean = torch.tensor([[[10.0, 200.0]]]).expand(3, 1, 2)
    streaks = torch.tensor([[[30.0, 100.0]]])
    torch.testing.assert_close(add_rain(clean, streaks), torch.tensor([[[40.0, 255.0]]]).expand(3, 1, 2))
    batch = add_rain(torch.zeros(2, 3, 5, 6, dtype=torch.uint8), torch.full((1, 5, 6), 7.0))
    assert batch.shape == (2, 3, 5, 6) and batch.is_floating_point() and (batch == 7).all()


def test_procedural_streaks_shape_range_and_determinism():
    a = procedural_streaks((40, 50), torch.Generator().manual_seed(5))
    b = procedural_streaks((40, 50), torch.Generator().manual_seed(5))
    assert a.shape == (1, 40, 50) and a.min() >= 0 and a.max() <= 255
    torch.testing.assert_close(a, b, rtol=0, atol=0)
    assert 0 < (a > 0).float().mean() < 0.6
    assert not torch.equal(a, procedural_streaks((40, 50), torch.Generator().manual_seed(6)))


def test_vertical_streaks_run_vertically():
    s = procedural_streaks((64, 64), torch.Generator().manual_seed(0), density=0.003, length=21,
                           angle=0.0, intensity=150)[0]
    vertical = (s[1:, :] - s[:-1, :]).abs().mean()
    horizontal = (s[:, 1:] - s[:, :-1]).abs().mean()
    assert s.max() > 100 and vertical < horizontal / 3


# ----------------------------------------------------------------------------------------
# imresize against Pillow and a hand-computed border
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("scale", [1 / 2, 1 / 3, 1 / 4, 2])
def test_imresize_equals_pillow_float_bicubic_inside(scale):
    from PIL import Image

    factor = round(1 / scale) if scale < 1 else 1
    rng = np.random.default_rng(7)
    img = (rng.random((12 * factor * 2, 12 * factor * 3)) * 255).astype(np.float32)
    h, w = img.shape
    out_h, out_w = math.ceil(h * scale), math.ceil(w * scale)
    pil = np.asarray(Image.fromarray(img, "F").resize((out_w, out_h), Image.BICUBIC), dtype=np.float64)
    ours = imresize(torch.from_numpy(img).double()[None], scale)[0].numpy()
    border = 3
    np.testing.assert_allclose(ours[border:-border, border:-border], pil[border:-border, border:-border],
                               atol=1e-4, rtol=0)


def test_imresize_border_by_hand():
    # x2 upscaling, first output pixel: MATLAB maps it to input coordinate 0.75 (1-based); the
    # cubic weights of inputs -1, 0, 1, 2 are -0.0234375, 0.2265625, 0.8671875, -0.0703125, and
    # symmetric padding reads input -1 as 2 and 0 as 1: 1.09375 * x1 - 0.09375 * x2.
    row = torch.tensor([[[10.0, 20.0, 40.0, 80.0]]], dtype=torch.float64)
    out = imresize(row, 2)
    assert out.shape == (1, 2, 8)
    assert out[0, 0, 0].item() == pytest.approx(1.09375 * 10 - 0.09375 * 20, abs=1e-12)
    assert out[0, 0, -1].item() == pytest.approx(1.09375 * 80 - 0.09375 * 40, abs=1e-12)


# ----------------------------------------------------------------------------------------
# The published LR files
# ----------------------------------------------------------------------------------------
SET5_BIRD = os.path.join(ROOT, "tests", "fixtures", "set5_bird", "benchmark", "Set5")


@pytest.mark.parametrize("s", [2, 3, 4])
def test_bicubic_lr_reproduces_the_standard_set5_files_bit_for_bit(s):
    hr = read_image(os.path.join(SET5_BIRD, "HR", "bird.png"))
    standard = read_image(os.path.join(SET5_BIRD, "LR_bicubic", f"X{s}", f"birdx{s}.png"))
    assert torch.equal(bicubic_lr(hr, s), standard)
    once = bicubic_lr(hr, s, per_pass_rounding=False)  # BasicSR's port: about 1 pixel in 10 off
    assert 0.8 < (once == standard).float().mean().item() < 0.99
