"""Command-line options: the authors' names and defaults, parsed and validated once.

``parse_args(argv)`` returns a Namespace whose values are final: ``scale`` is a list of ints,
``task_names`` names every head, ``task_id`` is the head to run (None: every head in turn), and
``data_test`` / ``data_train`` are lists. An option or combination that cannot work exits with
status 2 and one line naming the option; a ``--config`` YAML file's values are checked with the
same types and rules (the line names the file and the key). Options the authors had but this
project does not implement are refused with what to use instead; none is silently ignored.
"""
from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import os
import re
import sys
from dataclasses import dataclass
from typing import TYPE_CHECKING

import yaml

from tasks import default_task_names, task_scale

if TYPE_CHECKING:  # the rest is imported where it is used: --help answers without loading torch
    from model.ipt import IPTConfig
    from model.restormer import RestormerConfig

TASK_NAME = re.compile(r"^(sr[1-9]\d*|derain|denoise\d+(\.\d+)?|mim)$")
SIGMA_IN_NAME = re.compile(r"^\d+(\.\d+)?$")  # how --sigma must print to name the head denoise<sigma>
SUPPORTED_SCALES = (1, 2, 3, 4, 8, 16)
DEFAULT_SCALE = "4"  # the authors' default

RESTORMER_TILE = 256  # default --tile_size of Restormer's fast tiling
DIST_TIMEOUT = 1800  # seconds: torch's own default for the process group, kept
MAX_DIST_TIMEOUT = 7 * 24 * 3600  # a week: longer waits overflow timedelta and help no one
# options whose command-line value joins several items: a YAML list is joined the same way
LIST_SEPARATORS = {**dict.fromkeys(("scale", "tasks", "data_test", "data_train", "num_blocks", "heads",
                                    "periods", "eta_mins", "progressive_patches",
                                    "progressive_batches", "progressive_steps"), "+"),
                   "decay": "-", "betas": ","}
NOT_IN_CONFIG = ("help", "config")  # parser destinations that a YAML config cannot set
YAML_MERGE_TAG = "tag:yaml.org,2002:merge"  # the << key, which PyYAML resolves itself
# What an option is for, declared beside it in build_parser (``roles=``); the lists derive from it.
TRAINING = frozenset({"training"})  # changes training only: reported when given with --test_only
IPT = frozenset({"ipt"})  # IPT's: refused with --model restormer unless at its default
RESTORMER = frozenset({"restormer"})  # Restormer's: refused with --model ipt
RESUME = frozenset({"resume"})  # shapes the model, the data or the schedule: a resumed run keeps it
RESUME_DERIVED = ("task_names", "task_id")  # what --tasks/--task/--denoise/... resolve to
HEAD_OPTIONS = ("scale", "tasks")  # the heads of a model, taken from a training record together
HEAD_COUNT_OPTIONS = (*HEAD_OPTIONS, "num_queries")  # ... with the count of task queries
NOT_ARCHITECTURE = ("attention",)  # model options that change the arithmetic, not the weights
# model options the weights keep no trace of: given against the record of the same weights, they
# would build another network that loads them without an error and restores wrongly; refused
RECORD_BOUND = ("num_heads",)
# what parse_args notes about the command line itself, kept out of the run's options record
PARSE_NOTES = ("command_line", "architecture_from", "architecture_ignored", "architecture_source",
               "pretrain_tasks")
PATH_OPTIONS = ("config", "dir_data", "dir_demo", "pretrain", "save", "streaks_dir")
MAX_SEED = 2 ** 63 - 1  # torch.manual_seed and the SHA-256 generator seeds take 64-bit integers


class OptionParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line and exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        if os.environ.get("RANK", "0") in ("", "0"):  # under torchrun every rank parses: one says it
            sys.stderr.write(f"{self.prog}: error: {message} (see --help)\n")
        sys.exit(2)


def add(group: argparse._ActionsContainer, *flags: str, roles: frozenset = frozenset(),
        refused: str | None = None, **kwargs) -> argparse.Action:
    """Add an option with what it is for; ``refused``: an option of the authors' that is not
    implemented here, refused at any value but its default with this line ({value}: the value)."""
    action = group.add_argument(*flags, **kwargs)
    action.roles, action.refusal = roles, refused
    return action


@functools.lru_cache(maxsize=1)
def option_table() -> dict[str, argparse.Action]:
    """Every option's action by destination (help excluded), as build_parser declares them."""
    return {a.dest: a for a in build_parser()._actions if a.dest != "help"}


def with_role(role: frozenset) -> list[str]:
    """The destinations of the options declared with ``role``."""
    return [dest for dest, action in option_table().items() if role <= action.roles]


def refused_options() -> dict[str, tuple[object, str]]:
    """dest -> (the authors' default, the refusal line) of the options not implemented here."""
    return {dest: (a.default, a.refusal) for dest, a in option_table().items() if a.refusal}


