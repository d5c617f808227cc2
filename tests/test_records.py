"""Records the program wrote itself are still input when read back: training.json, state.pt and
option files are checked field by field, and may only say what is their business."""
from __future__ import annotations

import hashlib
import json
import os
import pickle
import random

import pytest
import torch
from hypothesis import given
from hypothesis import settings as hyp_settings
from hypothesis import strategies as st

import checkpointing
import main as cli
import option
import option_files
import option_table
import records
import runfolder
import stops
import utility
from test_training import make_trainer, synthetic_batches

TINY = ["--n_feats", "16", "--num_heads", "4", "--num_layers", "1", "--scale", "2", "--cpu"]
JSON = st.recursive(st.none() | st.booleans() | st.integers() | st.floats() | st.text(max_size=8),
                    lambda inner: st.lists(inner, max_size=3)
                    | st.dictionaries(st.text(max_size=6), inner, max_size=3), max_leaves=8)


def refused(argv: list[str], capsys) -> str:
    """The one stderr line of a command line parse_args refuses with exit status 2."""
    with pytest.raises(SystemExit) as err:
        option.parse_args(argv)
    assert err.value.code == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1, lines
    return lines[0]


def checkpoint_with_record(folder, architecture: object, **fields) -> str:
    """A (dummy) checkpoint file with a training.json beside it."""
    model = folder / "model"
    model.mkdir(parents=True, exist_ok=True)
    (model / "model_latest.pt").write_bytes(b"not read by parse_args")
    record = {"model": "ipt", "architecture": architecture, "step": 4, "max_steps": 4, **fields}
    (model / utility.TRAINING_RECORD).write_text(json.dumps(record))
    return str(model / "model_latest.pt")


# ----------------------------------------------------------------------------------------
# training.json: only the model's shape, with the option's types
# ----------------------------------------------------------------------------------------
STEERING = {"save": "/elsewhere", "reset": True, "dir_demo": "/tmp", "save_results": True,
            "chop": "whole", "self_ensemble": True, "test_only": False, "dir_data": "/nowhere"}


def test_a_record_cannot_choose_where_a_run_writes(tmp_path):
    pretrain = checkpoint_with_record(tmp_path / "old", {"n_feats": 16, "num_heads": 4,
                                                        "num_layers": 1, **STEERING})
    args = option.parse_args(["--test_only", "--pretrain", pretrain, "--save", str(tmp_path / "new")])
    assert args.save == str(tmp_path / "new") and args.dir_demo == "../test"
    assert not args.reset and not args.save_results and args.chop == "auto"
    assert not args.self_ensemble and args.test_only and args.dir_data == "./datasets"
    assert sorted(args.architecture_ignored) == sorted(STEERING)
    assert (args.n_feats, args.num_heads, args.num_layers) == (16, 4, 1)  # what it may give


def test_ignored_keys_are_warned_naming_each(tmp_path, caplog):
    pretrain = checkpoint_with_record(tmp_path / "old", {"save": "/elsewhere", "reset": True})
    cli.main(["--test_only", "--pretrain", pretrain, "--save", str(tmp_path / "new"), *TINY,
              "--data_test", "Demo", "--dir_demo", str(tmp_path / "none")])
    for key in ("save", "reset"):
        assert f"ignored its key '{key}'" in caplog.text
    assert not os.path.exists("/elsewhere")


def test_the_keys_a_record_may_give_are_the_ones_it_is_written_with():
    from model.ipt import IPTConfig
    from model.restormer import RestormerConfig
    written = set(option_files.architecture_record("ipt", IPTConfig(task_names=["sr2"]))) | set(
        option_files.architecture_record("restormer", RestormerConfig(task_names=["derain"])))
    assert option_files.architecture_keys() == written
    assert not written & {"save", "reset", "dir_demo", "chop", "self_ensemble", "save_results"}


