"""scripts.quickstart with main.main faked: phase order and arguments, Ctrl-C, --resume."""
from __future__ import annotations

import io
import json
import logging
import os
import signal
import subprocess
import sys

import pytest

import checkpointing
import stops
from conftest import ROOT
from scripts import quickstart

STEPS = ["--pretrain_steps", "4", "--finetune_steps", "3"]
BUSY_CORES = quickstart.busy_cores  # the real one, for its own test


@pytest.fixture(autouse=True)
def idle_machine(monkeypatch):
    """No other jobs, as far as the quickstart sees: each journey skips its 0.5 s look at the CPU
    and its phases' arguments do not depend on the machine's load."""
    monkeypatch.setattr(quickstart, "busy_cores", lambda: 0.0)


def option(args: list[str], name: str) -> str | None:
    """The value after name in args, None when absent."""
    return args[args.index(name) + 1] if name in args else None


class FakeMain:
    """Stands in for main.main: records each call and writes what a real run leaves behind."""

    def __init__(self, stop_at: int | None = None, status: int = 130, stop_step: int = 2,
                 raise_interrupt: bool = False):
        self.calls: list[list[str]] = []
        self.stop_at, self.status, self.stop_step = stop_at, status, stop_step
        self.raise_interrupt = raise_interrupt

    def __call__(self, args: list[str]) -> int:
        """Train (training.json, model_latest.pt, state.pt) or evaluate (metrics.json, results.md)."""
        self.calls.append(list(args))
        save = option(args, "--save")
        stop = len(self.calls) == self.stop_at
        if stop and self.raise_interrupt:
            raise KeyboardInterrupt
        if "--test_only" in args:
            return self.status if stop else self.evaluate(save)
        total = int(option(args, "--max_steps"))
        self.train(save, total, self.stop_step if stop else total)
        if stop and self.status == 130:  # what a stopped training run says last
            logging.getLogger("ipt").info(checkpointing.RESUME_HINT)
        return self.status if stop else 0

    @staticmethod
    def train(save: str, total: int, step: int) -> None:
        """The files of a training run saved at step."""
        os.makedirs(os.path.join(save, "model"), exist_ok=True)
        for name in ("state.pt", os.path.join("model", "model_latest.pt")):
            with open(os.path.join(save, name), "w") as f:
                f.write("weights")
        with open(os.path.join(save, "model", "training.json"), "w") as f:
            json.dump({"model": "ipt", "architecture": {}, "step": step, "max_steps": total,
                       "finished": step >= total, "interrupted": step < total}, f)

    @staticmethod
    def evaluate(save: str) -> int:
        """The reports of an evaluation."""
        os.makedirs(save, exist_ok=True)
        for name in ("metrics.json", "results.md"):
            with open(os.path.join(save, name), "w") as f:
                f.write("{}")
        return 0


def run(monkeypatch, out: str, fake: FakeMain, *extra: str) -> int:
    """quickstart.main with main.main faked."""
    monkeypatch.setattr(quickstart.ipt_main, "main", fake)
    return quickstart.main(["--out", out, *STEPS, *extra])


def test_phase_order_and_arguments(monkeypatch, tmp_path, capsys):
    out = str(tmp_path / "qs")
    fake = FakeMain()
    assert run(monkeypatch, out, fake) == 0
    pre, fine = os.path.join(out, "pretrain"), os.path.join(out, "finetune_sr2")
    pre_ckpt, fine_ckpt = (os.path.join(d, "model", "model_latest.pt") for d in (pre, fine))
    assert [option(c, "--save") for c in fake.calls] == [
        pre, fine, os.path.join(out, "eval_sr2"), os.path.join(out, "eval_pretrained")]
    first, second, third, fourth = fake.calls
    assert all(c[:2] == ["--config", quickstart.CONFIG] for c in fake.calls)
    assert option(first, "--scale") == "2+3+4+1+1+1" and option(first, "--max_steps") == "4"
    assert "--reset" in first and "--pretrain" not in first
    assert option(second, "--task") == "sr2" and option(second, "--max_steps") == "3"
    assert option(second, "--pretrain") == pre_ckpt and "--reset" in second
    assert "--test_only" in third and option(third, "--pretrain") == fine_ckpt
    assert option(third, "--task") == "sr2" and "--save_results" in third
    assert "--test_only" in fourth and option(fourth, "--pretrain") == pre_ckpt
    assert option(fourth, "--scale") == "2+3+4+1+1+1"
    assert not any("--resume" in c for c in fake.calls)
    assert all("--reset" not in c for c in (third, fourth))
    printed = capsys.readouterr().out
    assert "phase 1/4: pre-train six tasks" in printed and "estimating" in printed
    assert "phase 2/4: fine-tune sr2" in printed and "left)" in printed.split("phase 2/4")[1]
    assert "quickstart done: " in printed and "4/4 steps" in printed and "3/3 steps" in printed
    assert os.path.join(out, "eval_sr2", "results.md") in printed
    assert os.path.join(out, "eval_pretrained", "results.md") in printed