def build_parser() -> OptionParser:
    """The parser with every option, grouped as the authors grouped them."""
    p = OptionParser(prog="main.py", description="IPT: Pre-Trained Image Processing Transformer")
    add(p, "--config", default=None, help="YAML file of options; the command line wins")
    add(p, "--debug", action="store_true", help="verbose (DEBUG) logging")
    add(p, "--template", default=".", help="refused: use --config",
            refused="--template is not supported: "
                    "put options in a YAML file and pass --config FILE.yaml")

    g = p.add_argument_group("hardware")
    add(g, "--n_threads", type=int, default=6, help="data loading workers")
    add(g, "--threads", type=int, default=0,
            help="CPU compute threads (0: the cores this process may use less the loader "
                 "workers, which get at most a quarter of them; OMP_NUM_THREADS when set). On a "
                 "shared or busy CPU, 1 is often fastest")
    add(g, "--cpu", action="store_true", help="use the CPU even when CUDA is present")
    add(g, "--n_GPUs", type=int, default=1, help="refused above 1: use torchrun",
            refused="--n_GPUs is not supported: use torchrun --nproc_per_node {value} main.py ...")
    add(g, "--seed", type=int, default=1, help="random seed", roles=RESUME)

    g = p.add_argument_group("data")
    add(g, "--dir_data", default="./datasets", help="root of the datasets", roles=RESUME)
    add(g, "--dir_demo", default="../test", help="folder of images for --data_test Demo")
    add(g, "--data_train", default="DIV2K", help="training set(s), A+B", roles=TRAINING | RESUME)
    add(g, "--data_test", default=None,
            help="test set(s), A+B: Demo, Sample, Set5, Set14, B100, Urban100, Manga109, CBSD68, "
                 "Rain100L, DIV2K (default DIV2K; Rain100L for a derain model)")
    add(g, "--data_range", default="1-800/801-810", help="DIV2K train/test index ranges",
            roles=TRAINING | RESUME)
    add(g, "--ext", default="sep", help="refused: images are read directly",
            refused="--ext is not needed: images are always read directly from their files")
    add(g, "--scale", default=None, help="one scale per head, A+B (default 4)", roles=RESUME)
    add(g, "--patch_size", type=int, default=48, help="LR patch size the body takes", roles=RESUME)
    add(g, "--rgb_range", type=int, default=255, help="maximum pixel value", roles=RESUME)
    add(g, "--n_colors", type=int, default=3, help="colour channels (3)",
            refused="--n_colors must be 3: IPT's mean shift and heads are RGB")
    add(g, "--no_augment", action="store_true", help="no flips/transposes in training",
            roles=TRAINING | RESUME)

    g = p.add_argument_group("model")
    add(g, "--model", default="ipt", choices=("ipt", "restormer"),
            help="architecture: ipt (the options below) or restormer (its group)", roles=RESUME)
    add(g, "--n_feats", type=int, default=64, help="feature maps", roles=IPT | RESUME)
    add(g, "--shift_mean", default=True, type=_bool, help="refused: always on",
            refused="--shift_mean cannot be changed: IPT always shifts by the RGB mean")
    add(g, "--precision", default="single", choices=("single", "half", "bf16"),
            help="precision of every evaluation (--test_only and validation while training; "
                 "--amp is training's): single (fp32), half (fp16 weights, CUDA only) or bf16 "
                 "(the network's forward under autocast, fp32 weights; CUDA, or a CPU with "
                 "avx512_bf16/amx_bf16)")
    add(g, "--patch_dim", type=int, default=3, help="pixels per token side", roles=IPT | RESUME)
    add(g, "--num_heads", type=int, default=12, help="attention heads", roles=IPT | RESUME)
    add(g, "--num_layers", type=int, default=12, help="encoder and decoder layers",
            roles=IPT | RESUME)
    add(g, "--dropout_rate", type=_finite_float, default=0.0, roles=IPT | RESUME)
    add(g, "--no_norm", action="store_true", help="Identity instead of LayerNorm",
            roles=IPT | RESUME)
    add(g, "--freeze_norm", action="store_true", help="refused",
            refused="--freeze_norm is not part of the released IPT model")
    add(g, "--post_norm", action="store_true", help="refused",
            refused="--post_norm is not part of the released IPT model (it is pre-norm)")
    add(g, "--no_mlp", action="store_true", help="no linear_encoding, mlp_head or query_embed",
            roles=IPT | RESUME)
    add(g, "--pos_every", action="store_true", help="add positions in every layer",
            roles=IPT | RESUME)
    add(g, "--no_pos", action="store_true", help="no position embedding", roles=IPT | RESUME)
    add(g, "--num_queries", type=int, default=None, help="task queries (default: heads)",
            roles=IPT | RESUME)
    add(g, "--attention", default="auto", choices=("auto", "math", "sdpa"),
            help="math: the authors' arithmetic, bit for bit; sdpa: fused kernels; "
                 "auto: sdpa on CUDA, math on the CPU",
            roles=IPT)

    g = p.add_argument_group("restormer (with --model restormer; defaults: the authors' models)")
    add(g, "--dim", type=int, default=None, help="width of level 1 (48)", roles=RESTORMER | RESUME)
    add(g, "--num_blocks", default=None, help="Transformer blocks per level, A+B+C+D (4+6+6+8)",
            roles=RESTORMER | RESUME)
    add(g, "--num_refinement_blocks", type=int, default=None, help="refinement blocks (4)",
            roles=RESTORMER | RESUME)
    add(g, "--heads", default=None, help="attention heads per level, A+B+C+D (1+2+4+8)",
            roles=RESTORMER | RESUME)
    add(g, "--ffn_expansion_factor", type=_finite_float, default=None,
            help="GDFN width factor (2.66)", roles=RESTORMER | RESUME)
    add(g, "--bias", action="store_true", default=None, help="biases in the convolutions",
            roles=RESTORMER | RESUME)
    add(g, "--layernorm_type", default=None, help="WithBias or BiasFree (WithBias)",
            roles=RESTORMER | RESUME)
    add(g, "--tile_size", type=int, default=None,
            help=f"tile side for --chop fast, a multiple of 8 ({RESTORMER_TILE})",
            roles=RESTORMER)
    add(g, "--progressive_patches", default=None,
            help="progressive training: patch size of each stage, A+B+... (largest = --patch_size)",
            roles=TRAINING | RESTORMER | RESUME)
    add(g, "--progressive_batches", default=None,
            help="batch size of each stage, A+B+... (largest = --batch_size)",
            roles=TRAINING | RESTORMER | RESUME)
    add(g, "--progressive_steps", default=None, help="steps of each stage, A+B+...",
            roles=TRAINING | RESTORMER | RESUME)

    g = p.add_argument_group("tasks")
    add(g, "--tasks", default=None, help="name every head, A+B (sr2, derain, denoise30, ...)")
    add(g, "--task", default=None, help="run the head of this name")
    add(g, "--task_id", type=int, default=None, help="run the head of this index")
    add(g, "--denoise", action="store_true", help="the scale-1 head is denoise<sigma>")
    add(g, "--sigma", type=_finite_float, default=30, help="noise level for --denoise")
    add(g, "--derain", action="store_true", help="the scale-1 head is derain")
    add(g, "--derain_test", type=int, default=1, help="refused",
            refused="--derain_test is not supported: test deraining with --data_test Rain100L")
    add(g, "--deblur", action="store_true", help="refused",
            refused="--deblur is not one of IPT's tasks (sr<s>, derain, denoise<sigma>)")
    add(g, "--deblur_test", type=int, default=1, help="refused",
            refused="--deblur_test is not supported: deblurring is not one of IPT's tasks")

    g = p.add_argument_group("testing")
    add(g, "--test_only", action="store_true", help="evaluate, do not train")
    add(g, "--pretrain", default="", help="checkpoint to load")
    add(g, "--self_ensemble", action="store_true", help="x8 flips/transposes, averaged")
    add(g, "--crop_batch_size", type=int, default=64, help="tiles per network call")
    add(g, "--chop", default="auto", choices=("auto", "official", "fast", "whole"),
            help="whole-image inference: auto (official for IPT, whole for Restormer), "
                 "official (IPT authors' forward_chop), fast (few overlapping tiles), "
                 "whole (one call)")
    add(g, "--test_noise", default="clipped", choices=("clipped", "unclipped"),
            help="denoising test inputs: clipped to [0, 255] (IPT) or not (Restormer)")
    add(g, "--metric_channel", default="y", choices=("y", "rgb"),
            help="what psnr/ssim are computed on: the Y channel (IPT) or RGB (Restormer's "
                 "colour denoising); both are always reported")
    add(g, "--test_batch_size", type=int, default=1, help="refused above 1",
            refused="--test_batch_size is fixed at 1: bound memory with --crop_batch_size")
    add(g, "--split_batch", type=int, default=1, help="refused",
            refused="--split_batch is not supported: bound memory with --crop_batch_size")

    g = p.add_argument_group("training")
    add(g, "--reset", action="store_true", help="start the run directory afresh", roles=TRAINING)
    add(g, "--auto_resume", action="store_true",
            help="continue from the run directory's state.pt when there is one, else start afresh "
                 "(for torchrun --max-restarts and requeued jobs; --pretrain only starts a fresh "
                 "run)", roles=TRAINING)
    add(g, "--dist_timeout", type=int, default=DIST_TIMEOUT,
            help=f"torchrun: seconds a process waits for the others in a collective before it "
                 f"stops (a rank that died or stalls); longer than a validation ({DIST_TIMEOUT})",
            roles=TRAINING)
    add(g, "--test_every", type=int, default=1000, help="validate every N steps", roles=TRAINING)
    add(g, "--epochs", type=int, default=300, help="epochs (0: no limit)", roles=TRAINING)
    add(g, "--batch_size", type=int, default=16, roles=TRAINING | RESUME)
    add(g, "--gan_k", type=int, default=1, help="refused",
            refused="--gan_k is not supported: IPT has no adversarial loss")
    add(g, "--lr", type=_finite_float, default=1e-4, help="learning rate", roles=TRAINING | RESUME)
    add(g, "--decay", default="200", help="step-decay milestones in epochs, A-B", roles=TRAINING | RESUME)
    add(g, "--gamma", type=_finite_float, default=0.5, help="step-decay factor", roles=TRAINING | RESUME)
    add(g, "--optimizer", default="ADAM", choices=("SGD", "ADAM", "ADAMW", "RMSprop"),
            roles=TRAINING | RESUME)
    add(g, "--momentum", type=_finite_float, default=0.9, help="SGD momentum", roles=TRAINING | RESUME)
    add(g, "--betas", default=(0.9, 0.999), type=_betas, help="Adam betas, B1,B2", roles=TRAINING | RESUME)
    add(g, "--epsilon", type=_finite_float, default=1e-8, help="Adam epsilon", roles=TRAINING | RESUME)
    add(g, "--weight_decay", type=_finite_float, default=0.0, roles=TRAINING | RESUME)
    add(g, "--gclip", type=_finite_float, default=0.0, help="gradient clipping (0: none)",
            roles=TRAINING)
    add(g, "--loss", default="1*L1", help="fixed to 1*L1",
            refused="--loss cannot be changed: IPT trains with 1*L1")
    add(g, "--skip_threshold", type=_finite_float, default=1e8,
            help="skip a batch whose loss is this many times the running mean", roles=TRAINING)
    add(g, "--max_steps", type=int, default=0, help="training steps (0: --epochs worth)",
            roles=TRAINING)
    add(g, "--schedule", default="step", choices=("step", "cosine", "cyclic_cosine"),
            help="step: x --gamma at each --decay milestone; cosine: --warmup_steps then "
                 "cosine; cyclic_cosine: one cosine from --lr to each --eta_mins per --periods",
            roles=TRAINING | RESUME)
    add(g, "--warmup_steps", type=int, default=0, help="linear warm-up for --schedule cosine",
            roles=TRAINING | RESUME)
    add(g, "--periods", default=None, help="steps of each cycle of cyclic_cosine, A+B",
            roles=TRAINING | RESUME)
    add(g, "--eta_mins", default=None, help="learning rate at the end of each cycle, A+B",
            roles=TRAINING | RESUME)
    add(g, "--con_loss", action="store_true", help="add the contrastive loss on the tokens",
            roles=TRAINING | IPT | RESUME)
    add(g, "--con_weight", type=_finite_float, default=0.1, help="weight of the contrastive loss",
            roles=TRAINING | IPT)
    add(g, "--mask_ratio", type=_finite_float, default=0.5,
            help="masked image modelling (a mim head): the fraction of the body's tokens masked "
                 "at random per sample", roles=TRAINING | IPT | RESUME)
    add(g, "--init_from", default="",
            help="fine-tuning: start the head, tail and query from this head of the --pretrain "
                 "file (e.g. mim) instead of the task's own; 'none' keeps them random",
            roles=TRAINING | IPT)
    add(g, "--save_every", type=int, default=1000, help="write the training state every N steps",
            roles=TRAINING)
    add(g, "--max_nonfinite", type=int, default=20,
            help="stop after this many non-finite losses in a row", roles=TRAINING)
    add(g, "--amp", default="none", choices=("none", "bf16", "fp16"),
            help="mixed precision for training (bf16: CUDA or CPU; fp16: CUDA)", roles=TRAINING)
    add(g, "--compile", action="store_true", help="torch.compile the model", roles=TRAINING)
    add(g, "--gpu_degrade", action="store_true",
            help="make SR (bicubic) and noisy inputs on the training device, a batch at a "
                 "time, instead of in the loader workers (rain stays in the loader)",
            roles=TRAINING)
    add(g, "--streaks_dir", default="",
            help="real rain-streak layers for derain pre-training (default: procedural)",
            roles=TRAINING | RESUME)

    g = p.add_argument_group("logging and checkpoints")
    add(g, "--save", default="./experiment/ipt", help="run directory (logs, results, models)")
    add(g, "--load", default="", help="refused: use --save DIR --resume",
            refused="--load is not supported: use --save DIR --resume, or --pretrain FILE")
    add(g, "--resume", type=int, nargs="?", const=-1, default=0,
            help="bare (or -1): continue training from DIR/state.pt, or with --test_only "
                 "evaluate DIR/model/model_latest.pt; N (--test_only): DIR/model/model_N.pt")
    add(g, "--save_models", action="store_true",
            help="also keep model/model_<step>.pt at every --save_every step", roles=TRAINING)
    add(g, "--save_format", default="pt", choices=SAVE_FORMATS,
            help="the trained weights' files (model/model_latest, _best, _<step>): pt (a torch "
                 "file), safetensors (holds no code; read by spandrel, chaiNNer, ComfyUI) or "
                 "both; state.pt is always a torch file", roles=TRAINING)
    add(g, "--print_every", type=int, default=100, help="log every N steps", roles=TRAINING)
    add(g, "--save_results", action="store_true", help="write the restored images")
    add(g, "--save_gt", action="store_true", help="also write the inputs (and targets)")

    g = p.add_argument_group("Huawei ModelArts (refused)")
    add(g, "--moxfile", type=int, default=1,
            refused="--moxfile is for Huawei ModelArts: use --dir_data and --save with local paths")
    add(g, "--data_url", default=None,
            refused="--data_url is for Huawei ModelArts: use --dir_data PATH")
    add(g, "--train_url", default=None,
            refused="--train_url is for Huawei ModelArts: use --save PATH")
    add(g, "--load_query", type=int, default=0,
            refused="--load_query is not supported: "
                    "pick a head and its query with --task or --task_id")
    return p


