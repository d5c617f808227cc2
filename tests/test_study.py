"""python -m scripts.study's bookkeeping: spreads, the table, validation curves, finished runs."""
from __future__ import annotations

import json
import math
import os
import re
import shlex

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import records
import stops
from scripts import study, study_report


def test_spread_is_the_mean_and_sample_deviation_over_seeds():
    assert study_report.spread([30.0, 32.0]) == "31.000 ± 1.414"  # sqrt(((-1)^2 + 1^2) / 1)
    assert study_report.spread([29.5]) == "29.500"


def metrics(psnr: float, ssim: float, base: float) -> dict:
    return {"psnr_y": psnr, "ssim_y": ssim, "baseline_psnr": base, "baseline_ssim": 0.5}


def test_a_curve_starts_at_the_input_and_follows_the_log(tmp_path):
    (tmp_path / "log.txt").write_text(
        "2026-01-01 INFO step 60: validation PSNR 30.125 dB (best 30.125 at step 60)\n"
        "2026-01-01 INFO something else\n"
        "2026-01-01 INFO step 90: validation PSNR 1.2.3 dB\n"  # a traceback (float('1.2.3')) before
        f"2026-01-01 INFO step {'9' * 5000}: validation PSNR 30.0 dB\n"  # int() of 5,000 digits
        "2026-01-01 INFO step 100: validation PSNR nan dB (best 30.125 at step 60)\n"
        "2026-01-01 INFO step 120: validation PSNR 31.500 dB (best 31.500 at step 120)\n")
    (tmp_path / "metrics.json").write_text(json.dumps(
        {"results": {"Set5": {"sr2": metrics(31.5, 0.9, 29.0)}}}))
    assert study_report.curve(str(tmp_path)) == [(0, 29.0), (60, 30.125), (120, 31.5)]


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
    with pytest.raises(SystemExit, match=r"python -m scripts\.prepare_data"):
        study.test_sets(str(tmp_path / "missing"), str(tmp_path / "out"), 3)


def test_a_remade_doc_keeps_its_conclusions(tmp_path):
    doc = tmp_path / "STUDY.md"
    assert study_report.kept_conclusions(str(doc)) == ""
    doc.write_text("# old table\n| a |\n\n## What the numbers show\n\nSix tasks help.\n")
    assert study_report.kept_conclusions(str(doc)) == "\n## What the numbers show\n\nSix tasks help.\n"


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
    except study_report.MetricsError as e:
        text = str(e)
        assert "\n" not in text and str(path) in text and "delete the run's folder" in text
        return None


@pytest.mark.parametrize("text,key", [
    ('{"meta": {}, "results": {"Set5": {"sr2": {"psnr_y": 3', "not readable JSON"),  # truncated
    (json.dumps({"results": {"CBSD68": {"denoise30": metrics(25.0, 0.7, 20.0)}}}),
     "results.Set5: missing"),
    ('{"results": {"Set5": {"sr2": {"psnr_y": "31", "ssim_y": 0.9, "baseline_psnr": 29, '
     '"baseline_ssim": 0.5}}}}', "'results.Set5.sr2.psnr_y': '31' is not"),
    ('{"results": {"Set5": {"sr2": {"psnr_y": NaN, "ssim_y": 0.9, "baseline_psnr": 29, '
     '"baseline_ssim": 0.5}}}}', "'results.Set5.sr2.psnr_y': nan is not"),
    ('{"results": {"Set5": {"sr2": {"psnr_y": 31, "ssim_y": true, "baseline_psnr": 29, '
     '"baseline_ssim": 0.5}}}}', "'results.Set5.sr2.ssim_y': True is not"),
    ('{"results": {"Set5": {"sr2": {"psnr_y": 31}}}}', "'results.Set5.sr2': 'ssim_y' is a required property"),
    ('{"results": {"Set5": []}}', "'results.Set5': [] is not of type 'object'"),
    ('[1, 2]', "not an object with the keys 'results'"),
    ("[" * 100000, "not readable JSON"),  # nested deeper than the parser's recursion
])
def test_a_bad_metrics_json_is_one_line_naming_file_and_key(tmp_path, text, key):
    (tmp_path / "metrics.json").write_text(text)
    with pytest.raises(study_report.MetricsError, match=re.escape(key)) as e:
        study_report.scores(str(tmp_path), "Set5", "sr2")  # the old reader: JSONDecodeError, KeyError...
    assert one_error(tmp_path, lambda: (_ for _ in ()).throw(e.value)) is None


