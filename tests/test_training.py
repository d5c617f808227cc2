"""Training: the losses, exact resume, atomic checkpoints and bad-loss handling."""
from __future__ import annotations

import json
import math
import os
import socket
import subprocess
import sys
import threading
import time

import pytest
import torch

import checkpointing
import records
import runfolder
import trainer
import utility
from model import build_model
from model.loss import contrastive_loss
from option import parse_args, settings

TINY = "--n_feats 16 --num_heads 4 --num_layers 1 --patch_size 12 --batch_size 2"


def test_contrastive_loss_by_hand():
    # two images of two tokens; normalised tokens a=(1,0), b=(0,1) | c=(1,0), d=(-1,0)
    tokens = torch.tensor([[[2.0, 0.0], [0.0, 3.0]], [[1.0, 0.0], [-5.0, 0.0]]])
    e = math.e
    per_anchor = [math.log(1 + e + 1 / e),        # a: positive b (0), negatives c (1), d (-1)
                  math.log(3),                    # b: every similarity 0
                  1 + math.log(1 + e + 1 / e),    # c: positive d (-1), negatives a (1), b (0)
                  1 + math.log(1 + 2 / e)]        # d: positive c (-1), negatives a (-1), b (0)
    expected = sum(per_anchor) / 4
    assert contrastive_loss(tokens, temperature=1.0).item() == pytest.approx(expected, abs=1e-6)


def test_contrastive_loss_prefers_alike_tokens():
    torch.manual_seed(0)
    alike = torch.randn(2, 1, 8).repeat(1, 4, 1) + 0.01 * torch.randn(2, 4, 8)
    mixed = torch.randn(2, 4, 8)
    assert contrastive_loss(alike) < contrastive_loss(mixed)


def synthetic_batches(args, n_tasks):
    """A data stream whose batch k depends only on (seed, k), like the real one."""
    def batches(start):
        step = start
        while True:
            g = torch.Generator().manual_seed(args.seed * 100003 + step)
            task = int(torch.randint(n_tasks, (1,), generator=g))
            scale = args.scale[task]
            hr = torch.rand(args.batch_size, 3, args.patch_size * scale, args.patch_size * scale,
                            generator=g) * 255
            lr = torch.nn.functional.avg_pool2d(hr, scale) if scale > 1 else hr + 5 * torch.randn(
                hr.shape, generator=g)
            yield {"lr": lr, "hr": hr, "task_id": task, "step": step}
            step += 1
    return batches


def make_trainer(tmp_path, steps, extra=""):
    args = parse_args(f"{TINY} --scale 2+1 --max_steps {steps} --save {tmp_path} --save_every 3 "
                      f"--lr 1e-3 --test_every 1000 --print_every 1000 {extra}".split())
    torch.manual_seed(args.seed)
    model = build_model(settings(args).model)
    return trainer.Trainer(settings(args).train, model, synthetic_batches(args, 2), None, steps, 10), model


def weights(model):
    return {k: v.clone() for k, v in model.state_dict().items()}


def test_resume_is_exact(tmp_path):
    straight, model_a = make_trainer(tmp_path / "a", 6, "--con_loss")
    assert straight.fit() == 0
    first, _ = make_trainer(tmp_path / "b", 3, "--con_loss")
    assert first.fit() == 0
    torch.manual_seed(123)  # the resumed run must not depend on anything drawn before
    second, model_b = make_trainer(tmp_path / "b", 6, "--con_loss")
    torch.nn.init.zeros_(model_b.head[0][0].weight)  # and not on the fresh weights
    second.load(str(tmp_path / "b" / checkpointing.STATE_NAME))
    assert second.fit() == 0
    a, b = weights(model_a), weights(model_b)
    assert all(torch.equal(a[k], b[k]) for k in a)
    latest = torch.load(tmp_path / "b" / "model" / "model_latest.pt", weights_only=True)
    assert all(torch.equal(latest[k], b[k]) for k in b)