@pytest.mark.parametrize("key,value,words", [
    ("n_feats", "16", "integer"), ("n_feats", 16.0, "integer"), ("n_feats", 1e9, "integer"),
    ("n_feats", True, "integer"), ("dropout_rate", "0.1", "finite number"),
    ("no_mlp", 1, "true or false"), ("tasks", 2, "text"), ("model", "ipt2", "one of"),
])
def test_a_record_value_of_the_wrong_type_is_one_line_naming_file_and_key(tmp_path, capsys, key,
                                                                       value, words):
    pretrain = checkpoint_with_record(tmp_path, {key: value})
    line = refused(["--test_only", "--pretrain", pretrain], capsys)
    assert utility.TRAINING_RECORD in line and repr(key) in line and words in line, line


def test_a_record_size_that_cannot_fit_is_refused_before_allocating(tmp_path, capsys):
    pretrain = checkpoint_with_record(tmp_path, {"patch_size": 100002, "patch_dim": 3})
    line = refused(["--test_only", "--pretrain", pretrain, "--save", str(tmp_path / "run")], capsys)
    assert "--patch_size" in line and "GiB" in line and "training.json" in line, line


@pytest.mark.parametrize("text", ['{"architecture": ', '[1, 2]', '{"architecture": [1]}',
                                  '{"architecture": {}, "step": -1}', '{"architecture": {}, "step": "4"}',
                                  '{"architecture": {}, "finished": "yes"}', "[" * 100000,
                                  '{"architecture": {"n_feats": {"a": 1}}}'])
def test_a_damaged_record_is_one_line_for_pretrain(tmp_path, capsys, text):
    pretrain = checkpoint_with_record(tmp_path, {})
    (tmp_path / "model" / utility.TRAINING_RECORD).write_text(text)
    line = refused(["--test_only", "--pretrain", pretrain], capsys)
    assert "training.json" in line and "fix or delete it" in line, line


def test_a_record_that_is_a_fifo_is_refused_unread(tmp_path, capsys):
    pretrain = checkpoint_with_record(tmp_path, {})
    record = tmp_path / "model" / utility.TRAINING_RECORD
    record.unlink()
    os.mkfifo(record)
    assert "not a regular file" in refused(["--test_only", "--pretrain", pretrain], capsys)


@hyp_settings(max_examples=150)
@given(architecture=st.dictionaries(
    st.sampled_from(sorted(option_table.OPTIONS)) | st.text(max_size=6), JSON, max_size=4))
def test_any_recorded_architecture_is_taken_with_its_types_or_refused(tmp_path_factory, architecture):
    folder = tmp_path_factory.mktemp("record")
    pretrain = checkpoint_with_record(folder, architecture)
    save = str(folder / "run")
    try:
        args = option.parse_args(["--test_only", "--cpu", "--pretrain", pretrain, "--save", save])
    except SystemExit as e:
        assert e.code == 2
        return
    assert args.save == save  # the run writes where the command line says
    table = option_table.OPTIONS
    for taken in args.architecture_from:
        dest = taken.split()[0][2:]
        assert dest in option_files.architecture_keys()
        kind = table[dest].type
        value = architecture[dest]
        if kind is int:
            assert isinstance(value, int) and not isinstance(value, bool)
    assert set(args.architecture_ignored) == set(architecture) - option_files.architecture_keys()


@hyp_settings(max_examples=150)
@given(record=JSON)
def test_any_record_is_read_or_refused_with_the_record_error(tmp_path_factory, record):
    folder = tmp_path_factory.mktemp("any")
    checkpoint = folder / "model_latest.pt"
    (folder / utility.TRAINING_RECORD).write_text(json.dumps(record))
    try:
        read = records.read_training_record(str(checkpoint), strict=True)
    except utility.RecordError as e:
        assert utility.TRAINING_RECORD in str(e) and "\n" not in str(e)
        return
    assert read == record and isinstance(read["architecture"], dict)
    assert records.read_training_record(str(checkpoint)) == record  # the lenient reader agrees


