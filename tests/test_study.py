"""scripts/study.py's bookkeeping: spreads, the table, validation curves, finished runs."""
from __future__ import annotations

import importlib.util
import json
import math
import os
import re
import shlex
import sys

import pytest
import torch
from conftest import ROOT
from hypothesis import given, settings
from hypothesis import strategies as st

import utility

spec = importlib.util.spec_from_file_location("study", os.path.join(ROOT, "scripts", "study.py"))
study = importlib.util.module_from_spec(spec)
sys.modules["study"] = study  # its dataclasses look their module up
spec.loader.exec_module(study)


def test_spread_is_the_mean_and_sample_deviation_over_seeds():
    assert study.spread([30.0, 32.0]) == "31.000 ± 1.414"  # sqrt(((-1)^2 + 1^2) / 1)
    assert study.spread([29.5]) == "29.500"


def metrics(psnr: float, ssim: float, base: float) -> dict:
    return {"psnr_y": psnr, "ssim_y": ssim, "baseline_psnr": base, "baseline_ssim": 0.5}


def test_the_table_has_the_input_row_and_one_row_per_variant():
    found = {seed: {v.name: {"sr2": (metrics(30 + seed, 0.9, 28.0), []),
                             "denoise30": (metrics(25 - seed, 0.7, 20.0), [])}
                    for v in study.VARIANTS} for seed in (1, 3)}
    lines = study.table(found).splitlines()
    assert len(lines) == 3 + len(study.VARIANTS)
    assert lines[2].startswith("| *input") and "28.000" in lines[2] and "20.000" in lines[2]
    # seeds 1 and 3: PSNR 31 and 33 (sr2), 24 and 22 (denoise30); deviation sqrt(2)
    assert lines[3] == "| none | 32.000 ± 1.414 | 0.9000 ± 0.0000 | 23.000 ± 1.414 | 0.7000 ± 0.0000 |"


def test_a_curve_starts_at_the_input_and_follows_the_log(tmp_path):
    (tmp_path / "log.txt").write_text(
        "2026-01-01 INFO step 60: validation PSNR 30.125 dB (best 30.125 at step 60)\n"
        "2026-01-01 INFO something else\n"
        "2026-01-01 INFO step 120: validation PSNR 31.500 dB (best 31.500 at step 120)\n")
    (tmp_path / "metrics.json").write_text(json.dumps(
        {"results": {"Set5": {"sr2": metrics(31.5, 0.9, 29.0)}}}))
    assert study.curve(str(tmp_path)) == [(0, 29.0), (60, 30.125), (120, 31.5)]


def test_finished_runs_are_recognised(tmp_path):
    run = tmp_path / "run"
    assert not study.done(str(run), "training")
    (run / "model").mkdir(parents=True)
    (run / "model" / "training.json").write_text(json.dumps({"architecture": {}, "finished": False}))
    assert not study.done(str(run), "training")
    (run / "model" / "training.json").write_text(json.dumps({"architecture": {}, "finished": True}))
    assert study.done(str(run), "training")
    (run / "model" / "training.json").write_text("{not json")
    assert not study.done(str(run), "training")
    assert not study.done(str(run), "evaluation")
    (run / "metrics.json").write_text("{}")
    assert study.done(str(run), "evaluation")


def test_the_test_sets_need_prepared_data(tmp_path):
    with pytest.raises(SystemExit, match="prepare_data.py"):
        study.test_sets(str(tmp_path / "missing"), str(tmp_path / "out"), 3)


def test_the_study_time_sums_its_runs_logs(tmp_path):
    for name, (start, end) in {"a": ("10:00:00", "10:02:30"), "b": ("11:00:00", "11:01:30")}.items():
        (tmp_path / name).mkdir()
        (tmp_path / name / "log.txt").write_text(f"2026-11-26 {start},1 INFO command\n"
                                                 f"2026-11-26 {end},9 INFO finished\n")
    assert study.run_minutes(str(tmp_path)) == pytest.approx(4.0)  # 2.5 + 1.5 minutes


def test_a_remade_doc_keeps_its_conclusions(tmp_path):
    doc = tmp_path / "STUDY.md"
    assert study.kept_conclusions(str(doc)) == ""
    doc.write_text("# old table\n| a |\n\n## What the numbers show\n\nSix tasks help.\n")
    assert study.kept_conclusions(str(doc)) == "\n## What the numbers show\n\nSix tasks help.\n"


