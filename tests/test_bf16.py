"""--precision bf16: the network's forward under autocast, everything around it in fp32."""
from __future__ import annotations

import json
import logging
import os

import numpy as np
import pytest
import torch
from PIL import Image

import evaluation
import main as cli
import trainer
from model import IPT, IPTConfig, restore
from option import parse_args, settings
from run_settings import InferenceSettings

TINY = dict(n_feats=16, num_heads=4, num_layers=1)
TINY_ARGS = ["--n_feats", "16", "--num_heads", "4", "--num_layers", "1"]
HEADS = ["sr2", "sr3", "derain", "denoise30"]  # four heads of the six-task order
SCALES = [2, 3, 1, 1]
# bf16 keeps 8 significant bits: one rounding moves a value by at most 2^-9 of it, 0.5 of a grey
# level at 255. The tiny model's output (about -100..315 with these random weights) is its last
# convolution, rounded once more on the way out, after a few dozen roundings inside that mostly
# cancel: the mean difference stays within a few such steps (0.4-0.7 levels measured here),
# while single pixels, where roundings of large activations line up, move by up to 11 levels
# (10-26 on the authors' tiny fixture). Running another head moves the mean by 58 levels.
BF16_STEP = 2.0 ** -9 * 255  # 0.5 grey levels
MEAN_TOLERANCE = 4 * BF16_STEP
MAX_TOLERANCE = 64 * BF16_STEP


def tiny_model(layers: int = 1) -> IPT:
    torch.manual_seed(0)
    cfg = IPTConfig(scale=SCALES, task_names=HEADS, num_queries=len(HEADS),
                    **{**TINY, "num_layers": layers})
    return IPT(cfg).eval().requires_grad_(False)


def image(side: int = 60) -> torch.Tensor:
    return torch.rand(1, 3, side, side, generator=torch.Generator().manual_seed(side)) * 255


# ----------------------------------------------------------------------------------------
# restore()
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("mode", ["official", "fast"])
@pytest.mark.parametrize("task_id", range(len(HEADS)))
def test_bf16_restore_is_close_to_single_and_fp32(mode, task_id):
    model, x = tiny_model(layers=2), image()
    single = restore(model, x, task_id, mode)
    bf16 = restore(model, x, task_id, mode, precision="bf16")
    assert bf16.dtype == torch.float32 and bf16.shape == single.shape
    assert torch.isfinite(bf16).all()
    diff = (bf16 - single).abs()
    assert 0 < diff.mean() <= MEAN_TOLERANCE  # it did run in bf16, and close
    assert diff.max() <= MAX_TOLERANCE


def test_bf16_runs_the_forward_under_autocast_and_single_never_does():
    model, seen = tiny_model(), []
    model.register_forward_pre_hook(lambda m, inp: seen.append(
        (torch.is_autocast_enabled("cpu"), torch.get_autocast_dtype("cpu"), inp[0].dtype)))
    restore(model, image(), 0, "official", precision="bf16")
    assert seen and all(s == (True, torch.bfloat16, torch.float32) for s in seen)  # fp32 in
    assert all(p.dtype == torch.float32 for p in model.parameters())  # master weights untouched
    seen.clear()
    with torch.autocast("cpu", dtype=torch.bfloat16):  # e.g. a training step's --amp bf16
        restore(model, image(), 0, "official")
    assert seen and not any(enabled for enabled, _, _ in seen)


@pytest.mark.parametrize("precision", ["double", "fp16", ""])
def test_unknown_precision_is_refused(precision):
    with pytest.raises(ValueError, match="unknown precision"):
        restore(tiny_model(), image(), 0, "fast", precision=precision)


@pytest.mark.parametrize("side", [60, 75])
def test_official_tiling_visits_the_same_tiles_in_the_same_order(side):
    model, x = tiny_model(), image(side)
    calls: dict[str, list[torch.Tensor]] = {}
    for precision in ("single", "bf16"):
        seen = calls[precision] = []
        hook = model.register_forward_pre_hook(lambda m, inp, seen=seen: seen.append(inp[0].clone()))
        restore(model, x, 0, "official", precision=precision)
        hook.remove()
    assert len(calls["single"]) == len(calls["bf16"]) > 1
    for a, b in zip(calls["single"], calls["bf16"], strict=False):  # same tiles, grouped into the same calls
        assert torch.equal(a, b)