# ----------------------------------------------------------------------------------------
# state.pt: every field checked before it is used
# ----------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def saved_state(tmp_path_factory):
    """(a trainer that ran 3 steps of a tiny 2-head model, the state it saved)."""
    folder = tmp_path_factory.mktemp("state")
    runner, _ = make_trainer(folder, 3)
    assert runner.fit() == 0
    return runner, checkpointing.read_state(str(folder / utility.STATE_NAME))


@pytest.fixture(scope="module")
def a_batch():
    """One training batch of that model's options."""
    args = option.parse_args(
        "--n_feats 16 --num_heads 4 --num_layers 1 --patch_size 12 --batch_size 2 --scale 2+1".split())
    return next(iter(synthetic_batches(args, 2)(0)))


def sliced(state: dict) -> dict:
    """The state with its first weight cut in half."""
    key = next(iter(state["model"]))
    return {**state, "model": {**state["model"], key: state["model"][key][:1]}}


def adam_sliced(state: dict) -> dict:
    """The state with an optimiser moment of another shape than its weight."""
    opt = state["optimizer"]
    first = next(iter(opt["state"]))
    moments = {**opt["state"][first], "exp_avg": opt["state"][first]["exp_avg"].flatten()[:1]}
    return {**state, "optimizer": {**opt, "state": {**opt["state"], first: moments}}}


BAD_STATES = {
    "options as text": lambda s: {**s, "options": "n_feats=16"},
    "an unknown progress field": lambda s: {**s, "progress": {**s["progress"], "epoch": 3}},
    "a negative step": lambda s: {**s, "progress": {**s["progress"], "step": -2}},
    "a 3-byte torch RNG state": lambda s: {**s, "rng": {**s["rng"],
                                                         "torch": torch.zeros(3, dtype=torch.uint8)}},
    "a short python RNG state": lambda s: {**s, "rng": {**s["rng"], "python": (3, (1, 2), None)}},
    "a NaN loss average": lambda s: {**s, "loss_average": float("nan")},
    "sliced weights": sliced,
    "a sliced optimiser moment": adam_sliced,
    "an optimiser of another model": lambda s: {**s, "optimizer": {"state": {}, "param_groups": []}},
    "10^9 loader workers": lambda s: {**s, "loader_workers": 10 ** 9},  # would start them all
    "a step of 10^18": lambda s: {**s, "progress": {**s["progress"], "step": 10 ** 18}},
}


@pytest.mark.parametrize("damage", sorted(BAD_STATES))
def test_a_damaged_state_is_one_state_error(tmp_path, saved_state, damage):
    runner, state = saved_state
    path = tmp_path / utility.STATE_NAME
    torch.save(BAD_STATES[damage](state), path)
    with pytest.raises(checkpointing.StateError) as err:
        runner.load_state(checkpointing.read_state(str(path)), str(path))
    assert str(path) in str(err.value) and "\n" not in str(err.value)


@pytest.mark.parametrize("argv,words", [
    (["--n_feats", "100000000"], "the model alone needs"),
    (["--n_feats", str(10 ** 30)], "GiB"),
    (["--num_layers", "9999999999999"], "the model alone needs"),  # built layer by layer: a hang
    (["--patch_size", "99999999999999999999"], "the first batch needs"),
    (["--num_queries", "99999999999999999999"], "the model alone needs"),
    (["--n_threads", str(10 ** 9), "--data_train", "Sample"], "--n_threads"),
    (["--max_steps", str(10 ** 18), "--data_train", "Sample"], "--max_steps"),
])
def test_sizes_past_any_machine_are_one_line(capsys, argv, words):
    """Worked out from the options (nothing built, no float overflow), against the memory there is."""
    line = refused(["--cpu", *argv], capsys)
    assert words in line and "Traceback" not in line


