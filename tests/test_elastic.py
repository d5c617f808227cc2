"""main.py under torchrun on the CPU (gloo): restarts after a killed rank, preemption signals to
one rank or to the whole group, a stalled rank. Each case is a real two-process job."""
from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from types import SimpleNamespace

import pytest
import torch

import runfolder
import utility
from conftest import ROOT
from test_probes import PROBE_TIMEOUT, TRAIN, train_until

STEPS = 30  # the length of every job here (room for six stops in one); a state is saved
# every SAVE_EVERY steps
SAVE_EVERY = 3
# torchrun forwards SIGUSR1 only when told to: Slurm's --signal=USR1@90 is one to save and stop on
SIGNALS_TO_HANDLE = "SIGTERM,SIGINT,SIGHUP,SIGQUIT,SIGUSR1"
# how long torchrun lets a rank it stops finish (its save, leaving the group, exiting) before
# SIGKILL: the tiny model's rank takes well under a second idle, several on a machine this busy
# with other work; no test waits for it (a stalled rank is killed by the test itself)
SHUTDOWN_TIMEOUT = 15
STALL_TIMEOUT = 4  # --dist_timeout of the launch whose rank stalls: how long the other one waits


def torchrun(argv: list[str], restarts: int = 0, exits=None) -> list[str]:
    """The command line of a two-process CPU torchrun of main.py (each rank's exit status
    written to ``exits``/exit.RANK when given)."""
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
               "--max-restarts", str(restarts), "--signals-to-handle", SIGNALS_TO_HANDLE,
               "--shutdown-timeout", str(SHUTDOWN_TIMEOUT)]
    if exits is None:
        return [*command, os.path.join(ROOT, "main.py"), *argv]
    return [*command, "--no-python", sys.executable, os.path.join(ROOT, "tests", "rank_exit.py"),
            str(exits), sys.executable, os.path.join(ROOT, "main.py"), *argv]


def job(run, *extra: str) -> list[str]:
    """The options of the job every case runs (writing to ``run``)."""
    return [*TRAIN, "--n_threads", "0", "--max_steps", str(STEPS), "--save_every", str(SAVE_EVERY),
            "--save", str(run), *extra]


def finish(process: subprocess.Popen, lines: list[str]) -> str:
    """Everything the job printed once it ended (killed if it outlives the probe timeout)."""
    try:
        lines.append(process.communicate(timeout=PROBE_TIMEOUT)[0])
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    return "".join(lines)


def read_line(process: subprocess.Popen, lines: list[str], pattern: str) -> re.Match:
    """Read the job's output (kept in ``lines``) up to the first line matching ``pattern``."""
    for line in process.stdout:
        lines.append(line)
        if found := re.search(pattern, line):
            return found
    raise AssertionError(f"the job ended before {pattern!r}:\n" + "".join(lines)[-3000:])


def weights(run) -> dict:
    return torch.load(run / "model" / "model_latest.pt", weights_only=True)


def assert_same_weights(a: dict, b: dict) -> None:
    """Equal weights: a resumed job repeats the uninterrupted one's steps exactly on one machine."""
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a), \
        max(float((a[k] - b[k]).abs().max()) for k in a)


def ours_in_a_traceback(out: str) -> bool:
    """Whether a traceback shows a frame of this project (torchrun's own report may stay)."""
    return re.search(rf'File "{re.escape(ROOT)}/(?!tests/)', out) is not None


def assert_nothing_left(run) -> None:
    assert not [n for n in os.listdir(run) if n.endswith(".tmp") or n == runfolder.LOCK_NAME]