def test_metrics_json_must_be_a_small_regular_file(tmp_path):
    os.mkfifo(tmp_path / "metrics.json")  # the old reader hung on it
    with pytest.raises(study_report.MetricsError, match="not a regular file"):
        study_report.scores(str(tmp_path), "Set5", "sr2")
    os.remove(tmp_path / "metrics.json")
    with open(tmp_path / "metrics.json", "wb") as f:
        f.truncate(study_report.METRICS_MAX_BYTES + 1)  # sparse: no disk used
    with pytest.raises(study_report.MetricsError, match="larger than"):
        study_report.scores(str(tmp_path), "Set5", "sr2")


def test_a_good_metrics_json_gives_the_scores(tmp_path):
    (tmp_path / "metrics.json").write_text(json.dumps(good_record()))
    assert study_report.scores(str(tmp_path), "Set5", "sr2") == metrics(31.0, 0.9, 29.0)
    assert study_report.scores(str(tmp_path)) == metrics(31.0, 0.9, 29.0)  # its only set and task


def test_a_finished_evaluation_with_a_bad_record_is_refused_not_redone(tmp_path, monkeypatch, capsys):
    run = tmp_path / "finetune_none_sr2"
    (tmp_path / "finetune_none_sr2_eval").mkdir()
    (tmp_path / "finetune_none_sr2_eval" / "metrics.json").write_text('{"results": {"Set5"')
    monkeypatch.setattr(study, "run_main", lambda *a: pytest.fail("redone"))
    a = study.parse(["--dir_data", str(tmp_path)])
    with pytest.raises(study_report.MetricsError, match="finetune_none_sr2_eval"):
        study.evaluate(a, str(run), "sr2", str(tmp_path))
    evaluation = str(tmp_path / "finetune_none_sr2_eval")
    monkeypatch.setattr(study, "run_all", lambda a: study_report.scores(evaluation))
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
        st.dictionaries(st.sampled_from(study_report.SCORES + ("n_images",)), METRIC_VALUES, max_size=5)
        | JSON_VALUES, max_size=2) | JSON_VALUES, max_size=2)})


@settings(max_examples=150)
@given(record=st.one_of(JSON_VALUES, NEAR_RECORDS), cut=st.one_of(st.none(), st.integers(0, 200)))
def test_the_reader_gives_scores_or_its_one_error(tmp_path, record, cut):
    text = json.dumps(record)  # NaN and Infinity as Python writes them
    (tmp_path / "metrics.json").write_text(text if cut is None else text[:cut])
    found = one_error(tmp_path, lambda: study_report.read_metrics(str(tmp_path / "metrics.json")))
    if found is not None:
        for tasks in found.values():
            for values in tasks.values():
                assert set(values) == set(study_report.SCORES)
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
    (["--pretrain_steps", "0"], "--pretrain_steps 0: give 1 to"),  # was: 300 epochs
    (["--noise_images", "69"], "--noise_images 69: give 1 to 68"),  # CBSD68's count
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
    assert all(0 <= s <= records.MAX_SEED for s in a.seeds)
    words, every_run = shlex.split(options), study.common(a)
    assert every_run[len(every_run) - len(words):] == words  # --options come last


def test_an_unreadable_pool_photo_is_left_out_with_a_warning(tmp_path, monkeypatch, capsys):
    pool = tmp_path / "pool"
    pool.mkdir()
    (pool / "broken.png").write_bytes(b"\x89PNG\r\n\x1a\n truncated")  # was: a traceback
    study.save_image(torch.zeros(3, study_report.POOL_TILE, study_report.POOL_TILE, dtype=torch.uint8),
                     str(pool / "good.png"))
    os.mkfifo(pool / "pipe.png")  # not a regular file: never opened
    monkeypatch.setattr(study, "sample_photos", lambda split: [])
    study.make_pool([str(pool)], str(tmp_path / "data"), smoke=False)
    assert os.listdir(tmp_path / "data" / "ImageNet") == ["pool0_good_0.png"]
    err = capsys.readouterr().err
    assert "broken.png" in err and "1 of 2 pool photo(s) could not be read" in err


def test_a_stopped_run_stops_the_study_with_exit_130(monkeypatch, capsys):
    """main.py stopped by a signal (130): the study exits 130 too, not 'failed, fix it'."""
    monkeypatch.setattr(study.ipt_main, "main", lambda args: stops.INTERRUPTED)
    with pytest.raises(SystemExit) as stop:
        study.run_main(["--save", "x"], launcher="")
    assert stop.value.code == stops.INTERRUPTED
    assert "stopped by a signal" in capsys.readouterr().err


