"""The command line end to end: checkpoints in, restored images out."""
from __future__ import annotations

import gc
import os
import platform

import numpy as np
import pytest
import torch
from PIL import Image

import main as cli
import utility
from model import IPT, IPTConfig
from model.checkpoint import select_heads

TINY_ARGS = ["--n_feats", "16", "--num_heads", "4", "--num_layers", "2"]


def write_png(path, size=(71, 66), mode="RGB", seed=0):
    rng = np.random.default_rng(seed)
    channels = {"RGB": 3, "RGBA": 4, "L": 1}[mode]
    arr = rng.integers(0, 256, (size[1], size[0], channels), dtype=np.uint8)
    Image.fromarray(arr.squeeze(-1) if channels == 1 else arr, mode).save(path)


def save_random_model(path, **cfg):
    torch.manual_seed(0)
    with torch.no_grad():
        model = IPT(IPTConfig(**cfg))
    torch.save(model.state_dict(), path)


@pytest.fixture
def demo(tmp_path):
    folder = tmp_path / "demo"
    folder.mkdir()
    write_png(folder / "photo.png")
    return folder


def run(tmp_path, demo, *argv):
    return cli.main(["--test_only", "--cpu", "--data_test", "Demo", "--dir_demo", str(demo),
                     "--save", str(tmp_path / "run"), "--save_results", *argv])


def read_png(path):
    return np.asarray(Image.open(path))


def test_full_size_checkpoints_restore_a_png(tmp_path):
    """A six-task full-size checkpoint as denoise50, and single-task sr2 and sr3 checkpoints made of
    its heads 0 and 1 (select_heads: the layout of the authors' per-task files; one full-size
    model built, not three). The photo fits one tile of 48: the full-size network runs once a case."""
    demo = tmp_path / "demo"
    demo.mkdir()
    write_png(demo / "photo.png", (45, 40))
    torch.manual_seed(0)
    with torch.no_grad():
        six = IPT(IPTConfig(scale=[2, 3, 4, 1, 1, 1], num_queries=6)).state_dict()
    cases = {"denoise50": (six, ["--task", "denoise50"], 1)}
    cases |= {f"x{s}": (select_heads(six, [i]), ["--scale", str(s)], s) for i, s in enumerate((2, 3))}
    for name, (state, options, scale) in cases.items():
        ckpt, out = tmp_path / f"{name}.pt", tmp_path / name
        torch.save(state, ckpt)
        argv = ["--pretrain", str(ckpt), *options, "--chop", "fast", "--save", str(out)]
        assert cli.main(["--test_only", "--cpu", "--data_test", "Demo", "--dir_demo", str(demo),
                         "--save_results", *argv]) == 0
        image = read_png(out / "results-Demo" / f"photo_{name}_SR.png")
        assert image.shape == (40 * scale, 45 * scale, 3), name
        assert os.path.getsize(out / "log.txt") > 0
        ckpt.unlink()  # 460 MB each


def test_renamed_key_fails_and_names_it(tmp_path, demo, caplog):
    ckpt = tmp_path / "bad.pt"
    save_random_model(ckpt, scale=[2], num_queries=1, n_feats=16, num_heads=4, num_layers=2)
    state = torch.load(ckpt, weights_only=True)
    state["tail.0.1.bias_renamed"] = state.pop("tail.0.1.bias")
    torch.save(state, ckpt)
    assert run(tmp_path, demo, "--pretrain", str(ckpt), "--scale", "2", *TINY_ARGS) != 0
    assert "tail.0.1.bias_renamed" in caplog.text and "tail.0.1.bias" in caplog.text


def test_demo_converts_modes_and_survives_bad_files(tmp_path, caplog):
    folder = tmp_path / "mixed"
    folder.mkdir()
    write_png(folder / "grey.png", (50, 49), "L")
    write_png(folder / "alpha.png", (52, 48), "RGBA")
    Image.fromarray(np.full((40, 60, 3), 128, np.uint8)).save(folder / "flat.jpg")
    (folder / "broken.png").write_bytes(b"\x89PNG not really")
    code = run(tmp_path, folder, "--task", "denoise30", *TINY_ARGS)
    assert code == 1
    assert "broken.png" in caplog.text and "1 image(s) could not be read" in caplog.text
    results = tmp_path / "run" / "results-Demo"
    assert sorted(os.listdir(results)) == ["alpha_denoise30_SR.png", "flat_denoise30_SR.png",
                                           "grey_denoise30_SR.png"]
    assert read_png(results / "grey_denoise30_SR.png").shape == (49, 50, 3)


def test_multi_head_model_restores_with_every_head(tmp_path, demo):
    code = run(tmp_path, demo, "--scale", "2+1", "--tasks", "sr2+derain", *TINY_ARGS, "--chop", "fast")
    assert code == 0
    assert sorted(os.listdir(tmp_path / "run" / "results-Demo")) == ["photo_derain_SR.png",
                                                                     "photo_x2_SR.png"]


def test_missing_demo_folder_is_an_error(tmp_path, caplog):
    assert run(tmp_path, tmp_path / "nowhere", *TINY_ARGS) == 1
    assert "nowhere" in caplog.text


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_keep_freed_memory_is_accepted_by_glibc():
    assert utility.keep_freed_memory() is True


def test_collect_again_turns_the_collector_on_with_what_was_made_frozen():
    """main.py turns the garbage collector off as it starts; collect_again ends that, once."""
    def tracked() -> set[int]:  # the collector's generations, which frozen objects have left
        return {id(o) for o in gc.get_objects()}

    gc.disable()
    try:
        made = [[] for _ in range(1000)]  # objects of start-up
        utility.collect_again()
        assert gc.isenabled() and not {id(m) for m in made} & tracked()
        late = []
        utility.collect_again()  # the collector on: nothing more frozen
        assert id(late) in tracked()
    finally:
        gc.enable()
