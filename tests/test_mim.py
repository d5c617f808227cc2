"""Masked image modelling: the masks, the loss, the extra checkpoint entries, resume, --init_from."""
from __future__ import annotations

import json

import pytest
import torch

import main as cli
import trainer
from conftest import FIXTURE_ATOL, config_from
from model import IPT, CheckpointError, load_body, load_checkpoint
from model.checkpoint import strip_mim
from model.mim import masked_l1, pixel_mask, random_token_mask
from option import parse_args, settings

SIX = ["sr2", "sr3", "sr4", "derain", "denoise30", "denoise50"]
SEVEN = [*SIX, "mim"]


@pytest.mark.parametrize("ratio,grid", [(0.5, 16), (0.75, 16), (0.3, 5)])
def test_the_masked_fraction_is_exact_per_sample_and_positions_differ(ratio, grid):
    mask = random_token_mask(8, grid, ratio, torch.Generator().manual_seed(3))
    assert mask.shape == (8, grid, grid) and mask.dtype == torch.bool
    assert mask.flatten(1).sum(1).tolist() == [round(ratio * grid * grid)] * 8
    flat = mask.flatten(1)
    assert all(not torch.equal(flat[i], flat[j]) for i in range(8) for j in range(i + 1, 8))


def test_the_same_generator_state_gives_the_same_mask():
    a = random_token_mask(4, 16, 0.5, torch.Generator().manual_seed(9))
    b = random_token_mask(4, 16, 0.5, torch.Generator().manual_seed(9))
    assert torch.equal(a, b)


def test_the_loss_ignores_unmasked_pixels_and_scores_masked_ones():
    target = torch.rand(2, 3, 12, 12) * 255
    mask = random_token_mask(2, 4, 0.5, torch.Generator().manual_seed(1))
    m = pixel_mask(mask, 3).expand_as(target)
    output = target + 10.0 * m  # off by exactly 10 on every masked pixel
    assert masked_l1(output, target, mask, 3).item() == pytest.approx(10.0)
    changed = output + 1000.0 * ~m  # only unmasked pixels change
    assert masked_l1(changed, target, mask, 3).item() == pytest.approx(10.0)
    assert masked_l1(output + 3.0 * m, target, mask, 3).item() == pytest.approx(13.0)


def tiny_mim_model(authors_model, names=SEVEN) -> IPT:
    scale = [2, 3, 4, 1, 1, 1, 1][:len(names)] if names == SEVEN[:len(names)] else [1] * len(names)
    return IPT(config_from(authors_model["config"], scale=scale, num_queries=len(names),
                           task_names=names)).eval()


def test_a_masked_cell_s_input_pixels_cannot_reach_the_output(authors_model):
    model = tiny_mim_model(authors_model)
    x = torch.rand(2, 3, 48, 48) * 255
    mask = random_token_mask(2, 16, 0.5, torch.Generator().manual_seed(2))
    other = torch.where(pixel_mask(mask, 3), torch.rand(2, 3, 48, 48) * 255, x)
    with torch.no_grad():
        a, b = model(x, 6, mask=mask), model(other, 6, mask=mask)
        unmasked = model(other, 6)
    assert torch.allclose(a, b, atol=1e-4)  # the masked pixels were replaced, not seen
    assert (a - unmasked).abs().max() > 1  # and without the mask they are seen


def test_the_six_task_part_keeps_the_authors_keys_and_strips_to_their_file(authors_model, authors_io):
    model = tiny_mim_model(authors_model)
    authors = authors_model["state_dict"]
    own = model.state_dict()
    extra = set(own) - set(authors)
    assert extra == {k for k in own if k.startswith(("head.6.", "tail.6."))} | {"mask_token"}
    state = {**own, **{k: v for k, v in authors.items() if k != "body.query_embed.weight"}}
    state["body.query_embed.weight"] = torch.cat([authors["body.query_embed.weight"],
                                                  own["body.query_embed.weight"][6:]])
    stripped = strip_mim(state, SEVEN)
    assert stripped.keys() == authors.keys()  # what the authors' load_state_dict(strict) needs
    assert all(torch.equal(stripped[k], authors[k]) for k in authors)
    six = IPT(config_from(authors_model["config"])).eval()
    six.load_state_dict(stripped, strict=True)
    with torch.no_grad():
        assert (six(authors_io["input"], 5) - authors_io["outputs"][5]).abs().max() <= FIXTURE_ATOL


def test_the_strip_script_reads_the_head_names_from_the_record(tmp_path, authors_model):
    script = strip_script()
    path = save(tmp_path, tiny_mim_model(authors_model), SEVEN)
    assert script.main([path, str(tmp_path / "six.pt")]) == 0
    six = torch.load(tmp_path / "six.pt", weights_only=True)
    assert six.keys() == authors_model["state_dict"].keys()
    assert all(six[k].shape == v.shape for k, v in authors_model["state_dict"].items())


