"""Options: the authors' names and defaults, task naming, refusals and YAML configs."""
from __future__ import annotations

import dataclasses
import glob
import os

import pytest
import torch
import yaml

from option import build_parser, inert_options_given, parse_args, refused_options, settings
from option_table import OPTIONS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

# the authors' option.py: name -> default (values after their own post-processing)
AUTHORS_DEFAULTS = {
    "debug": False, "n_threads": 6, "cpu": False, "n_GPUs": 1, "seed": 1,
    "dir_demo": "../test", "data_train": ["DIV2K"], "data_test": ["DIV2K"],
    "data_range": "1-800/801-810", "ext": "sep", "scale": [4], "patch_size": 48,
    "rgb_range": 255, "n_colors": 3, "no_augment": False, "model": "ipt", "n_feats": 64,
    "shift_mean": True, "precision": "single", "reset": False, "test_every": 1000, "epochs": 300,
    "batch_size": 16, "test_batch_size": 1, "crop_batch_size": 64, "split_batch": 1,
    "self_ensemble": False, "test_only": False, "gan_k": 1, "lr": 1e-4, "decay": "200",
    "gamma": 0.5, "optimizer": "ADAM", "momentum": 0.9, "betas": (0.9, 0.999), "epsilon": 1e-8,
    "weight_decay": 0, "gclip": 0, "loss": "1*L1", "skip_threshold": 1e8, "load": "",
    "resume": 0, "save_models": False, "print_every": 100, "save_results": False,
    "save_gt": False, "moxfile": 1, "data_url": None, "train_url": None, "pretrain": "",
    "load_query": 0, "patch_dim": 3, "num_heads": 12, "num_layers": 12, "dropout_rate": 0,
    "no_norm": False, "freeze_norm": False, "post_norm": False, "no_mlp": False,
    "pos_every": False, "no_pos": False, "denoise": False, "sigma": 30, "derain": False,
    "derain_test": 1, "deblur": False, "deblur_test": 1, "template": ".",
}


def exit_line(capsys, argv):
    """The exit status and the single stderr line of a refused command line."""
    with pytest.raises(SystemExit) as err:
        parse_args(argv)
    lines = capsys.readouterr().err.strip().splitlines()
    assert len(lines) == 1
    return err.value.code, lines[0]


def test_authors_names_and_defaults():
    args = vars(parse_args([]))
    for name, default in AUTHORS_DEFAULTS.items():
        assert args[name] == default, name
    # deliberate differences: no hard-coded /cache paths, and one query per head
    assert args["dir_data"] == "./datasets" and args["save"] == "./experiment/ipt"
    assert args["num_queries"] == 1


def test_authors_readme_commands():
    sr = parse_args("--dir_data D --pretrain P --data_test Set5+Set14+B100+Urban100 --scale 2 "
                    "--test_only".split())
    assert (sr.scale, sr.task_names, sr.task_id) == ([2], ["sr2"], 0)
    assert sr.data_test == ["Set5", "Set14", "B100", "Urban100"] and sr.test_only
    dn = parse_args("--dir_data D --pretrain P --data_test CBSD68+Urban100 --scale 1 --denoise "
                    "--sigma 30 --test_only".split())
    assert (dn.scale, dn.task_names, dn.task_id) == ([1], ["denoise30"], 0)
    dr = parse_args("--dir_data D --pretrain P --scale 1 --derain --test_only".split())
    assert (dr.scale, dr.task_names, dr.task_id) == ([1], ["derain"], 0)


def test_six_task_model_from_scale_alone():
    args = parse_args(["--scale", "2+3+4+1+1+1"])
    assert args.num_queries == 6 and args.task_id is None
    assert args.task_names == ["sr2", "sr3", "sr4", "derain", "denoise30", "denoise50"]