@pytest.fixture(scope="module")
def alone(tmp_path_factory) -> SimpleNamespace:
    """The job every other one is compared with, run from start to end without a stop (SCALING.md's
    static rendezvous). Its ranks are paused mid-run while a second job into its folder starts;
    neither has --rdzv_id, so torchrun's run id is "none" for both. (Run ids shared on purpose,
    as --rdzv_id or the Slurm script's ${SLURM_JOB_ID:-0}: test_training's lock tests.)"""
    run = tmp_path_factory.mktemp("uninterrupted") / "run"
    first, lines = train_until(static_torchrun(job(run, "--auto_resume")), 3)
    ranks = [rank_zero(run), rank_one(run)]
    for pid in ranks:
        os.kill(pid, signal.SIGSTOP)
    try:
        second = subprocess.run(static_torchrun(job(run, "--auto_resume")), cwd=ROOT, text=True,
                                stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=PROBE_TIMEOUT)
    finally:
        for pid in ranks:
            os.kill(pid, signal.SIGCONT)
    out = finish(first, lines)
    return SimpleNamespace(run=run, ranks=ranks, second=second.stdout, second_status=second.returncode,
                           out=out, status=first.returncode)


@pytest.fixture(scope="module")
def uninterrupted(alone) -> dict:
    """The final weights of that job, which ran as if alone."""
    assert alone.status == 0 and "stale" not in alone.out, alone.out[-2000:]
    return weights(alone.run)


def is_rank_of(pid: int, run, rank: int = 1) -> bool:
    """Whether process ``pid`` is main.py as ``rank`` of the torchrun job writing to ``run``."""
    try:
        with open(f"/proc/{pid}/environ", "rb") as f:
            env = f.read().split(b"\0")
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            command = f.read().split(b"\0")
    except OSError:
        return False
    return (f"RANK={rank}".encode() in env and str(run).encode() in command
            and any(c.endswith(b"main.py") for c in command)
            and not any(c.endswith(b"rank_exit.py") for c in command))


def rank_one(run, rank: int = 1) -> int:
    """The PID of rank 1 (main.py itself) of the torchrun job writing to ``run``."""
    found = [int(p) for p in os.listdir("/proc") if p.isdigit() and is_rank_of(int(p), run, rank)]
    assert len(found) == 1, found
    return found[0]


def rank_zero(run) -> int:
    return rank_one(run, rank=0)


