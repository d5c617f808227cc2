"""main.py as a hostile user drives it: one real process per probe, each under a timeout, for what
only a process shows (hangs, exit statuses, signals to the process group, torchrun)."""
from __future__ import annotations

import glob
import json
import os
import re
import signal
import subprocess
import sys

import numpy as np
import pytest
import torch
from PIL import Image

import runfolder
import stops
import utility
from conftest import ROOT, read_until

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


def deep_config(tmp) -> list[str]:
    """A 200 kB YAML file whose one value nests lists 100,000 deep (building it would recurse)."""
    (tmp / "deep.yaml").write_text("data_test: " + "[" * 100_000 + "]" * 100_000 + "\n")
    return ["--config", str(tmp / "deep.yaml")]


# name -> (the command line given a temporary folder, exit status, words of the one line)
EXIT_PROBES = {
    "config is a FIFO": (fifo_config, 2, "not a regular file"),
    "YAML alias bomb": (alias_bomb, 2, "aliases"),
    "YAML nested 100,000 deep": (deep_config, 2, "nested more than"),
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
    raise AssertionError(f"training ended before step {step}:\n" + "".join(lines[-20:]))


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
    assert process.returncode == stops.INTERRUPTED, out[-3000:]
    assert "Traceback" not in out and f"{signal.Signals(sig).name} received" in out
    stopped = int(re.search(r"stopped at step (\d+) of 100000", out).group(1))
    state = torch.load(run / utility.STATE_NAME, weights_only=True)
    record = json.loads((run / "model" / utility.TRAINING_RECORD).read_text())
    assert state["progress"]["step"] == record["step"] == stopped >= 5
    assert record["interrupted"] is True and record["finished"] is False
    assert not [n for n in os.listdir(run) if n.endswith(".tmp") or n == runfolder.LOCK_NAME]


@pytest.mark.parametrize("name,value", [("WORLD_SIZE", "abc"), ("WORLD_SIZE", "0"), ("RANK", "-1"),
                                        ("LOCAL_RANK", "x")])  # it was a ValueError traceback
def test_a_bad_torchrun_variable_is_one_line_before_torch_loads(tmp_path, name, value):
    result = subprocess.run([sys.executable, "-X", "importtime", "main.py", *TRAIN, "--max_steps", "1",
                             "--save", str(tmp_path / "run")], cwd=ROOT, capture_output=True, text=True,
                            timeout=PROBE_TIMEOUT, env={**os.environ, name: value})
    lines = [line for line in result.stderr.splitlines() if not imported_module(line)]
    assert result.returncode == 2 and len(lines) == 1 and name in lines[0], result.stderr[-2000:]
    assert "torch" not in map(imported_module, result.stderr.splitlines())


def test_a_bad_option_on_a_rank_other_than_0_waits_silently_for_torchruns_stop(tmp_path):
    """Rank 0 says a bad option; another rank exits (status 2, saying nothing) when torchrun stops
    it, not before: had it exited first, torchrun could have stopped rank 0 before it said why."""
    with subprocess.Popen([sys.executable, "main.py", "--lr", "nan", "--save", str(tmp_path / "run")],
                          cwd=ROOT, stderr=subprocess.PIPE, text=True,
                          env={**os.environ, "WORLD_SIZE": "2", "RANK": "1"}) as rank_1:
        with pytest.raises(subprocess.TimeoutExpired):  # the options are checked before torch loads:
            rank_1.wait(timeout=3)  # well under a second, so by now it waits
        rank_1.send_signal(signal.SIGTERM)
        assert rank_1.wait(timeout=PROBE_TIMEOUT) == 2 and rank_1.stderr.read() == ""


def imported_module(line: str) -> str:
    """The module of a line of ``python -X importtime`` ('' for another line)."""
    return line.rsplit("|", 1)[-1].strip() if line.startswith("import time:") else ""


@pytest.mark.parametrize("script,argv", [
    ("main.py", [os.path.join(ROOT, "main.py"), "--cpu", "--max_steps", "1", "--save", "{tmp}/run"]),
    ("export.py", ["-m", "scripts.export", "{tmp}/run/model_latest.pt", "{tmp}/ipt.safetensors"]),
])
def test_a_stop_while_torch_loads_is_one_line_and_exit_130(tmp_path, script, argv):
    """-X importtime writes a line as each module is loaded: the first of torch's comes while the
    rest of torch (seconds) still loads."""
    command = [sys.executable, "-X", "importtime", *(a.format(tmp=tmp_path) for a in argv)]
    env = {**os.environ, "PYTHONPATH": ROOT}  # the repository's modules, from the empty folder
    with subprocess.Popen(command, cwd=tmp_path, env=env, stderr=subprocess.PIPE, text=True) as run:
        read_until(run.stderr, lambda line: imported_module(line).startswith("torch."))
        run.send_signal(signal.SIGTERM)
        err = run.communicate(timeout=PROBE_TIMEOUT)[1]
    lines = [line for line in err.splitlines() if not line.startswith("import time:")]
    assert run.returncode == stops.INTERRUPTED, err[-2000:]
    assert lines == [f"{script}: SIGTERM received: stopped"]
    assert os.listdir(tmp_path) == []


def test_every_entry_point_keeps_stop_signals_before_it_loads_torch():
    """Each entry point (a file run as a program) that handles stop signals calls stops.early()
    before it imports torch (or the project modules that do), so a stop while it starts is one line
    too; the scripts' library modules are imported by those entry points after it."""
    scripts = sorted(glob.glob("scripts/*.py", root_dir=ROOT) + glob.glob("scripts/*/*.py", root_dir=ROOT))
    for name in ["main.py", *scripts]:
        text = open(os.path.join(ROOT, name), encoding="utf-8").read()
        handles_stops = re.search(r"^(import stops|from stops import)", text, re.M)
        if not handles_stops or '__name__ == "__main__"' not in text:
            continue
        early = text.find("stops.early()")
        heavy = re.search(r"^(import|from) (torch|numpy|main|utility|option|trainer|model|data)\b", text,
                          re.M)
        assert early >= 0 and (heavy is None or early < heavy.start()), name


TEARDOWN_PROGRAM = """
import os, signal, sys, time
import stops
stops.early()

class SignalAtTeardown:  # a second stop arriving while the interpreter tears the modules down
    def __del__(self):
        os.kill(os.getpid(), signal.SIGTERM)
        time.sleep(0.2)

keep = SignalAtTeardown()
sys.exit(3)
"""


LOADER_ERROR_PROGRAM = """
import sys
import stops
stops.early()
import data.stream

def broken(self, *args):  # a bug in a loader worker: re-raised in the main process, a traceback
    raise RuntimeError("a bug in the loader")

data.stream.PairStream.read = broken
import main
sys.exit(main.main(sys.argv[1:]))
"""


def test_an_error_from_a_loader_worker_ends_the_process(tmp_path):
    """The traceback kept the loader's iterator, so its worker outlived main(); multiprocessing's
    exit then sent it SIGTERM, which loader workers ignore, and waited for it forever."""
    for i in range(2):  # a folder of images: the built-in Sample photos are read without workers
        os.makedirs(tmp_path / "data/ImageNet", exist_ok=True)
        pixels = np.random.default_rng(i).integers(0, 256, (40, 40, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(tmp_path / f"data/ImageNet/{i}.png")
    argv = [*TINY, "--data_train", "ImageNet", "--dir_data", str(tmp_path / "data"), "--data_test", "Demo",
            "--threads", "1", "--n_threads", "1", "--max_steps", "3", "--save", str(tmp_path / "run")]
    try:
        run = subprocess.run([sys.executable, "-c", LOADER_ERROR_PROGRAM, *argv], cwd=ROOT,
                             capture_output=True, text=True, timeout=PROBE_TIMEOUT)
    except subprocess.TimeoutExpired:
        pytest.fail(f"the process did not end in {PROBE_TIMEOUT} s after the loader's error")
    assert run.returncode == 1 and "RuntimeError: a bug in the loader" in run.stderr, run.stderr[-2000:]
    assert "1 loader worker(s)" in run.stderr


def test_a_stop_during_the_interpreters_teardown_keeps_the_exit_status():
    """Python puts back the default signal handlers as it ends: a SIGTERM then (a second Ctrl-C or a
    group kill just after the first stop) killed the process (exit status 143, not the one decided)."""
    run = subprocess.run([sys.executable, "-c", TEARDOWN_PROGRAM], cwd=ROOT, capture_output=True,
                         text=True, timeout=PROBE_TIMEOUT)
    assert (run.returncode, run.stderr) == (3, "")