@pytest.mark.parametrize("argv,names,task_id", [
    ("--scale 2+3+4+1+1+1 --task denoise50", ["sr2", "sr3", "sr4", "derain", "denoise30", "denoise50"], 5),
    ("--scale 2+3+4+1+1+1 --task_id 4", ["sr2", "sr3", "sr4", "derain", "denoise30", "denoise50"], 4),
    ("--scale 2+3+4+1+1+1 --denoise --sigma 50",
     ["sr2", "sr3", "sr4", "derain", "denoise30", "denoise50"], 5),
    ("--task denoise50", ["denoise50"], 0),
    ("--task sr3", ["sr3"], 0),
    ("--scale 1 --task denoise50", ["denoise50"], 0),
    ("--tasks sr2+denoise50 --task_id 1", ["sr2", "denoise50"], 1),
    ("--scale 1 --denoise --sigma 15", ["denoise15"], 0),
])
def test_task_selection(argv, names, task_id):
    args = parse_args(argv.split())
    assert (args.task_names, args.task_id) == (names, task_id)
    assert len(args.scale) == len(names)


@pytest.mark.parametrize("argv,option", [
    ("--scale 2+3+4 --num_queries 2", "--num_queries"),
    ("--patch_size 50", "--patch_size"),
    ("--scale 2+3+4+1+1+1 --task sr8", "--task"),
    ("--scale 2 --task_id 1", "--task_id"),
    ("--scale 2 --task denoise30", "--task"),
    ("--num_heads 7", "--num_heads"),
    ("--scale 5", "--scale"),
    ("--scale 1+1+1+1", "--scale"),
    ("--tasks sr2+derain --scale 2+2", "--tasks"),
    ("--denoise --derain --scale 1", "--denoise"),
    ("--crop_batch_size 0", "--crop_batch_size"),
    ("--pos_every --no_pos", "--pos_every"),
    ("--n_GPUs 4", "torchrun --nproc_per_node 4"),
    ("--template EDSR", "--config"),
    ("--load old_run", "--resume"),
    ("--deblur", "--deblur"),
    ("--no_such_option", "--no_such_option"),
    ("--data_test Set5+Set6", "Set6"),
])
def test_impossible_values_exit_2_naming_the_option(capsys, argv, option):
    code, line = exit_line(capsys, argv.split())
    assert code == 2 and option in line


REFUSED_EXAMPLES = {
    "template": "--template EDSR", "n_GPUs": "--n_GPUs 2", "ext": "--ext img",
    "shift_mean": "--shift_mean False", "test_batch_size": "--test_batch_size 4",
    "split_batch": "--split_batch 2", "gan_k": "--gan_k 2", "loss": "--loss 1*MSE",
    "load": "--load x", "moxfile": "--moxfile 0", "data_url": "--data_url s3://x",
    "train_url": "--train_url s3://y", "load_query": "--load_query 1", "freeze_norm": "--freeze_norm",
    "post_norm": "--post_norm", "derain_test": "--derain_test 2", "deblur": "--deblur",
    "deblur_test": "--deblur_test 2", "n_colors": "--n_colors 1",
}


@pytest.mark.parametrize("dest", list(refused_options()))
def test_every_refused_option_exits_2_with_its_message(capsys, dest):
    argv = REFUSED_EXAMPLES[dest].split()
    code, line = exit_line(capsys, argv)
    assert code == 2 and refused_options()[dest][1].format(value=argv[-1]) in line


def test_yaml_config_is_overridden_by_the_command_line(tmp_path):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("scale: 2+3\nn_feats: 32\nnum_heads: 4\ndata_test: [Demo, Sample]\nbetas: [0.8, 0.9]\n")
    args = parse_args(["--config", str(cfg), "--n_feats", "16"])
    assert args.scale == [2, 3] and args.n_feats == 16 and args.num_heads == 4
    assert args.data_test == ["Demo", "Sample"] and args.betas == (0.8, 0.9)


def test_yaml_with_an_unknown_key_exits_2(tmp_path, capsys):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text("n_feets: 16\n")
    code, line = exit_line(capsys, ["--config", str(cfg)])
    assert code == 2 and "n_feets" in line and str(cfg) in line