def test_a_tile_whose_attention_scores_cannot_fit_is_one_line(capsys, monkeypatch):
    """The estimate left out the attention scores, 25.6 GB for one 600-pixel tile of 40,000 tokens
    and 4 heads: a --test_only with 8 GiB was taken and ended in an allocation traceback."""
    import utility
    monkeypatch.setattr(utility, "available_memory", lambda: 8 * 2 ** 30)
    tiny = ["--cpu", "--test_only", "--n_feats", "16", "--num_heads", "4", "--num_layers", "1",
            "--no_pos", "--no_mlp", "--data_test", "Sample", "--attention", "math"]
    assert "the first batch needs" in refused([*tiny, "--patch_size", "600"], capsys)
    assert option.parse_args([*tiny, "--patch_size", "240"]).patch_size == 240  # 0.7 GB of scores


@pytest.mark.parametrize("width, words", [(10 ** 30, "greater than the maximum"),  # the record's bound
                                          (10 ** 7, "the model alone needs")])  # the size estimate
def test_a_record_of_an_impossible_width_is_one_line(tmp_path, capsys, width, words):
    weights = tmp_path / "model_latest.pt"
    torch.save({}, weights)
    record = {"model": "ipt", "architecture": {"model": "ipt", "n_feats": width, "num_heads": 4}}
    (tmp_path / utility.TRAINING_RECORD).write_text(json.dumps(record))
    line = refused(["--cpu", "--test_only", "--pretrain", str(weights)], capsys)
    assert words in line and "n_feats" in line or words == "the model alone needs" and words in line


def test_a_damaged_state_is_one_line_for_resume(tmp_path, caplog):
    argv = ["--cpu", "--n_feats", "16", "--num_heads", "4", "--num_layers", "1", "--scale", "2",
            "--patch_size", "12", "--batch_size", "2", "--data_train", "Sample", "--data_test", "Demo",
            "--n_threads", "0", "--max_steps", "2", "--save", str(tmp_path / "run")]
    assert cli.main(argv) == 0
    path = tmp_path / "run" / utility.STATE_NAME
    state = torch.load(path, weights_only=True)
    torch.save(sliced(state), path)
    assert cli.main([*argv, "--resume"]) == 1
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and "does not fit this model" in errors[0].getMessage()


VALUES = st.none() | st.booleans() | st.integers(-2 ** 70, 2 ** 70) | st.floats() | st.text(max_size=4) \
    | st.lists(st.integers(0, 2 ** 33), max_size=4) | st.builds(torch.zeros, st.integers(0, 6))


@hyp_settings(max_examples=120)
@given(path=st.lists(st.sampled_from(["progress", "rng", "torch", "numpy", "python", "step", "best_psnr",
                                      "loss_average", "options", "loader_workers", "schedule_steps",
                                      "scheduler", "scaler", 0, 1, 2]), min_size=1, max_size=3),
       value=VALUES)
def test_any_damaged_field_is_read_or_one_state_error(tmp_path_factory, saved_state, a_batch, path, value):
    runner, state = saved_state
    damaged = replace_at(state, path, value)
    file = tmp_path_factory.mktemp("damaged") / utility.STATE_NAME
    torch.save(damaged, file)
    try:
        runner.load_state(checkpointing.read_state(str(file)), str(file))
    except checkpointing.StateError as e:
        assert "\n" not in str(e)
        return
    runner.train_step(a_batch)  # accepted: the run resumed from it takes a step


def replace_at(tree: object, path: list, value: object) -> object:
    """A copy of nested dicts/lists/tuples with the item at ``path`` replaced (extended when the
    path leaves the tree: a new key, or the value itself)."""
    if not path:
        return value
    key, rest = path[0], path[1:]
    if isinstance(tree, dict):
        return {**tree, key: replace_at(tree.get(key), rest, value)}
    if isinstance(tree, (list, tuple)) and isinstance(key, int) and key < len(tree):
        items = list(tree)
        items[key] = replace_at(items[key], rest, value)
        return type(tree)(items)
    return value


