"""The option table: every command-line option of main.py as data, grouped as the authors grouped them.

option.py builds the parser from it and checks the values; scripts/options_doc.py writes
docs/OPTIONS.md from it. The authors' names and defaults are kept; an option of theirs that this
project does not implement is declared ``refused`` with what to use instead.
"""
from __future__ import annotations

import argparse
import math
import re
from collections.abc import Callable
from dataclasses import dataclass


def boolean(text: str) -> bool:
    """argparse type: True/False (also 1/0, yes/no)."""
    if str(text).lower() in ("true", "1", "yes"):
        return True
    if str(text).lower() in ("false", "0", "no"):
        return False
    raise argparse.ArgumentTypeError(f"expected True or False, got {text!r}")


def finite_float(text: str) -> float:
    """argparse type of every float option: a number that is neither infinite nor NaN."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"expected a finite number, got {text!r}")
    return value


def betas(text: object) -> tuple[float, float]:
    """argparse type: Adam's B1,B2, each in [0, 1) as torch's optimisers require."""
    values = text if isinstance(text, (list, tuple)) else re.split(r"[,+ ]+", str(text).strip("()[] "))
    try:
        b1, b2 = (finite_float(str(v)) for v in values)
    except (ValueError, argparse.ArgumentTypeError):
        message = f"expected two finite numbers like 0.9,0.999, got {text!r}"
        raise argparse.ArgumentTypeError(message) from None
    if not (0 <= b1 < 1 and 0 <= b2 < 1):
        raise argparse.ArgumentTypeError(f"each beta must be in [0, 1), got {text!r}")
    return b1, b2


SWITCH = bool  # the type of an option that takes no value: given, it is on (store_true)
# What an option is for; the lists of option.py (with_role) derive from these.
TRAINING = frozenset({"training"})  # changes training only: reported when given with --test_only
IPT = frozenset({"ipt"})  # IPT's: refused with --model restormer unless at its default
RESTORMER = frozenset({"restormer"})  # Restormer's: refused with --model ipt
RESUME = frozenset({"resume"})  # shapes the model, the data or the schedule: a resumed run keeps it
TR = TRAINING | RESUME  # most training options: a resumed run keeps them

RESTORMER_TILE = 256  # default --tile_size of Restormer's fast tiling
DIST_TIMEOUT = 1800  # seconds: torch's own default for the process group, kept
# options whose command-line value joins several items: a YAML list is joined the same way
LIST_SEPARATORS = {**dict.fromkeys(("scale", "tasks", "data_test", "data_train", "num_blocks", "heads",
                                    "periods", "eta_mins", "progressive_patches",
                                    "progressive_batches", "progressive_steps"), "+"),
                   "decay": "-", "betas": ","}


@dataclass(frozen=True)
class Option:
    """One option: the authors' name (without the dashes), its default, how its value is read."""

    name: str
    default: object = None
    type: Callable[[str], object] | None = None  # None: text; SWITCH: takes no value
    help: str | None = None
    roles: frozenset[str] = frozenset()  # TRAINING, IPT, RESTORMER, RESUME: what it is for
    refused: str | None = None  # the line refusing any value but the default ({value}: the value)
    choices: tuple[str, ...] | None = None
    bare: int | None = None  # the value of the option given without one

    @property
    def what(self) -> str | None:
        """Its help: a refused option's is its refusal line, unless it has its own."""
        return self.help or self.refused