def test_resume_forms():
    assert parse_args(["--resume"]).resume == -1
    assert parse_args(["--resume", "-1"]).resume == -1
    assert parse_args(["--test_only", "--resume", "5"]).resume == 5


@pytest.mark.parametrize("argv,option", [
    ("--lr inf", "--lr"), ("--lr nan", "--lr"), ("--lr 1e400", "--lr"), ("--gamma nan", "--gamma"),
    ("--sigma inf", "--sigma"), ("--weight_decay inf", "--weight_decay"),
    ("--con_weight nan", "--con_weight"), ("--skip_threshold inf", "--skip_threshold"),
    ("--momentum nan", "--momentum"), ("--epsilon inf", "--epsilon"), ("--gclip nan", "--gclip"),
    ("--dropout_rate nan", "--dropout_rate"), ("--model restormer --task derain --ffn_expansion_factor inf",
                                               "--ffn_expansion_factor"),
    ("--betas 0.9,nan", "--betas"), ("--betas inf,0.999", "--betas"),
    ("--schedule cyclic_cosine --periods 5+5 --eta_mins 1e-6+nan", "--eta_mins"),
    ("--schedule cyclic_cosine --periods 5 --eta_mins inf", "--eta_mins"),
    # values torch's optimisers reject
    ("--epsilon -1", "--epsilon"), ("--betas 2,3", "--betas"), ("--betas 0.9,1", "--betas"),
    ("--betas -0.1,0.9", "--betas"), ("--momentum -1", "--momentum"), ("--gamma 0", "--gamma"),
    ("--gamma -0.5", "--gamma"), ("--skip_threshold 0", "--skip_threshold"),
    ("--skip_threshold -1", "--skip_threshold"),
    # counts whose ceiling does not depend on the machine (were overflow tracebacks)
    ("--threads 99999999999", "--threads"), ("--rgb_range 10000000000000000000000", "--rgb_range"),
    ("--decay 1-10000000000000", "--decay"),  # a list's counts too (were taken)
    ("--model restormer --task derain --patch_size 16 --batch_size 4 --progressive_patches 8+16 "
     "--progressive_batches 4+2 --progressive_steps 2+10000000000000", "--progressive_steps"),
])
def test_non_finite_and_out_of_range_numbers_exit_2_naming_the_option(capsys, argv, option):
    code, line = exit_line(capsys, argv.split())
    assert code == 2 and option in line


def test_optimiser_edge_values_are_accepted():
    args = parse_args("--epsilon 0 --momentum 0 --betas 0,0.5 --gamma 1".split())
    assert (args.epsilon, args.momentum, args.betas, args.gamma) == (0, 0, (0, 0.5), 1)


@pytest.mark.parametrize("argv,words", [
    ("--save=", ["--save: give a run directory"]),
    ("--resume 5", ["--resume 5", "model/model_5.pt", "--test_only", "bare --resume"]),
    ("--resume -2", ["--resume -2"]),
    ("--test_only --resume -3", ["--resume -3"]),
    ("--resume --reset", ["--reset", "--resume"]),
    ("--resume --pretrain model.pt", ["--pretrain", "--resume"]),
    ("--test_only --resume 3 --pretrain model.pt", ["--pretrain", "--resume"]),
    ("--test_only --resume --pretrain model.pt", ["--pretrain", "--resume"]),
    # head flags that contradict the heads
    ("--scale 2+3+4+1+1+1 --task sr2 --denoise", ["--denoise", "--task sr2"]),
    ("--scale 2+3+4+1+1+1 --task_id 0 --derain", ["--derain", "--task_id 0"]),
    ("--tasks sr2 --derain", ["--derain", "no head derain"]),
    ("--tasks sr2+denoise30 --task denoise25 --pretrain m.pt",  # a new noise level: how to fine-tune it
     ["--task denoise25 names no head", "give --tasks denoise25 --init_from one of them (or none)"]),
    # IPT's body takes patch-sized inputs only (was: a ValueError traceback per image)
    ("--test_only --chop whole", ["--chop whole", "48x48", "--chop official"]),
    # a list that names nothing (was: --data_test + evaluated nothing and exited 0)
    ("--test_only --data_test +", ["--data_test '+' names nothing"]),
    ("--data_train +", ["--data_train '+' names nothing"]), ("--tasks +", ["--tasks '+' names nothing"]),
])
def test_contradictory_options_exit_2(capsys, argv, words):
    code, line = exit_line(capsys, argv.split())
    assert code == 2 and all(w in line for w in words), line