def test_strip_mim_renumbers_heads_after_a_mim_head(authors_model):
    model = tiny_mim_model(authors_model, ["mim", "derain"])
    stripped = strip_mim(model.state_dict(), ["mim", "derain"])
    assert torch.equal(stripped["head.0.0.weight"], model.state_dict()["head.1.0.weight"])
    assert stripped["body.query_embed.weight"].shape[0] == 1 and "mask_token" not in stripped
    with pytest.raises(ValueError, match="do not match"):
        strip_mim(model.state_dict(), SEVEN)


def save(tmp_path, model, tasks, name="run"):
    folder = tmp_path / name / "model"
    folder.mkdir(parents=True)
    torch.save(model.state_dict(), folder / "model_latest.pt")
    record = {"architecture": {"scale": "+".join(map(str, model.scale)), "tasks": "+".join(tasks),
                               "num_queries": len(tasks), "n_feats": 16, "num_heads": 4,
                               "num_layers": 2}}
    (folder / "training.json").write_text(json.dumps(record))
    return str(folder / "model_latest.pt")


def test_a_mim_checkpoint_fine_tunes_sr2_strictly_without_its_mim_entries(tmp_path, authors_model):
    source = tiny_mim_model(authors_model)
    path = save(tmp_path, source, SEVEN)
    s = settings(parse_args(["--task", "sr2", "--pretrain", path]))  # options from training.json
    assert s.model.task_names == ["sr2"] and s.model.n_feats == 16 and s.model.num_layers == 2
    assert s.run.pretrain_tasks == SEVEN
    model = IPT(s.model)
    load_checkpoint(model, path, file_tasks=s.run.pretrain_tasks)
    got, want = model.state_dict(), source.state_dict()
    assert "mask_token" not in got
    assert torch.equal(got["head.0.0.weight"], want["head.0.0.weight"])
    assert torch.equal(got["body.query_embed.weight"], want["body.query_embed.weight"][:1])
    mim = IPT(settings(parse_args(["--task", "mim", "--pretrain", path])).model)
    load_checkpoint(mim, path, file_tasks=SEVEN)  # the mim head alone keeps its mask token
    assert torch.equal(mim.state_dict()["mask_token"], want["mask_token"])


def test_init_from_mim_takes_the_mim_head_and_the_tail_s_last_convolution(tmp_path, authors_model):
    source = tiny_mim_model(authors_model, ["mim"])
    path = save(tmp_path, source, ["mim"])
    s = settings(parse_args(["--scale", "2", "--pretrain", path, "--init_from", "mim"]))
    model = IPT(s.model)
    before = {k: v.clone() for k, v in model.state_dict().items()}
    initial = load_body(model, path, s.run.init_from, s.run.pretrain_tasks)
    got, want = model.state_dict(), source.state_dict()
    assert torch.equal(got["head.0.2.body.2.weight"], want["head.0.2.body.2.weight"])
    assert torch.equal(got["tail.0.1.weight"], want["tail.0.1.weight"])
    assert torch.equal(got["body.encoder.layers.1.linear2.weight"],
                       want["body.encoder.layers.1.linear2.weight"])
    assert set(initial) == {"tail.0.0.0.weight", "tail.0.0.0.bias"}  # x2's upsampler stays random
    assert torch.equal(got["tail.0.0.0.weight"], before["tail.0.0.0.weight"])
    random_heads = IPT(s.model)
    kept = load_body(random_heads, path, "none")
    assert "head.0.0.weight" in kept and "body.query_embed.weight" in kept
    with pytest.raises(CheckpointError, match="none is 'derain'"):
        load_body(IPT(s.model), save(tmp_path, tiny_mim_model(authors_model), SEVEN, "seven"),
                  "derain", ["a", "b", "c", "d", "e", "f", "g"])


def test_init_from_is_refused_without_a_file_or_a_single_trained_head():
    for argv in (["--scale", "2", "--init_from", "mim"],
                 ["--scale", "2", "--pretrain", "m.pt", "--init_from", "mim", "--test_only"],
                 ["--scale", "2+1", "--pretrain", "m.pt", "--init_from", "mim"]):
        with pytest.raises(SystemExit):
            parse_args(argv)


TINY_CLI = ["--cpu", "--n_feats", "16", "--num_heads", "4", "--num_layers", "1", "--patch_size",
            "12", "--batch_size", "2", "--data_train", "Sample", "--data_test", "Demo",
            "--n_threads", "0", "--lr", "1e-3", "--con_loss", "--save_every", "2",
            "--scale", "2+1", "--tasks", "sr2+mim", "--mask_ratio", "0.4"]


def test_a_mim_run_records_its_heads(tmp_path):
    assert cli.main([*TINY_CLI, "--max_steps", "2", "--save", str(tmp_path)]) == 0
    record = json.loads((tmp_path / "model" / "training.json").read_text())
    assert record["step"] == 2 and record["finished"] and record["architecture"]["tasks"] == "sr2+mim"
    assert "mask_token" in torch.load(tmp_path / "model" / "model_latest.pt", weights_only=True)


