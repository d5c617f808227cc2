"""Checkpoints written by a thread while training goes on: the same files, in the same order, all
written before fit() returns, failures reported as a synchronous save's are, exact resume."""
from __future__ import annotations

import collections
import json
import logging
import os
import re
import shutil
import signal
import stat
import threading
import time

import torch

import checkpointing
import main as cli
import records
import runfolder
import trainer
import utility
from conftest import full_disk_for_safetensors
from model import build_model
from option import parse_args, settings
from test_training import synthetic_batches

TINY = "--n_feats 16 --num_heads 4 --num_layers 1 --patch_size 12 --batch_size 2"
SAVE_EVERY = 3
# the most a slowed write waits for training to go on: long enough for a few tiny steps on a busy
# machine; with the old code (saves written in the loop's thread) training never went on
WAIT_SECONDS = 20.0


def make_trainer(folder, steps: int, extra: str = "") -> trainer.Trainer:
    """A tiny two-head trainer of ``steps`` steps saving every SAVE_EVERY into ``folder``."""
    args = parse_args(f"{TINY} --scale 2+1 --max_steps {steps} --save {folder} --save_every "
                      f"{SAVE_EVERY} --lr 1e-3 --test_every 1000 --print_every 1000 {extra}".split())
    torch.manual_seed(args.seed)
    model = build_model(settings(args).model)
    return trainer.Trainer(settings(args).train, model, synthetic_batches(args, 2), None, steps, 10)


class SlowWrites:
    """``runfolder.atomic_save`` and ``write_json`` that record every file written (its name, the
    saved step, the training's step when it began and ended, the thread) and copy the state.pt
    of each step to ``copies``; the state.pt of ``slow_steps`` waits first until training has
    gone ``ahead`` steps further (at most WAIT_SECONDS), then calls ``during``."""

    def __init__(self, monkeypatch, runner: trainer.Trainer, copies, slow_steps=(), ahead: int = 2,
                 during=None):
        self.runner, self.copies, self.slow_steps, self.ahead = runner, copies, slow_steps, ahead
        self.during = during  # called in the slowed write, after it waited
        self.real_save, self.real_json = runfolder.atomic_save, runfolder.write_json
        self.writes: list[dict] = []
        os.makedirs(copies, exist_ok=True)
        monkeypatch.setattr(runfolder, "atomic_save", self.save)
        monkeypatch.setattr(runfolder, "write_json", self.json)

    def save(self, obj, path) -> None:
        began = self.runner.progress.step
        step = obj["progress"]["step"] if os.path.basename(path) == utility.STATE_NAME else None
        if step in self.slow_steps:
            target = min(began + self.ahead, self.runner.total_steps)
            wait_until(lambda: self.runner.progress.step >= target)
            if self.during:
                self.during()
        self.real_save(obj, path)
        if step is not None:
            shutil.copy(path, os.path.join(self.copies, f"state_{step}.pt"))
        self.note(path, step, began)

    def json(self, path, data) -> None:
        began = self.runner.progress.step
        self.real_json(path, data)
        self.note(path, data.get("step"), began, json.loads(open(path).read()))

    def note(self, path, step, began, content=None) -> None:
        self.writes.append({"name": os.path.basename(path), "step": step, "began": began,
                            "ended": self.runner.progress.step, "content": content,
                            "main_thread": threading.current_thread() is threading.main_thread(),
                            "stat": os.stat(path)})

    def state_write(self, step: int) -> dict:
        return next(w for w in self.writes if w["name"] == utility.STATE_NAME and w["step"] == step)


def synchronous(patch) -> None:
    """Saves written in the step loop's own thread, as every save was before the writer thread."""
    patch.setattr(runfolder.BackgroundWriter, "submit", lambda self, job: job())


def wait_until(condition) -> None:
    """Until ``condition()`` holds, at most WAIT_SECONDS."""
    deadline = time.monotonic() + WAIT_SECONDS
    while not condition() and time.monotonic() < deadline:
        time.sleep(0.005)


def load(path) -> dict:
    return torch.load(path, map_location="cpu", weights_only=True)