# ----------------------------------------------------------------------------------------
# The command line: --test_only and validation during training
# ----------------------------------------------------------------------------------------
@pytest.fixture
def demo(tmp_path):
    folder = tmp_path / "demo"
    folder.mkdir()
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 256, (50, 57, 3), dtype=np.uint8)).save(folder / "photo.png")
    return folder


class ForwardSpy:
    """Records (training mode, autocast on the CPU, its dtype) of every IPT forward."""

    def __init__(self, monkeypatch):
        self.calls: list[tuple[bool, bool, torch.dtype]] = []
        forward = IPT.forward

        def spy(model, *args, **kwargs):
            self.calls.append((model.training, torch.is_autocast_enabled("cpu"),
                               torch.get_autocast_dtype("cpu")))
            return forward(model, *args, **kwargs)

        monkeypatch.setattr(IPT, "forward", spy)

    def autocast(self, training: bool) -> set[bool]:
        """Whether autocast was on, over the forwards in that mode."""
        return {on for mode, on, _ in self.calls if mode == training}


def test_test_only_runs_bf16_end_to_end_and_single_without_autocast(tmp_path, demo, monkeypatch):
    spy = ForwardSpy(monkeypatch)
    for precision in ("bf16", "single"):
        spy.calls.clear()
        run = tmp_path / precision
        code = cli.main(["--test_only", "--cpu", "--data_test", "Demo", "--dir_demo", str(demo),
                         "--save", str(run), "--save_results", "--scale", "2", "--chop",
                         "official", "--precision", precision, *TINY_ARGS])
        assert code == 0
        out = np.asarray(Image.open(run / "results-Demo" / "photo_x2_SR.png"))
        assert out.shape == (100, 114, 3)
        assert spy.calls and spy.autocast(training=False) == {precision == "bf16"}


@pytest.fixture
def dir_data(tmp_path):
    """A --dir_data whose CBSD68 is one small image (denoise30 adds its seeded noise)."""
    folder = tmp_path / "data" / "CBSD68"
    folder.mkdir(parents=True)
    rng = np.random.default_rng(1)
    Image.fromarray(rng.integers(0, 256, (52, 49, 3), dtype=np.uint8)).save(folder / "a.png")
    return folder.parent


@pytest.mark.parametrize("precision", ["bf16", "auto"])
def test_test_only_writes_the_precision_in_its_report(tmp_path, dir_data, caplog, precision):
    code = cli.main(["--test_only", "--cpu", "--data_test", "CBSD68", "--dir_data", str(dir_data),
                     "--scale", "1", "--task", "denoise30", "--chop", "fast", "--precision", precision,
                     "--save", str(tmp_path / "run"), *TINY_ARGS])
    assert code == 0
    meta = json.loads((tmp_path / "run" / "metrics.json").read_text())["meta"]
    used = meta["precision"]  # auto: what it measured faster here
    assert used in ("single", "bf16") and (used == precision or precision == "auto")
    assert f"precision: {used}" in (tmp_path / "run" / "results.md").read_text()
    assert meta["options"]["precision"] == precision
    chosen = [r.getMessage() for r in caplog.records if r.getMessage().startswith("--precision auto")]
    assert (meta["precision_auto"] is None) == (precision == "bf16") and len(chosen) == (precision == "auto")
    assert precision == "bf16" or meta["precision_auto"] in chosen[0]


@pytest.mark.parametrize("fp32,bf16,chosen", [(1.0, 0.5, "bf16"), (1.0, 0.9, "single"), (0.4, 1.0, "single")])
def test_precision_auto_takes_bf16_only_where_it_is_faster_by_a_margin(tiny_model, caplog, fp32, bf16,
                                                                       chosen):
    """The timer stubbed: fp32's timed forward takes ``fp32`` seconds, bf16's ``bf16``."""
    ticks = iter([0.0, fp32, 10.0, 10.0 + bf16])
    with caplog.at_level(logging.INFO, logger="ipt"):
        got = evaluation.auto_precision(tiny_model, InferenceSettings(precision="auto"), lambda: next(ticks))
    lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith("--precision auto")]
    assert got.precision == chosen and len(lines) == 1
    assert lines[0].startswith(f"--precision auto: {chosen} (")
    assert f"{fp32:.3f} s in fp32 and {bf16:.3f} s in bf16" in got.precision_reason
    assert evaluation.auto_precision(tiny_model, got) is got  # a chosen precision stays