def test_a_mim_batch_trains_the_mask_token_and_only_masked_pixels_count(tmp_path):
    args = parse_args([*TINY_CLI, "--max_steps", "1", "--save", str(tmp_path), "--task_id", "1"])
    s = settings(args)
    model = IPT(s.model)
    run = trainer.Trainer(s.train, model, None, None, 1, 1)
    hr = torch.rand(2, 3, 12, 12) * 255
    loss = run.loss(hr, hr, 0, step=0)
    loss.backward()
    assert model.mask_token.grad is not None and model.mask_token.grad.abs().sum() > 0


def sr2_mim_model(authors_model) -> IPT:
    return IPT(config_from(authors_model["config"], scale=[2, 1], num_queries=2,
                           task_names=["sr2", "mim"])).eval()


def test_strip_mim_refuses_head_names_the_shapes_contradict(authors_model):
    state = sr2_mim_model(authors_model).state_dict()
    with pytest.raises(ValueError, match=r"head 0 \(mim, scale 1\) has an x2 upsampler"):
        strip_mim(state, ["mim", "sr2"])  # the old code dropped the sr2 head
    with pytest.raises(ValueError, match="unknown task 'foo'"):
        strip_mim(state, ["foo", "mim"])
    assert "tail.0.0.0.weight" in strip_mim(state, ["sr2", "mim"])  # the right names pass
    six = tiny_mim_model(authors_model).state_dict()  # x2, x3, x4 tails read apart
    with pytest.raises(ValueError, match=r"head 1 \(sr4, scale 4\) has an x3 upsampler"):
        strip_mim(six, ["sr2", "sr4", "sr3", "derain", "denoise30", "denoise50", "mim"])


def strip_script():
    """The strip_mim script's module (its name is taken by model.checkpoint's function here)."""
    from scripts import strip_mim as script
    return script


def test_the_strip_script_refuses_a_record_the_file_contradicts_and_names_the_dropped_head(
        tmp_path, authors_model, capsys):
    model = sr2_mim_model(authors_model)
    wrong = save(tmp_path, model, ["mim", "sr2"], "wrong")  # a record in the wrong order
    out = tmp_path / "out.pt"
    assert strip_script().main([wrong, str(out)]) == 1 and not out.exists()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "contradict the file's shapes" in err[0] and wrong in err[0]
    right = save(tmp_path, model, ["sr2", "mim"], "right")
    assert strip_script().main([right, str(out)]) == 0
    printed = capsys.readouterr().out
    assert "dropping head 1 (mim, per training.json; its shapes match any scale-1 head)" in printed
    sr2 = IPT(config_from(authors_model["config"], scale=[2], num_queries=1, task_names=["sr2"]))
    assert torch.load(out, weights_only=True).keys() == sr2.state_dict().keys()


def test_the_strip_script_refuses_a_file_of_only_a_mim_head(tmp_path, authors_model, capsys):
    """It wrote a file with no head at all ("heads , 37 entries"), exit 0."""
    mim = IPT(config_from(authors_model["config"], scale=[1], num_queries=1, task_names=["mim"]))
    path, out = save(tmp_path, mim, ["mim"], "mim_only"), tmp_path / "out.pt"
    assert strip_script().main([path, str(out)]) == 1 and not out.exists()
    assert "has only a mim head (per training.json)" in capsys.readouterr().err


def test_init_from_refuses_a_head_the_file_does_not_have(tmp_path, authors_model):
    sr2 = IPT(config_from(authors_model["config"], scale=[2], num_queries=1, task_names=["sr2"]))
    named = save(tmp_path, sr2, ["sr2"], "named")  # a training.json says sr2
    s = settings(parse_args(["--scale", "3", "--pretrain", named, "--init_from", "sr3"]))
    with pytest.raises(CheckpointError, match="has heads sr2; none is 'sr3'"):
        load_body(IPT(s.model), named, "sr3", s.run.pretrain_tasks)  # the old code took sr2
    unnamed = tmp_path / "unnamed.pt"
    torch.save(sr2.state_dict(), unnamed)  # no record: its name is unknown, its scale is 2
    three = IPT(config_from(authors_model["config"], scale=[3], num_queries=1, task_names=["sr3"]))
    with pytest.raises(CheckpointError, match=r"one head, of unknown name .*x2 upsampler"):
        load_body(three, str(unnamed), "sr3")
    with pytest.raises(CheckpointError, match=r"one head, of unknown name .*\(mim, scale 1\)"):
        load_body(three, str(unnamed), "mim")
    assert load_body(three, str(unnamed), "sr2") == ["tail.0.0.0.weight", "tail.0.0.0.bias"]
    mislabelled = save(tmp_path, sr2, ["derain"], "mislabelled")  # a record its shapes contradict
    with pytest.raises(CheckpointError, match=r"contradict its shapes: head 0 \(derain"):
        load_body(three, mislabelled, "derain", ["derain"])
