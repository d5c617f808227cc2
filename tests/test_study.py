"""scripts/study.py's bookkeeping: spreads, the table, validation curves, finished runs."""
from __future__ import annotations

import importlib.util
import json
import os
import sys

import pytest
from conftest import ROOT

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
        {"results": {"Set5": {"sr2": {"baseline_psnr": 29.0}}}}))
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