def _bool(text: str) -> bool:
    """argparse type: True/False (also 1/0, yes/no)."""
    if str(text).lower() in ("true", "1", "yes"):
        return True
    if str(text).lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected True or False, got {text!r}")


def _finite_float(text: str) -> float:
    """argparse type of every float option: a number that is neither infinite nor NaN."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def _betas(text: object) -> tuple[float, float]:
    """argparse type: Adam's B1,B2, each in [0, 1) as torch's optimisers require."""
    values = text if isinstance(text, (list, tuple)) else re.split(r"[,+ ]+", str(text).strip("()[] "))
    try:
        b1, b2 = (_finite_float(str(v)) for v in values)
    except (ValueError, argparse.ArgumentTypeError):
        message = f"expected two finite numbers like 0.9,0.999, got {text!r}"
        raise argparse.ArgumentTypeError(message) from None
    if not (0 <= b1 < 1 and 0 <= b2 < 1):
        raise argparse.ArgumentTypeError(f"each beta must be in [0, 1), got {text!r}")
    return b1, b2


def asks_for_help(argv: list[str]) -> bool:
    """Whether argv asks for the help text (-h or --help, before any -- separator)."""
    options = argv[:argv.index("--")] if "--" in argv else argv
    return any(a in ("-h", "--help") for a in options)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse and validate the options (from argv, or sys.argv when None)."""
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    config = _config_path(argv)
    from_config = {} if config is None else _read_config(config, parser)
    parser.set_defaults(**from_config)
    args = parser.parse_args(argv)
    args.command_line = _given_on_command_line(argv)
    try:
        _take_recorded_architecture(args, set(args.command_line) | set(from_config))
        _finish(args)
    except ValueError as e:
        taken = getattr(args, "architecture_from", None)
        where = (f" (model options taken from {args.architecture_source}: {' '.join(taken)}; fix "
                 f"or delete that record, or give them on the command line)") if taken else ""
        parser.error(str(e) + where)
    return args


def _given_on_command_line(argv: list[str]) -> list[str]:
    """The destinations of the options argv gives (abbreviated or not), config file aside."""
    probe = build_parser()
    for action in probe._actions:
        action.default = argparse.SUPPRESS  # an option left out leaves no attribute
    return sorted(vars(probe.parse_args(argv)))


def _take_recorded_architecture(args: argparse.Namespace, given: set[str]) -> None:
    """The model options of --pretrain's run (its training.json, or a .safetensors file's
    metadata: ``pretrain_record``), where the user gave none.

    Only the options that shape the network (``architecture_keys``) may come from a record; any
    other key is ignored (listed in args.architecture_ignored for a warning), and each value is
    checked with its option's type. --scale, --tasks and --num_queries are taken together or not
    at all; --task/--task_id pick among them. An option of RECORD_BOUND given with another value
    than the record's is refused (``record_contradiction``): the command line wins elsewhere.
    Sets args.architecture_from (the options taken, for the log), args.architecture_source (the
    record's file) and args.pretrain_tasks (the checkpoint's head names, or None when unknown).
    """
    args.architecture_from, args.architecture_ignored, args.pretrain_tasks = [], [], None
    if not args.pretrain:
        return
    from utility import RecordError
    try:
        record, source = pretrain_record(args.pretrain)
    except RecordError as e:
        raise ValueError(f"--pretrain {args.pretrain}: {e}") from None
    if record is None:
        return
    args.architecture_source = source
    recorded, args.architecture_ignored = recorded_architecture(record["architecture"], source)
    bound = {dest: getattr(args, dest) for dest in given & set(RECORD_BOUND)}
    contradiction = record_contradiction(recorded, bound, source)
    if contradiction:
        raise ValueError(contradiction)
    if "tasks" in recorded:
        args.pretrain_tasks = _split(recorded["tasks"])
    heads_given = bool(given & set(HEAD_COUNT_OPTIONS))
    for dest, value in recorded.items():
        if dest in given or (dest in HEAD_COUNT_OPTIONS and heads_given):
            continue
        if getattr(args, dest) != value:
            setattr(args, dest, value)
            args.architecture_from.append(f"--{dest} {value}")


def pretrain_record(path: str) -> tuple[dict | None, str]:
    """(the record of the options that built a checkpoint's model, the file it is in): a
    .safetensors file's ``ipt_architecture`` metadata, else the training.json beside the file;
    (None, "") without one. Either is checked by the same rules (records.TRAINING,
    then ``recorded_architecture``); a damaged one is a RecordError naming it. A .safetensors
    file whose header is damaged has no record here: loading it says what is wrong."""
    import json

    from model.checkpoint import (
        ARCHITECTURE_METADATA,
        CheckpointError,
        is_safetensors,
        read_safetensors_metadata,
    )
    from records import TRAINING, problem, read_training_record
    from utility import TRAINING_RECORD, RecordError
    if is_safetensors(path):
        try:
            metadata = read_safetensors_metadata(path)
        except CheckpointError:
            return None, ""
        if ARCHITECTURE_METADATA in metadata:
            source = f"{path} (its {ARCHITECTURE_METADATA} metadata)"
            try:
                architecture = json.loads(metadata[ARCHITECTURE_METADATA])
            except (ValueError, RecursionError):
                architecture = None
            record = {"architecture": architecture}
            problem = "not a JSON object" if not isinstance(architecture, dict) else \
                problem(record, TRAINING)
            if problem:
                raise RecordError(f"{source}: {problem}; export the file again from a checkpoint "
                                  f"with a sound {TRAINING_RECORD}, or give the model options on "
                                  f"the command line")
            return record, source
    record = read_training_record(path, strict=True)
    if record is None:
        return None, ""
    return record, os.path.join(os.path.dirname(os.path.abspath(path)), TRAINING_RECORD)


