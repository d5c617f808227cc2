"""What a first-time user meets: --help, training records, threads, resume, interruption."""
from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys

import torch

import checkpointing
import main as cli
import trainer
from conftest import ROOT
from model.checkpoint import ipt_options_of
from option import parse_args, settings

TINY = ["--cpu", "--n_feats", "16", "--num_heads", "4", "--num_layers", "1", "--patch_size", "12",
        "--batch_size", "2", "--data_train", "Sample", "--data_test", "Demo", "--n_threads", "0",
        "--lr", "1e-3", "--save_every", "2"]


def test_help_answers_without_importing_torch():
    code = ("import runpy, sys\nsys.argv = ['main.py', '--help']\ntry:\n"
            "    runpy.run_path('main.py', run_name='__main__')\nexcept SystemExit as e:\n"
            "    print('exit', e.code)\nprint('torch loaded:', 'torch' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True,
                         timeout=120).stdout
    assert "usage: main.py" in out and "--threads" in out
    assert "exit 0" in out and "torch loaded: False" in out


def test_the_restormer_tile_help_names_its_size_step():
    from model.restormer import SIZE_MULTIPLE
    from option_table import OPTIONS
    assert f"a multiple of {SIZE_MULTIPLE} " in OPTIONS["tile_size"].help


def test_a_run_records_its_model_and_a_demo_needs_no_model_options(tmp_path, caplog):
    run = tmp_path / "run"
    assert cli.main([*TINY, "--scale", "2", "--max_steps", "2", "--save", str(run)]) == 0
    record = json.loads((run / "model" / "training.json").read_text())
    assert record["architecture"]["n_feats"] == 16 and record["architecture"]["num_layers"] == 1
    assert record["step"] == record["max_steps"] == 2 and record["finished"]
    assert not record["interrupted"]
    photos = tmp_path / "photos"
    photos.mkdir()
    from data.images import save_image
    save_image(torch.rand(3, 20, 24) * 255, str(photos / "a.png"))
    caplog.set_level(logging.INFO, logger="ipt")
    # the README's Demo command, with the run's checkpoint and no model options
    assert cli.main(["--test_only", "--pretrain", str(run / "model" / "model_latest.pt"), "--scale",
                     "2", "--data_test", "Demo", "--dir_demo", str(photos), "--save",
                     str(tmp_path / "demo"), "--save_results", "--cpu"]) == 0
    assert "--n_feats 16" in caplog.text and "--num_layers 1" in caplog.text
    assert any(name.endswith(".png") for _, _, files in os.walk(tmp_path / "demo") for name in files)


def test_command_line_options_beat_the_record(tmp_path):
    run = tmp_path / "run"
    assert cli.main([*TINY, "--scale", "2", "--max_steps", "1", "--save", str(run)]) == 0
    args = parse_args(["--pretrain", str(run / "model" / "model_latest.pt"), "--num_layers", "3"])
    s = settings(args)
    assert s.model.num_layers == 3 and s.model.n_feats == 16 and s.model.scale == [2]


def test_the_shapes_of_an_authors_file_read_as_options(authors_model):
    fragment = ipt_options_of(authors_model["state_dict"])
    assert fragment.startswith("--scale 2+3+4+1+1+1 --n_feats 16 --num_layers 2 --patch_dim 3 "
                               "--patch_size 48 --num_queries 6")
    assert "--num_heads" in fragment and "144" in fragment
    assert ipt_options_of({"conv.weight": torch.zeros(1)}) == ""


def test_config_options_do_not_warn_under_test_only(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="ipt")
    config = os.path.join(ROOT, "configs", "quickstart.yaml")

    def evaluate(name: str, *extra: str) -> None:
        cli.main(["--config", config, "--test_only", "--scale", "2", "--data_test", "Demo",
                  "--dir_demo", str(tmp_path), "--save", str(tmp_path / name), *extra])

    evaluate("a")  # the config's lr, schedule, batch_size... serve its training runs
    assert "no effect" not in caplog.text
    evaluate("b", "--lr", "0.1")
    assert "no effect with --test_only: --lr" in caplog.text


