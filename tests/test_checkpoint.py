"""Loading checkpoints strictly, in the layouts people have them."""
from __future__ import annotations

import errno
import os
import stat

import pytest
import torch

import runfolder
from conftest import FIXTURE_ATOL, config_from, full_disk_for_safetensors
from model import IPT, CheckpointError, load_checkpoint
from model.checkpoint import read_safetensors, write_safetensors


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


# ----------------------------------------------------------------------------------------
# The .safetensors writer: the library reads what it writes; a failed write is an OSError
# ----------------------------------------------------------------------------------------
SAFETENSORS_DTYPES = {  # the safetensors format's dtype names that torch holds (its spec)
    "F64": torch.float64, "F32": torch.float32, "F16": torch.float16, "BF16": torch.bfloat16,
    "I64": torch.int64, "I32": torch.int32, "I16": torch.int16, "I8": torch.int8,
    "U64": torch.uint64, "U32": torch.uint32, "U16": torch.uint16, "U8": torch.uint8,
    "BOOL": torch.bool, "F8_E4M3": torch.float8_e4m3fn, "F8_E5M2": torch.float8_e5m2,
    "C64": torch.complex64,
}


def every_dtype() -> dict[str, torch.Tensor]:
    """A tensor of random bytes of each dtype the format names, and the awkward shapes."""
    generator = torch.Generator().manual_seed(0)
    state = {}
    for name, dtype in SAFETENSORS_DTYPES.items():
        size = torch.empty(0, dtype=dtype).element_size()
        raw = torch.randint(0, 256, (3, 5 * size), dtype=torch.uint8, generator=generator)
        state[name] = raw.view(torch.uint8 if dtype == torch.bool else dtype)
        if dtype == torch.bool:
            state[name] = raw[:, :5] % 2 == 1
    state.update(empty=torch.zeros(0, 4), scalar=torch.tensor(3.5), transposed=torch.randn(4, 6).t(),
                 shared=state["F32"][1])  # a view of another entry's memory
    return state


def same_bytes(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Same dtype, shape and bytes (NaN patterns included)."""
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(
        a.contiguous().reshape(-1).view(torch.uint8), b.contiguous().reshape(-1).view(torch.uint8))


def test_written_safetensors_read_back_bit_for_bit_by_the_library_and_ours(tmp_path):
    from safetensors import safe_open
    state, path = every_dtype(), str(tmp_path / "all.safetensors")
    runfolder.atomic_write(path, lambda tmp: write_safetensors(state, tmp, {"num_heads": 4}), durable=True)
    ours, _ = read_safetensors(path)
    with safe_open(path, "pt") as f:
        library = {key: f.get_tensor(key) for key in f.keys()}
        metadata = f.metadata()
    assert set(ours) == set(library) == set(state)
    assert all(same_bytes(ours[k], v) and same_bytes(library[k], v) for k, v in state.items())
    assert metadata == {"format": "pt", "ipt_architecture": '{"num_heads": 4}'}
    torch_file = str(tmp_path / "all.pt")
    runfolder.atomic_save({"a": torch.zeros(1)}, torch_file)
    modes = {stat.S_IMODE(os.stat(written).st_mode) for written in (path, torch_file)}
    assert modes == {runfolder.FILE_MODE}  # what .pt files get, not the 0600 of a temporary


def test_a_full_disk_while_writing_safetensors_is_an_oserror_then_a_save_error(tmp_path, monkeypatch):
    path = tmp_path / "model.safetensors"
    path.write_bytes(b"the previous file")
    full_disk_for_safetensors(monkeypatch)
    state = {"weight": torch.randn(64, 64)}  # more than a write buffer: the bytes reach the disk
    with pytest.raises(OSError) as failed:
        write_safetensors(state, str(tmp_path / "direct.safetensors"))
    assert failed.value.errno == errno.ENOSPC
    with pytest.raises(runfolder.SaveError, match=r"No space left on device; .* MiB free there"):
        runfolder.atomic_write(str(path), lambda tmp: write_safetensors(state, tmp), durable=True)
    assert path.read_bytes() == b"the previous file"
    assert os.listdir(tmp_path) == ["model.safetensors"]  # no temporary left