@functools.lru_cache(maxsize=1)
def architecture_keys() -> frozenset[str]:
    """The keys a training record's ``architecture`` may set: what ``architecture_record`` writes
    (the options that change the weights' keys or shapes, and --num_heads), nothing else."""
    from model.ipt import IPTConfig
    from model.restormer import RestormerConfig
    fields = {f.name for config in (IPTConfig, RestormerConfig) for f in dataclasses.fields(config)}
    dests = {"tasks" if name == "task_names" else name for name in fields}
    return frozenset({"model"} | {d for d in dests if d in option_table()
                                  and d not in refused_options() and d not in NOT_ARCHITECTURE})


def recorded_architecture(recorded: dict, source: str) -> tuple[dict, list[str]]:
    """(the options a record's ``architecture`` gives, checked with their types; the keys it may
    not set, ignored). ValueError, naming the file and the key, for a value of the wrong type."""
    table, allowed = option_table(), architecture_keys()
    taken, ignored = {}, []
    for key, value in recorded.items():
        if key not in allowed:
            ignored.append(key)
            continue
        try:
            taken[key] = _record_value(table[key], value)
        except (ValueError, argparse.ArgumentTypeError) as e:
            raise ValueError(f"{source}: architecture key {key!r} {e}; fix the record, or delete it "
                             f"and give the model options on the command line") from None
    return taken, ignored


def record_contradiction(recorded: dict, given: dict, source: str) -> str:
    """Why options ``given`` (command line or --config) contradict the record of the same weights
    in an option of RECORD_BOUND ('' when they do not): the first such option, both values."""
    for dest in RECORD_BOUND:
        if dest in recorded and dest in given and given[dest] != recorded[dest]:
            return (f"--{dest} {given[dest]} contradicts {source}, which records {dest} "
                    f"{recorded[dest]} for these weights (they keep no trace of it: another value "
                    f"loads them without an error and restores wrongly): leave --{dest} out or "
                    f"give {recorded[dest]}")
    return ""


def _record_value(action: argparse.Action, value: object) -> object:
    """A JSON value of a record, checked against its option: an int option takes an int (not
    16.0, "16" or true), a float option a finite number, a switch a boolean, text a string (a
    list option also a list of its items)."""
    if isinstance(value, list) and action.dest in LIST_SEPARATORS and value:
        if not all(isinstance(v, (int, str)) and not isinstance(v, bool) for v in value):
            raise ValueError(f"takes a list of numbers or names, not {_short(value)}")
        return _record_value(action, LIST_SEPARATORS[action.dest].join(map(str, value)))
    if action.nargs == 0 and isinstance(action.const, bool):
        ok = isinstance(value, bool)
    elif action.type is int:
        ok = isinstance(value, int) and not isinstance(value, bool)
    elif action.type is _finite_float:
        ok = isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
    else:
        ok = isinstance(value, str)
    if not ok:
        kind = {int: "an integer", _finite_float: "a finite number"}.get(action.type, "text")
        kind = "true or false" if action.nargs == 0 else kind
        raise ValueError(f"takes {kind}, not {_short(value)}")
    if action.choices is not None and value not in action.choices:
        raise ValueError(f"is {_short(value)}, not one of {', '.join(map(str, action.choices))}")
    return value


REPR_LIMIT = 60  # characters of a bad value quoted in an error message


def _short(value: object) -> str:
    """repr of a value for a message, cut to REPR_LIMIT characters (a huge YAML alias expansion
    or record value must not build megabytes of text)."""
    import reprlib
    short = reprlib.Repr()
    short.maxstring = short.maxother = short.maxlong = REPR_LIMIT
    short.maxlist = short.maxdict = short.maxtuple = 6
    short.maxlevel = 3
    return short.repr(value)


def architecture_record(model_name: str, config: object) -> dict:
    """The options that build ``config``'s network, as training.json keeps them."""
    record = {"model": model_name}
    for name, value in dataclasses.asdict(config).items():
        dest = "tasks" if name == "task_names" else name
        if dest in option_table() and dest not in refused_options() and dest not in NOT_ARCHITECTURE:
            record[dest] = "+".join(map(str, value)) if dest in HEAD_OPTIONS else value
    return record


def _config_path(argv: list[str]) -> str | None:
    """The --config FILE of argv (None: not given), read before the other options."""
    pre = OptionParser(prog="main.py", add_help=False)
    pre.add_argument("--config", default=None)
    return pre.parse_known_args(argv)[0].config


class DuplicateKeyError(yaml.YAMLError):
    """A YAML mapping that gives one key twice."""


class _ConfigLoader(yaml.SafeLoader):
    """PyYAML's SafeLoader, except that a key given twice is an error (safe_load keeps the last)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict:
        """The mapping of node, once every key is known to differ from the ones before it."""
        keys: list = []
        for key_node, _ in node.value:
            if key_node.tag == YAML_MERGE_TAG:
                continue
            key = self.construct_object(key_node, deep=deep)
            if key in keys:
                line = key_node.start_mark.line + 1
                raise DuplicateKeyError(f"{key}: given twice (again on line {line}); give each option once")
            keys.append(key)
        return super().construct_mapping(node, deep=deep)


CONFIG_MAX_BYTES = 1 << 20  # an options file is a few kB; anything larger is not one
CONFIG_MAX_DEPTH = 4  # the file's mapping, an option's list, its stages' lists: 3 levels used


def _read_config(path: str, parser: argparse.ArgumentParser) -> dict:
    """Options from a YAML mapping, each checked with its option's type and choices.

    Values are read as the command line would give them: a plain scalar is its text as written
    (``save: 10:30`` is the folder 10:30, not the sexagesimal 630; ``007`` stays 007), only
    true/false are booleans. Anchors and aliases are refused (an option file needs none, and
    nested aliases expand exponentially).
    """
    text = _config_text(path, parser)
    try:
        depth = 0  # the event stream is read without recursion; building the values recurses
        for event in yaml.parse(text, Loader=yaml.SafeLoader):
            if isinstance(event, yaml.AliasEvent):
                parser.error(f"--config {path}: YAML anchors and aliases (&name, *name) are not "
                             f"supported in an options file: write each value out")
            if isinstance(event, (yaml.CollectionStartEvent, yaml.CollectionEndEvent)):
                depth += 1 if isinstance(event, yaml.CollectionStartEvent) else -1
            if depth > CONFIG_MAX_DEPTH:
                parser.error(f"--config {path}: lists or mappings nested more than {CONFIG_MAX_DEPTH} "
                             f"deep (line {event.start_mark.line + 1}); an option's value nests "
                             f"at most {CONFIG_MAX_DEPTH - 1}")
        values = yaml.load(text, Loader=_ConfigLoader)  # a SafeLoader: no arbitrary objects
        node = yaml.compose(text, Loader=yaml.SafeLoader)
    except DuplicateKeyError as e:
        parser.error(f"--config {path}: {e}")
    except yaml.YAMLError as e:
        parser.error(f"--config {path}: not valid YAML ({str(e).splitlines()[0]})")
    if values is None:
        return {}
    if not isinstance(values, dict):
        parser.error(f"--config {path}: expected a mapping of option: value")
    written = {key.value: _as_written(value) for key, value in node.value
               if isinstance(key, yaml.ScalarNode)}
    actions = {a.dest: a for a in parser._actions if a.dest not in NOT_IN_CONFIG}
    for key, value in values.items():
        if key not in actions:
            parser.error(f"--config {path}: unknown option {_short(key)}")
        if (not isinstance(value, (bool, float)) and value is not None
                and written.get(str(key)) is not None):  # a YAML float (.inf, 1.5e-4) is a number
            value = written[str(key)]
        try:
            values[key] = _config_value(actions[key], value)
        except (ValueError, argparse.ArgumentTypeError) as e:
            parser.error(f"--config {path}: {key}: {e}")
    return values


def _config_text(path: str, parser: argparse.ArgumentParser) -> str:
    """The text of an options file: a regular file (a FIFO or device would hang the read) of at
    most CONFIG_MAX_BYTES, UTF-8."""
    import stat
    try:
        info = os.stat(path)
        if not stat.S_ISREG(info.st_mode):
            parser.error(f"--config {path}: not a regular file: give a YAML file")
        if info.st_size > CONFIG_MAX_BYTES:
            parser.error(f"--config {path}: {info.st_size} bytes, more than an options file "
                         f"holds ({CONFIG_MAX_BYTES}): give a YAML file of options")
        with open(path, encoding="utf-8") as f:
            return f.read(CONFIG_MAX_BYTES + 1)
    except OSError as e:
        parser.error(f"--config {path}: cannot read the file ({e.strerror})")
    except UnicodeDecodeError as e:
        parser.error(f"--config {path}: not UTF-8 text ({e.reason})")
    raise AssertionError("unreachable")  # parser.error exits


def _as_written(node: yaml.Node) -> object:
    """A YAML value as its text was written: a scalar's text, a list of them; None otherwise."""
    if isinstance(node, yaml.ScalarNode):
        return node.value
    if isinstance(node, yaml.SequenceNode) and all(isinstance(n, yaml.ScalarNode) for n in node.value):
        return [n.value for n in node.value]
    return None