def test_threads_fit_the_usable_cores(caplog, monkeypatch):
    caplog.set_level(logging.INFO, logger="ipt")
    monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
    monkeypatch.setattr(cli.utility, "usable_cpus", lambda: 4)
    before = torch.get_num_threads()
    try:
        cpu = torch.device("cpu")
        assert cli.share_cpu(0, 6, cpu) == 1 and torch.get_num_threads() == 3  # a quarter loads
        assert cli.share_cpu(0, 0, cpu) == 0 and torch.get_num_threads() == 4
        assert cli.share_cpu(3, 6, cpu) == 1 and torch.get_num_threads() == 3
        assert cli.share_cpu(1, 6, cpu) == 3 and torch.get_num_threads() == 1
        assert cli.share_cpu(0, 6, cpu, world=4) == 0 and torch.get_num_threads() == 1
        assert "3 compute thread(s) and 1 loader worker(s) on 4 usable core(s)" in caplog.text
        monkeypatch.setenv("OMP_NUM_THREADS", "2")
        assert cli.share_cpu(0, 6, cpu) == 2 and "(OMP_NUM_THREADS)" in caplog.text
    finally:
        torch.set_num_threads(before)


def test_resume_keeps_the_schedule_and_refuses_another_one(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="ipt")
    cosine = [*TINY, "--scale", "2", "--schedule", "cosine", "--save", str(tmp_path)]
    assert cli.main([*cosine, "--max_steps", "4"]) == 0
    assert "finished at step 4 of 4" in caplog.text
    state = checkpointing.read_state(str(tmp_path / "state.pt"))
    assert state["schedule_steps"] == 4
    assert cli.main([*cosine, "--max_steps", "6", "--resume"]) == 0
    assert "keeps the 4 steps this run started with; training now stops at step 6" in caplog.text
    state = checkpointing.read_state(str(tmp_path / "state.pt"))
    assert state["scheduler"]["_last_lr"] == [0.0]  # past the 4-step cosine: its final rate
    assert cli.main([*cosine, "--max_steps", "8", "--resume", "--lr", "5e-4"]) == 1
    assert "--lr (saved 0.001, now 0.0005)" in caplog.text


def test_a_signal_stops_training_with_exit_status_130(tmp_path, caplog):
    caplog.set_level(logging.INFO, logger="ipt")
    run = [*TINY, "--scale", "2", "--max_steps", "50", "--save", str(tmp_path)]
    original = trainer.Trainer.train_step

    def interrupted_at_step_3(self, batch):
        if self.progress.step == 3:
            signal.raise_signal(signal.SIGINT)
        return original(self, batch)

    trainer.Trainer.train_step = interrupted_at_step_3
    try:
        assert cli.main(run) == trainer.INTERRUPTED == 130
    finally:
        trainer.Trainer.train_step = original
    record = json.loads((tmp_path / "model" / "training.json").read_text())
    assert record["step"] == 4 and record["interrupted"] and not record["finished"]
    assert "stopped at step 4 of 50" in caplog.text and "the same command and --auto_resume" in caplog.text


def test_a_fresh_run_drops_the_record_of_the_run_it_replaces(tmp_path):
    run = [*TINY, "--scale", "2", "--save", str(tmp_path / "run")]
    assert cli.main([*run, "--max_steps", "2"]) == 0
    record = tmp_path / "run" / "model" / "training.json"
    assert json.loads(record.read_text())["finished"]
    # a --reset run that stops before its first save must not leave the old run's "finished"
    empty = tmp_path / "empty"
    empty.mkdir()
    assert cli.main([*run, "--max_steps", "2", "--reset", "--data_train", "ImageNet",
                     "--dir_data", str(empty)]) == 1
    assert not record.exists()