GROUPS: list[tuple[str | None, list[Option]]] = [
    (None, [  # argparse's own group
        Option("config", None, None, "YAML file of options; the command line wins"),
        Option("debug", False, SWITCH, "verbose (DEBUG) logging"),
        Option("template", ".", None,
               refused="--template is not supported: put options in a YAML file and pass --config FILE.yaml"),
    ]),
    ("hardware", [
        Option("n_threads", 6, int, "data loading workers"),
        Option("threads", 0, int, "CPU compute threads (0: the cores this process may use less the loader "
               "workers, which get at most a quarter of them; OMP_NUM_THREADS when set). On a shared or busy "
               "CPU, 1 is often fastest"),
        Option("cpu", False, SWITCH, "use the CPU even when CUDA is present"),
        Option("n_GPUs", 1, int, "refused above 1: use torchrun",
               refused="--n_GPUs is not supported: use torchrun --nproc_per_node {value} main.py ..."),
        Option("seed", 1, int, "random seed", RESUME),
    ]),
    ("data", [
        Option("dir_data", "./datasets", None, "root of the datasets", RESUME),
        Option("dir_demo", "../test", None, "folder of images for --data_test Demo"),
        Option("data_train", "DIV2K", None, "training set(s), A+B", TR),
        Option("data_test", None, None, "test set(s), A+B: Demo, Sample, Set5, Set14, B100, Urban100, "
               "Manga109, CBSD68, Rain100L, DIV2K (default DIV2K; Rain100L for a derain model)"),
        Option("data_range", "1-800/801-810", None, "DIV2K train/test index ranges", TR),
        Option("ext", "sep", None,
               refused="--ext is not needed: images are always read directly from their files"),
        Option("scale", None, None, "one scale per head, A+B (default 4)", RESUME),
        Option("patch_size", 48, int, "LR patch size the body takes", RESUME),
        Option("rgb_range", 255, int, "maximum pixel value", RESUME),
        Option("n_colors", 3, int, refused="--n_colors must be 3: IPT's mean shift and heads are RGB"),
        Option("no_augment", False, SWITCH, "no flips/transposes in training", TR),
    ]),
    ("model", [
        Option("model", "ipt", None, "architecture: ipt (the options below) or restormer (its group)",
               RESUME, choices=("ipt", "restormer")),
        Option("n_feats", 64, int, "feature maps", IPT | RESUME),
        Option("shift_mean", True, boolean,
               refused="--shift_mean cannot be changed: IPT always shifts by the RGB mean"),
        Option("precision", "single", None, "precision of every evaluation (--test_only and validation while "
               "training; --amp is training's): single (fp32), half (fp16 weights, CUDA only) or bf16 (the "
               "network's forward under autocast, fp32 weights; CUDA, or a CPU with avx512_bf16/amx_bf16); "
               "auto: bf16 where a short timed forward runs faster in it, else single",
               choices=("single", "half", "bf16", "auto")),
        Option("patch_dim", 3, int, "pixels per token side", IPT | RESUME),
        Option("num_heads", 12, int, "attention heads", IPT | RESUME),
        Option("num_layers", 12, int, "encoder and decoder layers", IPT | RESUME),
        Option("dropout_rate", 0.0, finite_float, None, IPT | RESUME),
        Option("no_norm", False, SWITCH, "Identity instead of LayerNorm", IPT | RESUME),
        Option("freeze_norm", False, SWITCH, refused="--freeze_norm is not part of the released IPT model"),
        Option("post_norm", False, SWITCH,
               refused="--post_norm is not part of the released IPT model (it is pre-norm)"),
        Option("no_mlp", False, SWITCH, "no linear_encoding, mlp_head or query_embed", IPT | RESUME),
        Option("pos_every", False, SWITCH, "add positions in every layer", IPT | RESUME),
        Option("no_pos", False, SWITCH, "no position embedding", IPT | RESUME),
        Option("num_queries", None, int, "task queries (default: heads)", IPT | RESUME),
        Option("attention", "auto", None, "math: the authors' arithmetic, bit for bit; sdpa: fused kernels; "
               "auto: sdpa on CUDA, math on the CPU", IPT, choices=("auto", "math", "sdpa")),
    ]),
    ("restormer (with --model restormer; defaults: the authors' models)", [
        Option("dim", None, int, "width of level 1 (48)", RESTORMER | RESUME),
        Option("num_blocks", None, None, "Transformer blocks per level, A+B+C+D (4+6+6+8)",
               RESTORMER | RESUME),
        Option("num_refinement_blocks", None, int, "refinement blocks (4)", RESTORMER | RESUME),
        Option("heads", None, None, "attention heads per level, A+B+C+D (1+2+4+8)", RESTORMER | RESUME),
        Option("ffn_expansion_factor", None, finite_float, "GDFN width factor (2.66)", RESTORMER | RESUME),
        Option("bias", None, SWITCH, "biases in the convolutions", RESTORMER | RESUME),
        Option("layernorm_type", None, None, "layer norm kind (WithBias)", RESTORMER | RESUME,
               choices=("WithBias", "BiasFree")),
        Option("tile_size", None, int, f"tile side for --chop fast, a multiple of 8 ({RESTORMER_TILE})",
               RESTORMER),
        Option("progressive_patches", None, None, "progressive training: patch size of each stage, A+B+... "
               "(largest = --patch_size)", TR | RESTORMER),
        Option("progressive_batches", None, None,
               "batch size of each stage, A+B+... (largest = --batch_size)", TR | RESTORMER),
        Option("progressive_steps", None, None, "steps of each stage, A+B+...", TR | RESTORMER),
    ]),
    ("tasks", [
        Option("tasks", None, None, "name every head, A+B (sr2, derain, denoise30, ...)"),
        Option("task", None, None, "run the head of this name"),
        Option("task_id", None, int, "run the head of this index"),
        Option("denoise", False, SWITCH, "the scale-1 head is denoise<sigma>"),
        Option("sigma", 30, finite_float, "noise level for --denoise"),
        Option("derain", False, SWITCH, "the scale-1 head is derain"),
        Option("derain_test", 1, int,
               refused="--derain_test is not supported: test deraining with --data_test Rain100L"),
        Option("deblur", False, SWITCH,
               refused="--deblur is not one of IPT's tasks (sr<s>, derain, denoise<sigma>)"),
        Option("deblur_test", 1, int,
               refused="--deblur_test is not supported: deblurring is not one of IPT's tasks"),
    ]),
    ("testing", [
        Option("test_only", False, SWITCH, "evaluate, do not train"),
        Option("pretrain", "", None, "checkpoint to load"),
        Option("self_ensemble", False, SWITCH, "x8 flips/transposes, averaged"),
        Option("crop_batch_size", 64, int, "tiles per network call"),
        Option("chop", "auto", None, "whole-image inference: auto (official for IPT, whole for Restormer), "
               "official (IPT authors' forward_chop), fast (few overlapping tiles), whole (one call)",
               choices=("auto", "official", "fast", "whole")),
        Option("test_noise", "clipped", None, "denoising test inputs: clipped to [0, 255] (IPT) or not "
               "(Restormer)", choices=("clipped", "unclipped")),
        Option("metric_channel", "y", None, "what psnr/ssim are computed on: the Y channel (IPT) or RGB "
               "(Restormer's colour denoising); both are always reported", choices=("y", "rgb")),
        Option("test_batch_size", 1, int,
               refused="--test_batch_size is fixed at 1: bound memory with --crop_batch_size"),
        Option("split_batch", 1, int,
               refused="--split_batch is not supported: bound memory with --crop_batch_size"),
    ]),
    ("training", [
        Option("reset", False, SWITCH, "start the run directory afresh", TRAINING),
        Option("auto_resume", False, SWITCH,
               "continue from the run directory's state.pt when there is one, else start afresh (for "
               "torchrun --max-restarts and requeued jobs; --pretrain only starts a fresh run)", TRAINING),
        Option("dist_timeout", DIST_TIMEOUT, int,
               f"torchrun: seconds a process waits for the others in a collective before it stops (a "
               f"rank that died or stalls); longer than a validation ({DIST_TIMEOUT})", TRAINING),
        Option("test_every", 1000, int, "validate every N steps", TRAINING),
        Option("epochs", 300, int, "epochs (0: no limit)", TRAINING),
        Option("batch_size", 16, int, "samples per process in a micro-batch", TR),
        Option("accumulate", 1, int, "micro-batches of --batch_size per optimiser step (gradient "
               "accumulation; the global batch is --batch_size x this x the processes)", TR),
        Option("gan_k", 1, int, refused="--gan_k is not supported: IPT has no adversarial loss"),
        Option("lr", 1e-4, finite_float, "learning rate", TR),
        Option("decay", "200", None, "step-decay milestones in epochs, A-B", TR),
        Option("gamma", 0.5, finite_float, "step-decay factor", TR),
        Option("optimizer", "ADAM", None, None, TR, choices=("SGD", "ADAM", "ADAMW", "RMSprop")),
        Option("momentum", 0.9, finite_float, "SGD momentum", TR),
        Option("betas", (0.9, 0.999), betas, "Adam betas, B1,B2", TR),
        Option("epsilon", 1e-8, finite_float, "Adam epsilon", TR),
        Option("weight_decay", 0.0, finite_float, None, TR),
        Option("gclip", 0.0, finite_float, "gradient clipping (0: none)", TRAINING),
        Option("loss", "1*L1", None, refused="--loss cannot be changed: IPT trains with 1*L1"),
        Option("skip_threshold", 1e8, finite_float,
               "skip a batch whose loss is this many times the running mean", TRAINING),
        Option("max_steps", 0, int, "training steps (0: --epochs worth)", TRAINING),
        Option("schedule", "step", None, "step: x --gamma at each --decay milestone; cosine: --warmup_steps "
               "then cosine; cyclic_cosine: one cosine from --lr to each --eta_mins per --periods",
               TR, choices=("step", "cosine", "cyclic_cosine")),
        Option("warmup_steps", 0, int, "linear warm-up for --schedule cosine", TR),
        Option("periods", None, None, "steps of each cycle of cyclic_cosine, A+B", TR),
        Option("eta_mins", None, None, "learning rate at the end of each cycle, A+B", TR),
        Option("con_loss", False, SWITCH, "add the contrastive loss on the tokens", TR | IPT),
        Option("con_weight", 0.1, finite_float, "weight of the contrastive loss", TRAINING | IPT),
        Option("mask_ratio", 0.5, finite_float, "masked image modelling (a mim head): the fraction of the "
               "body's tokens masked at random per sample", TR | IPT),
        Option("init_from", "", None,
               "fine-tuning: start the head, tail and query from this head of the --pretrain file (e.g. "
               "mim) instead of the task's own; 'none' keeps them random", TRAINING | IPT),
        Option("save_every", 1000, int, "write the training state every N steps", TRAINING),
        Option("max_nonfinite", 20, int, "stop after this many non-finite losses in a row", TRAINING),
        Option("amp", "none", None, "mixed precision for training (bf16: CUDA or CPU; fp16: CUDA; auto: bf16 "
               "where a short timed forward runs faster in it, as --precision auto decides)",
               TRAINING, choices=("none", "bf16", "fp16", "auto")),
        Option("ema_decay", 0.0, finite_float, "keep an exponential moving average of the weights with this "
               "decay, updated after every optimiser step (0: off); the run's weights, validations and "
               "model_best are then the average's", TR),
        Option("compile", False, SWITCH, "torch.compile the network: training steps, validations and "
               "--test_only's restorations (needs a C++ compiler; outputs differ from eager by float "
               "rounding)"),
        Option("gpu_degrade", False, SWITCH, "make SR (bicubic) and noisy inputs on the training device, a "
               "batch at a time, instead of in the loader workers (rain stays in the loader)", TRAINING),
        Option("streaks_dir", "", None,
               "real rain-streak layers for derain pre-training (default: procedural)", TR),
    ]),
    ("logging and checkpoints", [
        Option("save", "./experiment/ipt", None, "run directory (logs, results, models)"),
        Option("load", "", None,
               refused="--load is not supported: use --save DIR --resume, or --pretrain FILE"),
        Option("resume", 0, int, "bare (or -1): continue training from DIR/state.pt, or with --test_only "
               "evaluate DIR/model/model_latest.pt; N (--test_only): DIR/model/model_N.pt", bare=-1),
        Option("save_models", False, SWITCH, "also keep model/model_<step>.pt at every --save_every step",
               TRAINING),
        Option("save_format", "pt", None, "the trained weights' files (model/model_latest, _best, _<step>): "
               "pt (a torch file), safetensors (holds no code; read by spandrel, chaiNNer, ComfyUI) or both; "
               "state.pt is always a torch file", TRAINING, choices=("pt", "safetensors", "both")),
        Option("print_every", 100, int, "log every N steps", TRAINING),
        Option("save_results", False, SWITCH, "write the restored images"),
        Option("save_gt", False, SWITCH, "also write the inputs (and targets)"),
    ]),
    ("Huawei ModelArts (refused)", [
        Option("moxfile", 1, int,
               refused="--moxfile is for Huawei ModelArts: use --dir_data and --save with local paths"),
        Option("data_url", refused="--data_url is for Huawei ModelArts: use --dir_data PATH"),
        Option("train_url", refused="--train_url is for Huawei ModelArts: use --save PATH"),
        Option("load_query", 0, int,
               refused="--load_query is not supported: pick a head and its query with --task or --task_id"),
    ]),
]
OPTIONS = {o.name: o for _, options in GROUPS for o in options}
