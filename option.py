"""Command-line options: the authors' names and defaults, parsed and validated once.

``parse_args(argv)`` returns a Namespace whose values are final (``scale`` a list of ints,
``task_names`` every head, ``task_id`` the head to run or None for each in turn). An option or
combination that cannot work exits with status 2 and one line naming the option (or the --config
file and key). The options are declared in option_table.py; ``settings(args)`` types them.
"""
from __future__ import annotations

import argparse
import os
import re
import sys
from collections.abc import Callable

import option_table as table
import stops
from option_files import read_config, take_recorded_architecture
from run_settings import model_config
from run_settings import settings as settings  # parse_args, then settings: the two calls of a run
from tasks import default_task_names, task_scale
from utility import MAX_COUNT, MAX_INT64, MAX_LOADER_WORKERS  # the ceilings the records share

TASK_NAME = re.compile(r"^(sr[1-9]\d*|derain|denoise\d+(\.\d+)?|mim)$")
SIGMA_IN_NAME = re.compile(r"^\d+(\.\d+)?$")  # how --sigma must print to name the head denoise<sigma>
SUPPORTED_SCALES = (1, 2, 3, 4, 8, 16)
DEFAULT_SCALE = "4"  # the authors' default
MAX_DIST_TIMEOUT = 7 * 24 * 3600  # a week: longer waits overflow timedelta and help no one
# the most micro-batches an optimiser step takes: the paper's global batch of 256 one sample at a
# time is 256; more only makes a step slower to reach
MAX_ACCUMULATE = 4096
MAX_RGB_RANGE = 65535  # 16-bit pixels: larger ranges describe no image (and overflow the mean shift)
RESUME_DERIVED = ("task_names", "task_id")  # what --tasks/--task/--denoise/... resolve to
PATH_OPTIONS = ("config", "dir_data", "dir_demo", "pretrain", "save", "streaks_dir")
# how long a torchrun rank other than 0 that meets a bad option waits for torchrun's SIGTERM (sent
# once rank 0 has said it and exited) before it exits itself
PEER_SAYS_SECONDS = 30


class OptionParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line and exit status 2."""

    def error(self, message: str) -> None:  # type: ignore[override]
        if os.environ.get("RANK", "0") in ("", "0"):  # under torchrun every rank parses: one says it
            sys.stderr.write(f"{self.prog}: error: {message} (see --help)\n")
        else:  # exiting first, this rank would have torchrun stop rank 0 before rank 0 says it
            stops.wait_for_stop(PEER_SAYS_SECONDS)
        sys.exit(2)


def build_parser(defaults: bool = True) -> OptionParser:
    """The parser of every option in the option table, in its groups (without defaults: an
    option left out leaves no attribute)."""
    p = OptionParser(prog="main.py", description="IPT: Pre-Trained Image Processing Transformer")
    for title, options in table.GROUPS:
        group = p if title is None else p.add_argument_group(title)
        for o in options:
            switch = o.type is table.SWITCH
            how = {"action": "store_true"} if switch else {"type": o.type, "choices": o.choices}
            if o.bare is not None:
                how.update(nargs="?", const=o.bare)
            default = o.default if defaults else argparse.SUPPRESS
            group.add_argument(f"--{o.name}", default=default, help=o.what, **how)
    return p


def with_role(role: frozenset) -> list[str]:
    """The options declared with ``role``."""
    return [name for name, o in table.OPTIONS.items() if role <= o.roles]


def refused_options() -> dict[str, tuple[object, str]]:
    """name -> (the authors' default, the refusal line) of the options not implemented here."""
    return {name: (o.default, o.refused) for name, o in table.OPTIONS.items() if o.refused}


def asks_for_help(argv: list[str]) -> bool:
    """Whether argv asks for the help text (-h or --help, before any -- separator)."""
    options = argv[:argv.index("--")] if "--" in argv else argv
    return any(a in ("-h", "--help") for a in options)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    """Parse and validate the options (from argv, or sys.argv when None)."""
    parser = build_parser()
    argv = sys.argv[1:] if argv is None else list(argv)
    given = vars(build_parser(defaults=False).parse_args(argv))  # its own errors are said first
    try:
        from_config = read_config(given["config"]) if given.get("config") is not None else {}
    except ValueError as e:
        parser.error(str(e))
    parser.set_defaults(**from_config)
    args = parser.parse_args(argv)
    args.command_line = sorted(given)
    try:
        take_recorded_architecture(args, set(args.command_line) | set(from_config))
        _finish(args)
    except ValueError as e:
        taken = getattr(args, "architecture_from", None)
        where = (f" (model options taken from {args.architecture_source}: {' '.join(taken)}; fix "
                 f"or delete that record, or give them on the command line)") if taken else ""
        parser.error(str(e) + where)
    return args


def _finish(args: argparse.Namespace) -> None:
    """Normalise list options, resolve the tasks and refuse what cannot work (ValueError)."""
    for dest, (default, message) in refused_options().items():
        if getattr(args, dest) != default:
            raise ValueError(message.format(value=getattr(args, dest)))
    for dest in PATH_OPTIONS:  # "~/runs" from a config file (or --save=~/runs) as a shell would
        if getattr(args, dest):
            setattr(args, dest, os.path.expanduser(getattr(args, dest)))
    _check_numbers(args)
    args.data_train = _split("data_train", args.data_train)
    args.scale_given = args.scale is not None
    args.scale = _scales(DEFAULT_SCALE if args.scale is None else args.scale)
    _resolve_tasks(args)
    _check_architecture(args)
    _check_schedule(args)
    args.decay_milestones = _milestones(args.decay)
    args.train_range, args.test_range = _data_range(args.data_range)
    args.data_test = _test_sets(args)  # from here on torch is loaded (the test sets' module needs it)
    _check_device(args)
    _check_memory(args)
    _check_tiling(args)
    _check_run(args)
    _check_training_data(args)
    if args.epochs == 0:
        args.epochs = None  # the authors' 0: no limit


def _test_sets(args: argparse.Namespace) -> list[str]:
    """--data_test as the known sets it names, each once (the authors' default when not given)."""
    given = args.data_test
    if given is None:  # the authors' default; their derain command relies on Rain100L
        given = "Rain100L" if args.task_names == ["derain"] or args.task == "derain" else "DIV2K"
    names = _split("data_test", given)
    from data.benchmark import ALL_SETS, DEMO, BenchmarkError, canonical_test_set
    try:  # an alias (CSet14, set14) is evaluated, and written, as its set (Set14)
        canonical = [canonical_test_set(d) for d in names]
    except BenchmarkError as e:
        raise ValueError(str(e)) from None
    if unknown := [d for d, c in zip(names, canonical, strict=False) if c is None]:
        raise ValueError(f"--data_test {'+'.join(unknown)}: unknown test set; known: "
                         f"{', '.join(ALL_SETS)}, {DEMO} (or an alias such as CSet14; any case)")
    again = next((i for i, c in enumerate(canonical) if c in canonical[:i]), None)
    if again is not None:
        first = names[canonical.index(canonical[again])]
        raise ValueError(f"--data_test {'+'.join(names)}: {first} and "
                         f"{names[again]} are both {canonical[again]}; give each set once")
    return canonical


def _items(value: object, separator: str = "+") -> list | tuple:
    """The items of a list option: a YAML list's, or the text's joined by ``separator``."""
    return value if isinstance(value, (list, tuple)) else str(value).split(separator)


def _split(dest: str, value: object) -> list[str]:
    """The names of list option ``dest`` (A+B); ValueError when it names none."""
    names = [str(v).strip() for v in _items(value) if str(v).strip()]
    if not names:
        raise ValueError(f"--{dest} {value!r} names nothing: give one or more, joined by +")
    return names


def _scales(value: object) -> list[int]:
    scales = _ints("scale", value)
    if any(s not in SUPPORTED_SCALES for s in scales):
        raise ValueError(f"--scale {value!r}: each scale must be one of {SUPPORTED_SCALES}")
    return scales


def _milestones(decay: str) -> list[int]:
    """--decay 'a-b': step-decay milestones in epochs, positive and increasing."""
    milestones = _ints("decay", decay, separator="-")
    if milestones != sorted(set(milestones)):
        raise ValueError(f"--decay {decay!r}: expected positive, increasing epochs, like 200-400")
    return milestones


def _resolve_tasks(args: argparse.Namespace) -> None:
    """Set args.scale, args.task_names and args.task_id from --scale/--tasks/--task/--task_id and the
    authors' flags: --denoise (with --sigma) or --derain names one of the heads."""
    printed = f"{args.sigma:g}"  # with --denoise, the number in the head's name
    if args.denoise and not (SIGMA_IN_NAME.match(printed) and float(printed) == args.sigma):
        raise ValueError(f"--sigma {args.sigma}: names no head denoise<sigma> exactly (it prints as "
                         f"{printed}): give a plain decimal like 30 or 12.5")
    if args.denoise and args.derain:
        raise ValueError("--denoise and --derain name the same scale-1 head: give one of them")
    flag_task = f"denoise{printed}" if args.denoise else ("derain" if args.derain else None)
    if args.tasks:
        names = _split("tasks", args.tasks)
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
    index = None  # the head to run: --task's or --task_id's (the same), the only one, or each in turn
    if args.task is not None:
        if args.task not in names:
            new = (f"; to fine-tune a new {args.task} head on the pre-trained body, give --tasks {args.task} "
                   f"--init_from one of them (or none)") if args.pretrain and not args.test_only else ""
            raise ValueError(f"--task {args.task} names no head; the heads are {'+'.join(names)}{new}")
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
    args.task_id = index


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


def _check_architecture(args: argparse.Namespace) -> None:
    """Refuse the other architecture's options; fill in and check this one's."""
    if args.model == "ipt":
        given = [f"--{d}" for d in with_role(table.RESTORMER) if getattr(args, d) is not None]
        if given:
            raise ValueError(f"{' '.join(given)}: Restormer option(s); add --model restormer")
        if args.num_queries is None:
            args.num_queries = len(args.scale)
        elif args.num_queries < len(args.scale) and not args.no_mlp:
            raise ValueError(f"--num_queries {args.num_queries} is below the number of heads "
                             f"({len(args.scale)}, from --scale {'+'.join(map(str, args.scale))})")
        _check_ipt(args)
        return
    given = [f"--{d}" for d in with_role(table.IPT) if getattr(args, d) != table.OPTIONS[d].default]
    if given:
        raise ValueError(f"{' '.join(given)}: IPT option(s), not used by --model restormer")
    if args.scale != [1]:
        raise ValueError(f"--model restormer restores one scale-1 task, not {'+'.join(args.task_names)}: "
                         "give --task derain or --task denoise<sigma> (or --derain, --denoise --sigma S)")
    if args.chop == "official":
        raise ValueError("--chop official is IPT's forward_chop: Restormer runs whole (--chop auto) "
                         "or in overlapping tiles (--chop fast --tile_size N)")
    from model.restormer import SIZE_MULTIPLE, RestormerConfig
    defaults = RestormerConfig()
    for dest in ("dim", "num_refinement_blocks", "ffn_expansion_factor", "bias", "layernorm_type"):
        if getattr(args, dest) is None:
            setattr(args, dest, getattr(defaults, dest))
    args.num_blocks = _ints("num_blocks", args.num_blocks, defaults.num_blocks, 4)
    args.heads = _ints("heads", args.heads, defaults.heads, 4)
    for level, h in enumerate(args.heads):
        if (args.dim * 2 ** level) % h:
            raise ValueError(f"--heads: {h} heads do not divide level {level + 1}'s width "
                             f"{args.dim * 2 ** level} (--dim {args.dim} x {2 ** level})")
    args.tile_size = table.RESTORMER_TILE if args.tile_size is None else args.tile_size
    if args.tile_size < SIZE_MULTIPLE or args.tile_size % SIZE_MULTIPLE:
        raise ValueError(f"--tile_size {args.tile_size}: must be a positive multiple of {SIZE_MULTIPLE}")
    _check_progressive(args)


def _check_ipt(args: argparse.Namespace) -> None:
    """IPT's sizes divide evenly, and its options do not contradict each other."""
    if args.patch_size % args.patch_dim:
        raise ValueError(f"--patch_size {args.patch_size} is not divisible by --patch_dim "
                         f"{args.patch_dim}")
    if (args.n_feats * args.patch_dim ** 2) % args.num_heads:
        raise ValueError(f"--num_heads {args.num_heads} does not divide the token width "
                         f"n_feats * patch_dim^2 = {args.n_feats * args.patch_dim ** 2}")
    if "mim" in args.task_names and args.patch_size // args.patch_dim < 2:  # else every mim loss is NaN
        raise ValueError(f"--tasks ...+mim masks some tokens of a patch and keeps others: --patch_size "
                         f"{args.patch_size} / --patch_dim {args.patch_dim} must give 2 or more a side")
    if args.pos_every and args.no_pos:
        raise ValueError("--pos_every needs a position embedding: drop --no_pos")
    if args.chop == "whole":  # the model's own ValueError came as a traceback from evaluation
        raise ValueError(f"--chop whole gives IPT each image at once, but its body takes only "
                         f"--patch_size x --patch_size ({args.patch_size}x{args.patch_size}) inputs: "
                         f"use --chop official (the authors' tiling), fast or auto")
    if args.init_from:
        one_head = args.task_id is not None or len(args.task_names) == 1
        if args.test_only or not args.pretrain or not one_head:
            raise ValueError(f"--init_from {args.init_from}: starts the head being fine-tuned "
                             f"from a head of --pretrain's file; it needs --pretrain and one "
                             f"trained head (--task), without --test_only")
        if args.init_from != "none" and not TASK_NAME.match(args.init_from):
            raise ValueError(f"--init_from {args.init_from}: give a head name of --pretrain's "
                             f"file (like mim) or none")


def _check_tiling(args: argparse.Namespace) -> None:
    """The authors' tiling fits IPT's patch, when images are restored (else a traceback at the first
    validation, maybe after hours of training)."""
    from model.tiling import OFFICIAL_TILE_MULTIPLE  # torch is loaded by now (_test_sets)
    restores = args.test_only or any(name != "Demo" for name in args.data_test)  # training skips Demo
    if args.model == "ipt" and restores and args.chop in ("auto", "official") \
            and args.patch_size % OFFICIAL_TILE_MULTIPLE:
        raise ValueError(f"--patch_size {args.patch_size}: the authors' tiling (--chop {args.chop}) "
                         f"steps by a quarter patch, so it needs a multiple of {OFFICIAL_TILE_MULTIPLE} "
                         f"(and of --patch_dim); or give --chop fast")


def _check_progressive(args: argparse.Namespace) -> None:
    """Progressive training: one patch size, batch size and step count per stage."""
    stages = (args.progressive_patches, args.progressive_batches, args.progressive_steps)
    if all(v is None for v in stages):
        return
    if any(v is None for v in stages):
        raise ValueError("progressive training needs all of --progressive_patches, "
                         "--progressive_batches and --progressive_steps")
    patches = _ints("progressive_patches", args.progressive_patches)
    batches = _ints("progressive_batches", args.progressive_batches, length=len(patches))
    steps = _ints("progressive_steps", args.progressive_steps, length=len(patches))
    if max(patches) != args.patch_size or max(batches) != args.batch_size:
        raise ValueError(f"progressive training crops each batch from --patch_size x --batch_size: "
                         f"give --patch_size {max(patches)} --batch_size {max(batches)}")
    args.progressive_patches, args.progressive_batches, args.progressive_steps = patches, batches, steps


def _ints(dest: str, value: object, default: list[int] | tuple = (), length: int | None = None,
          separator: str = "+") -> list[int]:
    """A list option of counts (1 to MAX_COUNT) joined by ``separator`` (the default when not given)."""
    if value is None:
        return list(default)
    items = _items(value, separator)
    numbers = [int(v) for v in items if str(v).strip().isdecimal()]
    if (len(numbers) != len(items) or (length is not None and len(numbers) != length) or not numbers
            or min(numbers) < 1 or max(numbers) > MAX_COUNT):
        count = f"{length} " if length else ""
        raise ValueError(f"--{dest} {value!r}: expected {count}positive integers (at most {MAX_COUNT}) "
                         f"joined by {separator}")
    return numbers


def _check_schedule(args: argparse.Namespace) -> None:
    """--periods and --eta_mins belong to --schedule cyclic_cosine, one entry per cycle."""
    if args.schedule != "cyclic_cosine":
        if args.periods is not None or args.eta_mins is not None:
            raise ValueError("--periods and --eta_mins need --schedule cyclic_cosine")
        return
    if args.periods is None or args.eta_mins is None:
        raise ValueError("--schedule cyclic_cosine needs --periods A+B and --eta_mins A+B")
    args.periods = _ints("periods", args.periods)
    try:
        args.eta_mins = [table.finite_float(str(v)) for v in _items(args.eta_mins)]
    except argparse.ArgumentTypeError:
        raise ValueError(f"--eta_mins {args.eta_mins!r}: expected finite numbers joined by +") from None
    if len(args.eta_mins) != len(args.periods) or min(args.eta_mins) < 0:
        raise ValueError(f"--eta_mins: one non-negative learning rate per --periods entry "
                         f"({len(args.periods)})")


def _check_numbers(args: argparse.Namespace) -> None:
    """Each number option within its bounds (one not given, None, has none)."""
    bounds = [  # (options, what each must be, the test of a value); torch.manual_seed takes 64 bits
        (("patch_size", "crop_batch_size", "rgb_range", "batch_size", "test_every", "print_every",
          "save_every", "n_feats", "patch_dim", "num_heads", "num_layers"), "must be at least 1",
         lambda v: v >= 1),
        (("n_threads", "threads", "lr", "gclip", "weight_decay", "epochs", "max_steps", "warmup_steps",
          "con_weight", "max_nonfinite", "momentum", "epsilon"), "must not be negative", lambda v: v >= 0),
        (("gamma", "skip_threshold", "sigma", "dim", "num_refinement_blocks", "ffn_expansion_factor"),
         "must be positive", lambda v: v > 0),
        (("n_threads", "threads"), f"must be at most {MAX_LOADER_WORKERS}",
         lambda v: v <= MAX_LOADER_WORKERS),
        (("rgb_range",), f"must be at most {MAX_RGB_RANGE}", lambda v: v <= MAX_RGB_RANGE),
        (("epochs", "max_steps", "warmup_steps", "test_every", "print_every", "save_every", "max_nonfinite"),
         f"must be at most {MAX_COUNT}", lambda v: v <= MAX_COUNT),
        (("dropout_rate", "ema_decay"), "must be in [0, 1)", lambda v: 0 <= v < 1),
        (("accumulate",), f"must be 1 to {MAX_ACCUMULATE}", lambda v: 1 <= v <= MAX_ACCUMULATE),
        (("mask_ratio",), "must be between 0 and 1 (exclusive)", lambda v: 0 < v < 1),
        (("seed",), f"must be an integer from 0 to {MAX_INT64} (2^63 - 1)", lambda v: 0 <= v <= MAX_INT64),
        (("dist_timeout",), f"must be 1 to {MAX_DIST_TIMEOUT} seconds (a week)",
         lambda v: 1 <= v <= MAX_DIST_TIMEOUT),
    ]
    for names, must, ok in bounds:
        for dest in names:
            if getattr(args, dest) is not None and not ok(getattr(args, dest)):
                raise ValueError(f"--{dest} {must}, got {getattr(args, dest)}")


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
        raise ValueError("--epochs 0 means no limit, and a streamed data set has no end: give --max_steps")


FLOAT_BYTES = 4  # weights, activations and images in float32
# training keeps per weight: the weight, its gradient and Adam's two moments
TRAINING_COPIES = 4
GIB = 2 ** 30


def _on_cuda(args: argparse.Namespace) -> bool:
    import torch
    return torch.cuda.is_available() and not args.cpu


def _check_device(args: argparse.Namespace) -> None:
    """--precision half and --amp fp16 run on CUDA only (--precision bf16 runs anywhere)."""
    on_cuda = _on_cuda(args)
    if args.precision == "half" and not on_cuda:
        raise ValueError("--precision half needs a CUDA device; on the CPU use --precision bf16 or single")
    if args.amp == "fp16" and not on_cuda:
        raise ValueError("--amp fp16 needs a CUDA device; use --amp bf16 on the CPU")


def _check_memory(args: argparse.Namespace) -> None:
    """Refuse sizes that cannot fit before anything is allocated: a lower bound of the bytes the
    model and its first batch need, against the memory available (the GPU's of this process on
    CUDA, else the CPU's). Names the options to lower."""
    import torch

    from model import parameter_count  # worked out from the options: any size, nothing built
    params = parameter_count(model_config(args, list(range(len(args.scale)))))
    weights = params * FLOAT_BYTES * (1 if args.test_only else TRAINING_COPIES)
    batch_option = "--crop_batch_size" if args.test_only else "--batch_size"
    batch = getattr(args, batch_option[2:])
    side = args.patch_size * max(args.scale)
    activations = batch * 3 * (args.patch_size ** 2 + side ** 2) * FLOAT_BYTES  # input and output
    if args.model == "ipt":  # each of the body's layers holds (or, testing, passes on) its tokens
        count = (args.patch_size // args.patch_dim) ** 2
        width = args.n_feats * args.patch_dim ** 2
        layers = 1 if args.test_only else 2 * args.num_layers
        activations += batch * count * width * FLOAT_BYTES * layers
        if args.attention == "math" or (args.attention == "auto" and not _on_cuda(args)):
            activations += args.num_heads * count ** 2 * FLOAT_BYTES  # one tile's attention scores
    if _on_cuda(args):
        try:
            available = torch.cuda.get_device_properties(int(os.environ.get("LOCAL_RANK", "0"))).total_memory
        except (RuntimeError, AssertionError, ValueError):  # no usable driver: not known here
            available = None
    else:
        from utility import available_memory
        available = available_memory()
    if available is None or weights + activations <= available:
        return
    if weights >= activations:
        lower = "--patch_size, --n_feats or --num_layers" if args.model == "ipt" else "--dim or --num_blocks"
        what = f"the model alone needs {_gib(weights)} GiB"
    else:
        lower = f"{batch_option} or --patch_size"
        what = f"the first batch needs {_gib(activations)} GiB beside the model's {_gib(weights)} GiB"
    raise ValueError(f"{what}, at least, and {_gib(available)} GiB are available: lower {lower} "
                     f"(--patch_size {args.patch_size}, {batch_option} {batch})")


def _gib(size: int) -> str:
    """Bytes as GiB with one decimal; a power of ten past what a float holds (10^30 widths)."""
    gib = size // GIB
    return f"{size / GIB:.1f}" if gib < 10 ** 15 else f"10^{len(str(gib)) - 1}"


def _check_run(args: argparse.Namespace) -> None:
    """--save names a run directory; --resume, --reset and --pretrain do not contradict each other."""
    if not str(args.save).strip():
        raise ValueError("--save: give a run directory")
    if args.resume < -1:
        raise ValueError(f"--resume {args.resume}: give a bare --resume, or N >= 1 with --test_only")
    if args.test_only and os.environ.get("WORLD_SIZE", "1") not in ("", "1"):  # each rank would do it all
        raise ValueError("--test_only runs as one process: start it with python main.py, not torchrun")
    if args.resume > 0 and not args.test_only:
        raise ValueError(f"--resume {args.resume} picks model/model_{args.resume}.pt for --test_only; "
                         "training always continues from the run directory's state.pt: give a bare --resume")
    if args.resume and args.reset:
        raise ValueError("--reset starts the run directory afresh, --resume continues it: give one of them")
    if args.resume and args.pretrain:
        raise ValueError("--pretrain FILE and --resume both name the weights to start from: give one of them")
    if args.auto_resume and (args.reset or args.resume or args.test_only):
        given = "--reset" if args.reset else "--resume" if args.resume else "--test_only"
        raise ValueError(f"--auto_resume continues a training run when it can and starts it "
                         f"otherwise: {given} contradicts it, give one of them")


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


# options that do nothing without another: name -> (what it needs, whether the parsed options have it)
NEEDS: dict[str, tuple[str, Callable[[argparse.Namespace], bool]]] = {
    "save_gt": ("--save_results", lambda a: a.save_results),
    "sigma": ("--denoise", lambda a: a.denoise),
    "test_noise": ("a denoise<sigma> head", lambda a: any(t.startswith("denoise") for t in a.task_names)),
    "dir_demo": ("Demo in --data_test", lambda a: "Demo" in a.data_test),
    "save_results": ("--test_only (validations write no image)", lambda a: a.test_only),
    "self_ensemble": ("--test_only (validations run without it)", lambda a: a.test_only),
    "tile_size": ("--chop fast", lambda a: a.chop == "fast"),
    "mask_ratio": ("a mim head", lambda a: "mim" in a.task_names),
    "con_weight": ("--con_loss", lambda a: a.con_loss),
    "decay": ("--schedule step", lambda a: a.schedule == "step"),
    "gamma": ("--schedule step", lambda a: a.schedule == "step"),
    "warmup_steps": ("--schedule cosine", lambda a: a.schedule == "cosine"),
    "momentum": ("--optimizer SGD or RMSprop", lambda a: a.optimizer in ("SGD", "RMSprop")),
}


def inert_options_given(args: argparse.Namespace) -> list[str]:
    """The options given on the command line that do nothing with the others, each with its need."""
    return [f"--{name} needs {what}" for name, (what, holds) in NEEDS.items()
            if name in args.command_line and not holds(args)]


def training_options_given(args: argparse.Namespace) -> list[str]:
    """Training-only options given on the command line (reported under --test_only); a config
    file's are not: one file serves training and evaluation."""
    return [f"--{dest}" for dest in with_role(table.TRAINING) if dest in args.command_line]


def resume_conflicts(saved: dict, args: argparse.Namespace) -> list[str]:
    """The options that differ from a saved run's and would change its model or data; one that
    the saved run's version did not have yet (--ema_decay, --accumulate) was at its default."""
    from utility import jsonable  # the saved options are the record of settings(): plain JSON
    now = {k: jsonable(getattr(args, k, None)) for k in (*with_role(table.RESUME), *RESUME_DERIVED)}
    was = {k: saved.get(k) if k in saved or k not in table.OPTIONS else jsonable(table.OPTIONS[k].default)
           for k in now}
    return [f"--{k} (saved {was[k]!r}, now {v!r})" for k, v in now.items() if v != was[k]]