def test_a_failed_state_save_leaves_the_weights_undescribed(tmp_path, monkeypatch):
    """model_latest.pt written, state.pt not: training.json says nothing of the newer weights."""
    runner, _ = make_trainer(tmp_path, 6)
    real = runfolder.atomic_save

    def state_fails(obj, path):
        if path.endswith(utility.STATE_NAME) and runner.progress.step == 6:
            raise runfolder.SaveError(f"cannot write {path} (No space left on device)")
        real(obj, path)

    monkeypatch.setattr(runfolder, "atomic_save", state_fails)
    with pytest.raises(runfolder.SaveError):  # main.py makes it one line and exit status 1
        runner.fit()
    record = json.loads((tmp_path / "model" / utility.TRAINING_RECORD).read_text())
    latest = os.stat(tmp_path / "model" / "model_latest.pt")
    described = record["weights"]["model_latest.pt"]
    assert record["step"] == described["step"] == 3  # the last complete save
    assert (described["size"], described["mtime_ns"]) != (latest.st_size, latest.st_mtime_ns)


# ----------------------------------------------------------------------------------------
# Option files: read as written, no aliases, no pipes
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("text,dest,expected", [
    ("save: 10:30\n", "save", "10:30"),  # YAML 1.1 reads a sexagesimal 630
    ("save: 007\n", "save", "007"),
    ("dir_data: 2024-01-01\n", "dir_data", "2024-01-01"),  # not a date
    ("data_test: [Set5, Set14]\n", "data_test", ["Set5", "Set14"]),
    ("n_feats: 016\n", "n_feats", 16),
    ("lr: 1.5e-4\n", "lr", 1.5e-4),
])
def test_yaml_values_are_read_as_written(tmp_path, text, dest, expected):
    cfg = tmp_path / "run.yaml"
    cfg.write_text(text)
    assert getattr(option.parse_args(["--config", str(cfg), "--test_only"]), dest) == expected


def test_a_home_folder_in_an_option_file_is_expanded(tmp_path, monkeypatch):
    monkeypatch.setenv("HOME", str(tmp_path))
    cfg = tmp_path / "run.yaml"
    cfg.write_text("save: ~/runs/a\n")
    assert option.parse_args(["--config", str(cfg), "--test_only"]).save == str(tmp_path / "runs/a")


@pytest.mark.parametrize("text,words", [
    ("n_feats: 10:30\n", "integer"),
    ("a: &a [x, x, x]\nb: &b [*a, *a, *a]\ndata_test: *b\n", "aliases"),
    ("save: &s here\ndir_demo: *s\n", "aliases"),
])
def test_yaml_sexagesimal_ints_and_aliases_are_refused(tmp_path, capsys, text, words):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    assert words in refused(["--config", str(cfg), "--test_only"], capsys)


