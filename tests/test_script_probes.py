"""The scripts' refusals of bad arguments, as a user meets them: one line on stderr and exit
status 2 (bad options) or 1 (a failed job), never a traceback; one subprocess per probe."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import ROOT, config_from
from model import IPT

PROBE_TIMEOUT_S = 120  # a probe takes about 3 s alone (most of it importing torch), all at once longer


@pytest.fixture(scope="module")
def sr2_mim(tmp_path_factory, authors_model) -> str:
    """A two-head file (sr2+mim) whose training.json lists its heads the wrong way round."""
    folder = tmp_path_factory.mktemp("wrong") / "model"
    folder.mkdir()
    model = IPT(config_from(authors_model["config"], scale=[2, 1], num_queries=2,
                            task_names=["sr2", "mim"]))
    torch.save(model.state_dict(), folder / "model_latest.pt")
    (folder / "training.json").write_text(json.dumps({"architecture": {"tasks": "mim+sr2"}}))
    return str(folder / "model_latest.pt")


PROBES = [  # (script, arguments ({ckpt}: the sr2+mim file, {tmp}: a fresh folder), status, says)
    ("study", ["--dir_data", "{tmp}", "--seeds", "x"], 2, "--seeds 'x'"),
    ("study", ["--dir_data", "{tmp}", "--pretrain_steps", "0"], 2, "--pretrain_steps 0"),
    ("study", ["--dir_data", "{tmp}", "--options", '--n_feats "16'], 2, "No closing quotation"),
    ("strip_mim", ["{ckpt}", "{tmp}"], 2, "is a folder"),
    ("strip_mim", ["{ckpt}", "{tmp}/missing/out.pt"], 2, "does not exist"),
    ("strip_mim", ["{ckpt}", "{tmp}/out.pt"], 1, "contradict the file's shapes"),
    ("quickstart", ["--out", "{tmp}", "--pretrain_steps", "0"], 2, "give at least 1"),
]


@pytest.fixture(scope="module")
def probes(tmp_path_factory, sr2_mim) -> dict:
    """Every probe of PROBES started at once (each importing torch takes seconds), each with its
    own fresh folder: {probe's index: (process, folder)}."""
    started = {}
    for i, (script, args, _, _) in enumerate(PROBES):
        folder = tmp_path_factory.mktemp(f"probe{i}")
        argv = [a.format(ckpt=sr2_mim, tmp=folder) for a in args]
        started[i] = subprocess.Popen([sys.executable, "-m", f"scripts.{script}", *argv], cwd=ROOT,
                                      stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True), folder
    yield started
    for process, _ in started.values():
        if process.poll() is None:  # its test failed before it ended
            process.kill()
        process.communicate()


@pytest.mark.parametrize("i", range(len(PROBES)), ids=[f"{p[0]}-{p[3]}" for p in PROBES])
def test_a_bad_argument_is_refused_in_one_line(probes, i):
    _, _, status, says = PROBES[i]
    process, folder = probes[i]
    _, err = process.communicate(timeout=PROBE_TIMEOUT_S)
    lines = err.strip().splitlines()
    assert process.returncode == status, err
    assert len(lines) == 1 and says in lines[0], err
    assert not os.path.exists(folder / "out.pt")  # nothing written before a refusal
