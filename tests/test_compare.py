"""scripts.compare: the FLOP count, the two models it pits against each other, and how it keeps
the whole run within --seconds."""
from __future__ import annotations

import re
import time

import pytest
import torch

import metrics
from model import build_model
from option import settings
from scripts import compare


def test_gflops_per_megapixel_of_a_hand_counted_network():
    conv = torch.nn.Conv2d(3, 5, kernel_size=3, padding=1, bias=False)
    # 2 FLOPs per multiply-add, 3*3*3 multiply-adds per output value, 5 outputs per pixel
    assert compare.gflops_per_megapixel(conv) == pytest.approx(2 * 27 * 5 * 1e6 / 1e9)


@pytest.mark.parametrize("task", compare.TASKS)
def test_the_two_models_are_of_similar_size(tmp_path, task):
    sizes = {}
    for name in compare.MODELS:
        args = compare.options(name, task, str(tmp_path / name))
        assert args.model == name and args.task_names == [task]
        sizes[name] = sum(p.numel() for p in build_model(settings(args).model).parameters())
    assert 0.8 <= sizes["restormer"] / sizes["ipt"] <= 1.25


def test_a_fresh_trainer_takes_a_step(tmp_path):
    args = compare.options("ipt", compare.TASKS[0], str(tmp_path / "ipt"))
    net, runner = compare.fresh_trainer(args, total_steps=1)
    assert runner.fit() == 0 and runner.progress.step == 1


# ----------------------------------------------------------------------------------------
# --seconds bounds the whole run: the plan, the split and the refusal
# ----------------------------------------------------------------------------------------
SHAPES = ((512, 512), (400, 600))  # the Sample test photos, astronaut and coffee
RATES = {("ipt", "official"): 30.0, ("ipt", "fast"): 3.0, ("restormer", "whole"): 15.0}  # s / MP


def probe_of(rates=RATES) -> compare.Probe:
    return compare.Probe(dict(rates), {"ipt": 273.0, "restormer": 152.0}, SHAPES)


def eval_seconds(ipt_rate: float, pixels: int) -> float:
    """Every run's evaluation, by hand: both tasks, IPT and Restormer each over ``pixels``."""
    return compare.EVAL_SAFETY * len(compare.TASKS) * (ipt_rate + 15.0) * pixels / 1e6


def test_the_sample_photos_are_the_shapes_planned_with(tmp_path):
    args = compare.options("ipt", "denoise30", str(tmp_path / "run"))
    assert tuple(tuple(p.hr.shape[-2:]) for p in compare.sample_pairs(args, None)) == SHAPES


def test_the_plan_prefers_official_tiling_on_the_whole_photos():
    whole = 512 * 512 + 400 * 600
    official, fast = eval_seconds(30.0, whole), eval_seconds(3.0, whole)
    assert compare.total_eval(compare.EvalPlan("official", None), probe_of()) == pytest.approx(official)
    assert compare.choose_plan(probe_of(), official * 1.001) == compare.EvalPlan("official", None)
    assert compare.choose_plan(probe_of(), official * 0.99) == compare.EvalPlan("fast", None)
    assert compare.choose_plan(probe_of(), fast * 1.001) == compare.EvalPlan("fast", None)
    assert compare.choose_plan(probe_of(), fast * 0.99).crop is not None


def test_a_small_allowance_gets_the_largest_centre_crops_that_fit():
    # crops of 256: 256x256 of each photo
    allowance = eval_seconds(3.0, 2 * 256 * 256) * 1.001
    plan = compare.choose_plan(probe_of(), allowance)
    assert plan == compare.EvalPlan("fast", 256)
    assert compare.total_eval(plan, probe_of()) == pytest.approx(allowance, rel=0.002)
    # just below: the next size down, a multiple of the crop step
    smaller = compare.choose_plan(probe_of(), allowance * 0.99)
    assert smaller == compare.EvalPlan("fast", 256 - compare.CROP_STEP)
    # a crop wider than a side keeps that side: 432 of coffee's 400 rows
    assert compare.plan_pixels(compare.EvalPlan("fast", 432), SHAPES) == pytest.approx(
        (432 * 432 + 400 * 432) / 1e6)
    # nothing fits: the cheapest plan, which the caller checks against the budget
    assert compare.choose_plan(probe_of(), 0.0) == compare.CHEAPEST == compare.EvalPlan(
        "fast", compare.MIN_CROP)


def test_the_plan_says_what_it_evaluates():
    assert "whole" in compare.EvalPlan("official", None).describe()
    assert "`official`" in compare.EvalPlan("official", None).describe()
    cropped = compare.EvalPlan("fast", 96).describe()
    assert "96x96" in cropped and "`fast`" in cropped and "did not fit" in cropped
    assert compare.EvalPlan("fast", 96).mode("ipt") == "fast"
    assert compare.EvalPlan("fast", 96).mode("restormer") == "whole"


