"""The scripts' refusals of bad arguments, as a user meets them: one line on stderr and exit
status 2 (bad options) or 1 (a failed job), never a traceback. Each probe calls the script's
main() as ``python -m scripts.NAME`` does (the processes those commands start are probed for
stop signals in test_quickstart, test_scale_scripts and test_export)."""
from __future__ import annotations

import importlib
import json
import os

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from conftest import config_from
from model import IPT
from scripts import quickstart, study
from scripts.scale import make_shards
from test_scale_scripts import VALUES, check_parse


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
    ("quickstart", ["--out", "{tmp}", "--pretrain_steps", "0"], 2, "--pretrain_steps 0: give 1 to"),
    ("quickstart", ["--out", "{tmp}", "--threads", "99999999999"], 2, "--threads 99999999999: give 0 to"),
    ("quickstart", ["--out="], 2, "--out '' is empty"),  # was: the four runs in the current folder
    ("study", ["--dir_data", "{tmp}", "--work="], 2, "--work '' is empty"),  # was: a pool in ./data
    ("study", ["--report_only", "--doc="], 2, "--doc '' is empty"),  # was: a traceback, ./.png.png
    ("compare", ["--doc="], 2, "--doc '' is empty"),
    ("benchmark", ["--smoke", "loader", "--doc=/proc/none/B.md"], 1, "--doc /proc/none/B.md: "),
    ("scale.make_shards", ["{tmp}", "{tmp}/out", "--per_shard", "0"], 2, "--per_shard 0: give 1 to"),
    ("compare", ["--seconds", "inf", "--doc", "{tmp}/COMPARE.md"], 2, "--seconds inf: give 1 to"),
]


@pytest.mark.parametrize("i", range(len(PROBES)), ids=[f"{p[0]}-{p[3]}" for p in PROBES])
def test_a_bad_argument_is_refused_in_one_line(sr2_mim, tmp_path, capsys, i):
    script, args, status, says = PROBES[i]
    main = importlib.import_module(f"scripts.{script}").main
    try:
        returned = main([a.format(ckpt=sr2_mim, tmp=tmp_path) for a in args])
    except SystemExit as e:  # argparse's refusals
        returned = e.code
    err = capsys.readouterr().err
    lines = err.strip().splitlines()
    assert returned == status, err
    assert len(lines) == 1 and says in lines[0], err
    assert not os.path.exists(tmp_path / "out.pt")  # nothing written before a refusal


NUMBERS = [  # (script, its parser, the arguments it needs, its number options)
    (make_shards, make_shards.parse_args, ["src", "out"], ("--per_shard", "--seed")),
    (quickstart, quickstart.parse_args, [], ("--pretrain_steps", "--finetune_steps", "--threads")),
    (study, study.parse, ["--dir_data", "data"],
     ("--pretrain_steps", "--finetune_steps", "--val_every", "--noise_images", "--val_images")),
]


@settings(max_examples=60)
@given(which=st.sampled_from(range(len(NUMBERS))), pairs=st.lists(st.tuples(st.integers(0, 4), VALUES),
                                                                   max_size=3))
def test_any_number_is_within_the_scripts_limits_or_refused_in_one_line(capsys, which, pairs):
    """Before: --threads 99999999999 a traceback, a negative or huge --seed or --per_shard taken."""
    script, parse, needed, names = NUMBERS[which]
    args = check_parse(parse, needed + [a for i, value in pairs for a in (names[i % len(names)], value)],
                       capsys)
    for name, (least, most) in script.LIMITS.items() if args is not None else ():
        assert least <= getattr(args, name) <= most