# ----------------------------------------------------------------------------------------
# Statistics
# ----------------------------------------------------------------------------------------
# Student's t 0.975 quantiles as printed in statistics tables (e.g. NIST's handbook, table 1.3.6.7.2)
PRINTED_T975 = {1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 9: 2.262, 30: 2.042, 100: 1.984}


def test_t_quantiles_are_students():
    for df, printed in PRINTED_T975.items():
        assert study_report.t975(df) == pytest.approx(printed, abs=1e-3)
    assert study_report.t975(10 ** 6) == pytest.approx(1.960, abs=1e-3)  # the normal's, far out
    with pytest.raises(ValueError):
        study_report.t975(0)


def test_a_paired_interval_by_hand():
    mean, low, high = study_report.paired_interval([1.0, 2.0, 3.0])  # mean 2, sd 1, t(2) = 4.303
    assert mean == 2.0 and high - mean == pytest.approx(4.303 / math.sqrt(3), abs=1e-3)
    assert mean - low == high - mean
    assert study_report.paired_interval([0.5]) is None


# ----------------------------------------------------------------------------------------
# Records: a study's small files, and the report made from them alone
# ----------------------------------------------------------------------------------------
P, F = 400, 1000
SEEDS = (1, 2, 3)
BICUBIC, NOISY = 33.5, 20.0
# PSNR per seed of each row over the reference: six +1.0/+1.2/+1.4 (sd 0.2), mim +0.1/-0.1/+0.3
OVER_NONE = {"none": (0, 0, 0), "none, equal seconds": (0.5, 0.5, 0.5), "six": (1.0, 1.2, 1.4),
             "mim, head from mim": (0.1, -0.1, 0.3), "six+mim": (-0.2, -0.3, -0.4)}
PRE_SECONDS = {"six": 50.0, "mim": 40.0, "six+mim": 60.0}


def write_run(run, steps: int, seconds: float, results: dict | None = None, log: str | None = None):
    (run / "model").mkdir(parents=True, exist_ok=True)
    (run / "model" / "training.json").write_text(json.dumps(
        {"architecture": {"n_feats": 16}, "step": steps, "max_steps": steps, "finished": True,
         "interrupted": False, "train_seconds": seconds}))
    if results is not None:
        (run / "metrics.json").write_text(json.dumps({"results": results}))
    if log is not None:
        (run / "log.txt").write_text(log)


def manifest(**changes) -> dict:
    return {"seeds": list(SEEDS), "pretrain_steps": P, "finetune_steps": F, "val_every": 500,
            "noise_images": 68, "val_images": 3, "pool_photos": 80, "sample_photos": 8,
            "options": "--threads 2", "machine": "a CPU; torch 2", "pool": ["CSun_Hays80"],
            "command": ["--pool", "CSun_Hays80", "--dir_data", "data"], **changes}


