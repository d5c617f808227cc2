"""Nothing the program reads runs code, nothing it writes is lost, no wrong result goes unsaid."""
from __future__ import annotations

import json
import os
import resource
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

import checkpointing
import main as cli
import runfolder
import trainer
import utility
from conftest import ROOT
from data import training
from data.images import DataLayoutError
from model import IPT, CheckpointError, IPTConfig, load_checkpoint, restore, tiling
from option import parse_args, settings

TINY = ["--n_feats", "16", "--num_heads", "4", "--num_layers", "1"]
TRAIN = ["--cpu", *TINY, "--scale", "2", "--patch_size", "12", "--batch_size", "2",
         "--data_train", "Sample", "--data_test", "Demo", "--n_threads", "0", "--lr", "1e-3"]


def write_png(path, size=(40, 36), seed=0):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)).save(path)


def demo_run(tmp_path, demo, *argv):
    return cli.main(["--test_only", "--cpu", *TINY, "--scale", "2", "--chop", "fast",
                     "--data_test", "Demo", "--dir_demo", str(demo), "--save", str(tmp_path / "run"),
                     "--save_results", *argv])


class Planted:
    """An object whose unpickling runs code: it creates the marker file."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return exec, (f"open({self.marker!r}, 'w').write('ran')",)


# ----------------------------------------------------------------------------------------
# Nothing the program reads can run code
# ----------------------------------------------------------------------------------------
def test_planted_state_runs_no_code_on_resume(tmp_path, caplog):
    run = tmp_path / "run"
    assert cli.main([*TRAIN, "--max_steps", "1", "--save", str(run)]) == 0
    marker = tmp_path / "marker"
    torch.save({"options": Planted(str(marker))}, run / checkpointing.STATE_NAME)
    assert cli.main([*TRAIN, "--max_steps", "2", "--save", str(run), "--resume"]) == 1
    assert not marker.exists()
    assert str(run / checkpointing.STATE_NAME) in caplog.text


def test_planted_checkpoint_runs_no_code(tmp_path, caplog):
    marker, ckpt = tmp_path / "marker", tmp_path / "evil.pt"
    torch.save({"state_dict": Planted(str(marker))}, ckpt)
    demo = tmp_path / "demo"
    demo.mkdir()
    write_png(demo / "a.png")
    assert demo_run(tmp_path, demo, "--pretrain", str(ckpt)) == 1
    assert not marker.exists()
    assert str(ckpt) in caplog.text


@pytest.mark.filterwarnings("error::UserWarning")  # pytest would catch torch's note, not print it
def test_a_raw_pickle_is_refused_in_one_line(tmp_path, capfd):
    """A pickle of protocol 4 (not torch.save's) printed torch's two-line UserWarning before the
    refusal, and --auto_resume was told to --reset, which it refuses."""
    import pickle
    run, marker = tmp_path / "run", tmp_path / "marker"
    run.mkdir()
    with open(run / checkpointing.STATE_NAME, "wb") as f:
        pickle.dump(Planted(str(marker)), f, protocol=4)
    assert cli.main([*TRAIN, "--max_steps", "2", "--save", str(run), "--auto_resume"]) == 1
    err = capfd.readouterr().err
    assert not marker.exists() and "pickle protocol" not in err, err
    assert err.strip().splitlines()[-1].endswith("damaged; move it away, or start afresh with --reset)")


def test_training_state_round_trips_weights_only(tmp_path):
    run = tmp_path / "run"
    assert cli.main([*TRAIN, "--max_steps", "2", "--save", str(run)]) == 0
    state = torch.load(run / checkpointing.STATE_NAME, weights_only=True)  # raises if not plain
    np.random.seed(5)
    checkpointing.set_rng_states(state["rng"])
    after = np.random.rand(3)
    checkpointing.set_rng_states(state["rng"])
    assert np.array_equal(after, np.random.rand(3))


def test_truncated_state_is_one_line(tmp_path, caplog):
    run = tmp_path / "run"
    assert cli.main([*TRAIN, "--max_steps", "1", "--save", str(run)]) == 0
    path = run / checkpointing.STATE_NAME
    path.write_bytes(path.read_bytes()[:1000])
    assert cli.main([*TRAIN, "--max_steps", "2", "--save", str(run), "--resume"]) == 1
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and str(path) in errors[0].getMessage()
    assert "\n" not in errors[0].getMessage()


# ----------------------------------------------------------------------------------------
# Nothing lost
# ----------------------------------------------------------------------------------------
def test_a_run_directory_held_by_a_live_process_is_refused(tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (run / runfolder.LOCK_NAME).write_text(json.dumps(
            {"host": os.uname().nodename, "pid": holder.pid, "command": "main.py --save run"}))
        assert cli.main([*TRAIN, "--max_steps", "1", "--save", str(run)]) == 1
        err = capsys.readouterr().err
        assert str(holder.pid) in err and "in use" in err
        assert not (run / checkpointing.STATE_NAME).exists()
    finally:
        holder.kill()
        holder.wait()
    # the holder is gone: its lock is stale, reported and replaced; released at the end
    assert cli.main([*TRAIN, "--max_steps", "1", "--save", str(run)]) == 0
    assert "stale lock" in (run / utility.LOG_NAME).read_text()
    assert not (run / runfolder.LOCK_NAME).exists()


def test_two_runs_into_one_directory(tmp_path):
    """Two real processes: the second is refused while the first runs, which then finishes."""
    run = tmp_path / "run"
    argv = [sys.executable, "main.py", *TRAIN, "--save", str(run), "--max_steps"]
    first = subprocess.Popen([*argv, "400"], cwd=ROOT, stdout=subprocess.DEVNULL,
                             stderr=subprocess.PIPE, text=True)
    try:
        while not (run / runfolder.LOCK_NAME).exists():
            assert first.poll() is None, first.stderr.read()
            time.sleep(0.1)
        second = subprocess.run([*argv, "2"], cwd=ROOT, capture_output=True, text=True)
        assert second.returncode == 1 and "in use by process" in second.stderr
    finally:
        first.send_signal(signal.SIGTERM)  # saves and stops
        first.wait(timeout=120)
    assert first.returncode == 130  # interrupted, its state saved for --resume
    state = torch.load(run / checkpointing.STATE_NAME, weights_only=True)
    assert state["options"]["max_steps"] == 400  # the first run's, untouched by the second
    assert not [n for n in os.listdir(run) if n.endswith(".tmp")]


def test_temporary_names_differ_per_write(tmp_path, monkeypatch):
    seen = []
    monkeypatch.setattr(os, "replace", lambda a, b: seen.append(a) or os.rename(a, b))
    for _ in range(2):
        runfolder.write_json(str(tmp_path / "a.json"), {"x": 1})
    assert len(set(seen)) == 2 and all(str(tmp_path) in s for s in seen)


def failing_batches(fail_at: int):
    """Batches of a tiny sr2 model that raise a data error when batch ``fail_at`` is read."""
    def batches(start):
        for step in range(start, 10 ** 6):
            if step == fail_at:
                raise DataLayoutError("sizes do not match for x2: HR 50x50, LR 20x20")
            g = torch.Generator().manual_seed(step)
            hr = torch.rand(2, 3, 24, 24, generator=g) * 255
            yield {"lr": torch.nn.functional.avg_pool2d(hr, 2), "hr": hr, "task_id": 0, "step": step}
    return batches


def tiny_trainer(tmp_path, batches, extra=()):
    args = parse_args([*TRAIN, "--save", str(tmp_path), "--save_every", "5", "--max_steps", "20",
                       *extra])
    model = IPT(IPTConfig(n_feats=16, num_heads=4, num_layers=1, scale=[2], patch_size=12))
    return trainer.Trainer(settings(args).train, model, batches, None, 20, 20)


def test_an_error_during_training_saves_the_state_of_its_step(tmp_path):
    runner = tiny_trainer(tmp_path, failing_batches(9))
    with pytest.raises(DataLayoutError):
        runner.fit()
    assert checkpointing.read_state(str(tmp_path / checkpointing.STATE_NAME))["progress"]["step"] == 9


def test_cli_reports_a_data_error_in_one_line(tmp_path, caplog):
    root = tmp_path / "data" / "DIV2K"
    (root / "DIV2K_train_HR").mkdir(parents=True)
    (root / "DIV2K_train_LR_bicubic" / "X2").mkdir(parents=True)
    for i in (1, 2):
        write_png(root / "DIV2K_train_HR" / f"{i:04d}.png", (60, 60), seed=i)
        write_png(root / "DIV2K_train_LR_bicubic" / "X2" / f"{i:04d}x2.png", (20, 20), seed=i)
    run = tmp_path / "run"
    argv = [*TRAIN, "--data_train", "DIV2K", "--dir_data", str(tmp_path / "data"),
            "--data_range", "1-2/3-3", "--max_steps", "5", "--save", str(run)]
    assert cli.main(argv) == 1
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "sizes do not match" in errors[0] and "--resume" in errors[0]
    assert "Traceback" not in errors[0]
    assert checkpointing.read_state(str(run / checkpointing.STATE_NAME))["progress"]["step"] == 0


@pytest.fixture
def file_size_limit():
    """Writes past 256 KiB fail with EFBIG, as on a full disk (the limit is per process)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    previous = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    resource.setrlimit(resource.RLIMIT_FSIZE, (256 * 1024, hard))
    yield
    resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
    signal.signal(signal.SIGXFSZ, previous)


def test_a_full_disk_names_the_file_and_keeps_the_previous_one(tmp_path, file_size_limit):
    path = tmp_path / "model_latest.pt"
    runfolder.atomic_save({"w": torch.zeros(10)}, str(path))
    before = path.read_bytes()
    with pytest.raises(runfolder.SaveError) as err:
        runfolder.atomic_save({"w": torch.zeros(10 ** 6)}, str(path))
    assert str(path) in str(err.value) and "MiB free" in str(err.value)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["model_latest.pt"]  # no temporary left


def limit_file_size(limit: int):
    """For a child process: writes past ``limit`` bytes fail (EFBIG) as on a full disk."""
    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))
    return apply