@pytest.mark.parametrize("raise_interrupt", [False, True])
def test_interruption_stops_everything(monkeypatch, tmp_path, capsys, caplog, raise_interrupt):
    out = str(tmp_path / "qs")
    fake = FakeMain(stop_at=1, raise_interrupt=raise_interrupt)
    assert run(monkeypatch, out, fake) == 130
    assert len(fake.calls) == 1
    err = capsys.readouterr().err
    assert "phase 1/4" in err and "python -m scripts.quickstart --resume --out" in err
    assert "--pretrain_steps 4 --finetune_steps 3" in err
    # one stop line: the phase's own "same command and --resume" would contradict it
    assert err.count("continue with") == 1 and checkpointing.RESUME_HINT not in caplog.text


def test_resume_runs_only_the_remaining_phases(monkeypatch, tmp_path, capsys):
    out = str(tmp_path / "qs")
    assert run(monkeypatch, out, FakeMain(stop_at=2)) == 130  # the fine-tuning stopped at step 2
    capsys.readouterr()
    fake = FakeMain()
    assert run(monkeypatch, out, fake, "--resume") == 0
    fine = os.path.join(out, "finetune_sr2")
    assert [option(c, "--save") for c in fake.calls] == [
        fine, os.path.join(out, "eval_sr2"), os.path.join(out, "eval_pretrained")]
    # it was --resume without --pretrain: main.py then built the default one-head model, which the
    # state of a fine-tune of the six-head model contradicts (and it refuses --pretrain with --resume)
    assert "--auto_resume" in fake.calls[0] and not {"--reset", "--resume"} & set(fake.calls[0])
    assert option(fake.calls[0], "--pretrain") == os.path.join(out, "pretrain", "model", "model_latest.pt")
    printed = capsys.readouterr().out
    assert "phase 1/4: pre-train six tasks: done before, skipped" in printed
    assert "continuing at step 2 of 3" in printed
    fake = FakeMain()  # everything done: nothing runs
    assert run(monkeypatch, out, fake, "--resume") == 0 and fake.calls == []
    assert "3/3 steps (done before)" in capsys.readouterr().out


def test_resume_redoes_an_evaluation_older_than_its_checkpoint(monkeypatch, tmp_path):
    out = str(tmp_path / "qs")
    assert run(monkeypatch, out, FakeMain()) == 0
    report = os.path.join(out, "eval_sr2", "results.md")
    checkpoint = os.path.join(out, "finetune_sr2", "model", "model_latest.pt")
    os.utime(report, (os.path.getmtime(checkpoint) - 10,) * 2)
    fake = FakeMain()
    assert run(monkeypatch, out, fake, "--resume") == 0
    assert [option(c, "--save") for c in fake.calls] == [os.path.join(out, "eval_sr2")]


def test_resume_with_other_step_counts_starts_afresh(monkeypatch, tmp_path):
    out = str(tmp_path / "qs")
    assert run(monkeypatch, out, FakeMain(stop_at=1)) == 130
    fake = FakeMain()
    monkeypatch.setattr(quickstart.ipt_main, "main", fake)
    assert quickstart.main(["--out", out, "--pretrain_steps", "5", "--finetune_steps", "3",
                            "--resume"]) == 0
    assert len(fake.calls) == 4 and all("--resume" not in c for c in fake.calls)
    assert "--reset" in fake.calls[0] and "--reset" in fake.calls[1]


def test_without_resume_everything_starts_afresh(monkeypatch, tmp_path):
    out = str(tmp_path / "qs")
    assert run(monkeypatch, out, FakeMain(stop_at=2)) == 130
    fake = FakeMain()
    assert run(monkeypatch, out, fake) == 0
    assert len(fake.calls) == 4 and "--reset" in fake.calls[0] and "--reset" in fake.calls[1]


def test_a_failing_phase_returns_its_status(monkeypatch, tmp_path, capsys):
    out = str(tmp_path / "qs")
    fake = FakeMain(stop_at=3, status=1)
    assert run(monkeypatch, out, fake) == 1
    assert len(fake.calls) == 3
    assert "phase 3/4 (evaluate sr2 (fine-tuned)) failed (exit status 1)" in capsys.readouterr().err


def test_time_left_from_the_measured_speed():
    clock = quickstart.Clock(0.0)
    assert clock.per_step() is None and clock.per_unit() is None
    clock.train_s, clock.train_steps = 20.0, 10
    assert clock.per_step() == 2.0 and clock.per_unit() == 2.0 * quickstart.STEPS_PER_EVAL_UNIT
    clock.eval_s, clock.eval_units = 3.0, 0.25
    assert clock.per_unit() == 12.0
    assert [quickstart.duration(s) for s in (45, 738, 6780)] == ["45 s", "12.3 min", "1 h 53 min"]