def test_precision_auto_times_only_calls_of_a_shape_and_precision_already_run(tiny_model, monkeypatch):
    """Under --compile the first call of a shape (or precision) builds its graph: never the one timed."""
    real, fresh, seen = tiny_model.forward, [], set()

    def forward(x, *args, **kwargs):
        key = (x.shape[0], torch.is_autocast_enabled(x.device.type))
        fresh.append(key not in seen)
        seen.add(key)
        return real(x, *args, **kwargs)

    monkeypatch.setattr(tiny_model, "forward", forward)
    ticks, calls_at_tick = iter([0.0, 1.0, 10.0, 10.5]), []

    def clock() -> float:
        calls_at_tick.append(len(fresh))
        return next(ticks)

    evaluation.auto_precision(tiny_model, InferenceSettings(precision="auto"), clock)
    assert len(calls_at_tick) == 4  # a start and an end per precision
    for start, end in zip(calls_at_tick[::2], calls_at_tick[1::2], strict=True):
        assert end > start and not any(fresh[start:end]), fresh


def test_validation_while_training_follows_precision_not_amp(tmp_path, dir_data, monkeypatch):
    spy = ForwardSpy(monkeypatch)
    for precision, amp in (("bf16", "none"), ("single", "bf16")):
        spy.calls.clear()
        run = tmp_path / f"{precision}-{amp}"
        argv = ["--cpu", "--scale", "1", "--task", "denoise30", *TINY_ARGS, "--batch_size", "2",
                "--data_train", "Sample", "--data_test", "CBSD68", "--dir_data", str(dir_data),
                "--n_threads", "0", "--max_steps", "1", "--test_every", "1", "--chop", "fast",
                "--precision", precision, "--amp", amp, "--save", str(run)]
        assert cli.main(argv) == 0
        assert spy.autocast(training=True) == {amp == "bf16"}  # the training step: --amp
        assert spy.autocast(training=False) == {precision == "bf16"}  # validation: --precision
        assert json.loads((run / "metrics.json").read_text())["meta"]["step"] == 1


def test_validator_keeps_the_precision():
    s = settings(parse_args(["--precision", "bf16", "--data_test", "Sample", "--scale", "1",
                             "--task", "denoise30", *TINY_ARGS]))
    assert s.inference.precision == "bf16" and s.run.precision == "bf16"
    assert settings(parse_args([])).inference.precision == "single"


# ----------------------------------------------------------------------------------------
# A CPU without native bf16; --precision half on the CPU
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("flags,warned", [
    ({"fpu", "avx2", "avx512f"}, True),  # AVX-512 without its bf16 extension
    ({"fpu", "avx512f", "avx512_bf16"}, False),
    ({"fpu", "amx_bf16", "amx_tile"}, False),
    ({"fp", "asimd", "bf16"}, False),  # Arm
    (None, False),  # unknown (no /proc/cpuinfo): no warning
])
def test_emulated_bf16_warns_once_in_one_line(tmp_path, demo, monkeypatch, caplog, flags, warned):
    monkeypatch.setattr(evaluation, "cpu_flags", lambda: flags)
    caplog.set_level(logging.WARNING, logger="ipt")
    assert cli.main(["--test_only", "--cpu", "--data_test", "Demo", "--dir_demo", str(demo),
                     "--save", str(tmp_path / "run"), "--scale", "2", "--chop", "fast",
                     "--precision", "bf16", *TINY_ARGS]) == 0
    lines = [r.getMessage() for r in caplog.records if "--precision bf16" in r.getMessage()]
    assert len(lines) == (1 if warned else 0)
    if warned:
        assert "\n" not in lines[0] and "no native bf16" in lines[0] and "emulates" in lines[0]
        assert torch.backends.cpu.get_cpu_capability() in lines[0]