def test_a_full_disk_during_training_is_one_line_and_keeps_the_state(tmp_path):
    run = tmp_path / "run"
    assert cli.main([*TRAIN, "--max_steps", "2", "--save", str(run)]) == 0
    before = (run / checkpointing.STATE_NAME).read_bytes()  # about 10 MB; model_latest.pt about 3 MB
    child = subprocess.run([sys.executable, "main.py", *TRAIN, "--max_steps", "4", "--resume",
                            "--save", str(run)], cwd=ROOT, capture_output=True, text=True,
                           preexec_fn=limit_file_size(5 * 2 ** 20))
    assert child.returncode == 1 and "Traceback" not in child.stderr
    errors = [line for line in child.stderr.splitlines() if line.startswith("ERROR")]
    assert any(str(run / checkpointing.STATE_NAME) in e and "MiB free" in e for e in errors), errors
    assert (run / checkpointing.STATE_NAME).read_bytes() == before
    assert not [n for n in os.listdir(run) if n.endswith(".tmp")]


def test_same_stem_inputs_get_their_own_outputs(tmp_path):
    demo = tmp_path / "demo"
    demo.mkdir()
    write_png(demo / "same.png", seed=1)
    Image.open(demo / "same.png").save(demo / "same.jpg")
    assert demo_run(tmp_path, demo) == 0
    outputs = sorted(os.listdir(tmp_path / "run" / "results-Demo"))
    assert len(outputs) == 2 and outputs[0] != outputs[1]