def test_resume_is_compatible_with_what_it_continues():
    assert parse_args(["--resume", "--save", "run"]).resume == -1
    args = parse_args(["--test_only", "--resume", "7"])
    assert args.resume == 7 and not args.pretrain
    assert parse_args(["--reset", "--pretrain", "model.pt"]).reset  # fine-tune into a fresh run


@pytest.mark.parametrize("argv", [
    "--denoise --sigma 0", "--denoise --sigma -5", "--denoise --sigma 1e400", "--denoise --sigma 1e-7",
    "--denoise --sigma 1e20", "--denoise --sigma 30.1234567", "--scale 1 --denoise --sigma -5",
    "--scale 2+3+4+1+1+1 --denoise --sigma 70", "--tasks sr2+denoise30 --denoise --sigma 50",
    "--sigma nan",
])
def test_bad_sigma_is_named_not_its_task(capsys, argv):
    code, line = exit_line(capsys, argv.split())
    assert code == 2 and "--sigma" in line, line
    assert "task name" not in line and "--task denoise" not in line


def test_fractional_sigma_names_its_head():
    assert parse_args("--denoise --sigma 12.5".split()).task_names == ["denoise12.5"]


@pytest.mark.parametrize("path", sorted(glob.glob(os.path.join(ROOT, "configs", "*.yaml"))))
def test_every_shipped_config_parses(path):
    args = parse_args(["--config", path])
    assert args.config == path


def test_yaml_lists_are_joined_like_the_command_line(tmp_path):
    cfg = tmp_path / "lists.yaml"
    cfg.write_text("model: restormer\ntask: denoise30\nnum_blocks: [2, 2, 2, 2]\nheads: [1, 2, 4, 8]\n"
                   "schedule: cyclic_cosine\nperiods: [10, 20]\neta_mins: [3.0e-4, 1.0e-6]\n"
                   "data_test: [Set5, Sample]\ndecay: [200, 400]\nbetas: 0.8,0.9\nlr: 1\n"
                   "test_only: false\ncpu: true\n")
    args = parse_args(["--config", str(cfg)])
    assert args.num_blocks == [2, 2, 2, 2] and args.heads == [1, 2, 4, 8] and args.periods == [10, 20]
    assert args.eta_mins == [3e-4, 1e-6] and args.data_test == ["Set5", "Sample"]
    assert args.decay_milestones == [200, 400] and args.betas == (0.8, 0.9) and args.lr == 1.0
    assert args.cpu and not args.test_only