def assert_same(a, b, where: str = "") -> None:
    """Equal nested states: every tensor bit for bit, every other value equal."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and torch.equal(a, b), where
    elif isinstance(a, dict):
        assert a.keys() == b.keys(), where
        for k in a:
            assert_same(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b, strict=False)):
            assert_same(x, y, f"{where}[{i}]")
    else:
        assert a == b, where


def test_training_goes_on_while_a_save_is_written(tmp_path, monkeypatch):
    runner = make_trainer(tmp_path / "run", 6)
    writes = SlowWrites(monkeypatch, runner, tmp_path / "copies", slow_steps=(3,), ahead=2)
    assert runner.fit() == 0
    state = writes.state_write(3)
    assert not state["main_thread"]
    assert state["ended"] - state["began"] >= 2  # steps taken while state.pt of step 3 was written
    assert checkpointing.read_state(str(tmp_path / "run" / utility.STATE_NAME))["progress"]["step"] == 6


def test_a_background_save_writes_what_a_synchronous_save_writes(tmp_path, monkeypatch):
    with monkeypatch.context() as patch:
        synchronous(patch)
        reference = make_trainer(tmp_path / "sync", 5, "--save_models")
        sync = SlowWrites(patch, reference, tmp_path / "sync_copies")
        assert reference.fit() == 0
    runner = make_trainer(tmp_path / "bg", 5, "--save_models")
    background = SlowWrites(monkeypatch, runner, tmp_path / "bg_copies", slow_steps=(3,), ahead=2)
    assert runner.fit() == 0
    assert background.state_write(3)["ended"] >= 5  # training changed the tensors meanwhile
    a, b = load(tmp_path / "sync_copies" / "state_3.pt"), load(tmp_path / "bg_copies" / "state_3.pt")
    assert a["progress"]["step"] == 3
    for state in (a, b):  # a wall-clock measurement: the only field timing may change
        assert state.pop("train_seconds") >= 0
    assert_same(a, b)
    for name in ("model_3.pt", "model_latest.pt"):
        assert_same(load(tmp_path / "sync" / "model" / name), load(tmp_path / "bg" / "model" / name))
    records = [[w["content"] for w in run.writes if w["name"] == utility.TRAINING_RECORD and w["step"] == 3]
               for run in (sync, background)]
    for record in records:  # the weights entries differ by their modification times only
        for entry in record[0]["weights"].values():
            entry.pop("mtime_ns")
        assert record[0].pop("train_seconds") >= 0
    assert records[0] == records[1] and len(records[0]) == 1


def test_files_are_written_weights_then_state_then_record_by_the_writer(tmp_path, monkeypatch):
    runner = make_trainer(tmp_path, 7, "--save_models")
    writes = SlowWrites(monkeypatch, runner, tmp_path / "copies", slow_steps=(3,), ahead=2)
    assert runner.fit() == 0
    names = [(w["name"], w["step"]) for w in writes.writes]
    expected = []
    for step in (3, 6, 7):
        expected += [("model_latest.pt", None), (f"model_{step}.pt", None),
                     (utility.STATE_NAME, step), (utility.TRAINING_RECORD, step)]
    assert names == expected
    periodic = [w for w in writes.writes if w["step"] in (3, 6) or w["name"] in ("model_3.pt", "model_6.pt")]
    assert not any(w["main_thread"] for w in periodic)
    for record in (w for w in writes.writes if w["name"] == utility.TRAINING_RECORD):
        step = record["step"]  # its weights entries: the files as they were when it was written
        latest = writes.writes[writes.writes.index(record) - 3]["stat"]
        assert record["content"]["weights"]["model_latest.pt"] == {
            "step": step, "size": latest.st_size, "mtime_ns": latest.st_mtime_ns}
        assert record["content"]["weights"][f"model_{step}.pt"]["step"] == step
        assert record["stat"].st_mtime_ns >= latest.st_mtime_ns


def test_a_save_still_running_when_training_ends_is_written_before_fit_returns(tmp_path, monkeypatch):
    runner = make_trainer(tmp_path, 7)
    writes = SlowWrites(monkeypatch, runner, tmp_path / "copies", slow_steps=(6,), ahead=1)
    assert runner.fit() == 0
    assert writes.state_write(6)["ended"] == 7  # the last step ran while it was written
    assert not runner.saver.busy
    assert [(w["name"], w["step"]) for w in writes.writes[-6:]] == [
        ("model_latest.pt", None), (utility.STATE_NAME, 6), (utility.TRAINING_RECORD, 6),
        ("model_latest.pt", None), (utility.STATE_NAME, 7), (utility.TRAINING_RECORD, 7)]
    assert load(tmp_path / "copies" / "state_6.pt")["progress"]["step"] == 6
    assert checkpointing.read_state(str(tmp_path / utility.STATE_NAME))["progress"]["step"] == 7
    assert records.read_training_record(str(tmp_path / "model" / "model_latest.pt"))["step"] == 7
    assert not [n for n in os.listdir(tmp_path) + os.listdir(tmp_path / "model") if n.endswith(".tmp")]


def full_disk(monkeypatch, runner: trainer.Trainer) -> list[bool]:
    """state.pt cannot be written from step 3 on; which threads tried, in order."""
    real, threads = runfolder.atomic_save, []

    def save(obj, path):
        if path.endswith(utility.STATE_NAME) and obj["progress"]["step"] >= 3:
            threads.append(threading.current_thread() is threading.main_thread())
            raise runfolder.SaveError(f"cannot write {path} (No space left on device; 0.0 MiB free "
                                    f"there); the previous file, if any, is kept")
        real(obj, path)

    monkeypatch.setattr(runfolder, "atomic_save", save)
    return threads


def failure_lines(caplog) -> list[str]:
    """The ERROR lines, their step numbers and run folders made alike."""
    return [re.sub(r"step \d+", "step N", r.getMessage()).replace("/sync/", "/RUN/").replace("/bg/", "/RUN/")
            for r in caplog.records if r.levelno >= logging.ERROR]


def test_a_full_disk_says_resume_only_when_a_state_was_saved(tmp_path, monkeypatch, caplog):
    real = runfolder.atomic_save
    first_fails = {"step": 0}

    def save(obj, path):
        if path.endswith(utility.STATE_NAME) and obj["progress"]["step"] >= first_fails["step"]:
            raise runfolder.SaveError(f"cannot write {path} (No space left on device)")
        real(obj, path)

    monkeypatch.setattr(runfolder, "atomic_save", save)
    synchronous(monkeypatch)
    for fails, advice in [(0, "start again (nothing was saved yet)"), (6, "continue with --resume")]:
        first_fails["step"] = fails
        caplog.clear()
        assert cli.fit(make_trainer(tmp_path / str(fails), 9)) == 1
        errors = [r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR]
        assert errors and all(e.endswith("(No space left on device); fix that and " + advice)
                              for e in errors), errors


def test_a_save_failing_in_the_writer_ends_the_run_as_a_synchronous_one(tmp_path, monkeypatch, caplog):
    with monkeypatch.context() as patch:
        synchronous(patch)
        reference = make_trainer(tmp_path / "sync", 9)
        full_disk(patch, reference)
        assert cli.fit(reference) == 1
    expected = failure_lines(caplog)
    assert len(expected) == 2 and "training stopped at step N: cannot write" in expected[1]
    caplog.clear()
    runner = make_trainer(tmp_path / "bg", 9)
    threads = full_disk(monkeypatch, runner)
    unhandled = []
    monkeypatch.setattr(threading, "excepthook", unhandled.append)
    assert cli.fit(runner) == 1
    assert threads[0] is False  # the periodic save failed in the writer thread
    assert failure_lines(caplog) == expected
    assert not unhandled and "Traceback" not in caplog.text
    assert not runner.saver.busy
    record = records.read_training_record(str(tmp_path / "bg" / "model" / "model_latest.pt"))
    assert record is None or record["step"] < 3  # never a record of weights without their state


def test_a_full_disk_while_writing_safetensors_stops_training_in_one_line(tmp_path, monkeypatch, caplog):
    runner = make_trainer(tmp_path, 7, "--save_format safetensors")
    full_disk_for_safetensors(monkeypatch, after=1)  # step 3's weights are written, step 6's are not
    unhandled = []
    monkeypatch.setattr(threading, "excepthook", unhandled.append)
    assert cli.fit(runner) == 1
    stopped = [line for line in failure_lines(caplog) if line.startswith("training stopped at step")]
    assert len(stopped) == 1 and "model_latest.safetensors (No space left on device; " in stopped[0]
    assert not unhandled and "Traceback" not in caplog.text and not runner.saver.busy
    latest, state = tmp_path / "model" / "model_latest.safetensors", tmp_path / utility.STATE_NAME
    assert stat.S_IMODE(latest.stat().st_mode) == runfolder.FILE_MODE == stat.S_IMODE(state.stat().st_mode)
    assert not [n for n in os.listdir(tmp_path) + os.listdir(tmp_path / "model") if n.endswith(".tmp")]


def test_a_stop_signal_during_a_background_save_keeps_it_whole(tmp_path, monkeypatch):
    runner = make_trainer(tmp_path, 9)

    def stop() -> None:  # the signal arrives while this save is being written
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.2)  # (the loop may also block on this save at its next one: no waiting on it)

    writes = SlowWrites(monkeypatch, runner, tmp_path / "copies", slow_steps=(3,), ahead=1, during=stop)
    assert runner.fit() == trainer.INTERRUPTED
    state = writes.state_write(3)
    assert not state["main_thread"] and state["ended"] > 3  # training went on to the signal
    assert load(tmp_path / "copies" / "state_3.pt")["progress"]["step"] == 3
    stopped = checkpointing.read_state(str(tmp_path / utility.STATE_NAME))["progress"]["step"]
    assert 3 < stopped < 9
    assert [(w["name"], w["step"]) for w in writes.writes[-3:]] == [
        ("model_latest.pt", None), (utility.STATE_NAME, stopped), (utility.TRAINING_RECORD, stopped)]
    record = records.read_training_record(str(tmp_path / "model" / "model_latest.pt"))
    assert record["interrupted"] and record["step"] == stopped


def test_a_resume_from_a_background_saved_state_is_exact(tmp_path, monkeypatch):
    straight = make_trainer(tmp_path / "a", 9, "--con_loss")
    assert straight.fit() == 0
    first = make_trainer(tmp_path / "b", 9, "--con_loss")
    writes = SlowWrites(monkeypatch, first, tmp_path / "copies", slow_steps=(3, 6), ahead=2)
    assert first.fit() == 0
    assert writes.state_write(6)["ended"] >= 8  # the second snapshot, in the first one's memory
    monkeypatch.undo()
    (tmp_path / "c").mkdir()
    shutil.copy(tmp_path / "copies" / "state_6.pt", tmp_path / "c" / utility.STATE_NAME)
    torch.manual_seed(123)  # the resumed run must not depend on anything drawn before
    second = make_trainer(tmp_path / "c", 9, "--con_loss")
    torch.nn.init.zeros_(second.model.head[0][0].weight)  # and not on the fresh weights
    second.load(str(tmp_path / "c" / utility.STATE_NAME))
    assert second.progress.step == 6
    assert second.fit() == 0
    assert_same(straight.model.state_dict(), second.model.state_dict())
    assert_same(load(tmp_path / "a" / "model" / "model_latest.pt"),
                load(tmp_path / "c" / "model" / "model_latest.pt"))


def test_host_copy_shares_nothing_and_reuses_what_fits():
    Pair = collections.namedtuple("Pair", "a b")
    value = {"w": torch.arange(6.0).view(2, 3), "rest": [torch.ones(2), Pair(1, torch.zeros(1))],
             "n": {"k": [1, 2]}}
    first = runfolder.host_copy(value)
    assert_same(first, value)
    assert first["w"].data_ptr() != value["w"].data_ptr() and isinstance(first["rest"][1], Pair)
    value["w"].add_(1)
    value["n"]["k"].append(3)
    assert first["w"][0, 0] == 0 and first["n"]["k"] == [1, 2]  # a copy, not a view
    value["rest"][0] = torch.ones(3)  # another shape: fresh memory
    second = runfolder.host_copy(value, reuse=first)
    assert_same(second, value)
    assert second["w"].data_ptr() == first["w"].data_ptr()
    assert second["rest"][0].shape == (3,) and first["rest"][0].shape == (2,)