def test_no_emulation_warning_in_single(monkeypatch, caplog):
    monkeypatch.setattr(evaluation, "cpu_flags", lambda: {"fpu", "avx2"})
    evaluation.warn_precision(tiny_model(), "single")
    assert not caplog.records
    evaluation.warn_precision(tiny_model(), "bf16")
    assert len(caplog.records) == 1


def test_cpu_flags_reads_this_machine():
    flags = evaluation.cpu_flags()
    if not os.path.isfile("/proc/cpuinfo"):
        assert flags is None
    else:
        assert flags and all(" " not in f for f in flags)


def test_half_on_the_cpu_is_refused_in_one_line_pointing_at_bf16(capsys):
    with pytest.raises(SystemExit) as stop:
        parse_args(["--precision", "half", "--cpu"])
    err = capsys.readouterr().err.strip().splitlines()
    assert stop.value.code == 2 and len(err) == 1
    assert "--precision half needs a CUDA device" in err[0] and "--precision bf16" in err[0]


@pytest.mark.parametrize("bf16_seconds,amp", [(0.5, "bf16"), (0.95, "none")])
def test_amp_auto_trains_in_bf16_only_where_its_forward_is_faster(tmp_path, monkeypatch, caplog,
                                                                  bf16_seconds, amp):
    """The timer stubbed (fp32's timed forward 1 s): the trainer gets the --amp chosen; one line."""
    real, seen = evaluation.auto_precision, []
    ticks = iter([0.0, 1.0, 10.0, 10.0 + bf16_seconds])
    monkeypatch.setattr(evaluation, "auto_precision",
                        lambda model, inference, **kw: real(model, inference, lambda: next(ticks), **kw))
    make = trainer.Trainer.__init__

    def init(self, settings, *args, **kwargs):
        seen.append(settings.amp)
        make(self, settings, *args, **kwargs)

    monkeypatch.setattr(trainer.Trainer, "__init__", init)
    argv = ["--cpu", "--scale", "2", "--data_train", "Sample", "--data_test", "Demo", "--n_threads", "0",
            "--patch_size", "12", "--batch_size", "2", "--max_steps", "1", "--amp", "auto",
            "--save", str(tmp_path), *TINY_ARGS]
    with caplog.at_level(logging.INFO, logger="ipt"):
        assert cli.main(argv) == 0
    chosen = [r.getMessage() for r in caplog.records if r.getMessage().startswith("--amp auto")]
    said = "bf16" if amp == "bf16" else "single"
    assert seen == [amp] and len(chosen) == 1 and chosen[0].startswith(f"--amp auto: {said} (")


def test_amp_and_precision_auto_take_one_measurement_said_in_one_line(tmp_path, monkeypatch, caplog):
    """Both auto: the stubbed clock holds the ticks of one measurement, which decides training's
    --amp and the validations' --precision (recorded in metrics.json)."""
    real, ticks = evaluation.auto_precision, iter([0.0, 1.0, 10.0, 10.5])
    monkeypatch.setattr(evaluation, "auto_precision",
                        lambda model, inference, **kw: real(model, inference, lambda: next(ticks), **kw))
    hr = tmp_path / "data" / "benchmark" / "Set5" / "HR"
    hr.mkdir(parents=True)
    Image.new("RGB", (48, 48), (90, 120, 30)).save(hr / "baby.png")
    argv = ["--cpu", "--scale", "2", "--data_train", "Sample", "--data_test", "Set5", "--dir_data",
            str(tmp_path / "data"), "--test_every", "1", "--n_threads", "0", "--patch_size", "12",
            "--batch_size", "2", "--max_steps", "1", "--amp", "auto", "--precision", "auto",
            "--save", str(tmp_path / "run"), *TINY_ARGS]
    with caplog.at_level(logging.INFO, logger="ipt"):
        assert cli.main(argv) == 0
    chosen = [r.getMessage() for r in caplog.records if " auto: " in r.getMessage()]
    assert len(chosen) == 1 and chosen[0].startswith("--amp and --precision auto: bf16 ("), chosen
    meta = json.loads((tmp_path / "run" / "metrics.json").read_text())["meta"]
    assert meta["precision"] == "bf16" and meta["precision_auto"] in chosen[0]