def test_other_jobs_make_every_phase_compute_on_the_cores_they_leave(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(quickstart.os, "sched_getaffinity", lambda pid: {0, 1}, raising=False)
    monkeypatch.setattr(quickstart, "busy_cores", lambda: 0.1)
    assert quickstart.compute_threads(0) == 0  # idle: main.py fits the threads itself
    assert quickstart.compute_threads(3) == 3
    monkeypatch.setattr(quickstart, "busy_cores", lambda: 1.1)
    assert quickstart.compute_threads(0) == 1
    assert "other jobs keep 1.1 of 2 usable core(s) busy" in capsys.readouterr().out
    fake = FakeMain()
    assert run(monkeypatch, str(tmp_path / "qs"), fake) == 0
    assert all(option(c, "--threads") == "1" for c in fake.calls)
    # a job beside the first phase only: the later phases get main.py's own choice again
    loads = iter([1.1, 0.1, 0.1, 0.1])
    monkeypatch.setattr(quickstart, "busy_cores", lambda: next(loads))
    fake = FakeMain()
    assert run(monkeypatch, str(tmp_path / "qs2"), fake) == 0
    assert [option(c, "--threads") for c in fake.calls] == ["1", None, None, None]


def test_busy_cores_counts_what_others_use(monkeypatch):
    ticks = iter(["cpu 100 0 100 800 0 0 0 0 0 0\n", "cpu 160 0 140 900 0 0 0 0 0 0\n"])
    monkeypatch.setattr("builtins.open", lambda *a, **k: io.StringIO(next(ticks)))
    monkeypatch.setattr(quickstart.os, "cpu_count", lambda: 2)
    # 200 ticks passed, 100 of them idle: half of 2 CPUs busy
    assert BUSY_CORES(0) == pytest.approx(1.0)


class Finaliser:
    """Sends this process SIGINT from its ``__del__``, where Python swallows what the handler
    raises (as in a DataLoader iterator freed between two phases)."""

    def __del__(self):
        os.kill(os.getpid(), signal.SIGINT)


def test_a_stop_swallowed_in_a_finaliser_between_phases_still_stops(monkeypatch, tmp_path, capsys):
    out = str(tmp_path / "qs")
    fake = FakeMain()

    def first_phase_then_finalised(args: list[str]) -> int:
        code = fake(args)
        Finaliser()  # freed at once: SIGINT arrives inside __del__
        return code

    monkeypatch.setattr(quickstart.ipt_main, "main", first_phase_then_finalised)
    assert quickstart.main(["--out", out, *STEPS]) == 130
    assert len(fake.calls) == 1  # phase 2 never started
    err = capsys.readouterr().err
    assert "stopped by SIGINT" in err and "python -m scripts.quickstart --resume" in err
    assert "Exception ignored" not in err


def test_a_phase_s_own_handlers_nest_inside_the_quickstart_s(monkeypatch, tmp_path, capsys):
    out = str(tmp_path / "qs")
    fake = FakeMain()
    before = signal.getsignal(signal.SIGINT)

    def main_with_its_own_handlers(args: list[str]) -> int:
        with stops.StopSignals() as own:  # as main.main does while training
            os.kill(os.getpid(), signal.SIGINT)
        assert own.received == signal.SIGINT
        return fake(args) if len(fake.calls) else 130  # the first phase: stopped by its handler

    monkeypatch.setattr(quickstart.ipt_main, "main", main_with_its_own_handlers)
    assert quickstart.main(["--out", out, *STEPS]) == 130
    assert "in phase 1/4" in capsys.readouterr().err
    assert signal.getsignal(signal.SIGINT) is before  # the quickstart's own handler is gone


FAKE_DRIVER = """
import sys
from scripts import quickstart
quickstart.ipt_main.main = lambda args: 0  # every phase done at once
sys.exit(quickstart.main(sys.argv[1:]))
"""


STOPS = [signal.SIGINT, signal.SIGTERM, signal.SIGUSR1]


@pytest.fixture(scope="module")
def journeys(tmp_path_factory) -> dict:
    """A quickstart per signal of STOPS, started together, each in its own process group, its
    phases returning at once, pausing 30 s between them (real phases take 13 s more here: the
    in-process tests cover their handlers). {signal: process}"""
    env = {**os.environ, quickstart.PAUSE_ENV: "30"}
    runs = {sig: subprocess.Popen(
        [sys.executable, "-c", FAKE_DRIVER, "--out", str(tmp_path_factory.mktemp(sig.name) / "qs"),
         "--pretrain_steps", "1", "--finetune_steps", "1", "--threads", "1"],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        start_new_session=True) for sig in STOPS}
    yield runs
    for proc in runs.values():
        if proc.poll() is None:  # its test failed before it ended
            os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()


@pytest.mark.parametrize("sig", STOPS, ids=lambda s: s.name)
def test_a_signal_between_phases_stops_the_quickstart(journeys, sig):
    proc = journeys[sig]
    try:
        seen = []
        for line in proc.stdout:  # ends when the process does: then the pause never came
            seen.append(line)
            if line.startswith("quickstart: pausing"):
                break
        assert seen and seen[-1].startswith("quickstart: pausing"), "".join(seen)
        os.killpg(proc.pid, sig)  # as a terminal's Ctrl-C, timeout or Slurm reach every process
        out, err = proc.communicate(timeout=20)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    assert proc.returncode == 130, err
    assert f"stopped by {sig.name} between phases" in err
    assert "--resume --out" in err and "Traceback" not in err and "Exception ignored" not in err
    assert "phase 2/4" not in out
