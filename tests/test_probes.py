"""main.py as a hostile user drives it: one real process per probe, each under a timeout, for what
only a process shows (hangs, exit statuses, signals to the process group, torchrun)."""
from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest
import torch

import utility
from conftest import ROOT

PROBE_TIMEOUT = 60  # seconds: a probe that takes longer hangs
TINY = ["--cpu", "--n_feats", "16", "--num_heads", "4", "--num_layers", "1", "--scale", "2",
        "--patch_size", "12", "--batch_size", "2", "--lr", "1e-4"]
TRAIN = [*TINY, "--data_train", "Sample", "--data_test", "Demo", "--print_every", "1"]


def alias_bomb(tmp) -> list[str]:
    """A 500-byte YAML file whose aliases expand to 10^9 items inside a known key's value."""
    levels = ["  - &a0 [x, x, x, x, x, x, x, x, x, x]"]
    levels += [f"  - &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    (tmp / "bomb.yaml").write_text("data_test:\n" + "\n".join(levels) + "\n")
    return ["--config", str(tmp / "bomb.yaml")]


def fifo_config(tmp) -> list[str]:
    os.mkfifo(tmp / "pipe.yaml")
    return ["--config", str(tmp / "pipe.yaml")]


# name -> (the command line given a temporary folder, exit status, words of the one line)
EXIT_PROBES = {
    "config is a FIFO": (fifo_config, 2, "not a regular file"),
    "YAML alias bomb": (alias_bomb, 2, "aliases"),
    "batch that cannot fit": (lambda tmp: [*TRAIN, "--batch_size", "1000000000", "--max_steps", "1"],
                              2, "--batch_size"),
    "patch that cannot fit": (lambda tmp: ["--test_only", "--patch_size", "100002"], 2, "--patch_size"),
    "seed beyond 64 bits": (lambda tmp: ["--seed", str(2 ** 64 + 1)], 2, "--seed"),
    "decay=-5": (lambda tmp: ["--decay=-5"], 2, "--decay"),
    "data_range 10-1": (lambda tmp: ["--data_range", "10-1/801-810"], 2, "--data_range"),
}


@pytest.mark.parametrize("name", sorted(EXIT_PROBES))
def test_bad_input_is_one_line_and_its_exit_status(tmp_path, name):
    make_argv, status, words = EXIT_PROBES[name]
    argv = [*make_argv(tmp_path), "--save", str(tmp_path / "run")]
    result = subprocess.run([sys.executable, "main.py", *argv], cwd=ROOT, capture_output=True,
                            text=True, timeout=PROBE_TIMEOUT)
    lines = result.stderr.strip().splitlines()
    assert result.returncode == status and len(lines) == 1 and words in lines[0], result.stderr[-2000:]
    assert len(lines[0]) < 500


def train_until(command: list[str], step: int) -> tuple[subprocess.Popen, list[str]]:
    """A training command in its own process group, read until it logs ``step``."""
    process = subprocess.Popen(command, cwd=ROOT, text=True, stdout=subprocess.PIPE,
                               stderr=subprocess.STDOUT, start_new_session=True,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    lines = []
    for line in process.stdout:
        lines.append(line)
        if f"INFO step {step}:" in line:
            return process, lines
    raise AssertionError("training ended before step %d:\n%s" % (step, "".join(lines[-20:])))


@pytest.mark.parametrize("workers,sig,to_group", [
    ("1", signal.SIGTERM, True),   # what timeout, Slurm and Kubernetes send: workers get it too
    ("0", signal.SIGTERM, True),
    ("1", signal.SIGINT, True),    # Ctrl-C in a terminal
    ("0", signal.SIGUSR1, False),  # Slurm's --signal=USR1@90, to the process only
])
def test_a_stop_signal_saves_the_step_it_stopped_at_and_exits_130(tmp_path, workers, sig, to_group):
    run = tmp_path / "run"
    process, lines = train_until([sys.executable, "main.py", *TRAIN, "--threads", "1", "--n_threads",
                                  workers, "--max_steps", "100000", "--save", str(run)], 5)
    try:
        (os.killpg if to_group else os.kill)(process.pid, sig)
        lines.append(process.communicate(timeout=PROBE_TIMEOUT)[0])
    finally:
        process.kill()
    out = "".join(lines)
    assert process.returncode == utility.INTERRUPTED, out[-3000:]
    assert "Traceback" not in out and f"{signal.Signals(sig).name} received" in out
    stopped = int(re.search(r"stopped at step (\d+) of 100000", out).group(1))
    state = torch.load(run / utility.STATE_NAME, weights_only=True)
    record = json.loads((run / "model" / utility.TRAINING_RECORD).read_text())
    assert state["progress"]["step"] == record["step"] == stopped >= 5
    assert record["interrupted"] is True and record["finished"] is False
    assert not [n for n in os.listdir(run) if n.endswith(".tmp") or n == utility.LOCK_NAME]


def torchrun(argv: list[str]) -> list[str]:
    """The command line of a two-process CPU torchrun of main.py."""
    return [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
            os.path.join(ROOT, "main.py"), *argv]


def test_torchrun_says_a_bad_option_once(tmp_path):
    result = subprocess.run(torchrun([*TRAIN, "--lr", "nan", "--save", str(tmp_path / "run")]),
                            cwd=ROOT, capture_output=True, text=True, timeout=PROBE_TIMEOUT,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode != 0
    assert len(re.findall(r"main\.py: error: .*--lr", result.stderr)) == 1, result.stderr[-3000:]


def test_a_rank_killed_under_torchrun_is_one_line_and_leaves_nothing(tmp_path):
    run = tmp_path / "run"
    process, lines = train_until(torchrun([*TRAIN, "--n_threads", "0", "--max_steps", "100000",
                                           "--save_every", "3", "--save", str(run)]), 12)
    try:
        rank1 = [int(p) for p in os.listdir("/proc") if p.isdigit() and is_rank_one_of(int(p), run)]
        assert len(rank1) == 1
        os.kill(rank1[0], signal.SIGKILL)
        lines.append(process.communicate(timeout=PROBE_TIMEOUT)[0])
    finally:
        os.killpg(process.pid, signal.SIGKILL) if process.poll() is None else None
    out = "".join(lines)
    ours = [line for line in out.splitlines() if line.startswith(("ERROR", "main.py"))]
    assert len(ours) == 1 and "another process of this torchrun job failed" in ours[0], out[-3000:]
    assert "[rank0]" not in out  # no traceback of ours (torchrun's own failure report may stay)
    state = torch.load(run / utility.STATE_NAME, weights_only=True)
    stopped = int(re.search(r"stopped at step (\d+)", out).group(1))
    assert state["progress"]["step"] == stopped >= 12
    assert not [n for n in os.listdir(run) if n.endswith(".tmp") or n == utility.LOCK_NAME]


def test_sigterm_to_a_torchrun_group_stops_every_rank_at_one_saved_step(tmp_path):
    """What Slurm and Kubernetes do: every rank and torchrun get SIGTERM; the ranks agree on the
    step (one all-reduce of the stop flag a step), rank 0 saves it and both exit 130."""
    run = tmp_path / "run"
    process, lines = train_until(torchrun([*TRAIN, "--n_threads", "1", "--threads", "1",
                                           "--max_steps", "100000", "--save", str(run)]), 10)
    try:
        os.killpg(process.pid, signal.SIGTERM)
        lines.append(process.communicate(timeout=PROBE_TIMEOUT)[0])
    finally:
        os.killpg(process.pid, signal.SIGKILL) if process.poll() is None else None
    out = "".join(lines)
    assert "[rank" not in out and "main.py: error" not in out, out[-3000:]  # torchrun's own report may stay
    stopped = int(re.search(r"stopped at step (\d+) of 100000", out).group(1))
    state = torch.load(run / utility.STATE_NAME, weights_only=True)
    record = json.loads((run / "model" / utility.TRAINING_RECORD).read_text())
    assert state["progress"]["step"] == record["step"] == stopped >= 10 and record["interrupted"]
    assert not [n for n in os.listdir(run) if n.endswith(".tmp") or n == utility.LOCK_NAME]


def is_rank_one_of(pid: int, run) -> bool:
    """Whether process ``pid`` is rank 1 of the torchrun job writing to ``run``."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            env = f.read().split(b"\0")
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            command = f.read()
    except OSError:
        return False
    return b"RANK=1" in env and str(run).encode() in command and b"main.py" in command


def rank_one(run) -> int:
    """The PID of rank 1 of the torchrun job writing to ``run``."""
    found = [int(p) for p in os.listdir("/proc") if p.isdigit() and is_rank_one_of(int(p), run)]
    assert len(found) == 1, found
    return found[0]


def test_torchrun_max_restarts_and_auto_resume_continue_after_a_killed_rank(tmp_path):
    """kill -9 of a rank: torchrun restarts the group, which continues from the last state."""
    run = tmp_path / "run"
    command = torchrun([*TRAIN, "--n_threads", "0", "--max_steps", "30", "--save_every", "3",
                        "--auto_resume", "--save", str(run)])
    command[command.index("--nproc_per_node"):command.index("--nproc_per_node")] = ["--max-restarts", "1"]
    process, lines = train_until(command, 8)
    try:
        os.kill(rank_one(run), signal.SIGKILL)
        lines.append(process.communicate(timeout=PROBE_TIMEOUT)[0])
    finally:
        os.killpg(process.pid, signal.SIGKILL) if process.poll() is None else None
    out = "".join(lines)
    assert process.returncode == 0, out[-3000:]
    resumed = int(re.search(r"resumed at step (\d+)", out).group(1))
    assert resumed >= 8 and "finished at step 30 of 30" in out
    state = torch.load(run / utility.STATE_NAME, weights_only=True)
    assert state["progress"]["step"] == 30
    assert not [n for n in os.listdir(run) if n.endswith(".tmp") or n == utility.LOCK_NAME]


def test_a_stalled_rank_stops_the_others_within_dist_timeout(tmp_path):
    """SIGSTOP (no signal reaches the code): the other rank gives up after --dist_timeout."""
    run = tmp_path / "run"
    timeout = 4
    process, lines = train_until(torchrun([*TRAIN, "--n_threads", "0", "--max_steps", "100000",
                                           "--dist_timeout", str(timeout), "--save", str(run)]), 8)
    stalled = rank_one(run)
    try:
        os.kill(stalled, signal.SIGSTOP)
        started = time.monotonic()
        for line in process.stdout:
            lines.append(line)
            if "stopped answering" in line:
                break
        waited = time.monotonic() - started
    finally:
        os.kill(stalled, signal.SIGKILL)
        process.communicate(timeout=PROBE_TIMEOUT)
    out = "".join(lines)
    assert "Timed out" in out and waited < timeout + 10, (waited, out[-2000:])
    assert len([line for line in out.splitlines() if line.startswith("ERROR")]) == 1
    stopped = int(re.search(r"stopped at step (\d+)", out).group(1))
    assert torch.load(run / utility.STATE_NAME, weights_only=True)["progress"]["step"] == stopped