def test_a_kill_between_write_and_rename_keeps_the_previous_state(tmp_path, monkeypatch):
    run, _ = make_trainer(tmp_path, 3)
    run.fit()  # writes the state of step 3
    saved = torch.load(tmp_path / checkpointing.STATE_NAME, weights_only=False)["progress"]["step"]
    longer, _ = make_trainer(tmp_path, 6)
    longer.load(str(tmp_path / checkpointing.STATE_NAME))

    def killed(src, dst):
        raise KeyboardInterrupt("killed between the temporary write and the rename")

    monkeypatch.setattr(runfolder.os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        longer.fit()
    monkeypatch.undo()
    state = torch.load(tmp_path / checkpointing.STATE_NAME, weights_only=False)
    assert state["progress"]["step"] == saved == 3
    again, model = make_trainer(tmp_path, 6)
    again.load(str(tmp_path / checkpointing.STATE_NAME))
    assert again.fit() == 0 and again.progress.step == 6


def test_non_finite_losses_are_skipped_then_stop(tmp_path):
    run, model = make_trainer(tmp_path, 50, "--max_nonfinite 3")
    clean = run.batches

    def poisoned(start):
        for batch in clean(start):
            if batch["step"] >= 2:
                batch["lr"] = batch["lr"] * float("nan")
            yield batch

    run.batches = poisoned
    assert run.fit() == 1
    assert run.progress.nonfinite_total == 4 and run.progress.step == 6
    assert all(torch.isfinite(p).all() for p in model.parameters())


def test_bare_checkpoint_loads_strictly(tmp_path):
    run, _ = make_trainer(tmp_path, 1)
    run.fit()
    args = parse_args(f"{TINY} --scale 2+1".split())
    fresh = build_model(settings(args).model)
    from model import load_checkpoint
    load_checkpoint(fresh, str(tmp_path / "model" / "model_latest.pt"))
    assert len(fresh.state_dict()) == len(torch.load(tmp_path / "model" / "model_latest.pt"))


def test_learning_rate_schedules():
    step = trainer.lr_factor("step", [2, 4], 0.5, warmup=0, total=6)
    assert [step(s) for s in range(5)] == [1, 1, 0.5, 0.5, 0.25]
    # 2 warm-up steps, then a half cosine over 4 steps: at 3, a quarter of the way
    cosine = trainer.lr_factor("cosine", [], 0.5, warmup=2, total=6)
    got = [cosine(s) for s in (0, 1, 3, 4, 6)]
    assert got == pytest.approx([0.5, 1.0, (1 + math.sqrt(2) / 2) / 2, 0.5, 0.0])


CLI = ["--cpu", "--scale", "2+1", "--n_feats", "16", "--num_heads", "4", "--num_layers", "1",
       "--patch_size", "12", "--batch_size", "2", "--data_train", "Sample", "--data_test", "Demo",
       "--n_threads", "0", "--lr", "1e-3", "--con_loss", "--save_every", "2"]


@pytest.mark.parametrize("heads", [[], ["--tasks", "sr2+mim", "--mask_ratio", "0.4"]],
                         ids=["sr2+derain", "sr2+mim"])
def test_cli_resume_gives_the_same_weights(tmp_path, heads):
    import main as cli

    run = [*CLI, *heads]
    assert cli.main([*run, "--max_steps", "6", "--save", str(tmp_path / "straight")]) == 0
    assert cli.main([*run, "--max_steps", "3", "--save", str(tmp_path / "split")]) == 0
    assert cli.main([*run, "--max_steps", "6", "--save", str(tmp_path / "split"), "--resume"]) == 0
    a = torch.load(tmp_path / "straight" / "model" / "model_latest.pt", weights_only=True)
    b = torch.load(tmp_path / "split" / "model" / "model_latest.pt", weights_only=True)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert ("mask_token" in a) == bool(heads)  # a mim head's batches masked the same way


def test_cli_refuses_a_resume_that_changes_the_model(tmp_path, caplog):
    import main as cli

    assert cli.main([*CLI, "--max_steps", "2", "--save", str(tmp_path)]) == 0
    assert cli.main([*CLI, "--max_steps", "4", "--save", str(tmp_path), "--resume",
                     "--n_feats", "32"]) == 1
    assert "--n_feats" in caplog.text
    assert cli.main([*CLI, "--max_steps", "4", "--save", str(tmp_path)]) == 1  # no silent overwrite
    assert "--resume" in caplog.text


def test_fixture_layout_checkpoint_from_training(tmp_path, authors_model):
    """model_latest.pt of a run with the fixture's options has exactly the fixture's 141 keys."""
    import main as cli

    cfg = authors_model["config"]
    argv = ["--cpu", "--scale", "2+3+4+1+1+1", "--n_feats", str(cfg["n_feats"]), "--num_heads",
            str(cfg["num_heads"]), "--num_layers", str(cfg["num_layers"]), "--batch_size", "1",
            "--data_train", "Sample", "--data_test", "Demo", "--n_threads", "0", "--max_steps", "1",
            "--save", str(tmp_path)]
    assert cli.main(argv) == 0
    latest = torch.load(tmp_path / "model" / "model_latest.pt", weights_only=True)
    assert len(latest) == 141
    assert {k: tuple(v.shape) for k, v in latest.items()} == \
        {k: tuple(v.shape) for k, v in authors_model["state_dict"].items()}


def test_fine_tuning_validates_and_keeps_the_best(tmp_path, caplog, crop_sample):
    import main as cli
    crop_sample(120, 168, 96, 216)

    argv = [*CLI, "--task", "denoise30", "--max_steps", "2", "--test_every", "2", "--data_test",
            "Sample", "--chop", "fast", "--save", str(tmp_path)]
    argv[argv.index("2+1")] = "1"  # a single scale-1 head named denoise30
    argv[argv.index("--patch_size") + 1] = "48"  # tiles of 48: 16x fewer network calls than 12
    assert cli.main(argv) == 0
    assert "validation PSNR" in caplog.text
    report = json.loads((tmp_path / "metrics.json").read_text())
    assert report["meta"]["step"] == 2 and report["meta"]["tiling"] == "fast"
    assert set(report["results"]["Sample"]["denoise30"]["per_image"]) == {"astronaut", "coffee"}
    best = torch.load(tmp_path / "model" / "model_best.pt", weights_only=True)
    assert "head.0.0.weight" in best and "head.1.0.weight" not in best  # a single-head model
    assert os.listdir(tmp_path / "tensorboard")


def test_bf16_autocast_trains_on_the_cpu(tmp_path):
    run, model = make_trainer(tmp_path, 2, "--amp bf16")
    before = model.head[0][0].weight.clone()
    assert run.fit() == 0 and run.progress.nonfinite_total == 0
    assert not torch.equal(before, model.head[0][0].weight)


def test_imagenet_folder_training_counts_skipped_files(tmp_path, caplog):
    import numpy as np
    import skimage.data
    from PIL import Image

    import main as cli

    folder = tmp_path / "data" / "ImageNet" / "train" / "n0001"
    folder.mkdir(parents=True)
    photo = skimage.data.astronaut()
    for i in range(4):
        Image.fromarray(np.ascontiguousarray(photo[i * 60:i * 60 + 50, :50])).save(folder / f"{i}.jpg")
    Image.fromarray(photo[:40, :40, 0]).save(folder / "grey.png")
    (folder / "cut.jpg").write_bytes((folder / "0.jpg").read_bytes()[:200])  # truncated
    for path in (folder, folder.parent):  # changed an hour ago (a listing seconds old is not cached)
        os.utime(path, (os.stat(path).st_atime, os.stat(path).st_mtime - 3600))
    argv = [*CLI, "--data_train", "ImageNet", "--dir_data", str(tmp_path / "data"), "--max_steps", "6",
            "--save", str(tmp_path / "run")]
    assert cli.main(argv) == 0
    assert "cut.jpg" in caplog.text
    import re
    line = [r.getMessage() for r in caplog.records if "training file read(s) skipped" in r.getMessage()][-1]
    assert int(re.search(r"(\d+) training file read", line).group(1)) >= 1  # the truncated file
    cache = str(tmp_path / "run" / "file_list.npz")
    assert f"listed 6 images under {folder.parent} in" in caplog.text and f"cached in {cache}" in caplog.text
    caplog.clear()  # a second run (a restart) reads the list from the run directory
    assert cli.main([*argv[:-4], "--max_steps", "2", "--reset", "--save", str(tmp_path / "run")]) == 0
    assert f"from the cache {cache}" in caplog.text


AUTO = ["--cpu", "--n_feats", "16", "--num_heads", "4", "--num_layers", "1", "--scale", "2",
        "--patch_size", "12", "--batch_size", "2", "--data_train", "Sample", "--data_test", "Demo",
        "--n_threads", "0", "--save_every", "2"]


def test_auto_resume_starts_afresh_then_continues_ignoring_pretrain(tmp_path, caplog):
    import main as cli
    run = str(tmp_path / "run")
    assert cli.main([*AUTO, "--max_steps", "2", "--auto_resume", "--save", run]) == 0
    assert "no " + os.path.join(run, utility.STATE_NAME) + " yet, starting afresh" in caplog.text
    first = torch.load(os.path.join(run, "model", "model_latest.pt"), weights_only=True)
    other = tmp_path / "other.pt"
    torch.save({k: torch.zeros_like(v) for k, v in first.items()}, other)
    caplog.clear()
    assert cli.main([*AUTO, "--max_steps", "4", "--auto_resume", "--pretrain", str(other),
                     "--save", run]) == 0
    assert "resumed at step 2" in caplog.text and "--pretrain" in caplog.text and "ignored" in caplog.text
    assert checkpointing.read_state(os.path.join(run, utility.STATE_NAME))["progress"]["step"] == 4


def test_a_saved_step_at_or_past_max_steps_writes_nothing(tmp_path, caplog):
    import main as cli
    run = tmp_path / "run"
    assert cli.main([*AUTO, "--max_steps", "4", "--save", str(run)]) == 0
    files = {p: p.stat().st_mtime_ns for p in run.rglob("*") if p.is_file() and p.name != utility.LOG_NAME}
    caplog.clear()
    assert cli.main([*AUTO, "--max_steps", "2", "--resume", "--save", str(run)]) == 0
    assert "nothing to train, nothing written" in caplog.text
    assert {p: p.stat().st_mtime_ns for p in files} == files


def test_a_missing_test_set_is_refused_before_step_1_when_a_validation_will_happen(tmp_path, caplog):
    import main as cli
    run, missing = tmp_path / "run", str(tmp_path / "no-data")
    argv = [*AUTO, "--data_test", "Set5", "--dir_data", missing, "--max_steps", "4", "--save", str(run)]
    assert cli.main([*argv, "--test_every", "4"]) == 1
    assert f"Set5: no folder {missing}" in caplog.text and "step 1:" not in caplog.text
    assert not (run / utility.STATE_NAME).exists()
    assert cli.main([*argv, "--test_every", "5"]) == 0  # no validation within the run: not needed


@pytest.mark.parametrize("other", ["--reset", "--resume", "--test_only"])
def test_auto_resume_refuses_what_contradicts_it(capsys, other):
    with pytest.raises(SystemExit) as err:
        parse_args(["--auto_resume", other])
    assert err.value.code == 2 and "--auto_resume" in capsys.readouterr().err


def other_host_lock(folder, run_id: str | None, age: float) -> None:
    """A lock of process 4242 on node-7 under torchrun run id ``run_id``, last renewed ``age``
    seconds ago."""
    path = folder / runfolder.LOCK_NAME
    path.write_text(json.dumps({"host": "node-7", "pid": 4242, "command": "main.py", "run_id": run_id}))
    os.utime(path, (time.time() - age, time.time() - age))


@pytest.mark.parametrize("ours,theirs,age,taken", [
    ("job-1", "job-1", 10, False),    # a live holder of the same run id: never displaced
    ("job-1", "job-1", 100, True),    # 3 renewals missed: the job's earlier attempt, node gone
    ("none", "none", 100, False),     # torchrun's id of every job without --rdzv_id: no identity
    ("0", "job-2", 100, False),       # another job: stale only after --dist_timeout
    ("0", "job-2", 1900, True),
    (None, None, 1900, True),
])
def test_another_hosts_lock_is_stale_only_once_its_holder_stops_renewing_it(tmp_path, monkeypatch, ours,
                                                                          theirs, age, taken):
    if ours is None:
        monkeypatch.delenv("TORCHELASTIC_RUN_ID", raising=False)
    else:
        monkeypatch.setenv("TORCHELASTIC_RUN_ID", ours)
    other_host_lock(tmp_path, theirs, age)
    lock = runfolder.RunLock(str(tmp_path), stale_after=1800)
    if not taken:
        with pytest.raises(runfolder.LockError, match=r"in use by process 4242 on node-7 .*last \d+ s ago"):
            lock.acquire()
        assert json.loads((tmp_path / runfolder.LOCK_NAME).read_text())["pid"] == 4242
        return
    assert f"not renewed for {age}" in lock.acquire()
    assert json.loads((tmp_path / runfolder.LOCK_NAME).read_text())["pid"] == os.getpid()
    lock.release()


@pytest.mark.parametrize("run_id", ["none", "0", "pretrain-1"])  # no --rdzv_id, Slurm's fallback, shared
def test_a_live_lock_of_this_host_is_kept_whatever_its_run_id_and_a_reused_pid_is_not(tmp_path,
                                                                                    monkeypatch, run_id):
    monkeypatch.setenv("TORCHELASTIC_RUN_ID", run_id)
    child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        record = {"host": socket.gethostname(), "pid": child.pid, "run_id": run_id,
                  "started": runfolder.process_start(child.pid)}
        (tmp_path / runfolder.LOCK_NAME).write_text(json.dumps(record))
        with pytest.raises(runfolder.LockError, match=f"in use by process {child.pid}"):
            runfolder.RunLock(str(tmp_path)).acquire()
        record["started"] = "another-boot:1"  # the PID now belongs to another process
        (tmp_path / runfolder.LOCK_NAME).write_text(json.dumps(record))
        lock = runfolder.RunLock(str(tmp_path))
        assert "no longer runs" in lock.acquire()
        lock.release()
    finally:
        child.kill()
        child.wait()


def dev_zero(path) -> None:
    os.symlink("/dev/zero", path)


@pytest.mark.parametrize("make,kind", [(os.mkfifo, "named pipe"), (os.mkdir, "folder"),
                                       (dev_zero, "symbolic link"),
                                       (lambda p: os.symlink("missing", p), "symbolic link")])
def test_a_lock_that_is_not_a_regular_file_is_refused_in_one_line_and_kept(tmp_path, make, kind):
    path = tmp_path / runfolder.LOCK_NAME
    make(path)
    outcome = []

    def take() -> None:
        try:
            runfolder.RunLock(str(tmp_path)).acquire()
        except runfolder.LockError as e:
            outcome.append(str(e))

    thread = threading.Thread(target=take, daemon=True)  # a FIFO opened for reading would block
    thread.start()
    thread.join(timeout=20)
    assert not thread.is_alive() and len(outcome) == 1, outcome
    assert kind in outcome[0] and "move it away" in outcome[0] and "\n" not in outcome[0]
    assert os.path.lexists(path)


def test_the_holder_renews_its_lock_and_a_lock_replaced_meanwhile_is_put_back(tmp_path, monkeypatch):
    monkeypatch.setattr(runfolder, "LOCK_RENEW_SECONDS", 0.05)
    lock = runfolder.RunLock(str(tmp_path))
    lock.acquire()
    path = tmp_path / runfolder.LOCK_NAME
    os.utime(path, (0, 0))
    deadline = time.monotonic() + 10
    while os.stat(path).st_mtime < time.time() - 60 and time.monotonic() < deadline:
        time.sleep(0.05)
    assert os.stat(path).st_mtime > time.time() - 60  # renewed through its descriptor
    lock.release()
    assert not path.exists()
    # judged stale as file A, but another process replaced it by its own lock B meanwhile
    path.write_text("A")
    judged = os.stat(path)
    path.rename(tmp_path / "A")  # kept: its inode is not reused by B
    path.write_text("B")
    runfolder.RunLock(str(tmp_path))._remove_if((judged.st_dev, judged.st_ino))
    assert path.read_text() == "B" and sorted(os.listdir(tmp_path)) == [runfolder.LOCK_NAME, "A"]


def test_a_state_of_another_world_size_is_re_split_from_its_step(tmp_path, caplog):
    """A state saved by a two-process job, continued by one process: the files are re-split at
    the step reached (said once), the schedule keeps its epoch length, a later resume keeps it."""
    import main as cli
    run = str(tmp_path / "run")
    assert cli.main([*AUTO, "--max_steps", "4", "--auto_resume", "--save", run]) == 0
    path = os.path.join(run, utility.STATE_NAME)
    state = torch.load(path, weights_only=True)
    assert (state["world_size"], state["split_origin"]) == (1, 0)
    torch.save({**state, "world_size": 2, "epoch_steps": 3}, path)  # as two processes saved it
    caplog.clear()
    assert cli.main([*AUTO, "--max_steps", "6", "--auto_resume", "--save", run]) == 0
    assert "saved by 2 process(es); this job has 1" in caplog.text
    assert "re-split from step 4" in caplog.text
    state = checkpointing.read_state(path)
    assert (state["world_size"], state["split_origin"], state["epoch_steps"]) == (1, 4, 3)
    caplog.clear()
    assert cli.main([*AUTO, "--max_steps", "8", "--auto_resume", "--save", run]) == 0
    assert "re-split" not in caplog.text and "resumed at step 6" in caplog.text
    assert checkpointing.read_state(path)["split_origin"] == 4
    torch.save({**state, "split_origin": 7}, path)  # beyond the step it reached
    with pytest.raises(checkpointing.StateError, match="split_origin"):
        checkpointing.read_state(path)


def test_save_format_writes_the_weights_as_safetensors_too_and_evaluation_finds_them(tmp_path, caplog,
                                                                                    crop_sample):
    crop_sample(48, 64)
    """--save_format both: model_latest.pt and .safetensors hold the same tensors, the latter with
    the model's options in its metadata, training.json describes both; a safetensors-only run is
    evaluated by --test_only --resume like a .pt one."""
    import json as json_module

    import main as cli
    from model.checkpoint import read_checkpoint, read_safetensors_metadata
    both, only = tmp_path / "both", tmp_path / "only"
    assert cli.main([*AUTO, "--max_steps", "2", "--save_format", "both", "--save", str(both)]) == 0
    pt, _ = read_checkpoint(str(both / "model" / "model_latest.pt"))
    st, _ = read_checkpoint(str(both / "model" / "model_latest.safetensors"))
    assert pt.keys() == st.keys() and all(torch.equal(pt[k], st[k]) for k in pt)
    record = json_module.loads((both / "model" / utility.TRAINING_RECORD).read_text())
    metadata = read_safetensors_metadata(str(both / "model" / "model_latest.safetensors"))
    assert json_module.loads(metadata["ipt_architecture"]) == record["architecture"]
    assert {"model_latest.pt", "model_latest.safetensors"} <= set(record["weights"])
    assert cli.main([*AUTO, "--max_steps", "2", "--save_format", "safetensors", "--save", str(only)]) == 0
    assert sorted(os.listdir(only / "model")) == ["model_latest.safetensors", utility.TRAINING_RECORD]
    caplog.clear()
    assert cli.main(["--cpu", "--test_only", "--resume", "--save", str(only), "--data_test", "Sample",
                     "--scale", "2", "--n_feats", "16", "--num_heads", "4", "--num_layers", "1",
                     "--patch_size", "12", "--chop", "fast"]) == 0
    assert "model_latest.safetensors" in caplog.text


def test_training_seconds_count_each_step_once_across_a_resume(tmp_path, monkeypatch):
    """training.json's train_seconds: the time inside training steps, carried by state.pt
    through a resume; the time between the two sessions is not counted."""
    ticks = iter(range(10 ** 6))
    monkeypatch.setattr(trainer, "clock", lambda: float(next(ticks)))  # 1 s a step: start, end
    first, _ = make_trainer(tmp_path, 3)
    assert first.fit() == 0
    record = records.read_training_record(str(tmp_path / "model" / "model_latest.pt"))
    assert record["train_seconds"] == 3.0
    for _ in range(1000):  # the gap between sessions: a clock that moved on
        next(ticks)
    second, _ = make_trainer(tmp_path, 6)
    second.load(str(tmp_path / checkpointing.STATE_NAME))
    assert second.fit() == 0
    record = records.read_training_record(str(tmp_path / "model" / "model_latest.pt"))
    assert record["train_seconds"] == 6.0 and record["step"] == 6


@pytest.mark.parametrize("value", [-1.0, float("nan"), float("inf"), "3", True, 10 ** 400])
def test_a_bad_train_seconds_is_refused_by_both_readers(tmp_path, value):
    run, _ = make_trainer(tmp_path, 2)
    assert run.fit() == 0
    state = torch.load(tmp_path / checkpointing.STATE_NAME, weights_only=True)
    found = records.problem({**state, "train_seconds": value}, records.STATE)
    assert found.startswith("key 'train_seconds': ")
    assert records.problem({k: v for k, v in state.items() if k != "train_seconds"}, records.STATE) is None
    record = records.read_training_record(str(tmp_path / "model" / "model_latest.pt"))
    assert records.problem({**record, "train_seconds": value}, records.TRAINING).startswith(
        "key 'train_seconds': ")


def test_a_stop_during_a_validation_ends_it_and_saves_that_step(tmp_path, monkeypatch, caplog):
    """A stop only set a flag: the validation ran to its end (minutes on full test sets, past Slurm's
    --signal warning and torchrun's shutdown timeout) and wrote its report before the run stopped."""
    import signal

    import evaluation
    import main as cli
    finished = []

    def validator(model, ev, inference, check=False):
        def validate(net, step):
            os.kill(os.getpid(), signal.SIGUSR1)
            finished.append(step)  # not reached: the stop is raised in the validation
            return {"Sample/sr2": 30.0}, {}
        return validate

    monkeypatch.setattr(evaluation, "validator", validator)
    argv = [*CLI, "--data_test", "Sample", "--test_every", "2", "--max_steps", "6", "--save", str(tmp_path)]
    assert cli.main(argv) == 130 and finished == []
    assert checkpointing.read_state(os.path.join(tmp_path, utility.STATE_NAME))["progress"]["step"] == 2
    said = [m for r in caplog.records if r.levelno >= 30 and not (m := r.getMessage()).startswith("derain")]
    assert said[:2] == ["the validation of step 2 stopped: its results are not kept",
                        "SIGUSR1 received: saving the training state and stopping"], said


def test_reset_and_a_new_save_format_leave_no_earlier_weights_to_load(tmp_path):
    """--reset removed only training.json: a --test_only --resume then evaluated the replaced run's
    model_latest.pt, and after a resume with --save_format safetensors the stale .pt of an earlier
    step was still the file --resume picked."""
    import main as cli
    run = str(tmp_path / "run")
    safetensors = ["--save_format", "safetensors"]
    assert cli.main([*CLI, "--max_steps", "2", "--save", run]) == 0
    assert cli.main([*CLI, "--max_steps", "4", "--save", run, "--resume", *safetensors]) == 0
    chosen = settings(parse_args(["--test_only", "--resume", "--save", run])).run.checkpoint
    assert chosen == os.path.join(run, "model", "model_latest.safetensors")
    assert cli.main([*CLI, "--max_steps", "1", "--save", run, "--reset", *safetensors]) == 0
    assert sorted(os.listdir(os.path.join(run, "model"))) == [
        "model_latest.safetensors", utility.TRAINING_RECORD]
    assert checkpointing.read_state(os.path.join(run, utility.STATE_NAME))["progress"]["step"] == 1


def test_test_only_resume_takes_the_model_options_of_the_runs_record(tmp_path):
    """--test_only --resume built the default model (n_feats 64, 12 layers) and failed to load the
    run's own weights; --pretrain of the same file read the options from training.json."""
    import main as cli
    run = str(tmp_path / "run")
    assert cli.main([*CLI, "--max_steps", "2", "--save", run]) == 0
    args = parse_args(["--test_only", "--resume", "--save", run, "--data_test", "Sample", "--chop", "fast"])
    assert (args.n_feats, args.num_heads, args.num_layers, args.task_names) == (16, 4, 1, ["sr2", "derain"])
    assert args.architecture_source == os.path.join(run, "model", utility.TRAINING_RECORD)


def test_reset_that_cannot_remove_a_replaced_file_is_one_line(tmp_path, caplog):
    """A folder named like weights (model/model_old) was an IsADirectoryError traceback."""
    import main as cli
    run = str(tmp_path / "run")
    assert cli.main([*CLI, "--max_steps", "1", "--save", run]) == 0
    os.mkdir(os.path.join(run, "model", "model_old"))
    assert cli.main([*CLI, "--max_steps", "1", "--save", run, "--reset"]) == 1
    assert f"cannot remove {os.path.join(run, 'model', 'model_old')} of the run being replaced " \
           f"(Is a directory): move it away" in caplog.text