@pytest.mark.parametrize("text,key,words", [
    ('test_only: "false"\n', "test_only", ["true or false"]),
    ("cpu: yes please\n", "cpu", ["true or false"]),
    ("cpu: 1\n", "cpu", ["true or false"]),
    ("shift_mean: \"False\"\n", "shift_mean", ["true or false"]),
    ("n_feats: 16\nnum_heads: 4\nn_feats: 32\n", "n_feats", ["twice"]),
    ("n_feats:\n", "n_feats", ["remove the key"]),
    ("lr: ~\n", "lr", ["remove the key"]),
    ("n_feats: [16, 32]\n", "n_feats", ["list"]),
    ("save: [a, b]\n", "save", ["list"]),
    ("n_feats: {a: 1}\n", "n_feats", ["mapping"]),
    ("data_test: []\n", "data_test", ["empty"]),
    ("data_test: [Set5, [Set14]]\n", "data_test", ["list"]),
    ("n_feats: 16.5\n", "n_feats", ["integer"]),
    ("batch_size: 8.0\n", "batch_size", ["integer"]),
    ("n_feats: true\n", "n_feats", ["boolean"]),
    ("data_train: yes\n", "data_train", ["boolean"]),
    ("n_feats: sixteen\n", "n_feats", ["integer"]),
    ("lr: fast\n", "lr", ["number"]),
    ("lr: .inf\n", "lr", ["finite"]),
    ("lr: .nan\n", "lr", ["finite"]),
    ("betas: [0.9, .nan]\n", "betas", ["finite"]),
    ("betas: [2, 3]\n", "betas", ["[0, 1)"]),
    ("optimizer: adam\n", "optimizer", ["ADAM"]),
    ("model: ipt2\n", "model", ["restormer"]),
])
def test_bad_yaml_values_exit_2_naming_file_and_key(tmp_path, capsys, text, key, words):
    cfg = tmp_path / "bad.yaml"
    cfg.write_text(text)
    code, line = exit_line(capsys, ["--config", str(cfg)])
    assert code == 2 and str(cfg) in line and f"{key}:" in line, line
    assert all(w in line for w in words), line


def test_yaml_value_checks_still_let_the_command_line_win(tmp_path, capsys):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("n_feats: \"16\"\nsigma: 15\ndenoise: true\nscale: 1\n")
    args = parse_args(["--config", str(cfg), "--n_feats", "32"])
    assert args.n_feats == 32 and args.task_names == ["denoise15"]


def test_yaml_values_pass_the_command_line_checks(tmp_path, capsys):
    cfg = tmp_path / "run.yaml"
    cfg.write_text("resume: 5\n")
    code, line = exit_line(capsys, ["--config", str(cfg)])
    assert code == 2 and "--resume 5" in line


def test_yaml_file_that_is_not_utf8_exits_2(tmp_path, capsys):
    cfg = tmp_path / "latin1.yaml"
    cfg.write_bytes("dir_data: /donn\u00e9es\n".encode("latin-1"))
    code, line = exit_line(capsys, ["--config", str(cfg)])
    assert code == 2 and str(cfg) in line and "UTF-8" in line


def test_yaml_value_that_pyyaml_cannot_build_exits_2(tmp_path, capsys):
    cfg = tmp_path / "date.yaml"
    cfg.write_text("save: 2001-13-45\n")  # a timestamp with no month 13: PyYAML raised a ValueError
    code, line = exit_line(capsys, ["--config", str(cfg)])
    assert code == 2 and str(cfg) in line and "month" in line


def test_yaml_text_with_a_nul_character_exits_2(tmp_path, capsys):
    """It reached os.makedirs: a ValueError traceback ("embedded null byte") after the run began."""
    cfg = tmp_path / "nul.yaml"
    cfg.write_text('save: "runs/a\\x00b"\n')  # YAML's escape: the value holds a NUL
    code, line = exit_line(capsys, ["--config", str(cfg)])
    assert code == 2 and f"--config {cfg}: save: holds a NUL character" in line, line


def test_yaml_path_that_is_a_directory_exits_2(tmp_path, capsys):
    code, line = exit_line(capsys, ["--config", str(tmp_path)])
    assert code == 2 and str(tmp_path) in line


@pytest.mark.parametrize("argv", [["--config"], ["--config", ""]])
def test_config_without_a_file_exits_2(capsys, argv):
    code, line = exit_line(capsys, argv)
    assert code == 2 and "--config" in line


# ----------------------------------------------------------------------------------------
# Every option does something: it changes the typed settings, or it is refused
# ----------------------------------------------------------------------------------------
OPTION_EFFECTS_FILE = os.path.join(ROOT, "tests", "fixtures", "option_effects.yaml")