def test_a_symlink_in_the_results_is_replaced_not_followed(tmp_path):
    demo = tmp_path / "demo"
    demo.mkdir()
    write_png(demo / "photo.png")
    outside = tmp_path / "precious.txt"
    outside.write_text("keep me")
    results = tmp_path / "run" / "results-Demo"
    results.mkdir(parents=True)
    os.symlink(outside, results / "photo_x2_SR.png")
    assert demo_run(tmp_path, demo) == 0
    assert outside.read_text() == "keep me"
    assert not os.path.islink(results / "photo_x2_SR.png")
    assert Image.open(results / "photo_x2_SR.png").size == (80, 72)


def tiny_set5(root) -> str:
    """A two-image Set5 in the EDSR layout (LR made by the program)."""
    hr = root / "benchmark" / "Set5" / "HR"
    hr.mkdir(parents=True)
    for i in range(2):
        write_png(hr / f"im{i}.png", (32, 28), seed=i)
    return str(root)


def test_evaluation_writes_beside_a_training_runs_metrics(tmp_path):
    run, data = tmp_path / "run", tiny_set5(tmp_path / "data")
    sets = ["--data_test", "Set5", "--dir_data", data, "--chop", "fast", "--save", str(run)]
    assert cli.main([*TRAIN, "--max_steps", "1", "--test_every", "1", *sets]) == 0
    validation = (run / "metrics.json").read_text()
    assert cli.main(["--test_only", "--cpu", *TINY, "--scale", "2", "--patch_size", "12",
                     "--pretrain", str(run / "model" / "model_latest.pt"), *sets]) == 0
    assert (run / "metrics.json").read_text() == validation
    assert json.loads((run / "metrics_test.json").read_text())["meta"]["step"] is None