def _config_value(action: argparse.Action, value: object) -> object:
    """A YAML value checked and converted as its command-line form would be (ValueError: why not)."""
    if value is None:
        raise ValueError("has no value: remove the key to keep the default")
    if (action.nargs == 0 and isinstance(action.const, bool)) or action.type is _bool:
        if not isinstance(value, bool):
            raise ValueError(f"takes true or false (unquoted), not {_short(value)}")
        return value
    if isinstance(value, list) and action.dest in LIST_SEPARATORS:
        if not value:
            raise ValueError("is an empty list: remove the key to keep the default")
        value = LIST_SEPARATORS[action.dest].join(_config_scalar(v) for v in value)
    text = _config_scalar(value)
    if action.type is int:
        if isinstance(value, float):
            raise ValueError(f"takes an integer, not {_short(value)}")
        try:
            converted = int(text)
        except ValueError:
            raise ValueError(f"takes an integer, not {_short(value)}") from None
    else:
        converted = text if action.type is None else action.type(text)
    if action.choices is not None and converted not in action.choices:
        raise ValueError(f"{_short(converted)} is not one of {', '.join(map(str, action.choices))}")
    return converted


def _config_scalar(value: object) -> str:
    """One YAML value as the command line would give it: a number or text."""
    if isinstance(value, bool):
        raise ValueError(f"takes a number or text, not the boolean {str(value).lower()}")
    if isinstance(value, (list, tuple)):
        raise ValueError(f"takes one value, not the list {_short(value)}")
    if isinstance(value, dict):
        raise ValueError(f"takes one value, not the mapping {_short(value)}")
    if not isinstance(value, (int, float, str)):
        raise ValueError(f"takes a number or text, not {_short(value)}")
    return str(value)


def _finish(args: argparse.Namespace) -> None:
    """Normalise list options, resolve the tasks and refuse what cannot work (ValueError)."""
    for dest, (default, message) in refused_options().items():
        if getattr(args, dest) != default:
            raise ValueError(message.format(value=getattr(args, dest)))
    for dest in PATH_OPTIONS:  # "~/runs" from a config file (or --save=~/runs) as a shell would
        if getattr(args, dest):
            setattr(args, dest, os.path.expanduser(getattr(args, dest)))
    if not 0 <= args.seed <= MAX_SEED:
        raise ValueError(f"--seed {args.seed}: give an integer from 0 to {MAX_SEED} (2^63 - 1)")
    args.data_train = _split(args.data_train)
    args.scale_given = args.scale is not None
    args.scale = _scales(DEFAULT_SCALE if args.scale is None else args.scale)
    _check_sigma(args)
    _resolve_tasks(args)
    _check_architecture(args)
    if args.data_test is None:  # the authors' default; their derain command relies on Rain100L
        only_derain = args.task_names == ["derain"] or args.task == "derain"
        args.data_test = "Rain100L" if only_derain else "DIV2K"
    args.data_test = _split(args.data_test)
    from data.benchmark import ALL_SETS, DEMO, BenchmarkError, canonical_test_set
    try:  # an alias (CSet14, set14) is evaluated, and written, as its set (Set14)
        canonical = [canonical_test_set(d) for d in args.data_test]
    except BenchmarkError as e:
        raise ValueError(str(e)) from None
    unknown = [d for d, c in zip(args.data_test, canonical, strict=False) if c is None]
    if unknown:
        raise ValueError(f"--data_test {'+'.join(unknown)}: unknown test set; known: "
                         f"{', '.join(ALL_SETS)}, {DEMO} (or an alias such as CSet14; any case)")
    again = next((i for i, c in enumerate(canonical) if c in canonical[:i]), None)
    if again is not None:
        first = args.data_test[canonical.index(canonical[again])]
        raise ValueError(f"--data_test {'+'.join(args.data_test)}: {first} and "
                         f"{args.data_test[again]} are both {canonical[again]}; give each set once")
    args.data_test = canonical
    _check_numbers(args)
    _check_device(args)
    _check_memory(args)
    _check_run(args)
    _check_training_data(args)
    _check_schedule(args)
    args.decay_milestones = _milestones(args.decay)
    args.train_range, args.test_range = _data_range(args.data_range)
    if args.epochs == 0:
        args.epochs = None  # the authors' 0: no limit


def _split(value: object) -> list[str]:
    items = value if isinstance(value, (list, tuple)) else str(value).split("+")
    return [str(v).strip() for v in items if str(v).strip()]


def _scales(value: object) -> list[int]:
    items = value if isinstance(value, (list, tuple)) else str(value).split("+")
    try:
        scales = [int(v) for v in items]
    except ValueError:
        raise ValueError(f"--scale {value!r}: expected integers joined by +, like 2+3+4+1+1+1") from None
    bad = [s for s in scales if s not in SUPPORTED_SCALES]
    if not scales or bad:
        raise ValueError(f"--scale {value!r}: each scale must be one of {SUPPORTED_SCALES}")
    return scales


def _resolve_tasks(args: argparse.Namespace) -> None:
    """Set args.scale, args.task_names and args.task_id from --scale/--tasks/--task/--task_id."""
    if args.denoise and args.derain:
        raise ValueError("--denoise and --derain name the same scale-1 head: give one of them")
    flag_task = f"denoise{args.sigma:g}" if args.denoise else ("derain" if args.derain else None)
    if args.tasks:
        names = _split(args.tasks)
        implied = [task_scale(n) for n in names]
        if args.scale_given and args.scale != implied:
            raise ValueError(f"--tasks {args.tasks} needs --scale {'+'.join(map(str, implied))}, "
                             f"not {'+'.join(map(str, args.scale))}")
        args.scale = implied
    elif len(args.scale) == 1 and (args.task or flag_task):
        names = [args.task or flag_task]
        if not args.scale_given:
            args.scale = [task_scale(names[0])]
        if task_scale(names[0]) != args.scale[0]:
            given = f"--task {args.task}" if args.task else ("--derain" if args.derain else "--denoise")
            raise ValueError(f"{given} needs --scale {task_scale(names[0])}, not --scale {args.scale[0]}")
    else:
        try:
            names = default_task_names(args.scale)
        except ValueError as e:
            raise ValueError(f"--scale {'+'.join(map(str, args.scale))}: {e}") from None
    for n in names:
        if not TASK_NAME.match(n):
            raise ValueError(f"task name {n!r} is not one of sr<s>, derain, denoise<sigma>, mim")
    if len(set(names)) != len(names):
        raise ValueError(f"task names must differ, got {'+'.join(names)}")
    if flag_task:
        _check_flag_task(args, flag_task, names)
    if flag_task and args.task is None and len(names) > 1:
        args.task = flag_task  # the authors' flags pick that head of a multi-head model
    args.task_names = names
    args.task_id = _task_index(args, names)


def _check_sigma(args: argparse.Namespace) -> None:
    """--sigma is positive and, with --denoise, prints as the number in the head's name."""
    if args.sigma <= 0:
        raise ValueError(f"--sigma must be positive, got {args.sigma}")
    printed = f"{args.sigma:g}"
    if args.denoise and not (SIGMA_IN_NAME.match(printed) and float(printed) == args.sigma):
        raise ValueError(f"--sigma {args.sigma}: names no head denoise<sigma> exactly (it prints as "
                         f"{printed}): give a plain decimal like 30 or 12.5")


def _check_flag_task(args: argparse.Namespace, flag_task: str, names: list[str]) -> None:
    """--denoise (with --sigma) or --derain names one of the heads, the one --task/--task_id pick."""
    given = "--derain" if args.derain else f"--denoise --sigma {args.sigma:g}"
    if flag_task not in names:
        raise ValueError(f"{given}: the model has no head {flag_task}; the heads are {'+'.join(names)}")
    if args.task is not None and args.task != flag_task:
        raise ValueError(f"{given} picks the head {flag_task}, not --task {args.task}: give one of them")
    if args.task_id is not None and names.index(flag_task) != args.task_id:
        raise ValueError(f"{given} picks head {names.index(flag_task)} ({flag_task}), "
                         f"not --task_id {args.task_id}: give one of them")