# ----------------------------------------------------------------------------------------
# metrics.json read back: one validating reader
# ----------------------------------------------------------------------------------------
def good_record() -> dict:
    return {"meta": {}, "results": {"Set5": {"sr2": {**metrics(31.0, 0.9, 29.0), "n_images": 5,
                                                     "per_image": {"bird": {"psnr": 30.0}}}}}}


def one_error(path, call):
    """The reader's result, or None after checking its refusal is one line naming the file."""
    try:
        return call()
    except study.MetricsError as e:
        text = str(e)
        assert "\n" not in text and str(path) in text and "delete the run's folder" in text
        return None


@pytest.mark.parametrize("text,key", [
    ('{"meta": {}, "results": {"Set5": {"sr2": {"psnr_y": 3', "not readable JSON"),  # truncated
    (json.dumps({"results": {"CBSD68": {"denoise30": metrics(25.0, 0.7, 20.0)}}}),
     "results.Set5: missing"),
    ('{"results": {"Set5": {"sr2": {"psnr_y": "31", "ssim_y": 0.9, "baseline_psnr": 29, '
     '"baseline_ssim": 0.5}}}}', "results.Set5.sr2.psnr_y: str, not a finite number"),
    ('{"results": {"Set5": {"sr2": {"psnr_y": NaN, "ssim_y": 0.9, "baseline_psnr": 29, '
     '"baseline_ssim": 0.5}}}}', "results.Set5.sr2.psnr_y: float, not a finite number"),
    ('{"results": {"Set5": {"sr2": {"psnr_y": 31, "ssim_y": true, "baseline_psnr": 29, '
     '"baseline_ssim": 0.5}}}}', "results.Set5.sr2.ssim_y: bool"),
    ('{"results": {"Set5": {"sr2": {"psnr_y": 31}}}}', "results.Set5.sr2.ssim_y: missing"),
    ('{"results": {"Set5": []}}', "results.Set5 is not an object"),
    ('[1, 2]', "no 'results' object"),
    ("[" * 100000, "not readable JSON"),  # nested deeper than the parser's recursion
])
def test_a_bad_metrics_json_is_one_line_naming_file_and_key(tmp_path, text, key):
    (tmp_path / "metrics.json").write_text(text)
    with pytest.raises(study.MetricsError, match=re.escape(key)) as e:
        study.scores(str(tmp_path), "Set5", "sr2")  # the old reader: JSONDecodeError, KeyError...
    assert one_error(tmp_path, lambda: (_ for _ in ()).throw(e.value)) is None


def test_metrics_json_must_be_a_small_regular_file(tmp_path):
    os.mkfifo(tmp_path / "metrics.json")  # the old reader hung on it
    with pytest.raises(study.MetricsError, match="not a regular file"):
        study.scores(str(tmp_path), "Set5", "sr2")
    os.remove(tmp_path / "metrics.json")
    with open(tmp_path / "metrics.json", "wb") as f:
        f.truncate(study.METRICS_MAX_BYTES + 1)  # sparse: no disk used
    with pytest.raises(study.MetricsError, match="larger than"):
        study.scores(str(tmp_path), "Set5", "sr2")


def test_a_good_metrics_json_gives_the_scores(tmp_path):
    (tmp_path / "metrics.json").write_text(json.dumps(good_record()))
    assert study.scores(str(tmp_path), "Set5", "sr2") == metrics(31.0, 0.9, 29.0)
    assert study.scores(str(tmp_path)) == metrics(31.0, 0.9, 29.0)  # its only set and task


def test_a_finished_evaluation_with_a_bad_record_is_refused_not_redone(tmp_path, monkeypatch, capsys):
    run = tmp_path / "finetune_none_sr2"
    (tmp_path / "finetune_none_sr2_eval").mkdir()
    (tmp_path / "finetune_none_sr2_eval" / "metrics.json").write_text('{"results": {"Set5"')
    monkeypatch.setattr(study, "run_main", lambda *a: pytest.fail("redone"))
    a = study.parse(["--dir_data", str(tmp_path)])
    with pytest.raises(study.MetricsError, match="finetune_none_sr2_eval"):
        study.evaluate(a, str(run), "sr2", str(tmp_path))
    monkeypatch.setattr(study, "study", lambda a: study.scores(str(tmp_path / "finetune_none_sr2_eval")))
    assert study.main(["--dir_data", str(tmp_path)]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("study.py: ") and "metrics.json" in err[0]


JSON_VALUES = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=3), inner, max_size=3),
    max_leaves=12)
METRIC_VALUES = st.one_of(st.floats(), st.integers(min_value=-10 ** 400, max_value=10 ** 400),
                          st.booleans(), st.none(), st.text(max_size=3), JSON_VALUES)