class FakeClock:
    def __init__(self, now: float = 100.0):
        self.now = now

    def __call__(self) -> float:
        return self.now


def test_the_budget_counts_from_the_start_and_keeps_a_reserve():
    clock = FakeClock()
    budget = compare.Budget(60.0, started=clock.now - 5.0, clock=clock)  # 5 s of imports
    assert budget.elapsed() == 5.0
    assert budget.left() == 60.0 - compare.reserve(60.0) - 5.0
    clock.now += 100.0
    assert budget.left() < 0
    assert compare.reserve(60.0) >= 1.0 and compare.reserve(1000.0) <= 0.05 * 1000.0


@pytest.mark.parametrize("slower", [1.0, 1.2])
def test_the_trainings_split_what_the_setups_and_evaluations_leave(slower):
    """Each run as the loop plans it: set-up, its share of training, evaluation; the last one ends
    at the budget's end less the reserve when every phase takes what was predicted, and a run that
    overruns takes its excess out of the later runs' training, not out of the budget."""
    clock = FakeClock()
    budget = compare.Budget(120.0, started=clock.now - 20.0, clock=clock)  # probe and calibrations
    setups, evals = [1.0, 2.0, 1.5, 0.5], [3.0, 1.0, 3.0, 1.0]
    shares = []
    for i in range(4):
        share = compare.training_share(budget.left(), sum(setups[i:]) + sum(evals[i:]), 4 - i)
        shares.append(share)
        clock.now += (setups[i] + share + evals[i]) * (slower if i == 0 else 1.0)
    end = 120.0 - compare.reserve(120.0)
    assert budget.elapsed() == pytest.approx(end)
    if slower == 1.0:
        assert shares == pytest.approx([(end - 20.0 - sum(setups) - sum(evals)) / 4] * 4)
    else:  # the first run took 20% more: the three later shares shrink alike
        assert shares[1:] == pytest.approx([shares[1]] * 3) and shares[1] < shares[0]


def test_a_budget_too_short_is_refused_before_any_work(tmp_path, capsys):
    """The imports took the budget (it counts from the script's start)."""
    doc = tmp_path / "COMPARE.md"
    assert compare.main(["--seconds", "1", "--doc", str(doc)], started=time.monotonic() - 2) == 2
    err = capsys.readouterr().err
    assert "--seconds 1 is too short" in err and re.search(r"give --seconds \d+ or more", err)
    assert not doc.exists()


@pytest.mark.parametrize("argv", [["--seconds", "0"], ["--seconds", "-3"], ["--threads", "0"],
                                  ["--seconds", "nan"], ["--seconds", "1e309"], ["--threads", "99999999999"]])
def test_bad_options_are_refused(argv, tmp_path):
    with pytest.raises(SystemExit):
        compare.main([*argv, "--doc", str(tmp_path / "COMPARE.md")])


def test_centre_crops_cut_input_and_target_alike():
    lr, hr = torch.rand(3, 9, 14), torch.rand(3, 9, 14)
    pair = compare.Pair("p", lr, hr)
    cut = compare.centre_crop(pair, 4)
    assert cut.name == "p"
    assert torch.equal(cut.lr, lr[:, 2:6, 5:9]) and torch.equal(cut.hr, hr[:, 2:6, 5:9])
    wide = compare.centre_crop(pair, 12)  # wider than the 9 rows: they stay whole
    assert torch.equal(wide.hr, hr[:, :, 1:13]) and torch.equal(wide.lr, lr[:, :, 1:13])
    assert compare.centre_crop(pair, None) is pair
    with pytest.raises(ValueError):
        compare.centre_crop(compare.Pair("q", torch.rand(3, 4, 4), torch.rand(3, 8, 8)), 2)


def test_cropped_photos_are_evaluated_on_the_crops(tmp_path):
    args = compare.options("ipt", "denoise30", str(tmp_path / "run"))
    torch.manual_seed(0)
    net = build_model(settings(args).model).eval()
    photos = compare.sample_pairs(args, 48)
    assert [tuple(p.hr.shape) for p in photos] == [(3, 48, 48)] * 2
    result = compare.evaluate(args, net, "fast", photos)
    assert result["n_images"] == 2 and result["ms_per_mp"] > 0
    # the input's PSNR (Y) is that of the cropped noisy input (quantised) against the cropped target
    inputs = [metrics.calc_psnr(metrics.quantize(p.lr.float()), p.hr.float(), 1)[0] for p in photos]
    assert result["baseline_psnr"] == pytest.approx(sum(inputs) / 2, abs=1e-6)
