"""Restormer: the authors' fixture, parameter counts, checkpoints, value range, whole images."""
from __future__ import annotations

import os

import pytest
import torch

from conftest import FIXTURES
from model import Restormer, RestormerConfig, build_model, load_checkpoint, restore
from model.checkpoint import CheckpointError
from option import parse_args, settings

TINY = ["--model", "restormer", "--dim", "8", "--num_blocks", "1+1+1+1", "--num_refinement_blocks", "1"]


@pytest.fixture(scope="module")
def fixture() -> dict:
    """The authors' restormer_arch.py outputs for both LayerNorm types."""
    return torch.load(os.path.join(FIXTURES, "restormer_tiny.pt"), weights_only=True)


def config_of(raw: dict, **overrides) -> RestormerConfig:
    """Our config from the fixture's (the authors' argument names)."""
    ours = dict(dim=raw["dim"], num_blocks=raw["num_blocks"],
                num_refinement_blocks=raw["num_refinement_blocks"], heads=raw["heads"],
                ffn_expansion_factor=raw["ffn_expansion_factor"], bias=raw["bias"],
                layernorm_type=raw["LayerNorm_type"])
    return RestormerConfig(**{**ours, **overrides})


@pytest.mark.parametrize("kind", ["WithBias", "BiasFree"])
def test_reproduces_the_authors_output(fixture, kind):
    case = fixture[kind]
    model = Restormer(config_of(case["config"])).eval()
    model.load_state_dict(case["params"], strict=True)
    assert list(model.state_dict()) == list(case["params"])  # the authors' keys, in their order
    with torch.no_grad():
        out = model(case["input"])
    # outputs are about 0..1; another CPU's kernels move them by about 1e-6 (summation order)
    assert (out - case["output"]).abs().max().item() <= 1e-4


@pytest.mark.parametrize("kind, expected", [("WithBias", 26_126_644), ("BiasFree", 26_111_668)])
def test_full_size_parameter_count(kind, expected):
    with torch.device("meta"):
        model = Restormer(RestormerConfig(layernorm_type=kind))
    assert sum(p.numel() for p in model.parameters()) == expected


def test_full_size_params_file_loads_strictly_and_keeps_odd_sizes(tmp_path):
    torch.manual_seed(0)
    source = Restormer(RestormerConfig())
    path = tmp_path / "real_denoising.pth"
    torch.save({"params": source.state_dict()}, path)  # the authors' release format
    args = parse_args(["--model", "restormer", "--task", "denoise30", "--rgb_range", "1"])
    model = build_model(settings(args).model)
    load_checkpoint(model, str(path))
    ours, theirs = model.state_dict().values(), source.state_dict().values()
    assert all(torch.equal(a, b) for a, b in zip(ours, theirs, strict=True))
    x = torch.rand(1, 3, 37, 45)  # neither side a multiple of 8
    with torch.no_grad():
        y = restore(model.eval(), x)
    assert y.shape == x.shape
    padded = torch.nn.functional.pad(x, (0, 3, 0, 3), mode="reflect")  # the authors' test script
    with torch.no_grad():
        expected = (source.eval().network(padded) + padded)[..., :37, :45]
    assert (y - expected).abs().max().item() <= 1e-5


def test_a_renamed_key_is_reported_with_the_option(tmp_path, fixture):
    case = fixture["BiasFree"]
    path = tmp_path / "wrong.pth"
    torch.save({"params": case["params"]}, path)
    model = Restormer(config_of(case["config"], layernorm_type="WithBias"))  # expects norm biases
    with pytest.raises(CheckpointError, match="--layernorm_type"):
        load_checkpoint(model, str(path))


def test_value_range_is_one_adapter(fixture):
    case = fixture["WithBias"]
    unit = Restormer(config_of(case["config"])).eval()
    unit.load_state_dict(case["params"])
    wide = Restormer(config_of(case["config"], rgb_range=255)).eval()
    wide.load_state_dict(case["params"])
    with torch.no_grad():
        assert torch.allclose(wide(case["input"] * 255), case["output"] * 255, atol=1e-2)
        assert torch.allclose(unit(case["input"]), case["output"], atol=1e-4)


def test_auto_runs_whole_and_fast_tiles(fixture):
    case = fixture["WithBias"]
    model = Restormer(config_of(case["config"], rgb_range=255)).eval()
    model.load_state_dict(case["params"])
    x = torch.rand(1, 3, 50, 70) * 255
    calls = []
    hook = model.register_forward_pre_hook(lambda m, inp: calls.append(tuple(inp[0].shape)))
    whole = restore(model, x)
    assert calls == [(1, 3, 50, 70)]
    calls.clear()
    tiled = restore(model, x, mode="fast", tile_size=32)
    hook.remove()
    assert tiled.shape == x.shape and all(c[-2:] == (32, 32) for c in calls)
    assert sum(c[0] for c in calls) == 2 * 3  # 50 -> 2 rows, 70 -> 3 columns with overlap 8
    assert (tiled - whole).abs().mean().item() < 0.05 * 255  # near, not equal: MDTA sees the tile
    with pytest.raises(ValueError, match="official"):
        restore(model, x, mode="official", tile_size=32)
    calls.clear()  # a tile that holds the image runs it whole: --tile_size 100000 padded to 10^10 pixels
    hook = model.register_forward_pre_hook(lambda m, inp: calls.append(tuple(inp[0].shape)))
    assert torch.equal(restore(model, x, mode="fast", tile_size=100_000), whole)
    hook.remove()
    assert calls == [(1, 3, 50, 70)]


def test_options_refuse_the_other_architecture():
    with pytest.raises(SystemExit):
        parse_args(["--model", "restormer", "--task", "denoise30", "--num_layers", "2"])
    with pytest.raises(SystemExit):
        parse_args(["--dim", "16"])  # a Restormer option without --model restormer
    with pytest.raises(SystemExit):
        parse_args(["--model", "restormer", "--scale", "2"])  # Restormer has no SR head
    with pytest.raises(SystemExit):
        parse_args([*TINY, "--task", "derain", "--heads", "1+2+4"])
    args = parse_args([*TINY, "--task", "derain", "--layernorm_type", "BiasFree"])
    assert (args.num_blocks, args.heads, args.tile_size, args.scale) == ([1, 1, 1, 1], [1, 2, 4, 8], 256, [1])
    model = build_model(settings(args).model)
    assert isinstance(model, Restormer) and model.task_names == ["derain"]
    assert not any(k.endswith("norm1.body.bias") for k in model.state_dict())


def test_the_other_architectures_file_says_model(tmp_path, fixture):
    """Restormer weights given to IPT listed a dozen IPT and Restormer options, never --model."""
    path = tmp_path / "restormer.pth"
    torch.save({"params": fixture["BiasFree"]["params"]}, path)
    tiny = ["--n_feats", "16", "--num_heads", "4", "--num_layers", "1"]
    with pytest.raises(CheckpointError) as refused:
        load_checkpoint(build_model(settings(parse_args(tiny)).model), str(path))
    hint = "options that probably differ: --model (the file shares no key with this network)"
    assert hint in str(refused.value)
