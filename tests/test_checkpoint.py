"""Loading checkpoints strictly, in the layouts people have them."""
from __future__ import annotations

import pytest
import torch
from conftest import FIXTURE_ATOL, config_from

from model import IPT, CheckpointError, load_checkpoint


def save(tmp_path, obj, name="ckpt.pt"):
    path = tmp_path / name
    torch.save(obj, path)
    return str(path)


@pytest.mark.parametrize("wrap", ["bare", "module", "state_dict", "model", "params"])
def test_accepted_layouts(tmp_path, authors_model, authors_io, wrap):
    state = authors_model["state_dict"]
    if wrap == "module":
        obj = {f"module.{k}": v for k, v in state.items()}
    elif wrap == "bare":
        obj = state
    else:
        obj = {wrap: state, "epoch": torch.tensor(3)}
    model = IPT(config_from(authors_model["config"])).eval()
    load_checkpoint(model, save(tmp_path, obj))
    with torch.no_grad():
        out = model(authors_io["input"], 2)
    assert (out - authors_io["outputs"][2]).abs().max().item() <= FIXTURE_ATOL


@pytest.mark.parametrize("task", [None, "denoise50", 5])
def test_six_task_file_into_a_single_head(tmp_path, authors_model, authors_io, task):
    cfg = config_from(authors_model["config"], scale=[1], num_queries=1, task_names=["denoise50"])
    model = IPT(cfg).eval()
    load_checkpoint(model, save(tmp_path, authors_model["state_dict"]), task=task)
    with torch.no_grad():
        out = model(authors_io["input"], 0)
    assert (out - authors_io["outputs"][5]).abs().max().item() <= FIXTURE_ATOL


def test_renamed_key_is_named(tmp_path, authors_model):
    state = dict(authors_model["state_dict"])
    state["body.encoder.layers.1.linear9.weight"] = state.pop("body.encoder.layers.1.linear1.weight")
    model = IPT(config_from(authors_model["config"]))
    with pytest.raises(CheckpointError) as err:
        load_checkpoint(model, save(tmp_path, state))
    text = str(err.value)
    assert "body.encoder.layers.1.linear9.weight" in text  # unexpected
    assert "body.encoder.layers.1.linear1.weight" in text  # missing


def test_mismatch_names_the_options(tmp_path, authors_model):
    path = save(tmp_path, authors_model["state_dict"])
    wider = IPT(config_from(authors_model["config"], n_feats=32))
    with pytest.raises(CheckpointError, match="--n_feats"):
        load_checkpoint(wider, path)
    fewer = IPT(config_from(authors_model["config"], scale=[2, 3], num_queries=2))
    with pytest.raises(CheckpointError, match=r"--scale.*|--num_queries"):
        load_checkpoint(fewer, path)


def test_unreadable_files_are_named(tmp_path):
    model = IPT(config_from({"n_feats": 16, "num_heads": 4, "num_layers": 1, "scale": [2],
                             "num_queries": 1}))
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(model, str(tmp_path / "missing.pt"))
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"not a checkpoint")
    with pytest.raises(CheckpointError, match="cannot read"):
        load_checkpoint(model, str(junk))
    with pytest.raises(CheckpointError, match="no state_dict"):
        load_checkpoint(model, save(tmp_path, {"epoch": 1}, "empty.pt"))