def test_torchrun_says_a_bad_option_once(tmp_path):
    result = subprocess.run(torchrun([*TRAIN, "--lr", "nan", "--save", str(tmp_path / "run")]),
                            cwd=ROOT, capture_output=True, text=True, timeout=PROBE_TIMEOUT,
                            env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert result.returncode != 0
    assert len(re.findall(r"main\.py: error: .*--lr", result.stderr)) == 1, result.stderr[-3000:]


def test_restarts_after_a_killed_rank_and_after_a_stopped_one_end_as_if_never_stopped(tmp_path,
                                                                                    uninterrupted):
    """One job with --max-restarts 2 and --auto_resume. kill -9 of a rank after a save: torchrun
    restarts the group, which continues from the last saved state. Then SIGTERM to a rank: it
    saves and exits 130, which torchrun counts as a failure: the group restarts again, from the
    step saved on the signal. The job ends at the weights of the uninterrupted one."""
    run = tmp_path / "run"
    process, lines = train_until(torchrun(job(run, "--auto_resume"), restarts=2), SAVE_EVERY + 2)
    os.kill(rank_one(run), signal.SIGKILL)
    resumed = int(read_line(process, lines, r"resumed at step (\d+)").group(1))
    assert resumed >= SAVE_EVERY
    read_line(process, lines, rf"INFO step {resumed + 1}:")
    os.kill(rank_one(run), signal.SIGTERM)
    out = finish(process, lines)
    assert process.returncode == 0, out[-3000:]
    stopped = int(re.findall(r"stopped at step (\d+) of", out)[-1])  # the last: SIGTERM's
    assert stopped > resumed and f"resumed at step {stopped}" in out, out[-3000:]
    assert f"finished at step {STEPS} of {STEPS}" in out
    assert_same_weights(weights(run), uninterrupted)
    assert_nothing_left(run)


# the preemption signals that stop the job in turn: (signal, sent to the whole process group)
PREEMPTIONS = [
    (signal.SIGUSR1, False),  # Slurm's --signal=USR1@90 sent to one task
    (signal.SIGTERM, False),
    (signal.SIGUSR1, True),   # scancel --signal=USR1 --full: torchrun forwards it (--signals-to-handle)
    (signal.SIGTERM, True),   # preemption: Slurm and Kubernetes signal every process
]


def test_one_job_ended_every_way_in_turn_resumes_to_the_uninterrupted_weights(tmp_path, uninterrupted):
    """Without --max-restarts, one job ended seven ways in turn, each time continued by the same
    command with --auto_resume: torchrun itself killed, a rank killed (kill -9), each preemption
    signal to one rank and to the whole group, then a stalled rank. Every time the state of the
    step reached is saved once and nothing is left behind; the last launch ends at the
    uninterrupted weights."""
    run, stopped, launch = tmp_path / "run", 0, 0

    def until_a_step(exits=None, *extra: str) -> tuple[subprocess.Popen, list[str], int]:
        nonlocal launch
        launch += 1
        waited = max(4, stopped + 1)
        return (*train_until(torchrun(job(run, "--auto_resume", *extra), exits=exits), waited), waited)

    def saved(out: str, waited: int, case: str, signalled: bool = True) -> int:
        """The step this launch stopped at, after checking what it left (training.json marks a
        stop by a signal as interrupted)."""
        assert not stopped or f"resumed at step {stopped}" in out, case
        stops = re.findall(r"stopped at step (\d+) of", out)  # rank 0's log (the others are quiet)
        assert len(stops) == 1, case
        step = int(stops[0])
        record = json.loads((run / "model" / utility.TRAINING_RECORD).read_text())
        state = torch.load(run / utility.STATE_NAME, weights_only=True)
        assert state["progress"]["step"] == record["step"] == step >= waited, case
        assert record["interrupted"] or not signalled, case
        assert step < STEPS, case
        assert_nothing_left(run)
        return step

    # torchrun killed (kill -9, the OOM killer): its ranks stop as on SIGTERM, not train on as orphans.
    # First, while most steps remain: a rank sees its agent gone within stops.PARENT_CHECK_SECONDS
    process, lines, waited = until_a_step()
    ranks = [rank_zero(run), rank_one(run)]
    os.kill(process.pid, signal.SIGKILL)
    started = time.monotonic()
    while any(running(pid) for pid in ranks) and time.monotonic() - started < 30:
        time.sleep(0.1)
    orphans = [pid for pid in ranks if running(pid)]
    for pid in orphans:
        os.kill(pid, signal.SIGKILL)
    out = finish(process, lines)
    assert not orphans, out[-2000:]
    # the rank that sees it first stops; the other learns it from the per-step stop flag
    assert re.search(r"torchrun\) is gone: stopping as on SIGTERM|another process of this job received a "
                     r"stop signal", out), out[-3000:]
    stopped = saved(out, waited, "torchrun killed:\n" + out[-3000:])


    # kill -9 of a rank (node failure, OOM kill): rank 0 says so in one line and saves its step
    process, lines, waited = until_a_step()
    os.kill(rank_one(run), signal.SIGKILL)
    out = finish(process, lines)
    ours = [line for line in out.splitlines() if line.startswith(("ERROR", "main.py"))]
    assert len(ours) == 1 and "another process of this torchrun job failed" in ours[0], out[-3000:]
    assert "[rank0]" not in out  # no traceback of ours (torchrun's own failure report may stay)
    stopped = saved(out, waited, "kill -9 of a rank:\n" + out[-3000:], signalled=False)

    # preemption signals: the ranks agree on the step, rank 0 saves it once, every rank exits 130
    for i, (sig, to_group) in enumerate(PREEMPTIONS):
        exits = tmp_path / f"exits{i}"
        exits.mkdir()
        process, lines, waited = until_a_step(exits)
        if to_group:
            os.killpg(process.pid, sig)
        else:
            os.kill(rank_one(run), sig)
        out = finish(process, lines)
        case = f"{signal.Signals(sig).name} to the {'group' if to_group else 'rank'}:\n" + out[-3000:]
        assert process.returncode != 0 and not ours_in_a_traceback(out), case
        assert sorted(p.read_text() for p in exits.iterdir()) == ["130", "130"], case
        said = re.findall(r"received: saving the training state|another process of this job received", out)
        assert len(said) == 1, case
        stopped = saved(out, waited, case)

    # a stalled rank (SIGSTOP: no signal reaches the code): the other gives up after --dist_timeout
    # with one line and saves its step. (A stopped process ends only by SIGKILL: torchrun sends it
    # after a fixed 30 s wait for the ranks of a failed job, which this test does not sit through.)
    process, lines, waited = until_a_step(None, "--dist_timeout", str(STALL_TIMEOUT))
    stalled, other = rank_one(run), rank_zero(run)
    try:
        os.kill(stalled, signal.SIGSTOP)
        started = time.monotonic()
        while running(other) and time.monotonic() - started < PROBE_TIMEOUT:
            time.sleep(0.1)
        other_ended = time.monotonic() - started
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.kill(stalled, signal.SIGKILL)  # what torchrun does 30 s later
    out = finish(process, lines)
    case = f"a stalled rank (the other ended after {other_ended:.1f} s):\n" + out[-3000:]
    errors = [line for line in out.splitlines() if line.startswith("ERROR")]
    assert other_ended < STALL_TIMEOUT + 10 and len(errors) == 1, case
    assert "Timed out" in out and not ours_in_a_traceback(out), case
    stopped = saved(out, waited, case, signalled=False)

    again = subprocess.run(torchrun(job(run, "--auto_resume")), cwd=ROOT, capture_output=True,
                           text=True, timeout=PROBE_TIMEOUT, env={**os.environ, "OMP_NUM_THREADS": "1"})
    assert again.returncode == 0 and f"resumed at step {stopped}" in again.stdout + again.stderr
    assert_same_weights(weights(run), uninterrupted)
    assert launch == 7


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def static_torchrun(argv: list[str], rdzv_id: str | None = None) -> list[str]:
    """A two-process torchrun with static rendezvous (SCALING.md's multi-node recipe on one
    node): its run id is ``rdzv_id``, or torchrun's "none" without one."""
    return [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1", "--node_rank", "0",
            "--nproc_per_node", "2", "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
            *(["--rdzv_id", rdzv_id] if rdzv_id else []), os.path.join(ROOT, "main.py"), *argv]


def running(pid: int) -> bool:
    """Whether process ``pid`` exists and is not a zombie that nobody reaped."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


def test_a_second_job_into_a_folder_in_use_is_refused_and_the_first_ends_as_if_alone(alone, uninterrupted):
    """The second job is refused in one line. The first one ends well, and it is the reference of
    the other tests here: jobs stopped in seven ways end at its weights, bit for bit."""
    refusals = [line for line in alone.second.splitlines() if line.startswith("main.py: error:")]
    assert alone.second_status != 0 and len(refusals) == 1, alone.second[-2000:]
    assert f"in use by process {alone.ranks[0]}" in refusals[0] and "resumed" not in alone.second
    assert f"finished at step {STEPS} of {STEPS}" in alone.out
    assert_nothing_left(alone.run)


def test_a_failure_on_rank_0_mid_run_ends_the_job_at_once_in_one_line(tmp_path):
    """The test set is removed after step 1: the validation at step 10 fails on rank 0, whose
    peer is waiting in the next step's all-reduce."""
    from PIL import Image
    hr = tmp_path / "data" / "benchmark" / "Set5" / "HR"
    hr.mkdir(parents=True)
    Image.new("RGB", (48, 48), (90, 120, 30)).save(hr / "baby.png")
    run = tmp_path / "run"
    validated = ["--data_test", "Set5", "--dir_data", str(tmp_path / "data"), "--test_every", "10"]
    process, lines = train_until(torchrun(job(run, "--max_steps", "100000", *validated)), 1)
    (hr / "baby.png").unlink()
    started = time.monotonic()
    out = finish(process, lines)
    assert time.monotonic() - started < 30 and process.returncode != 0
    errors = [line for line in out.splitlines() if line.startswith("ERROR")]
    assert len(errors) == 1 and "training stopped at step 10: Set5: no images" in errors[0], out[-2000:]
    assert torch.load(run / utility.STATE_NAME, weights_only=True)["progress"]["step"] == 10
    assert not ours_in_a_traceback(out)