def _task_index(args: argparse.Namespace, names: list[str]) -> int | None:
    index = None
    if args.task is not None:
        if args.task not in names:
            raise ValueError(f"--task {args.task} names no head; the heads are {'+'.join(names)}")
        index = names.index(args.task)
    if args.task_id is not None:
        if not 0 <= args.task_id < len(names):
            raise ValueError(f"--task_id {args.task_id} is out of range: the model has "
                             f"{len(names)} head(s) ({'+'.join(names)})")
        if index is not None and index != args.task_id:
            raise ValueError(f"--task {args.task} is head {index}, not --task_id {args.task_id}")
        index = args.task_id
    if index is None and len(names) == 1:
        index = 0
    return index


def _check_architecture(args: argparse.Namespace) -> None:
    """Refuse the other architecture's options; fill in and check this one's."""
    if args.model == "ipt":
        given = [f"--{d}" for d in with_role(RESTORMER) if getattr(args, d) is not None]
        if given:
            raise ValueError(f"{' '.join(given)}: Restormer option(s); add --model restormer")
        if args.num_queries is None:
            args.num_queries = len(args.scale)
        elif args.num_queries < len(args.scale) and not args.no_mlp:
            raise ValueError(f"--num_queries {args.num_queries} is below the number of heads "
                             f"({len(args.scale)}, from --scale {'+'.join(map(str, args.scale))})")
        _check_ipt(args)
        return
    given = [f"--{d}" for d in with_role(IPT) if getattr(args, d) != option_table()[d].default]
    if given:
        raise ValueError(f"{' '.join(given)}: IPT option(s), not used by --model restormer")
    if args.scale != [1]:
        raise ValueError(f"--model restormer restores one scale-1 task, not {'+'.join(args.task_names)}: "
                         "give --task derain or --task denoise<sigma> (or --derain, --denoise --sigma S)")
    if args.chop == "official":
        raise ValueError("--chop official is IPT's forward_chop: Restormer runs whole (--chop auto) "
                         "or in overlapping tiles (--chop fast --tile_size N)")
    from model.restormer import LAYERNORM_TYPES, SIZE_MULTIPLE, RestormerConfig
    defaults = RestormerConfig()
    for dest in ("dim", "num_refinement_blocks", "ffn_expansion_factor", "bias", "layernorm_type"):
        if getattr(args, dest) is None:
            setattr(args, dest, getattr(defaults, dest))
    if args.layernorm_type not in LAYERNORM_TYPES:
        raise ValueError(f"--layernorm_type {args.layernorm_type}: one of {', '.join(LAYERNORM_TYPES)}")
    args.num_blocks = _ints("num_blocks", args.num_blocks, defaults.num_blocks, 4)
    args.heads = _ints("heads", args.heads, defaults.heads, 4)
    for level, h in enumerate(args.heads):
        if (args.dim * 2 ** level) % h:
            raise ValueError(f"--heads: {h} heads do not divide level {level + 1}'s width "
                             f"{args.dim * 2 ** level} (--dim {args.dim} x {2 ** level})")
    args.tile_size = RESTORMER_TILE if args.tile_size is None else args.tile_size
    if args.tile_size < SIZE_MULTIPLE or args.tile_size % SIZE_MULTIPLE:
        raise ValueError(f"--tile_size {args.tile_size}: must be a positive multiple of {SIZE_MULTIPLE}")
    for dest in ("dim", "num_refinement_blocks", "ffn_expansion_factor"):
        if getattr(args, dest) <= 0:
            raise ValueError(f"--{dest} must be positive, got {getattr(args, dest)}")
    _check_progressive(args)


def _ints(dest: str, value: object, default: list[int], length: int | None = None) -> list[int]:
    """A list option of positive integers joined by + (the default when not given)."""
    if value is None:
        return list(default)
    items = value if isinstance(value, (list, tuple)) else str(value).split("+")
    try:
        numbers = [int(v) for v in items]
    except ValueError:
        raise ValueError(f"--{dest} {value!r}: expected integers joined by +") from None
    if (length is not None and len(numbers) != length) or not numbers or min(numbers) < 1:
        count = f"{length} " if length else ""
        raise ValueError(f"--{dest} {value!r}: expected {count}positive integers joined by +")
    return numbers


def _check_progressive(args: argparse.Namespace) -> None:
    """Progressive training: one patch size, batch size and step count per stage."""
    stages = (args.progressive_patches, args.progressive_batches, args.progressive_steps)
    if all(v is None for v in stages):
        return
    if any(v is None for v in stages):
        raise ValueError("progressive training needs all of --progressive_patches, "
                         "--progressive_batches and --progressive_steps")
    patches = _ints("progressive_patches", args.progressive_patches, [])
    batches = _ints("progressive_batches", args.progressive_batches, [], len(patches))
    steps = _ints("progressive_steps", args.progressive_steps, [], len(patches))
    if max(patches) != args.patch_size or max(batches) != args.batch_size:
        raise ValueError(f"progressive training crops each batch from --patch_size x --batch_size: "
                         f"give --patch_size {max(patches)} --batch_size {max(batches)}")
    args.progressive_patches, args.progressive_batches, args.progressive_steps = patches, batches, steps


def _check_schedule(args: argparse.Namespace) -> None:
    """--periods and --eta_mins belong to --schedule cyclic_cosine, one entry per cycle."""
    if args.schedule != "cyclic_cosine":
        if args.periods is not None or args.eta_mins is not None:
            raise ValueError("--periods and --eta_mins need --schedule cyclic_cosine")
        return
    if args.periods is None or args.eta_mins is None:
        raise ValueError("--schedule cyclic_cosine needs --periods A+B and --eta_mins A+B")
    args.periods = _ints("periods", args.periods, [])
    try:
        items = args.eta_mins if isinstance(args.eta_mins, (list, tuple)) else str(args.eta_mins).split("+")
        args.eta_mins = [_finite_float(str(v)) for v in items]
    except argparse.ArgumentTypeError:
        raise ValueError(f"--eta_mins {args.eta_mins!r}: expected finite numbers joined by +") from None
    if len(args.eta_mins) != len(args.periods) or min(args.eta_mins) < 0:
        raise ValueError(f"--eta_mins: one non-negative learning rate per --periods entry "
                         f"({len(args.periods)})")


def _check_ipt(args: argparse.Namespace) -> None:
    for dest in ("n_feats", "patch_dim", "num_heads", "num_layers", "patch_size"):
        if getattr(args, dest) < 1:
            raise ValueError(f"--{dest} must be at least 1, got {getattr(args, dest)}")
    if args.patch_size % args.patch_dim:
        raise ValueError(f"--patch_size {args.patch_size} is not divisible by --patch_dim {args.patch_dim}")
    if (args.n_feats * args.patch_dim ** 2) % args.num_heads:
        raise ValueError(f"--num_heads {args.num_heads} does not divide the token width "
                         f"n_feats * patch_dim^2 = {args.n_feats * args.patch_dim ** 2}")
    if args.pos_every and args.no_pos:
        raise ValueError("--pos_every needs a position embedding: drop --no_pos")
    if args.chop == "whole":  # the model's own ValueError came as a traceback from evaluation
        raise ValueError(f"--chop whole gives IPT each image at once, but its body takes only "
                         f"--patch_size x --patch_size ({args.patch_size}x{args.patch_size}) inputs: "
                         f"use --chop official (the authors' tiling), fast or auto")
    if not 0 <= args.dropout_rate < 1:
        raise ValueError(f"--dropout_rate must be in [0, 1), got {args.dropout_rate}")
    if not 0 < args.mask_ratio < 1:
        raise ValueError(f"--mask_ratio must be between 0 and 1 (exclusive), got {args.mask_ratio}")
    if args.init_from:
        one_head = args.task_id is not None or len(args.task_names) == 1
        if args.test_only or not args.pretrain or not one_head:
            raise ValueError(f"--init_from {args.init_from}: starts the head being fine-tuned "
                             f"from a head of --pretrain's file; it needs --pretrain and one "
                             f"trained head (--task), without --test_only")
        if args.init_from != "none" and not TASK_NAME.match(args.init_from):
            raise ValueError(f"--init_from {args.init_from}: give a head name of --pretrain's "
                             f"file (like mim) or none")


def _check_numbers(args: argparse.Namespace) -> None:
    positive = ("patch_size", "crop_batch_size", "rgb_range", "batch_size", "test_every",
                "print_every", "save_every")
    for dest in positive:
        if getattr(args, dest) < 1:
            raise ValueError(f"--{dest} must be at least 1, got {getattr(args, dest)}")
    for dest in ("n_threads", "threads", "lr", "gclip", "weight_decay", "epochs", "max_steps", "warmup_steps",
                 "con_weight", "max_nonfinite", "momentum", "epsilon"):
        if getattr(args, dest) < 0:
            raise ValueError(f"--{dest} must not be negative, got {getattr(args, dest)}")
    for dest in ("gamma", "skip_threshold"):
        if getattr(args, dest) <= 0:
            raise ValueError(f"--{dest} must be positive, got {getattr(args, dest)}")
    from utility import MAX_COUNT, MAX_LOADER_WORKERS  # the ceilings the records share
    ceilings = {"n_threads": MAX_LOADER_WORKERS, **dict.fromkeys(
        ("epochs", "max_steps", "warmup_steps", "test_every", "print_every", "save_every", "max_nonfinite"),
        MAX_COUNT)}
    for dest, most in ceilings.items():
        if getattr(args, dest) > most:
            raise ValueError(f"--{dest} {getattr(args, dest)}: at most {most}")


