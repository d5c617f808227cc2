"""Typed settings: what each part of the program (main, trainer, data, evaluation) takes from the options."""
from __future__ import annotations

import argparse
import dataclasses
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # imported where they are used: --help answers without loading torch
    from model.ipt import IPTConfig
    from model.restormer import RestormerConfig

# what parse_args notes about the command line itself, kept out of the run's options record
PARSE_NOTES = ("command_line", "architecture_from", "architecture_ignored", "architecture_source",
               "pretrain_tasks")


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
    auto_resume: bool  # continue from state.pt when there is one
    dist_timeout: int  # seconds a collective waits for the other processes

    @property
    def checkpoint(self) -> str:
        """The file to load: --pretrain, or the run directory's model for the authors' --resume
        (RUN/model/STEM.pt or STEM.safetensors, the newer when both exist: a run resumed with
        another --save_format leaves the other format's file of an earlier step)."""
        if self.pretrain or not self.resume:
            return self.pretrain
        stem = "model_latest" if self.resume == -1 else f"model_{self.resume}"
        paths = [os.path.join(self.save, "model", stem + suffix) for suffix in WEIGHT_SUFFIXES]
        return max((p for p in paths if os.path.exists(p)), key=os.path.getmtime, default=paths[0])

    @property
    def checkpoint_option(self) -> str:
        """The option that named ``checkpoint``, for messages: --pretrain, --resume or --resume N."""
        if self.pretrain or not self.resume:
            return "--pretrain"
        return "--resume" if self.resume == -1 else f"--resume {self.resume}"


WEIGHT_SUFFIXES = (".pt", ".safetensors")  # the trained weights' files; of one name, --resume takes the newer


@dataclass(frozen=True)
class DataSettings:
    """The training set (data/training.py): which one, cut how, read by how many workers."""

    name: str
    dir_data: str
    tasks: list[str]  # the heads of the model being trained
    task_id: int | None  # None: each batch draws its task (pre-training)
    batch_size: int
    accumulate: int  # micro-batches per optimiser step: they share a task
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
    accumulate: int  # micro-batches per optimiser step
    ema_decay: float  # 0: no moving average of the weights
    compile: bool  # validations run the network through torch.compile
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
    precision: str = "single"  # --precision: single, half (fp16 weights), bf16 (autocast) or auto
    precision_reason: str | None = None  # why --precision auto chose the precision it holds


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
    progressive = zip(args.progressive_patches or [], args.progressive_batches or [],
                      args.progressive_steps or [], strict=False)
    suffixes = WEIGHT_SUFFIXES if args.save_format == "both" else ("." + args.save_format,)  # what it writes
    return Settings(
        # the head names of --pretrain's file: its record's, else the options' when they name several
        # heads (a single-head model trained from a multi-head file)
        run=_taken(RunSettings, args, pretrain_tasks=args.pretrain_tasks
                   or (args.task_names if len(args.task_names) > 1 else None)),
        model=model_config(args, heads),
        data=_taken(DataSettings, args, name=args.data_train[0], tasks=task_names, task_id=task_id,
                    augment=not args.no_augment, streaks_dir=args.streaks_dir or None,
                    lr_in_loader=not args.gpu_degrade, workers=args.n_threads, pin_memory=not args.cpu,
                    run_dir=args.save),
        train=_taken(TrainSettings, args, task_names=task_names, decay_epochs=args.decay_milestones,
                     periods=args.periods or [], eta_mins=args.eta_mins or [],
                     weight_suffixes=suffixes, progressive=list(progressive)),
        inference=_taken(InferenceSettings, args, mode=args.chop),
        evaluation=_taken(EvalSettings, args, clip_noise=args.test_noise == "clipped",
                          workers=args.n_threads, task_id=task_id, model_name=args.model, record=record),
        total_steps=args.max_steps, epochs=args.epochs, compile=args.compile, record=record)


def _taken(kind: type, args: argparse.Namespace, **given: object) -> object:
    """A ``kind`` whose fields are ``given``, or else the options of the same names."""
    return kind(**{f.name: given[f.name] if f.name in given else getattr(args, f.name)
                   for f in dataclasses.fields(kind) if f.name in given or hasattr(args, f.name)})


def model_config(args: argparse.Namespace, heads: list[int]) -> IPTConfig | RestormerConfig:
    """The network's config: the heads ``heads`` of the options' model."""
    from model.ipt import IPTConfig
    from model.restormer import RestormerConfig
    names = [args.task_names[i] for i in heads]
    if args.model == "restormer":
        return _taken(RestormerConfig, args, task_names=names)
    queries = len(heads) if len(heads) < len(args.scale) else args.num_queries
    return _taken(IPTConfig, args, scale=[args.scale[i] for i in heads], num_queries=queries,
                  task_names=names)
