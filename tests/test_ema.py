"""--ema_decay (a moving average of the weights is what a run delivers) and --accumulate (several
micro-batches make one optimiser step): by hand, exact resume, an older state, bad input."""
from __future__ import annotations

import json
import os
import shutil
import warnings

import pytest
import torch

import main as cli
import trainer
from conftest import FIXTURES
from model import IPT, build_model
from option import parse_args, settings
from test_training import TINY, make_trainer, synthetic_batches, weights

CLI = ["--cpu", "--scale", "2", "--n_feats", "16", "--num_heads", "4", "--num_layers", "1",
       "--patch_size", "12", "--batch_size", "2", "--data_train", "Sample", "--data_test", "Demo",
       "--n_threads", "0", "--lr", "1e-3", "--save_every", "3", "--print_every", "100"]


def latest(run) -> dict:
    return torch.load(run / "model" / "model_latest.pt", weights_only=True)


def test_the_delivered_weights_are_the_average_computed_by_hand(tmp_path):
    """Three steps of Trainer.train_step: model_latest.pt is 0.9 * average + 0.1 * weights after
    each step, from the initial weights; state.pt keeps the optimiser's weights, which are those
    of the same run without the average."""
    plain, plain_model = make_trainer(tmp_path / "plain", 3)
    runner, model = make_trainer(tmp_path / "ema", 3, "--ema_decay 0.9")
    average = weights(model)
    assert average.keys() == weights(plain_model).keys()
    for batch, _ in zip(synthetic_batches(parse_args(TINY.split() + ["--scale", "2+1"]), 2)(0), range(3),
                        strict=False):
        assert runner.train_step(batch) is not None and plain.train_step(batch) is not None
        now = weights(model)
        average = {k: 0.9 * average[k] + 0.1 * now[k] if now[k].is_floating_point() else now[k]
                   for k in average}  # the position ids (integers) are not averaged
    assert runner.save() and plain.save()
    delivered, raw = latest(tmp_path / "ema"), weights(model)
    assert all(torch.allclose(delivered[k], average[k], rtol=1e-5, atol=1e-7) for k in average)
    assert all(torch.equal(raw[k], weights(plain_model)[k]) for k in raw)  # the average steers nothing
    assert max((delivered[k] - raw[k]).abs().max() for k in raw) > 1e-4  # so the test can fail
    state = torch.load(tmp_path / "ema" / "state.pt", weights_only=True)
    assert all(torch.equal(state["model"][k], raw[k]) for k in raw)
    record = json.loads((tmp_path / "ema" / "model" / "training.json").read_text())
    assert (record["ema"], record["ema_decay"], "ema_decay" in record["architecture"]) == (True, 0.9, False)


def test_a_skipped_step_leaves_the_average_alone(tmp_path):
    runner, _ = make_trainer(tmp_path, 3, "--ema_decay 0.5")
    before = {k: v.clone() for k, v in runner.ema.module.state_dict().items()}
    batch = next(synthetic_batches(parse_args(TINY.split() + ["--scale", "2+1"]), 2)(0))
    batch["hr"] = batch["hr"] * float("nan")
    with warnings.catch_warnings():  # a first step skipped moves the schedule without torch's warning
        warnings.simplefilter("error")
        assert runner.train_step(batch) is None
    assert all(torch.equal(v, before[k]) for k, v in runner.ema.module.state_dict().items())


@pytest.mark.parametrize("extra", [["--ema_decay", "0.9"], ["--ema_decay", "0.9", "--accumulate", "2"]])
def test_twelve_steps_equal_six_a_resume_and_six(tmp_path, extra):
    """Bit for bit on one machine; the delivered file is what the authors' model loads strictly."""
    run = [*CLI, *extra]
    assert cli.main([*run, "--max_steps", "12", "--save", str(tmp_path / "straight")]) == 0
    assert cli.main([*run, "--max_steps", "6", "--save", str(tmp_path / "split")]) == 0
    assert cli.main([*run, "--max_steps", "12", "--save", str(tmp_path / "split"), "--resume"]) == 0
    a, b = latest(tmp_path / "straight"), latest(tmp_path / "split")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    IPT(settings(parse_args(run)).model).load_state_dict(b, strict=True)
    record = json.loads((tmp_path / "split" / "model" / "training.json").read_text())
    assert (record["step"], record["ema"]) == (12, True)