# ----------------------------------------------------------------------------------------
# No silent wrong result
# ----------------------------------------------------------------------------------------
def small_model():
    torch.manual_seed(0)
    return IPT(IPTConfig(n_feats=16, num_heads=4, num_layers=1, scale=[2]))


def test_non_finite_checkpoints_are_refused_naming_the_keys(tmp_path):
    state = small_model().state_dict()
    state["head.0.0.weight"][0, 0, 0, 0] = float("nan")
    torch.save(state, tmp_path / "nan.pt")
    with pytest.raises(CheckpointError, match=r"head\.0\.0\.weight"):
        load_checkpoint(small_model(), str(tmp_path / "nan.pt"))


def test_converted_dtypes_are_said(tmp_path, caplog):
    state = small_model().state_dict()
    state["head.0.0.weight"] = state["head.0.0.weight"].round().long()
    torch.save(state, tmp_path / "int.pt")
    load_checkpoint(small_model(), str(tmp_path / "int.pt"))
    assert "head.0.0.weight (torch.int64 -> torch.float32)" in caplog.text


def test_non_finite_weights_are_never_saved(tmp_path):
    runner = tiny_trainer(tmp_path, failing_batches(10 ** 9))
    assert runner.save()
    before = (tmp_path / "model" / "model_latest.pt").read_bytes()
    with torch.no_grad():
        next(runner.model.parameters()).fill_(float("inf"))
    assert not runner.save()
    assert (tmp_path / "model" / "model_latest.pt").read_bytes() == before


def test_a_run_that_cannot_make_a_finite_step_stops_with_status_1(tmp_path, caplog):
    run = tmp_path / "run"  # SGD at 1e38 overflows the weights at its first step
    assert cli.main([*TRAIN, "--optimizer", "SGD", "--lr", "1e38", "--max_steps", "30",
                     "--save_every", "1", "--save", str(run)]) == 1
    assert "NaN or infinite" in caplog.text
    assert not (run / "model" / "model_latest.pt").exists()  # no step left finite weights


