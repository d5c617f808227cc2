"""The Slurm batch script's stop logic, run with stand-ins for srun and scontrol (no Slurm here):
SIGUSR1 before the time limit stops the ranks through srun and requeues; SIGTERM stops them
without a requeue (scancel; preemption requeues by itself)."""
from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time

import pytest

from conftest import ROOT

SCRIPT = os.path.join(ROOT, "scripts", "slurm", "pretrain.sbatch")
FAKE_SRUN = """#!/bin/bash
echo "$@" > "$FAKES/srun.args"
trap 'echo USR1 >> "$FAKES/srun.signals"; exit 130' USR1
trap 'echo TERM >> "$FAKES/srun.signals"; exit 130' TERM
touch "$FAKES/srun.started"
while true; do sleep 0.05; done
"""
FAKE_SCONTROL = """#!/bin/bash
if [ "$1" = show ]; then echo node-a; echo node-b; else echo "$@" >> "$FAKES/scontrol.calls"; fi
"""


@pytest.fixture
def fakes(tmp_path):
    for name, text in (("srun", FAKE_SRUN), ("scontrol", FAKE_SCONTROL)):
        (tmp_path / name).write_text(text)
        (tmp_path / name).chmod(0o755)
    return tmp_path


def start(fakes) -> subprocess.Popen:
    env = {**os.environ, "PATH": f"{fakes}:{os.environ['PATH']}", "FAKES": str(fakes),
           "SLURM_JOB_ID": "4242", "SLURM_NNODES": "2", "SLURM_JOB_NODELIST": "node-[a-b]"}
    process = subprocess.Popen(["bash", SCRIPT], cwd=ROOT, env=env, text=True, start_new_session=True,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 10
    while not (fakes / "srun.started").exists():
        assert time.monotonic() < deadline and process.poll() is None, process.stdout.read()
        time.sleep(0.05)
    return process


def test_the_batch_script_is_valid_bash_and_launches_torchrun_to_save_and_resume(fakes):
    process = start(fakes)
    os.killpg(process.pid, signal.SIGKILL)  # the script and its stand-in srun
    process.wait(timeout=10)
    args = (fakes / "srun.args").read_text().split()
    assert args[0] == "--kill-on-bad-exit=0" and args[1] == "torchrun"
    assert "SIGUSR1" in args[args.index("--signals-to-handle") + 1].split(",")
    assert args[args.index("--rdzv_id") + 1] == "4242"  # the lock lets the requeued job in
    assert args[args.index("--rdzv_endpoint") + 1] == "node-a:29500"
    assert args[args.index("--nnodes") + 1] == "2" and "--max-restarts" in args
    assert "--auto_resume" in args and "--save_every" in args


@pytest.mark.parametrize("sig,requeued", [(signal.SIGUSR1, True), (signal.SIGTERM, False)])
def test_a_stop_signal_reaches_the_ranks_and_only_sigusr1_requeues(fakes, sig, requeued):
    process = start(fakes)
    process.send_signal(sig)
    try:
        out = process.communicate(timeout=20)[0]
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGKILL)  # nothing of the job outlives the test
    assert (fakes / "srun.signals").read_text().split() == [signal.Signals(sig).name[3:]], out
    calls = (fakes / "scontrol.calls").read_text() if (fakes / "scontrol.calls").exists() else ""
    assert (calls.strip() == "requeue 4242") == requeued and (calls == "") != requeued, out
    assert process.returncode == (0 if requeued else 143), out