def make_records(root, **changes):
    """A finished study's records: every run of every seed, with the PSNRs of OVER_NONE."""
    root.mkdir(parents=True, exist_ok=True)
    (root / "study.json").write_text(json.dumps(manifest(**changes)))
    for seed in SEEDS:
        for name, seconds in PRE_SECONDS.items():
            write_run(root / f"seed{seed}" / f"pretrain_{name}", P, seconds)
        for i, row in enumerate(study_report.RUN_ROWS):
            for task, (test_set, base) in {"sr2": ("Set5", BICUBIC), "denoise30": ("CBSD68", NOISY)}.items():
                steps = {"finetune": F, "steps": P + F, "seconds": P + F + 100 * seed}[row.budget]
                psnr = (34.0 if task == "sr2" else 28.0) + OVER_NONE[row.name][seed - 1]
                run = root / f"seed{seed}" / study_report.finetune_name(row, task)
                log = "".join(f"2026 INFO step {k}: validation PSNR {psnr - 1 + k / steps:.3f} dB (best)\n"
                              for k in (steps // 2, steps))
                write_run(run, steps, 70.0 + 10 * i + seed, {test_set: {task: metrics(psnr, 0.9, base)}}, log)
                (run.parent / (run.name + "_eval")).mkdir()
                (run.parent / (run.name + "_eval") / "metrics.json").write_text(json.dumps(
                    {"results": {test_set: {task: metrics(psnr, 0.8 + i / 100, base)}}}))
    return root


def test_the_report_is_remade_from_the_records_alone(tmp_path, capsys):
    records = make_records(tmp_path / "records")
    doc = tmp_path / "docs" / "STUDY.md"
    doc.parent.mkdir()
    doc.write_text("old\n\n## What the numbers show\n\nKept.\n")
    assert study.main(["--report_only", "--records", str(records), "--doc", str(doc)]) == 0  # no data
    text = doc.read_text()
    assert text.endswith("## What the numbers show\n\nKept.\n")
    assert (tmp_path / "docs" / "STUDY.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    sr2 = text[text.index("### sr2"):text.index("### denoise30")]
    cells = [[c.strip() for c in line.strip().strip("|").split("|")] for line in sr2.splitlines()
             if line.startswith("| ")]
    rows = {c[0]: c for c in cells}
    assert rows["*input (bicubic)*"][3] == "33.500"
    # six: +1.0, +1.2, +1.4 over none: mean 1.2, sd 0.2, half-width 4.303 * 0.2 / sqrt(3) = 0.497
    assert rows["six"][1] == f"{P} + {F}" and rows["six"][3] == "35.200 ± 0.200"
    assert rows["six"][5] == "**+1.200 [+0.703, +1.697]**"
    assert rows["six"][6] == "**+0.700 [+0.203, +1.197]**"  # over none at equal seconds
    assert rows["mim, head from mim"][5] == "+0.100 [-0.397, +0.597]"  # its interval holds 0: not bold
    assert rows["none"][1] == str(P + F) and rows["none"][5] == "reference"
    assert rows["none, equal seconds"][1] == f"{P + F + 100}–{P + F + 300}"
    # seconds: the pre-training's charged to each row: six = 50 + 70 + 10 * 1 + seed
    assert rows["six"][2] == "132 ± 1"
    assert "six (sr2, to none): +1.200 [+0.703, +1.697] dB" in text
    assert "mim, head from mim (sr2" not in text.split("Differences larger")[1].split("![")[0]
    assert "| six |" in capsys.readouterr().out


def test_user_text_in_the_records_is_escaped_in_the_doc(tmp_path):
    records = make_records(tmp_path / "records", pool=["a|b<img src=x>`c`*d*"],
                           options="--x `y` | <b>", command=["--pool", "<script>|"])
    doc = tmp_path / "STUDY.md"
    assert study.main(["--report_only", "--records", str(records), "--doc", str(doc)]) == 0
    text = doc.read_text()
    for raw in ("<img", "<b>", "<script>", "`c`", "`y`", "*d*"):
        assert raw not in text
    assert "a&#124;b&lt;img src=x&gt;&#96;c&#96;\\*d\\*" in text


def test_a_missing_or_damaged_record_is_one_line_and_exit_1(tmp_path, capsys):
    records = make_records(tmp_path / "records")
    run = records / "seed2" / "finetune_six_sr2"
    record = '{"architecture": {}, "finished": true, "train_seconds": -1}'
    (run / "model" / "training.json").write_text(record)
    assert study.main(["--report_only", "--records", str(records), "--doc", str(tmp_path / "d.md")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train_seconds" in err[0] and str(run) in err[0]
    (run / "model" / "training.json").unlink()
    assert study.main(["--report_only", "--records", str(records), "--doc", str(tmp_path / "d.md")]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "finetune_six_sr2" in err[0] and "redo it" in err[0]
    assert not (tmp_path / "d.md").exists()


MANIFEST_VALUES = st.one_of(st.integers(-2, 3), st.floats(), st.booleans(), st.none(), st.text(max_size=4),
                            st.lists(st.integers(-1, 3) | st.text(max_size=2), max_size=3))


@settings(max_examples=150)
@given(changes=st.dictionaries(st.sampled_from(sorted(manifest())), MANIFEST_VALUES, max_size=3),
       whole=st.one_of(st.none(), JSON_VALUES))
def test_a_manifest_is_read_or_refused_in_one_line(tmp_path, changes, whole):
    record = manifest(**changes) if whole is None else whole
    (tmp_path / "study.json").write_text(json.dumps(record))
    try:
        found = study_report.read_manifest(str(tmp_path))
    except study_report.StudyError as e:
        assert "\n" not in str(e) and str(tmp_path / "study.json") in str(e)
        return
    assert set(found) == set(manifest())  # nothing else: never where anything is written
    assert found["seeds"] and all(type(s) is int and s >= 0 for s in found["seeds"])
    assert all(type(found[k]) is int for k in study_report.MANIFEST_COUNTS)
    assert all(isinstance(x, str) for k in ("pool", "command") for x in found[k])


def test_the_equal_seconds_reference_gets_the_six_rows_seconds_at_its_own_speed(tmp_path):
    a = study.parse(["--dir_data", "data", "--work", str(tmp_path), "--pretrain_steps", str(P),
                     "--finetune_steps", str(F)])
    write_run(tmp_path / "seed1" / "pretrain_six", P, 100.0)
    write_run(tmp_path / "seed1" / "finetune_six_sr2", F, 150.0)
    write_run(tmp_path / "seed1" / "finetune_none_sr2", P + F, 200.0)  # 1/7 s a step
    assert study.row_steps(a, str(tmp_path), study_report.SECONDS_REFERENCE, "sr2", 1) == 1750  # 250 s
    assert study.row_steps(a, str(tmp_path), study_report.REFERENCE, "sr2", 1) == P + F
    assert study.row_steps(a, str(tmp_path), study_report.ROWS[1], "sr2", 1) == F


def test_a_finished_run_of_other_steps_is_refused_not_reused(tmp_path):
    write_run(tmp_path / "run", 4, 1.0)
    assert study.done(str(tmp_path / "run"), "training", 4)
    refusal = "a finished run of 4 steps, where this study trains 5"
    with pytest.raises(study_report.StudyError, match=refusal):
        study.done(str(tmp_path / "run"), "training", 5)


def test_only_the_report_needs_no_test_sets(capsys):
    assert study.parse(["--report_only"]).report_only
    with pytest.raises(SystemExit) as e:
        study.parse([])
    assert e.value.code == 2 and "--dir_data" in capsys.readouterr().err


def test_the_ema_variant_joins_the_report_when_its_records_are_there(tmp_path):
    records = make_records(tmp_path / "records")
    for seed, over in zip(SEEDS, (0.1, 0.2, 0.3), strict=True):  # over the reference, none
        run = records / f"seed{seed}" / study_report.finetune_name(study_report.EMA_ROW, "sr2")
        write_run(run, P + F, 80.0, {"Set5": {"sr2": metrics(34.0 + over, 0.9, BICUBIC)}},
                  f"2026 INFO step {P + F}: validation PSNR {34.0 + over:.3f} dB (best)\n")
        (run.parent / (run.name + "_eval")).mkdir()
        (run.parent / (run.name + "_eval") / "metrics.json").write_text(json.dumps(
            {"results": {"Set5": {"sr2": metrics(34.0 + over, 0.8, BICUBIC)}}}))
    doc = tmp_path / "STUDY.md"
    assert study.main(["--report_only", "--records", str(records), "--doc", str(doc)]) == 0
    text = doc.read_text()
    sr2, denoise = text[text.index("### sr2"):text.index("### denoise30")], text[text.index("### denoise30"):]
    row = [c.strip() for c in next(line for line in sr2.splitlines()
                                   if line.startswith("| none, EMA 0.995 |")).strip().strip("|").split("|")]
    # +0.1, +0.2, +0.3: mean 0.2, sd 0.1, half-width 4.303 * 0.1 / sqrt(3) = 0.248; holds 0
    assert row[1] == str(P + F) and row[5] == "+0.200 [-0.048, +0.448]"
    assert "none, EMA" not in denoise.split("\n\n")[1]  # denoise30's table: no such row


def test_a_doc_that_is_no_report_is_one_line_and_writes_nothing(tmp_path, capsys):
    """A non-UTF-8 --doc was a UnicodeDecodeError traceback after the plot was written beside it;
    a --doc ending in .png had the plot written over it, then read back as text."""
    records = make_records(tmp_path / "records")
    binary = tmp_path / "bin.md"
    binary.write_bytes(b"\xff\xfe")
    assert study.main(["--report_only", "--records", str(records), "--doc", str(binary)]) == 1
    assert capsys.readouterr().err == f"study.py: {binary}: not UTF-8 text, so no report this writes: " \
                                      f"give another --doc\n"
    assert sorted(os.listdir(tmp_path)) == ["bin.md", "records"]  # no bin.png
    with pytest.raises(SystemExit) as refused:
        study.parse(["--report_only", "--doc", str(tmp_path / "plot.png")])
    assert refused.value.code == 2 and "give a Markdown file" in capsys.readouterr().err