def _check_training_data(args: argparse.Namespace) -> None:
    """Training reads one known set, for a known number of steps."""
    if args.test_only:
        return
    if len(args.data_train) != 1:
        raise ValueError(f"--data_train {'+'.join(args.data_train)}: one training set at a time")
    from data.training import TRAINING_SETS
    if args.data_train[0] not in TRAINING_SETS:
        raise ValueError(f"--data_train {args.data_train[0]}: unknown; use {', '.join(TRAINING_SETS)}")
    if args.epochs == 0 and args.max_steps == 0:
        raise ValueError("--epochs 0 means no limit, and a streamed data set has no end: give "
                         "--max_steps")


def _check_device(args: argparse.Namespace) -> None:
    """--precision half and --amp fp16 run on CUDA only (--precision bf16 runs anywhere)."""
    import torch
    on_cuda = torch.cuda.is_available() and not args.cpu
    if args.precision == "half" and not on_cuda:
        raise ValueError("--precision half needs a CUDA device; on the CPU use --precision bf16 "
                         "or single")
    if args.amp == "fp16" and not on_cuda:
        raise ValueError("--amp fp16 needs a CUDA device; use --amp bf16 on the CPU")


FLOAT_BYTES = 4  # weights, activations and images in float32
# training keeps per weight: the weight, its gradient and Adam's two moments
TRAINING_COPIES = 4
GIB = 2 ** 30


def _check_memory(args: argparse.Namespace) -> None:
    """Refuse sizes that cannot fit before anything is allocated: a lower bound of the bytes the
    model (built on torch's meta device, which allocates nothing) and its first batch need,
    against the memory available (the CPU's, or the GPU's on CUDA). Names the options to lower."""
    weights, activations, batch_option = _memory_needed(args)
    available = _available_memory(args)
    if available is None or weights + activations <= available:
        return
    if weights >= activations:
        lower = "--patch_size, --n_feats or --num_layers" if args.model == "ipt" else "--dim or --num_blocks"
        what = f"the model alone needs {_gib(weights)} GiB"
    else:
        lower = f"{batch_option} or --patch_size"
        what = f"the first batch needs {_gib(activations)} GiB beside the model's {_gib(weights)} GiB"
    raise ValueError(f"{what}, at least, and {_gib(available)} GiB are available: lower {lower} "
                     f"(--patch_size {args.patch_size}, {batch_option} "
                     f"{getattr(args, batch_option[2:])})")


def _gib(size: int) -> str:
    """Bytes as GiB with one decimal; a power of ten past what a float holds (10^30 widths)."""
    gib = size // GIB
    return f"{size / GIB:.1f}" if gib < 10 ** 15 else f"10^{len(str(gib)) - 1}"