def option_effects() -> dict[str, tuple[str, str]]:
    """option -> (base command line, the option's arguments that must change the settings)."""
    with open(OPTION_EFFECTS_FILE, encoding="utf-8") as f:
        table = yaml.safe_load(f)
    names = {k: table[k] for k in ("restormer", "progressive", "cyclic")}
    return {dest: (base.format(**names), change) for dest, (base, change) in table["effects"].items()}


def settings_without_record(argv: str) -> dict:
    """The typed settings of a command line, without the plain record of every option."""
    s = dataclasses.asdict(settings(parse_args(argv.split())))
    s.pop("record")
    s["evaluation"].pop("record")
    return s


def test_every_option_changes_the_settings_or_is_refused(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)  # --precision half needs CUDA
    declared = set(OPTIONS) - {"config"}  # --config reads a file of the other options
    effects = option_effects()
    assert declared - set(refused_options()) == set(effects)
    for dest, (base, change) in effects.items():
        assert settings_without_record(base) != settings_without_record(f"{base} {change}"), dest


def test_settings_give_a_single_head_model_to_fine_tuning():
    s = settings(parse_args("--scale 2+3+4+1+1+1 --task denoise30".split()))
    assert (s.model.scale, s.model.task_names, s.model.num_queries) == ([1], ["denoise30"], 1)
    assert (s.data.tasks, s.data.task_id, s.train.task_names) == (["denoise30"], 0, ["denoise30"])
    evaluated = settings(parse_args("--scale 2+3+4+1+1+1 --task denoise30 --test_only".split()))
    assert evaluated.model.scale == [2, 3, 4, 1, 1, 1] and evaluated.evaluation.task_id == 4


@pytest.mark.parametrize("argv", ["--precision half --cpu", "--amp fp16 --cpu"])
def test_cuda_only_modes_exit_2_on_the_cpu(capsys, argv):
    code, line = exit_line(capsys, argv.split())
    assert code == 2 and argv.split()[0] in line and "CUDA" in line


SIX_TASK_RECORD = {"model": "ipt", "n_feats": 16, "num_heads": 4, "num_layers": 1, "num_queries": 6,
                   "scale": "2+3+4+1+1+1", "tasks": "sr2+sr3+sr4+derain+denoise30+denoise50"}


def weights_with_record(folder, kind: str) -> str:
    """Weights of a 4-head six-task model with their record: a training.json beside a (dummy,
    never read) .pt, or the metadata of a .safetensors file."""
    import json

    import utility
    from model.checkpoint import write_safetensors
    if kind == "safetensors":
        path = str(folder / "ipt.safetensors")
        write_safetensors({"unread": torch.zeros(1)}, path, SIX_TASK_RECORD)
        return path
    (folder / "model_latest.pt").write_bytes(b"not read by parse_args")
    (folder / utility.TRAINING_RECORD).write_text(json.dumps({"architecture": SIX_TASK_RECORD}))
    return str(folder / "model_latest.pt")


@pytest.mark.parametrize("kind", ["training.json", "safetensors"])
def test_a_num_heads_against_the_record_of_the_weights_is_refused_naming_both(tmp_path, capsys, kind):
    pretrain = weights_with_record(tmp_path, kind)
    code, line = exit_line(capsys, ["--test_only", "--pretrain", pretrain, "--num_heads", "2"])
    assert code == 2 and "--num_heads 2 contradicts" in line and "records num_heads 4" in line
    assert (pretrain if kind == "safetensors" else "training.json") in line
    assert parse_args(["--test_only", "--pretrain", pretrain, "--num_heads", "4"]).num_heads == 4
    # the other options: the command line wins, a head of the six may be taken
    wider = parse_args(["--test_only", "--pretrain", pretrain, "--n_feats", "32"])
    assert (wider.n_feats, wider.num_heads, wider.num_layers) == (32, 4, 1)
    one_head = parse_args(["--pretrain", pretrain, "--scale", "1", "--task", "denoise50"])
    assert (one_head.task_names, one_head.num_heads) == (["denoise50"], 4)


