"""The IPT network against the authors' own outputs and the sizes of their models."""
from __future__ import annotations

import re

import pytest
import torch

from conftest import FIXTURE_ATOL, config_from
from model import IPT, IPTConfig, RestormerConfig, build_model, parameter_count

# (scale, num_queries) -> (state-dict entries incl. position_ids, parameters), counted from the
# authors' code (docs/DESIGN.md, "Sizes")
FULL_SIZE = {
    ((2, 3, 4, 1, 1, 1), 6): (381, 118_892_394),
    ((2,), 1): (315, 115_460_443),
    ((3,), 1): (315, 115_645_083),
    ((4,), 1): (317, 115_608_155),
    ((1,), 1): (313, 115_312_731),
}
# every key of a released checkpoint matches one of these (docs/DESIGN.md, "State-dict keys")
AUTHORS_KEYS = [
    r"(sub_mean|add_mean)\.(weight|bias)",
    r"head\.\d+\.0\.(weight|bias)",
    r"head\.\d+\.[12]\.body\.[02]\.(weight|bias)",
    r"body\.linear_encoding\.(weight|bias)",
    r"body\.mlp_head\.[03]\.(weight|bias)",
    r"body\.query_embed\.weight",
    r"body\.encoder\.layers\.\d+\.self_attn\.(in_proj_weight|out_proj\.weight)",
    r"body\.encoder\.layers\.\d+\.(linear1|linear2|norm1|norm2)\.(weight|bias)",
    r"body\.decoder\.layers\.\d+\.(self_attn|multihead_attn)\.(in_proj_weight|out_proj\.weight)",
    r"body\.decoder\.layers\.\d+\.(linear1|linear2|norm1|norm2|norm3)\.(weight|bias)",
    r"body\.position_encoding\.(position_ids|pe\.weight)",
    r"tail\.\d+\.0\.[02]\.(weight|bias)",
    r"tail\.\d+\.1\.(weight|bias)",
]


@pytest.mark.parametrize("task_id", range(6))
def test_outputs_match_the_authors_code(tiny_model, authors_io, task_id):
    with torch.no_grad():
        out = tiny_model(authors_io["input"], task_id)
    assert (out - authors_io["outputs"][task_id]).abs().max().item() <= FIXTURE_ATOL


def test_sdpa_attention_agrees_with_math(authors_model, authors_io):
    model = IPT(config_from(authors_model["config"], attention="sdpa")).eval()
    model.load_state_dict(authors_model["state_dict"])
    with torch.no_grad():
        out = model(authors_io["input"], 5)
    # float rounding only: the outputs are about 400 in size, 5e-3 is ~1e-5 relative
    assert (out - authors_io["outputs"][5]).abs().max().item() <= 5e-3


def test_fixture_keys_are_exactly_ours(tiny_model, authors_model):
    assert set(tiny_model.state_dict()) == set(authors_model["state_dict"])


def test_tokens_are_the_body_output(tiny_model, authors_io):
    with torch.no_grad():
        out, tokens = tiny_model(authors_io["input"], 1, return_tokens=True)
    assert tokens.shape == (2, 256, 16 * 3 * 3)
    assert torch.equal(out, tiny_model(authors_io["input"], 1))
    # folding the tokens back (3x3 patches) must give the body's feature map
    body_in = tiny_model.head[1](tiny_model.sub_mean(authors_io["input"]))
    folded, _ = tiny_model.body(body_in, 1)
    refolded = torch.nn.functional.fold(tokens.transpose(1, 2), 48, 3, stride=3)
    assert torch.allclose(folded, refolded)


@pytest.mark.parametrize("key", list(FULL_SIZE))
def test_full_size_counts_match_the_authors_models(key):
    scale, queries = key
    with torch.device("meta"):
        model = IPT(IPTConfig(scale=list(scale), num_queries=queries))
    entries, params = FULL_SIZE[key]
    state = model.state_dict()
    assert len(state) == entries
    assert sum(p.numel() for p in model.parameters()) == params == parameter_count(model.cfg)
    unmatched = [k for k in state if not any(re.fullmatch(p, k) for p in AUTHORS_KEYS)]
    assert unmatched == []


@pytest.mark.parametrize("config", [
    IPTConfig(n_feats=16, num_heads=4, num_layers=2, scale=[2], patch_size=12),
    IPTConfig(n_feats=8, num_heads=2, num_layers=1, scale=[3, 8, 1], patch_size=24, no_mlp=True,
              no_pos=True, no_norm=True, task_names=["sr3", "sr8", "mim"]),
    RestormerConfig(),
    RestormerConfig(dim=16, num_blocks=[1, 2, 1, 1], bias=True, layernorm_type="BiasFree",
                    num_refinement_blocks=1, ffn_expansion_factor=1.5),
], ids=["ipt tiny", "ipt variants and mim", "restormer", "restormer variants"])
def test_parameter_counts_worked_out_equal_the_built_networks(config):
    """What the memory check uses instead of building the network (any width, any depth)."""
    with torch.device("meta"):
        model = build_model(config)
    assert parameter_count(config) == sum(p.numel() for p in model.parameters())


def test_full_size_token_shape():
    with torch.device("meta"):
        model = IPT(IPTConfig(scale=[2]))
        _, tokens = model(torch.zeros(3, 3, 48, 48), 0, return_tokens=True)
    assert tuple(tokens.shape) == (3, 256, 576)


def test_wrong_input_size_is_a_clear_error(tiny_model):
    with pytest.raises(ValueError, match="48x48"):
        tiny_model(torch.zeros(1, 3, 40, 48), 0)
    with pytest.raises(IndexError, match="task_id 6"):
        tiny_model(torch.zeros(1, 3, 48, 48), 6)


def test_num_queries_below_heads_is_refused():
    with pytest.raises(ValueError, match="num_queries"):
        IPT(IPTConfig(scale=[2, 3], num_queries=1, **dict(n_feats=16, num_heads=4, num_layers=1)))


@pytest.mark.parametrize("flag", ["no_mlp", "no_pos", "no_norm", "pos_every"])
def test_authors_variants_run(flag):
    cfg = IPTConfig(scale=[2, 1], num_queries=2, n_feats=16, num_heads=4, num_layers=1, **{flag: True})
    model = IPT(cfg).eval()
    keys = set(model.state_dict())
    assert ("body.query_embed.weight" in keys) != (flag == "no_mlp")
    assert ("body.position_encoding.pe.weight" in keys) != (flag == "no_pos")
    assert any("norm1" in k for k in keys) != (flag == "no_norm")
    with torch.no_grad():
        out = model(torch.rand(1, 3, 48, 48) * 255, 0)
    assert out.shape == (1, 3, 96, 96) and torch.isfinite(out).all()