def test_save_models_keeps_every_saved_step(tmp_path):
    run = tmp_path / "run"
    assert cli.main([*TRAIN, "--max_steps", "4", "--save_every", "2", "--save_models",
                     "--save", str(run)]) == 0
    assert {"model_2.pt", "model_4.pt", "model_latest.pt"} <= set(os.listdir(run / "model"))
    demo = tmp_path / "demo"
    demo.mkdir()
    write_png(demo / "a.png")
    assert cli.main(["--test_only", "--cpu", *TINY, "--scale", "2", "--chop", "fast",
                     "--patch_size", "12", "--data_test", "Demo", "--dir_demo", str(demo),
                     "--save", str(run), "--resume", "2"]) == 0
    assert "model_2.pt" in (run / utility.LOG_NAME).read_text()


# ----------------------------------------------------------------------------------------
# No traceback, no hang
# ----------------------------------------------------------------------------------------
@pytest.mark.filterwarnings("ignore::PIL.Image.DecompressionBombWarning")
def test_demo_skips_bombs_and_pipes_and_restores_the_rest(tmp_path, monkeypatch, caplog):
    demo = tmp_path / "demo"
    demo.mkdir()
    write_png(demo / "good.png")
    write_png(demo / "bomb.png", (64, 64))
    os.mkfifo(demo / "fifo.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 1000)  # bomb.png is 4096 pixels: 4x past it
    assert demo_run(tmp_path, demo, "--n_threads", "0") == 1
    assert os.listdir(tmp_path / "run" / "results-Demo") == ["good_x2_SR.png"]
    assert "bomb.png" in caplog.text and "fifo.png" in caplog.text  # each skipped and counted
    assert "2 image(s) could not be read" in caplog.text


@pytest.mark.parametrize("where", ["file", "under_a_file"])
def test_unusable_save_is_one_line(tmp_path, capsys, where):
    blocker = tmp_path / "file"
    blocker.write_text("x")
    save = blocker if where == "file" else blocker / "run"
    demo = tmp_path / "demo"
    demo.mkdir()
    assert cli.main(["--test_only", "--cpu", *TINY, "--scale", "2", "--data_test", "Demo",
                     "--dir_demo", str(demo), "--save", str(save)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and str(save) in err[0] and "--save" in err[0]


def test_resume_into_a_missing_folder_creates_nothing(tmp_path, capsys):
    run = tmp_path / "nowhere"
    assert cli.main([*TRAIN, "--max_steps", "1", "--save", str(run), "--resume"]) == 1
    assert not run.exists() and "no run directory" in capsys.readouterr().err


def test_a_folder_given_as_checkpoint_is_not_said_to_be_missing(tmp_path):
    with pytest.raises(CheckpointError, match="is not a file"):
        load_checkpoint(small_model(), str(tmp_path))


def test_default_workers_train_on_sample(tmp_path, caplog, monkeypatch):
    monkeypatch.setattr(training, "usable_cpus", lambda: 2)
    monkeypatch.setattr(cli.utility, "usable_cpus", lambda: 2)
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    argv = [a for a in TRAIN if a not in ("--n_threads", "0")]
    before = torch.get_num_threads()
    try:
        assert cli.main([*argv, "--max_steps", "1", "--save", str(tmp_path / "run")]) == 0
    finally:
        torch.set_num_threads(before)
    # --n_threads 6 on two cores: both compute, the data is read in the training process
    assert "CPU: 2 compute thread(s) and 0 loader worker(s) on 2 usable core(s)" in caplog.text


def test_a_long_image_shows_tile_progress(capsys, monkeypatch):
    monkeypatch.setattr(tiling, "PROGRESS_DELAY_S", 0)
    model = small_model().eval()
    restore(model, torch.rand(1, 3, 60, 60) * 255, 0, "fast", progress=True)
    assert "tiles" in capsys.readouterr().err
    restore(model, torch.rand(1, 3, 60, 60) * 255, 0, "fast")
    assert "tiles" not in capsys.readouterr().err