def gradients(args: str, batches: list[dict], save) -> dict[str, torch.Tensor]:
    """The gradients one train_step leaves, from the seed's initial weights (SGD, lr 0: no step)."""
    a = parse_args(f"{TINY} --scale 2+1 --optimizer SGD --lr 0 --momentum 0 --save {save} {args}".split())
    torch.manual_seed(a.seed)
    model = build_model(settings(a).model)
    runner = trainer.Trainer(settings(a).train, model, None, None, 1, 1)
    assert runner.train_step(batches) is not None
    return {k: p.grad.clone() for k, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("task", [0, 1])  # sr2 (L1 on the whole output), denoise (scale 1)
def test_two_micro_batches_give_the_gradient_of_one_batch_of_both(tmp_path, task):
    g = torch.Generator().manual_seed(5)
    scale = 2 if task == 0 else 1
    hr = torch.rand(4, 3, 12 * scale, 12 * scale, generator=g) * 255
    lr = torch.nn.functional.avg_pool2d(hr, scale) if scale > 1 else hr + 5
    whole = gradients("--batch_size 4", [{"lr": lr, "hr": hr, "task_id": task, "step": 0}], tmp_path / "a")
    micro = [{"lr": lr[i:i + 2], "hr": hr[i:i + 2], "task_id": task, "step": i // 2} for i in (0, 2)]
    halves = gradients("--batch_size 2 --accumulate 2", micro, tmp_path / "b")
    assert whole.keys() == halves.keys() and len(whole) > 10
    for k in whole:
        assert torch.allclose(whole[k], halves[k], rtol=1e-4, atol=1e-6), k
    assert max(float(v.abs().max()) for v in whole.values()) > 1e-3  # real gradients


def test_the_masked_l1_of_micro_batches_is_that_of_one_batch(tmp_path, monkeypatch):
    """A mim head: the same masked cells in both splits (a fixed ratio: as many per sample)."""
    cells = torch.rand(4, 4, generator=torch.Generator().manual_seed(1)).argsort(1) < 2  # 2 of 4
    masks = cells.reshape(4, 2, 2)  # a 6x6 input: 2x2 cells of 3x3 pixels
    drawn = iter([masks, masks[:2], masks[2:]])
    monkeypatch.setattr(trainer, "random_token_mask", lambda *_: next(drawn))
    hr = torch.rand(4, 3, 6, 6, generator=torch.Generator().manual_seed(2)) * 255
    one = {"lr": hr, "hr": hr, "task_id": 0}
    args = "--scale 1 --tasks mim --n_feats 16 --num_heads 4 --num_layers 1 --patch_size 6 --chop fast"
    whole = gradients(f"{args} --batch_size 4", [one], tmp_path / "a")
    halves = gradients(f"{args} --batch_size 2 --accumulate 2",
                       [{**one, "lr": hr[i:i + 2], "hr": hr[i:i + 2]} for i in (0, 2)], tmp_path / "b")
    assert all(torch.allclose(whole[k], halves[k], rtol=1e-4, atol=1e-6) for k in whole)


def test_a_state_saved_before_ema_and_accumulation_existed_resumes(tmp_path, caplog):
    run = tmp_path / "run"
    shutil.copytree(FIXTURES + "/pre_ema_run", run)
    old = ["--cpu", "--n_feats", "4", "--num_heads", "1", "--num_layers", "1", "--scale", "2",
           "--patch_size", "6", "--batch_size", "2", "--data_train", "Sample", "--data_test", "Demo",
           "--n_threads", "0", "--save_every", "2"]
    assert cli.main([*old, "--max_steps", "4", "--save", str(run), "--resume"]) == 0
    assert "resumed at step 2" in caplog.text
    assert json.loads((run / "model" / "training.json").read_text())["step"] == 4
    assert cli.main([*old, "--max_steps", "6", "--save", str(run), "--resume", "--ema_decay", "0.9"]) == 1
    assert "--ema_decay (saved 0.0, now 0.9)" in caplog.text  # the average cannot start mid-run


def test_an_average_that_does_not_fit_the_model_is_one_line(tmp_path, caplog):
    run = tmp_path / "run"
    assert cli.main([*CLI, "--ema_decay", "0.5", "--max_steps", "2", "--save", str(run)]) == 0
    state = torch.load(run / "state.pt", weights_only=True)
    name = next(iter(state["ema"]))
    state["ema"][name] = torch.zeros(3, 1, 2)
    torch.save(state, run / "state.pt")
    caplog.clear()
    assert cli.main([*CLI, "--ema_decay", "0.5", "--max_steps", "4", "--save", str(run), "--resume"]) == 1
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "does not fit this model" in errors[0] and name in errors[0], errors


@pytest.mark.parametrize("argv,words", [
    (["--ema_decay", "1"], "--ema_decay must be in [0, 1), got 1.0"),
    (["--ema_decay", "-0.1"], "--ema_decay must be in [0, 1)"),
    (["--accumulate", "0"], "--accumulate must be 1 to 4096, got 0"),
    (["--accumulate", "1000000000"], "--accumulate must be 1 to 4096"),
])
def test_bad_values_are_one_line(capsys, argv, words):
    with pytest.raises(SystemExit) as exit_:
        parse_args(argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert exit_.value.code == 2 and len(err) == 1 and words in err[0], err


@pytest.fixture
def dynamo_only(monkeypatch):
    """torch.compile with dynamo's tracing and guards but no code generation (backend "eager"):
    what decides a recompile, in seconds instead of the minutes inductor takes on this CPU."""
    import torch._dynamo
    real = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model, **kw: real(model, **{**kw, "backend": "eager"}))
    torch._dynamo.reset()
    yield torch._dynamo.utils.counters
    torch._dynamo.reset()


def test_compiled_training_and_validation_do_not_recompile_after_the_first_ones(tmp_path, monkeypatch,
                                                                               dynamo_only, crop_sample):
    """Steps 1-3 and the validation at step 3 compile; steps 4-9 and the validations at 6 and 9
    (the same test images again) compile nothing more."""
    seen = []
    validate = trainer.Trainer.run_validation

    def counted(self):
        validate(self)
        seen.append(dynamo_only["stats"]["unique_graphs"])

    monkeypatch.setattr(trainer.Trainer, "run_validation", counted)
    crop_sample(120, 168, 96, 216)  # two sizes, fewer tiles than the photos
    argv = [*CLI, "--compile", "--ema_decay", "0.5", "--max_steps", "9", "--test_every", "3",
            "--data_test", "Sample", "--chop", "fast", "--save", str(tmp_path)]
    argv[argv.index("--patch_size") + 1] = "24"
    assert cli.main(argv) == 0
    assert len(seen) == 3 and seen[0] > 0 and seen == [seen[0]] * 3, seen


def test_compile_without_a_cpp_compiler_is_one_line(tmp_path, monkeypatch, caplog):
    from torch._inductor import cpp_builder, exc

    def none_found():
        raise exc.InvalidCxxCompiler()

    monkeypatch.setattr(cpp_builder, "get_cpp_compiler", none_found)
    assert cli.main([*CLI, "--compile", "--max_steps", "2", "--save", str(tmp_path)]) == 1
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and errors[0].startswith("--compile needs a C++ compiler"), errors
    assert not (tmp_path / "state.pt").exists()  # refused before training


@pytest.mark.parametrize("damaged_cache", [False, True])
def test_a_compile_that_fails_is_one_line(tmp_path, monkeypatch, caplog, damaged_cache):
    """A damaged file in torch's compile cache (a compile killed midway, pytorch#102539) is named
    with the fix: removing the cache, not giving up --compile."""
    import torch._dynamo
    from torch._inductor.runtime.cache_dir_utils import cache_dir

    monkeypatch.setenv("TORCHINDUCTOR_CACHE_DIR", str(tmp_path / "inductor"))
    damaged = os.path.join(cache_dir(), "nd", "c3x.main.so")

    def failing(*_):
        if damaged_cache:
            raise ImportError(f"{damaged}: file too short")
        raise RuntimeError("inductor could not build this graph")

    real = torch.compile
    monkeypatch.setattr(torch, "compile", lambda model, **kw: real(model, backend=failing))
    torch._dynamo.reset()
    try:
        assert cli.main([*CLI, "--test_only", "--compile", "--data_test", "Sample", "--chop", "fast",
                         "--save", str(tmp_path)]) == 1
    finally:
        torch._dynamo.reset()
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and errors[0].startswith("--compile: torch.compile failed"), errors
    assert "\n" not in errors[0]
    if damaged_cache:
        assert errors[0].endswith(f"remove {cache_dir()} and run again") and damaged in errors[0]
    else:
        assert errors[0].endswith("could not build this graph): run without --compile")