def test_a_yaml_alias_bomb_is_refused_in_one_short_line(tmp_path, capsys):
    levels = ["  - &a0 [x, x, x, x, x, x, x, x, x, x]"]
    levels += [f"  - &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 9)]
    cfg = tmp_path / "bomb.yaml"
    cfg.write_text("data_test:\n" + "\n".join(levels) + "\n")  # 10^9 items once expanded
    line = refused(["--config", str(cfg)], capsys)
    assert len(line) < 400 and "aliases" in line


def test_an_option_file_that_is_a_fifo_is_refused_unopened(tmp_path, capsys):
    os.mkfifo(tmp_path / "pipe.yaml")
    assert "not a regular file" in refused(["--config", str(tmp_path / "pipe.yaml")], capsys)


YAML_TEXT = st.text(st.characters(blacklist_categories=("Cs",)), max_size=12)


@hyp_settings(max_examples=200)
@given(key=st.sampled_from(sorted(d for d in option_table.OPTIONS if d not in option_files.NOT_IN_CONFIG)),
       text=YAML_TEXT)
def test_any_yaml_value_is_taken_or_refused_in_one_line(tmp_path_factory, key, text):
    cfg = tmp_path_factory.mktemp("yaml") / "run.yaml"
    cfg.write_text(f"{key}: {text}\n", encoding="utf-8")
    try:
        args = option.parse_args(["--config", str(cfg), "--test_only", "--save",
                                  str(cfg.parent / "run")])
    except SystemExit as e:
        assert e.code == 2
        return
    assert args.save == str(cfg.parent / "run")


# ----------------------------------------------------------------------------------------
# Numbers that make no sense
# ----------------------------------------------------------------------------------------
@pytest.mark.parametrize("argv,words", [
    (["--seed", str(2 ** 64)], "--seed"), (["--seed", "-1"], "--seed"),
    (["--data_range", "10-1/801-810"], "--data_range"), (["--data_range", "0-5/6-7"], "--data_range"),
    (["--decay=-5"], "--decay"), (["--decay", "400-200"], "--decay"), (["--decay", "200-"], "--decay"),
    (["--batch_size", "1000000000", "--max_steps", "1"], "--batch_size"),
    (["--patch_size", "100002", "--test_only"], "--patch_size"),
    (["--dist_timeout", "0"], "--dist_timeout"), (["--dist_timeout", str(10 ** 15)], "--dist_timeout"),
])
def test_numbers_that_cannot_work_are_refused_naming_the_option(capsys, argv, words):
    assert words in refused(argv, capsys)


def test_a_warm_up_longer_than_the_run_is_warned(tmp_path, caplog):
    argv = ["--cpu", "--n_feats", "16", "--num_heads", "4", "--num_layers", "1", "--scale", "2",
            "--patch_size", "12", "--batch_size", "2", "--data_train", "Sample", "--data_test", "Demo",
            "--n_threads", "0", "--max_steps", "2", "--schedule", "cosine", "--warmup_steps", "10",
            "--save", str(tmp_path / "run")]
    assert cli.main(argv) == 0
    assert "--warmup_steps 10 is not shorter than the run's 2 steps" in caplog.text


# ----------------------------------------------------------------------------------------
# Loading, hashing, leftovers
# ----------------------------------------------------------------------------------------
class Planted:
    def __reduce__(self):
        return os.getcwd, ()


def test_a_refused_pickle_never_shows_torchs_advice_to_load_unsafely(tmp_path):
    torch.save({"weights": torch.zeros(1), "payload": Planted()}, tmp_path / "x.pt")
    with pytest.raises(pickle.UnpicklingError) as err:
        torch.load(tmp_path / "x.pt", weights_only=True)
    said = utility.load_failure(err.value)
    assert "would run code" in said and "getcwd" in said
    assert "weights_only" not in said and "False" not in said


@pytest.mark.parametrize("argv,says", [
    (["--pretrain", "{tmp}/log.txt"], "log.txt': not a file torch.save wrote (UnpicklingError: "),
    (["--save", "{tmp}", "--resume", "7"], "model_7.pt' does not exist (check --resume 7)"),  # was --pretrain
    (["--pretrain", "{tmp}/state.pt"], "state.pt' is a training state, not weights"),  # was: its raw weights
])
def test_a_file_that_is_no_checkpoint_is_named_with_the_option_that_gave_it(tmp_path, caplog, argv, says):
    (tmp_path / "log.txt").write_text("2026-12-07 INFO command: main.py\n")
    torch.save({**dict.fromkeys(records.STATE["required"], {}), "model": {"w": torch.zeros(1)}},
               tmp_path / "state.pt")  # what a training run saves beside its weights
    argv = [a.format(tmp=tmp_path) for a in argv]
    assert cli.main([*TINY, "--test_only", "--data_test", "Sample", *argv]) == 1
    errors = [r.getMessage() for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1 and says in errors[0], errors


def test_the_recorded_hash_is_of_the_bytes_loaded(tmp_path, monkeypatch):
    import evaluation
    from model import IPT, IPTConfig
    weights = tmp_path / "w.pt"
    torch.save(IPT(IPTConfig(scale=[2], n_feats=16, num_heads=4, num_layers=1, num_queries=1)).state_dict(),
               weights)
    loaded_hash = hashlib.sha256(weights.read_bytes()).hexdigest()
    real = evaluation.evaluate

    def replaced_meanwhile(*args, **kwargs):  # another process writes new weights mid-evaluation
        torch.save({"other": torch.ones(3)}, weights)
        return real(*args, **kwargs)

    monkeypatch.setattr(evaluation, "evaluate", replaced_meanwhile)
    from PIL import Image
    set5 = tmp_path / "data" / "benchmark" / "Set5"
    for sub, size in (("HR", 48), ("LR_bicubic/X2", 24)):
        (set5 / sub).mkdir(parents=True)
        name = "a.png" if sub == "HR" else "ax2.png"
        Image.new("RGB", (size, size), (90, 120, 30)).save(set5 / sub / name)
    cli.main(["--test_only", *TINY, "--pretrain", str(weights), "--data_test", "Set5",
              "--dir_data", str(tmp_path / "data"), "--save", str(tmp_path / "run"), "--chop", "fast"])
    meta = json.loads((tmp_path / "run" / "metrics.json").read_text())["meta"]
    assert meta["checkpoint_sha256"] == loaded_hash != hashlib.sha256(weights.read_bytes()).hexdigest()


def test_the_next_lock_holder_removes_a_killed_writers_temporaries(tmp_path):
    (tmp_path / "model").mkdir()
    left = [tmp_path / ".state.pt.abc123.tmp", tmp_path / "model" / ".model_latest.pt.x9.tmp"]
    for path in left:
        path.write_bytes(b"")
    kept = tmp_path / "notes.tmp"
    kept.write_text("mine")
    lock = runfolder.RunLock(str(tmp_path))
    note = lock.acquire()
    lock.release()
    assert not any(p.exists() for p in left) and kept.exists()
    assert "2 temporary file(s)" in note


def test_a_loader_workers_death_is_not_reported_as_a_full_disk(tmp_path):
    def dies(tmp):
        raise RuntimeError("DataLoader worker (pid 123) is killed by signal: Terminated.")

    with pytest.raises(RuntimeError) as err:
        runfolder.atomic_write(str(tmp_path / "state.pt"), dies)
    assert not isinstance(err.value, runfolder.SaveError)
    assert not os.listdir(tmp_path)  # its temporary removed all the same


def test_after_a_stop_what_it_ends_in_finalisers_is_not_reported_as_an_error(monkeypatch):
    """A loader worker that the group's signal ended before its worker_init_fn (torch's own SIGTERM
    handler runs until then), or a stop raised in a DataLoader's __del__: no traceback printed."""
    import signal
    import sys
    import types
    monkeypatch.setattr(sys, "unraisablehook", sys.unraisablehook)  # put back after the test
    shown = []
    monkeypatch.setattr(sys, "__unraisablehook__", shown.append)
    with stops.StopSignals() as stop:
        os.kill(os.getpid(), signal.SIGTERM)
    assert stop.received == signal.SIGTERM and sys.unraisablehook is stops.quiet_unraisable
    for error in (RuntimeError("DataLoader worker (pid 428) is killed by signal: Terminated. "),
                  RuntimeError("DataLoader worker (pid(s) 12, 13) exited unexpectedly"),
                  stops.Interrupted(signal.SIGTERM), RuntimeError("a real error")):
        sys.unraisablehook(types.SimpleNamespace(exc_value=error))
    assert [str(u.exc_value) for u in shown] == ["a real error"]


def test_stop_signals_set_the_flag_or_raise(tmp_path):
    import signal
    with stops.StopSignals() as stop:
        os.kill(os.getpid(), signal.SIGUSR1)
    assert stop.received == signal.SIGUSR1
    with stops.StopSignals() as stop:  # a closed terminal, or ssh session: it killed a run unsaved
        os.kill(os.getpid(), signal.SIGHUP)
    assert stop.received == signal.SIGHUP
    with pytest.raises(stops.Interrupted) as err, stops.StopSignals(raise_=True):
        os.kill(os.getpid(), signal.SIGTERM)
    assert err.value.signum == signal.SIGTERM and isinstance(err.value, KeyboardInterrupt)
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # put back as it was
    random.seed(0)
