"""Reading images from disk: orientation, float and 32-bit modes, bombs, pipes, names, test sets,
greyscale test images."""
from __future__ import annotations

import io
import json
import os
import struct
import zlib

import numpy as np
import pytest
import torch
from PIL import Image

import main as cli
import metrics
from data.benchmark import BenchmarkError, BenchmarkSet
from data.degrade import bicubic_lr
from data.images import DataLayoutError, ImageFolder, ImageReadError, decode_image, list_images, read_image
from data.listing import walk_images
from data.sources import TrainingDataError
from data.stream import PairStream

EXIF_ORIENTATION = 0x0112
ROTATED_90_CW = 6  # viewers turn the stored pixels 90 degrees clockwise
PNG_IHDR_WIDTH = 16  # byte offsets in a PNG: signature (8), IHDR length (4) and type (4), data
PNG_IHDR_DATA = 13


def blocks(h: int = 32, w: int = 48) -> np.ndarray:
    """An asymmetric image of flat 16x16 colour blocks (JPEG keeps them nearly exact)."""
    rng = np.random.default_rng(0)
    colours = rng.integers(0, 256, (h // 16, w // 16, 3), dtype=np.uint8)
    return np.repeat(np.repeat(colours, 16, axis=0), 16, axis=1)


def chw(arr: np.ndarray) -> torch.Tensor:
    return torch.from_numpy(np.ascontiguousarray(arr)).permute(2, 0, 1)


def with_orientation(orientation: int) -> Image.Exif:
    exif = Image.Exif()
    exif[EXIF_ORIENTATION] = orientation
    return exif


def save(arr: np.ndarray, path) -> str:
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(arr).save(path)
    return str(path)


def test_exif_orientation_is_applied(tmp_path):
    arr = blocks()
    viewed = chw(np.rot90(arr, k=-1))  # what a viewer shows for Orientation 6
    path = tmp_path / "turned.jpg"
    Image.fromarray(arr).save(path, quality=95, exif=with_orientation(ROTATED_90_CW))
    got = read_image(str(path))
    assert got.shape == (3, 48, 32)
    assert (got.int() - viewed.int()).abs().float().mean() < 3
    buffer = io.BytesIO()
    Image.fromarray(arr).save(buffer, "PNG", exif=with_orientation(ROTATED_90_CW))
    assert torch.equal(decode_image(io.BytesIO(buffer.getvalue()), "turned.png"), viewed)


def test_float_images_in_0_1_are_scaled(tmp_path):
    levels = np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4)
    path = tmp_path / "x.tif"
    Image.fromarray(levels).save(path)
    got = read_image(str(path))
    expected = torch.from_numpy(np.rint(levels.astype(np.float64) * 255).astype(np.uint8))
    assert got.shape == (3, 3, 4) and all(torch.equal(c, expected) for c in got)


@pytest.mark.parametrize("values,found", [
    (np.array([[0, 0.5], [1.5, 1]], np.float32), "0..1.5"),
    (np.array([[-0.25, 0.5], [0, 1]], np.float32), "-0.25..1"),
    (np.array([[np.nan, 0.5], [0, 1]], np.float32), "NaN/inf"),
    (np.array([[0, 65535], [1_000_000, 3]], np.int32), "0..1e+06"),
    (np.array([[0, -7], [255, 3]], np.int32), "-7..255"),
])
def test_float_and_32_bit_images_out_of_range_are_refused(tmp_path, values, found):
    path = tmp_path / "x.tif"
    Image.fromarray(values).save(path)
    with pytest.raises(ImageReadError, match="convert it to 8- or 16-bit") as e:
        read_image(str(path))
    assert str(path) in str(e.value) and found in str(e.value)


def test_32_bit_images_within_16_bits_are_read_as_16_bit(tmp_path):
    values = np.array([[0, 257], [65535, 1_000_000]], np.int32)
    path = tmp_path / "x.tif"
    Image.fromarray(values[:1]).save(path)
    assert read_image(str(path))[:, 0].tolist() == [[0, 1]] * 3
    Image.fromarray(values).save(path)
    with pytest.raises(ImageReadError, match="0..1e\\+06"):  # saturated to 255 before
        read_image(str(path))


def bomb_png(width: int = 20000, height: int = 10000) -> bytes:
    """A 1x1 PNG whose header declares width x height pixels (CRC fixed)."""
    buffer = io.BytesIO()
    Image.new("RGB", (1, 1)).save(buffer, "PNG")
    data = bytearray(buffer.getvalue())
    data[PNG_IHDR_WIDTH:PNG_IHDR_WIDTH + 8] = struct.pack(">II", width, height)
    ihdr = data[PNG_IHDR_WIDTH - 4:PNG_IHDR_WIDTH + PNG_IHDR_DATA]  # type and data
    data[PNG_IHDR_WIDTH + PNG_IHDR_DATA:PNG_IHDR_WIDTH + PNG_IHDR_DATA + 4] = struct.pack(
        ">I", zlib.crc32(ihdr))
    return bytes(data)


def test_decompression_bombs_are_unreadable_images(tmp_path):
    (tmp_path / "bomb.png").write_bytes(bomb_png())
    save(blocks(), tmp_path / "fine.png")
    with pytest.raises(ImageReadError, match="bomb.png"):
        read_image(str(tmp_path / "bomb.png"))
    with pytest.raises(ImageReadError, match="bomb.png"):
        decode_image(io.BytesIO(bomb_png()), "bomb.png")
    results = dict(ImageFolder(str(tmp_path))[i] for i in range(2))
    assert isinstance(results["bomb"], ImageReadError) and results["fine"].shape == (3, 32, 48)


def test_pipes_and_folders_named_like_images_are_not_listed(tmp_path):
    save(blocks(), tmp_path / "a.png")
    save(blocks(), tmp_path / "deep/b.jpg")
    os.mkfifo(tmp_path / "fifo.png")
    os.mkfifo(tmp_path / "deep/fifo.jpg")
    os.makedirs(tmp_path / "folder.png")
    os.symlink(tmp_path / "a.png", tmp_path / "link.png")
    assert list_images(str(tmp_path)) == [str(tmp_path / "a.png"), str(tmp_path / "link.png")]
    assert walk_images(str(tmp_path))[0] == [str(tmp_path / "a.png"), str(tmp_path / "deep/b.jpg"),
                                          str(tmp_path / "link.png")]


def test_a_file_given_as_a_folder_is_not_a_folder(tmp_path):
    path = save(blocks(), tmp_path / "a.png")
    with pytest.raises(DataLayoutError, match="is not a folder"):
        list_images(path)
    with pytest.raises(TrainingDataError, match="is not a folder"):
        PairStream(path, ["sr2"], 2)
    with pytest.raises(FileNotFoundError, match="does not exist"):
        list_images(str(tmp_path / "nowhere"))


def test_image_folder_stems_are_unique(tmp_path):
    for name in ("same.png", "same.jpg", "other.bmp", "A.png", "a.PNG", "same_png.png"):
        save(blocks(), tmp_path / name)
    folder = ImageFolder(str(tmp_path))
    by_file = dict(zip((os.path.basename(p) for p in folder.paths), folder.stems, strict=False))
    assert by_file["same.png"] == "same_png" and by_file["same.jpg"] == "same_jpg"
    assert by_file["other.bmp"] == "other"
    assert by_file["A.png"].startswith("A_") and by_file["a.PNG"].startswith("a_")
    assert len({s.lower() for s in folder.stems}) == len(folder.stems) == 6
    assert [folder[i][0] for i in range(len(folder))] == folder.stems


def test_div2k_without_images_in_the_test_range_names_folder_and_range(tmp_path):
    save(blocks(), tmp_path / "DIV2K/DIV2K_valid_HR/0001.png")
    with pytest.raises(BenchmarkError, match="801..810") as e:
        BenchmarkSet(str(tmp_path), "DIV2K", "sr2", 2, div2k_range=(801, 810))
    assert "--data_range" in str(e.value) and str(tmp_path / "DIV2K/DIV2K_valid_HR") in str(e.value)
    assert len(BenchmarkSet(str(tmp_path), "DIV2K", "sr2", 2, div2k_range=(1, 10))) == 1


@pytest.mark.parametrize("dataset,task,scale,hr_file,size,lr_size,least", [
    ("Set5", "sr2", 2, "benchmark/Set5/HR/tiny.png", 1, None, 16),
    ("Set5", "sr2", 2, "benchmark/Set5/HR/tiny.png", 14, None, 16),
    ("Set5", "sr2", 2, "benchmark/Set5/HR/tiny.png", 14, 7, 16),
    ("Set5", "sr4", 4, "benchmark/Set5/HR/tiny.png", 19, None, 20),
    ("CBSD68", "denoise30", 1, "benchmark/CBSD68/HR/tiny.png", 10, None, 11),
    ("Rain100L", "derain", 1, "Rain100L/norain-1.png", 10, None, 11),
])
def test_images_too_small_to_score_name_the_file_and_the_minimum(tmp_path, dataset, task, scale,
                                                                  hr_file, size, lr_size, least):
    hr = save(blocks()[:size, :size], tmp_path / hr_file)
    if lr_size:
        lr_file = f"benchmark/Set5/LR_bicubic/X{scale}/tinyx{scale}.png"
        save(blocks()[:lr_size, :lr_size], tmp_path / lr_file)
    if dataset == "Rain100L":
        save(blocks()[:size, :size], tmp_path / "Rain100L/rain-1.png")
    data = BenchmarkSet(str(tmp_path), dataset, task, scale)
    error = data[0]  # returned, not raised
    assert isinstance(error, BenchmarkError)
    assert hr in str(error) and f"{size}x{size}" in str(error) and f"{least}x{least}" in str(error)


@pytest.mark.parametrize("scale", [2, 3, 4])
def test_the_smallest_scorable_image_can_be_scored(tmp_path, scale):
    data = BenchmarkSet(str(tmp_path), "Sample", f"sr{scale}", scale)
    least = data.min_size()
    save(blocks(48, 48)[:least, :least], tmp_path / "benchmark/Set5/HR/small.png")
    pair = BenchmarkSet(str(tmp_path), "Set5", f"sr{scale}", scale)[0]
    assert pair.hr.shape == (3, least, least) and pair.lr.shape == (3, least // scale, least // scale)
    metrics.calc_ssim(pair.hr.float(), pair.hr.float(), scale)
    with pytest.raises(ValueError):  # one pixel less is cut to whole LR pixels: too small
        metrics.calc_ssim(pair.hr[:, :least - scale, :least - scale].float(),
                          pair.hr[:, :least - scale, :least - scale].float(), scale)


def test_greyscale_hr_is_evaluated_as_three_equal_channels(tmp_path):
    """A mode-L HR image (and LR file), as Set14's bridge is, evaluates as the SR literature does:
    made three-channel, Y computed from that; exactly as the same image saved as RGB."""
    grey = blocks(48, 64)[..., 0]
    three = np.repeat(grey[..., None], 3, axis=2)
    lr = bicubic_lr(chw(three), 2).permute(1, 2, 0).numpy()
    root = tmp_path / "data/benchmark/Set5"
    save(grey, root / "HR/g.png")  # mode L
    save(lr[..., 0], root / "LR_bicubic/X2/gx2.png")
    save(three, root / "HR/c.png")  # RGB, three equal channels
    save(lr, root / "LR_bicubic/X2/cx2.png")
    assert Image.open(root / "HR/g.png").mode == "L" and Image.open(root / "HR/c.png").mode == "RGB"
    run = tmp_path / "run"
    code = cli.main(["--test_only", "--dir_data", str(tmp_path / "data"), "--save", str(run),
                     "--save_results", "--n_feats", "16", "--num_heads", "4", "--num_layers", "1",
                     "--chop", "fast", "--cpu", "--scale", "2", "--data_test", "Set5"])
    assert code == 0
    per_image = json.loads((run / "metrics.json").read_text())["results"]["Set5"]["sr2"]["per_image"]
    assert per_image["g"] == per_image["c"]
    sr = chw(np.array(Image.open(run / "results-Set5/g_x2_SR.png"))).float()
    assert sr.shape == (3, 48, 64)
    assert per_image["g"]["psnr_y"] == pytest.approx(
        metrics.calc_psnr(sr, chw(three).float(), 2)[0], abs=1e-9)