def test_the_options_reference_is_generated_and_up_to_date():
    """docs/OPTIONS.md is what scripts/options_doc.py writes from the option table, every option in it."""
    from scripts import options_doc
    expected = options_doc.options_markdown()
    with open(options_doc.DOC, encoding="utf-8") as f:
        assert f.read() == expected, "docs/OPTIONS.md is stale: run python -m scripts.options_doc"
    flags = [flag for action in build_parser()._actions[1:] for flag in action.option_strings]  # [0]: --help
    assert flags and all(f"| {flag} |" in expected or f"| {flag}, " in expected for flag in flags)


def test_options_that_do_nothing_without_another_are_named():
    """--save_gt without --save_results, --sigma without --denoise, --test_noise without a denoising
    head and --dir_demo without Demo were taken without a word, and changed nothing."""
    alone = ["--save_gt", "--sigma", "50", "--test_noise", "unclipped", "--dir_demo", "photos"]
    assert inert_options_given(parse_args(["--test_only", "--data_test", "Sample", *alone])) == [
        "--save_gt needs --save_results", "--sigma needs --denoise",
        "--test_noise needs a denoise<sigma> head", "--dir_demo needs Demo in --data_test"]
    needed = ["--save_results", "--denoise", "--data_test", "Sample+Demo"]
    assert inert_options_given(parse_args(["--test_only", *alone, *needed])) == []


def test_test_only_under_torchrun_is_refused(capsys, monkeypatch):
    """Each rank evaluated every set into the one folder, and ranks other than 0 went on writing
    there when rank 0 was refused the folder's lock (no process group joins a --test_only)."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    code, line = exit_line(capsys, ["--test_only", "--data_test", "Sample"])
    assert code == 2 and "--test_only runs as one process: start it with python main.py, not torchrun" in line


@pytest.mark.parametrize("argv,words", [
    # a traceback at the first validation (after --test_every steps), or at once with --test_only
    ("--patch_size 15 --test_only", "--patch_size 15: the authors' tiling (--chop auto) steps by a quarter"),
    ("--patch_size 30 --chop official --data_test Set5", "--patch_size 30: the authors' tiling"),
    # every mim loss was NaN (no token to mask beside one to keep): steps skipped, exit 0
    ("--tasks sr2+mim --patch_size 6 --patch_dim 6 --chop fast", "must give 2 or more a side"),
])
def test_sizes_the_tiling_or_mim_cannot_use_are_refused(capsys, argv, words):
    code, line = exit_line(capsys, argv.split())
    assert code == 2 and words in line, line


def test_a_patch_the_authors_tiling_cannot_cut_is_taken_where_nothing_is_tiled():
    for argv in ("--patch_size 15 --chop fast --test_only", "--patch_size 6 --data_test Demo"):
        assert parse_args(argv.split()).patch_size in (15, 6)


def test_training_options_that_do_nothing_with_the_others_are_named():
    given = ["--mask_ratio", "0.3", "--con_weight", "0.5", "--decay", "1-2", "--gamma", "0.1",
             "--schedule", "cosine", "--momentum", "0.5", "--self_ensemble", "--save_results"]
    assert inert_options_given(parse_args(["--data_train", "Sample", *given])) == [
        "--save_results needs --test_only (validations write no image)",
        "--self_ensemble needs --test_only (validations run without it)", "--mask_ratio needs a mim head",
        "--con_weight needs --con_loss", "--decay needs --schedule step", "--gamma needs --schedule step",
        "--momentum needs --optimizer SGD or RMSprop"]
    used = ["--tasks", "sr2+mim", "--con_loss", "--optimizer", "SGD", "--schedule", "cosine",
            "--warmup_steps", "5", "--mask_ratio", "0.3", "--con_weight", "0.5", "--momentum", "0.5"]
    assert inert_options_given(parse_args(["--data_train", "Sample", *used])) == []
    restormer = ["--model", "restormer", "--task", "denoise30", "--tile_size", "64", "--test_only"]
    assert inert_options_given(parse_args(restormer)) == ["--tile_size needs --chop fast"]