def _memory_needed(args: argparse.Namespace) -> tuple[int, int, str]:
    """(bytes of the weights, with gradients and Adam moments when training; a lower bound of the
    first batch's bytes; the option that sets that batch)."""
    from model import parameter_count  # worked out from the options: any size, nothing built
    params = parameter_count(_model_config(args, list(range(len(args.scale)))))
    weights = params * FLOAT_BYTES * (1 if args.test_only else TRAINING_COPIES)
    batch_option = "--crop_batch_size" if args.test_only else "--batch_size"
    batch = args.crop_batch_size if args.test_only else args.batch_size
    side = args.patch_size * max(args.scale)
    images = batch * 3 * (args.patch_size ** 2 + side ** 2) * FLOAT_BYTES  # input and output
    tokens = 0
    if args.model == "ipt":  # each of the body's layers holds (or, testing, passes on) its tokens
        count = (args.patch_size // args.patch_dim) ** 2
        width = args.n_feats * args.patch_dim ** 2
        layers = 1 if args.test_only else 2 * args.num_layers
        tokens = batch * count * width * FLOAT_BYTES * layers
    return weights, images + tokens, batch_option


def _available_memory(args: argparse.Namespace) -> int | None:
    """Bytes free where the model will run: the GPU of this process on CUDA, else the CPU."""
    import torch
    if torch.cuda.is_available() and not args.cpu:
        try:
            return torch.cuda.get_device_properties(int(os.environ.get("LOCAL_RANK", "0"))).total_memory
        except (RuntimeError, AssertionError, ValueError):  # no usable driver: not known here
            return None
    from utility import available_memory
    return available_memory()


def _check_run(args: argparse.Namespace) -> None:
    """--save names a run directory; --resume, --reset and --pretrain do not contradict each other."""
    if not str(args.save).strip():
        raise ValueError("--save: give a run directory")
    if args.resume < -1:
        raise ValueError(f"--resume {args.resume}: give a bare --resume, or N >= 1 with --test_only")
    if args.resume > 0 and not args.test_only:
        raise ValueError(f"--resume {args.resume} picks model/model_{args.resume}.pt for --test_only; "
                         "training always continues from the run directory's state.pt: give a bare "
                         "--resume")
    if args.resume and args.reset:
        raise ValueError("--reset starts the run directory afresh, --resume continues it: "
                         "give one of them")
    if args.resume and args.pretrain:
        raise ValueError("--pretrain FILE and --resume both name the weights to start from: "
                         "give one of them")
    if args.auto_resume and (args.reset or args.resume or args.test_only):
        given = "--reset" if args.reset else "--resume" if args.resume else "--test_only"
        raise ValueError(f"--auto_resume continues a training run when it can and starts it "
                         f"otherwise: {given} contradicts it, give one of them")
    if not 1 <= args.dist_timeout <= MAX_DIST_TIMEOUT:
        raise ValueError(f"--dist_timeout {args.dist_timeout}: give 1 to {MAX_DIST_TIMEOUT} seconds "
                         f"(a week)")


def _data_range(text: str) -> tuple[tuple[int, int], tuple[int, int]]:
    """--data_range 'a-b/c-d': the DIV2K image numbers for training and for testing."""
    try:
        train, test = (tuple(int(v) for v in part.split("-")) for part in str(text).split("/"))
        if len(train) != 2 or len(test) != 2:
            raise ValueError
    except ValueError:
        raise ValueError(f"--data_range {text!r}: expected FIRST-LAST/FIRST-LAST, like "
                         f"1-800/801-810") from None
    for first, last in (train, test):
        if not 1 <= first <= last:
            raise ValueError(f"--data_range {text!r}: {first}-{last} is no range of image numbers "
                             f"(from 1, FIRST <= LAST), like 1-800/801-810")
    return train, test


def _milestones(decay: str) -> list[int]:
    """--decay 'a-b': step-decay milestones in epochs, positive and increasing."""
    parts = str(decay).split("-")
    if not all(p.strip().isdigit() for p in parts):
        raise ValueError(f"--decay {decay!r}: expected positive epochs joined by -, like 200-400")
    milestones = [int(p) for p in parts]
    if min(milestones) < 1 or milestones != sorted(set(milestones)):
        raise ValueError(f"--decay {decay!r}: expected positive, increasing epochs, like 200-400")
    return milestones


def training_options_given(args: argparse.Namespace) -> list[str]:
    """Training-only options given on the command line (reported under --test_only); a config
    file's are not: one file serves training and evaluation."""
    return [f"--{dest}" for dest in with_role(TRAINING) if dest in args.command_line]


def resume_conflicts(saved: dict, args: argparse.Namespace) -> list[str]:
    """The options that differ from a saved run's and would change its model or data."""
    current = vars(args)
    return [f"--{k} (saved {saved.get(k)!r}, now {_plain(current.get(k))!r})"
            for k in (*with_role(RESUME), *RESUME_DERIVED) if _plain(current.get(k)) != saved.get(k)]


def _plain(value: object) -> object:
    return list(value) if isinstance(value, tuple) else value


# ----------------------------------------------------------------------------------------
# Typed settings: what each part of the program takes from the options
# ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class RunSettings:
    """The run itself (main.py): where it writes, what it loads, on which device."""

    save: str
    test_only: bool
    resume: int  # 0: no; -1: model_latest / the training state; N: model_N.pt (evaluation)
    pretrain: str
    reset: bool
    seed: int
    pretrain_tasks: list[str] | None  # the head names of --pretrain's file, when known
    threads: int  # CPU compute threads; 0: fit them to the usable cores
    init_from: str  # fine-tuning: the file's head to start the trained head from ('' its own)
    cpu: bool
    debug: bool
    precision: str  # single or half (inference)
    amp: str  # none, bf16 or fp16 (training)
    auto_resume: bool = False  # continue from state.pt when there is one
    dist_timeout: int = DIST_TIMEOUT  # seconds a collective waits for the other processes

    @property
    def checkpoint(self) -> str:
        """The file to load: --pretrain, or the run directory's model for the authors' --resume."""
        if self.pretrain:
            return self.pretrain
        if self.resume == -1:
            return trained_weights(os.path.join(self.save, "model"), "model_latest")
        if self.resume > 0:
            return trained_weights(os.path.join(self.save, "model"), f"model_{self.resume}")
        return ""


SAVE_FORMATS = ("pt", "safetensors", "both")
WEIGHT_SUFFIXES = (".pt", ".safetensors")  # the trained weights' files, preferred first


def weight_suffixes(save_format: str) -> tuple[str, ...]:
    """The suffixes of the weights files a run writes with --save_format."""
    return WEIGHT_SUFFIXES if save_format == "both" else ("." + save_format,)


def trained_weights(folder: str, stem: str) -> str:
    """folder/stem.pt, or folder/stem.safetensors when only that one exists."""
    paths = [os.path.join(folder, stem + suffix) for suffix in WEIGHT_SUFFIXES]
    return next((p for p in paths if os.path.exists(p)), paths[0])


@dataclass(frozen=True)
class DataSettings:
    """The training set (data/training.py): which one, cut how, read by how many workers."""

    name: str
    dir_data: str
    tasks: list[str]  # the heads of the model being trained
    task_id: int | None  # None: each batch draws its task (pre-training)
    batch_size: int
    patch_size: int
    seed: int
    augment: bool
    streaks_dir: str | None
    lr_in_loader: bool  # False (--gpu_degrade): SR and noisy inputs made on the training device
    train_range: tuple[int, int]  # DIV2K image numbers
    workers: int  # --n_threads, before the cap of data/training.loader_workers
    pin_memory: bool
    run_dir: str  # --save: where the training folder's file list is cached


@dataclass(frozen=True)
class TrainSettings:
    """The optimisation (trainer.py): optimiser, schedule, losses, checkpoints, validation."""

    save: str
    task_names: list[str]
    seed: int
    optimizer: str
    lr: float
    betas: tuple[float, float]
    epsilon: float
    momentum: float
    weight_decay: float
    schedule: str  # step, cosine or cyclic_cosine
    decay_epochs: list[int]  # step-decay milestones, in epochs
    gamma: float
    warmup_steps: int
    periods: list[int]
    eta_mins: list[float]
    gclip: float
    skip_threshold: float
    max_nonfinite: int
    amp: str
    con_loss: bool
    con_weight: float
    mask_ratio: float  # the fraction of tokens a mim batch masks
    print_every: int
    save_every: int
    test_every: int
    save_models: bool
    weight_suffixes: tuple[str, ...]  # --save_format: the weights files' suffixes
    progressive: list[tuple[int, int, int]]  # (patch, batch, steps) per stage; [] when off


@dataclass(frozen=True)
class InferenceSettings:
    """How whole images go through the network and are scored (evaluation.py)."""

    mode: str = "auto"  # --chop
    crop_batch_size: int = 64
    self_ensemble: bool = False
    rgb_range: float = 255
    tile_size: int | None = None  # fast tiles of a network that takes any size (Restormer)
    metric_channel: str = "y"  # what psnr/ssim are computed on: y (IPT) or rgb (Restormer, noise)
    precision: str = "single"  # --precision: single, half (fp16 weights) or bf16 (autocast)


@dataclass(frozen=True)
class EvalSettings:
    """What is evaluated and what is written (evaluation.py)."""

    data_test: list[str]
    dir_data: str
    dir_demo: str
    test_range: tuple[int, int]  # DIV2K image numbers
    clip_noise: bool  # denoising inputs clipped to [0, 255] (IPT) or not (Restormer)
    seed: int
    save: str
    save_results: bool
    save_gt: bool
    workers: int  # image reading processes
    task_id: int | None  # None: every head in turn
    model_name: str
    record: dict  # every option as plain values, for metrics.json


@dataclass(frozen=True)
class Settings:
    """Everything the options decide, one typed part per consumer."""

    run: RunSettings
    model: IPTConfig | RestormerConfig
    data: DataSettings
    train: TrainSettings
    inference: InferenceSettings
    evaluation: EvalSettings
    total_steps: int  # --max_steps, 0: --epochs worth (known once the data is)
    epochs: int | None
    compile: bool
    record: dict  # every option as plain values, for metrics.json and the training state


def settings(args: argparse.Namespace) -> Settings:
    """The typed settings of parsed options. Fine-tuning (training one head of several) gets a
    single-head model, as the authors' checkpoints are; its data and training follow."""
    fine_tune = not args.test_only and args.task_id is not None and len(args.scale) > 1
    heads = [args.task_id] if fine_tune else list(range(len(args.scale)))
    task_names = [args.task_names[i] for i in heads]
    task_id = 0 if fine_tune else args.task_id
    from utility import jsonable
    record = jsonable({k: v for k, v in vars(args).items() if k not in PARSE_NOTES})
    return Settings(
        run=RunSettings(args.save, args.test_only, args.resume, args.pretrain, args.reset, args.seed,
                        _pretrain_tasks(args), args.threads, args.init_from, args.cpu, args.debug,
                        args.precision, args.amp, args.auto_resume, args.dist_timeout),
        model=_model_config(args, heads),
        data=DataSettings(args.data_train[0], args.dir_data, task_names, task_id, args.batch_size,
                          args.patch_size, args.seed, not args.no_augment, args.streaks_dir or None,
                          not args.gpu_degrade, args.train_range, args.n_threads, not args.cpu,
                          args.save),
        train=TrainSettings(
            args.save, task_names, args.seed, args.optimizer, args.lr, args.betas, args.epsilon,
            args.momentum, args.weight_decay, args.schedule, args.decay_milestones, args.gamma,
            args.warmup_steps, args.periods or [], args.eta_mins or [], args.gclip,
            args.skip_threshold, args.max_nonfinite, args.amp, args.con_loss, args.con_weight,
            args.mask_ratio, args.print_every, args.save_every, args.test_every, args.save_models,
            weight_suffixes(args.save_format),
            list(zip(args.progressive_patches or [], args.progressive_batches or [],
                     args.progressive_steps or [], strict=False))),
        inference=InferenceSettings(args.chop, args.crop_batch_size, args.self_ensemble,
                                    args.rgb_range, args.tile_size, args.metric_channel,
                                    args.precision),
        evaluation=EvalSettings(args.data_test, args.dir_data, args.dir_demo, args.test_range,
                                args.test_noise == "clipped", args.seed, args.save,
                                args.save_results, args.save_gt, args.n_threads, task_id,
                                args.model, record),
        total_steps=args.max_steps, epochs=args.epochs, compile=args.compile,
        record=record)


def _pretrain_tasks(args: argparse.Namespace) -> list[str] | None:
    """The head names of --pretrain's file: its training record's, else the options' when they
    name several heads (a single-head model trained from a multi-head file)."""
    if args.pretrain_tasks:
        return args.pretrain_tasks
    return args.task_names if len(args.task_names) > 1 else None


def _model_config(args: argparse.Namespace, heads: list[int]) -> IPTConfig | RestormerConfig:
    """The network's config: the heads ``heads`` of the options' model."""
    from model.ipt import IPTConfig
    from model.restormer import RestormerConfig
    names = [args.task_names[i] for i in heads]
    if args.model == "restormer":
        return RestormerConfig(dim=args.dim, num_blocks=args.num_blocks,
                               num_refinement_blocks=args.num_refinement_blocks, heads=args.heads,
                               ffn_expansion_factor=args.ffn_expansion_factor, bias=args.bias,
                               layernorm_type=args.layernorm_type, rgb_range=args.rgb_range,
                               task_names=names)
    queries = len(heads) if len(heads) < len(args.scale) else args.num_queries
    return IPTConfig(scale=[args.scale[i] for i in heads], n_feats=args.n_feats,
                     rgb_range=args.rgb_range, patch_size=args.patch_size, patch_dim=args.patch_dim,
                     num_heads=args.num_heads, num_layers=args.num_layers, num_queries=queries,
                     dropout_rate=args.dropout_rate, no_mlp=args.no_mlp, pos_every=args.pos_every,
                     no_pos=args.no_pos, no_norm=args.no_norm, task_names=names,
                     attention=args.attention)