NEAR_RECORDS = st.fixed_dictionaries({"results": st.dictionaries(
    st.sampled_from(["Set5", "CBSD68", "", "a\nb"]), st.dictionaries(
        st.sampled_from(["sr2", "denoise30"]),
        st.dictionaries(st.sampled_from(study.SCORES + ("n_images",)), METRIC_VALUES, max_size=5)
        | JSON_VALUES, max_size=2) | JSON_VALUES, max_size=2)})


@settings(max_examples=150)
@given(record=st.one_of(JSON_VALUES, NEAR_RECORDS), cut=st.one_of(st.none(), st.integers(0, 200)))
def test_the_reader_gives_scores_or_its_one_error(tmp_path, record, cut):
    text = json.dumps(record)  # NaN and Infinity as Python writes them
    (tmp_path / "metrics.json").write_text(text if cut is None else text[:cut])
    found = one_error(tmp_path, lambda: study.read_metrics(str(tmp_path / "metrics.json")))
    if found is not None:
        for tasks in found.values():
            for values in tasks.values():
                assert set(values) == set(study.SCORES)
                assert all(type(v) is float and math.isfinite(v) for v in values.values())


# ----------------------------------------------------------------------------------------
# The study's options and its pool
# ----------------------------------------------------------------------------------------
def refused(argv: list[str], capsys) -> str:
    """The one line the study's option parser refuses argv with (exit status 2)."""
    with pytest.raises(SystemExit) as e:
        study.parse(["--dir_data", "data", *argv])
    assert e.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("study.py: error: ")
    return err[0]


@pytest.mark.parametrize("argv,says", [
    (["--pretrain_steps", "0"], "--pretrain_steps 0: give at least 1"),  # was: 300 epochs
    (["--finetune_steps", "0"], "--finetune_steps 0"),
    (["--seeds", "x"], "--seeds 'x'"),  # was: a ValueError traceback
    (["--seeds", "1+1"], "distinct"),
    (["--seeds", "1+"], "--seeds '1+'"),
    (["--seeds", "99999999999999999999"], "--seeds"),
    (["--options", '--n_feats "16'], "No closing quotation"),  # was: shlex's ValueError traceback
    (["--launcher", "'torchrun"], "--launcher"),
])
def test_bad_study_options_are_one_line(argv, says, capsys):
    assert says in refused(argv, capsys)


@settings(max_examples=120)
@given(seeds=st.text(max_size=12) | st.lists(st.integers(-3, 2 ** 64), min_size=1, max_size=3).map(
    lambda xs: "+".join(map(str, xs))), options=st.text(max_size=12))
def test_generated_seeds_and_options_are_accepted_or_refused_in_one_line(seeds, options, capsys):
    try:
        a = study.parse(["--dir_data", "data", f"--seeds={seeds}", f"--options={options}"])
    except SystemExit as e:
        assert e.code == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("study.py: error: ")
        return
    assert a.seeds == [int(s) for s in seeds.split("+")] and len(set(a.seeds)) == len(a.seeds)
    assert all(0 <= s <= study.MAX_SEED for s in a.seeds)
    words, every_run = shlex.split(options), study.common(a)
    assert every_run[len(every_run) - len(words):] == words  # --options come last


def test_an_unreadable_pool_photo_is_left_out_with_a_warning(tmp_path, monkeypatch, capsys):
    pool = tmp_path / "pool"
    pool.mkdir()
    (pool / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")  # was: a traceback
    study.save_image(torch.zeros(3, study.POOL_TILE, study.POOL_TILE, dtype=torch.uint8),
                     str(pool / "good.png"))
    os.mkfifo(pool / "pipe.png")  # not a regular file: never opened
    monkeypatch.setattr(study, "sample_photos", lambda split: [])
    study.make_pool([str(pool)], str(tmp_path / "data"), smoke=False)
    assert os.listdir(tmp_path / "data" / "ImageNet") == ["pool0_good_0.png"]
    err = capsys.readouterr().err
    assert "broken.png" in err and "1 of 2 pool photo(s) could not be read" in err


def test_a_stopped_run_stops_the_study_with_exit_130(monkeypatch, capsys):
    """main.py stopped by a signal (130): the study exits 130 too, not 'failed, fix it'."""
    monkeypatch.setattr(study.ipt_main, "main", lambda args: utility.INTERRUPTED)
    with pytest.raises(SystemExit) as stop:
        study.run_main(["--save", "x"], launcher="")
    assert stop.value.code == utility.INTERRUPTED
    assert "stopped by a signal" in capsys.readouterr().err
