"""Training: one-task batches through the network, L1 (+ contrastive) loss, checkpoints, resume."""
from __future__ import annotations

import contextlib
import logging
import math
import os
import time
import warnings
from collections.abc import Callable, Iterable

import torch
from torch import Tensor, nn
from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn
from torch.utils.data import DataLoader
from tqdm import tqdm

import checkpointing
import distributed
import runfolder
import stops
from data.listing import FILE_LIST
from data.sources import seeded
from data.stream import synthesize_lr
from data.training import loader_workers, training_stream
from model.loss import contrastive_loss, l1_loss
from model.mim import masked_l1, random_token_mask
from run_settings import DataSettings, TrainSettings
from tasks import MIM

log = logging.getLogger("ipt")


Batches = Callable[[int], Iterable[dict]]  # the first step -> one-task batches from that step on


def make_batches(d: DataSettings, rank: int = 0, world: int = 1, saved_workers: int | None = None,
                 split_origin: int = 0) -> tuple[Batches, int, int]:
    """(batch factory, optimiser steps per epoch, loader workers) of the training set. A resumed
    run keeps the workers it started with (``saved_workers``): batch k depends on them;
    ``split_origin`` is the step its files were last split over the processes and workers at
    (`resumed_split`). A step takes --accumulate batches (micro-batches) of the stream."""
    stream = training_stream(d.name, d.dir_data, d.tasks, train_range=d.train_range,
                             batch_size=d.batch_size, patch_size=d.patch_size, seed=d.seed,
                             rank=rank, world_size=world, augment=d.augment, task_id=d.task_id,
                             streaks_dir=d.streaks_dir, lr_in_loader=d.lr_in_loader,
                             listing_cache=os.path.join(d.run_dir, FILE_LIST), accumulate=d.accumulate)
    workers = loader_workers(d.workers, len(stream.source), world, saved_workers)
    k = d.accumulate

    def batches(start: int) -> DataLoader:
        return DataLoader(stream.with_start(start * k, split_origin * k), batch_size=None,
                          num_workers=workers, pin_memory=d.pin_memory and torch.cuda.is_available(),
                          worker_init_fn=stops.ignore_stop_signals if workers else None)

    return batches, math.ceil(stream.steps_per_epoch / k), workers


def resumed_split(saved: dict | None, world: int) -> tuple[int | None, int]:
    """(loader workers to keep, or None to choose afresh; the step the files are split at) for a
    run continuing ``saved`` with ``world`` processes. At the saved world size the split is kept,
    so batch k is what it would have been; at another one the files are re-split from the step
    reached, and a WARNING says what that changes."""
    if not saved:
        return None, 0
    saved_world = saved.get("world_size", world)  # states of older versions: as before
    if saved_world == world:
        return saved.get("loader_workers"), saved.get("split_origin", 0)
    step = saved["progress"]["step"]
    log.warning("the training state was saved by %d process(es); this job has %d: the training "
                "files are re-split from step %d, where a new epoch starts (every file once an "
                "epoch from there). The learning rate follows the same schedule by step and each "
                "process keeps --batch_size, so a step now averages the gradients of %d process(es) "
                "instead of %d; the batches are not those an uninterrupted run would have had "
                "(bit-exact resume holds only at the same world size)", saved_world, world, step,
                world, saved_world)
    return None, step


AMP_DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16}
INTERRUPTED = stops.INTERRUPTED  # the exit status of a run a signal stopped (its state saved)
clock = time.perf_counter  # what training seconds are measured with


def make_optimizer(t: TrainSettings, params) -> torch.optim.Optimizer:
    """The optimiser of --optimizer with --lr, --betas, --epsilon, --momentum, --weight_decay."""
    params = [p for p in params if p.requires_grad]
    if t.optimizer in ("ADAM", "ADAMW"):
        adam = torch.optim.AdamW if t.optimizer == "ADAMW" else torch.optim.Adam
        return adam(params, lr=t.lr, betas=t.betas, eps=t.epsilon, weight_decay=t.weight_decay)
    if t.optimizer == "SGD":
        return torch.optim.SGD(params, lr=t.lr, momentum=t.momentum, weight_decay=t.weight_decay)
    return torch.optim.RMSprop(params, lr=t.lr, eps=t.epsilon, momentum=t.momentum,
                               weight_decay=t.weight_decay)


def lr_factor(schedule: str, milestones: list[int], gamma: float, warmup: int, total: int,
              periods: list[int] = (), end_factors: list[float] = ()):
    """The learning-rate multiplier of a step: step decay at milestones, warm-up + cosine, or
    cyclic cosine (cycle i goes from 1 down to end_factors[i] over periods[i] steps)."""
    def step_decay(step: int) -> float:
        return gamma ** sum(step >= m for m in milestones)

    def half_cosine(progress: float, end: float = 0.0) -> float:
        return end + (1 - end) * 0.5 * (1 + math.cos(math.pi * min(progress, 1.0)))

    def cosine(step: int) -> float:
        if step < warmup:
            return (step + 1) / warmup
        return half_cosine((step - warmup) / max(total - warmup, 1))

    def cyclic_cosine(step: int) -> float:
        start = 0
        for period, end in zip(periods, end_factors, strict=False):
            if step < start + period:
                return half_cosine((step - start) / period, end)
            start += period
        return end_factors[-1]  # past the last cycle: its final rate

    return {"cosine": cosine, "cyclic_cosine": cyclic_cosine}.get(schedule, step_decay)


def progressive_crop(lr: Tensor, hr: Tensor, patch: int, size: int,
                     generator: torch.Generator) -> tuple[Tensor, Tensor]:
    """``size`` random samples of a scale-1 batch, cropped at one random ``patch`` square."""
    if lr.shape != hr.shape:
        raise ValueError("progressive training crops scale-1 pairs only (derain, denoise)")
    pick = torch.randperm(lr.shape[0], generator=generator)[:size].to(lr.device)
    h, w = lr.shape[-2:]
    top = int(torch.randint(h - patch + 1, (1,), generator=generator))
    left = int(torch.randint(w - patch + 1, (1,), generator=generator))
    window = (slice(None), slice(None), slice(top, top + patch), slice(left, left + patch))
    return lr[pick][window], hr[pick][window]


class Trainer(checkpointing.Checkpointing):
    """Optimises the model on one-task batches; checkpoints, validates, resumes exactly."""

    def __init__(self, settings: TrainSettings, model: nn.Module, batches: Batches,
                 validate: Callable[[nn.Module, int], tuple[dict[str, float], dict[str, Tensor]]] | None,
                 total_steps: int, steps_per_epoch: int, rank: int = 0, loader_workers: int = 0,
                 record: dict | None = None, architecture: dict | None = None,
                 schedule_steps: int | None = None, world_size: int = 1, split_origin: int = 0):
        self.settings, self.model, self.batches, self.validate = settings, model, batches, validate
        # recorded: batch k depends on the worker count, the world size and where they were set
        self.loader_workers, self.world_size, self.split_origin = loader_workers, world_size, split_origin
        self.epoch_steps = steps_per_epoch  # recorded: the schedule's milestones are counted in it
        self.record = record or {}  # the run's options, kept in the state for --resume's checks
        self.architecture = architecture or {}  # the options that built the model (training.json)
        self.total_steps, self.rank = total_steps, rank
        # the length the learning-rate schedule spans: a resumed run keeps the one it started with
        self.schedule_steps = schedule_steps or total_steps
        self.interrupted = False
        self.stop = stops.StopSignals()  # entered by fit; a stop during a validation is set in it too
        self.device = next(model.parameters()).device
        self.optimizer = make_optimizer(settings, model.parameters())
        t = settings
        # an exponential moving average of the weights, starting at them without a warm-up of the
        # decay (as BasicSR's); every rank updates its own from the same weights: no communication
        if t.ema_decay:  # else the class's None
            bare = checkpointing.unwrap(model)
            self.ema = AveragedModel(bare, multi_avg_fn=get_ema_multi_avg_fn(t.ema_decay))
            self.ema.update_parameters(bare)  # the first update copies
        # what validations evaluate: the delivered network, compiled once under --compile
        self.eval_net = torch.compile(self.delivered) if t.compile else self.delivered
        milestones = [m * steps_per_epoch for m in t.decay_epochs]
        end_factors = [eta / t.lr for eta in t.eta_mins] if t.lr else []
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lr_factor(
            t.schedule, milestones, t.gamma, t.warmup_steps, self.schedule_steps, t.periods, end_factors))
        self.scaler = torch.amp.GradScaler(self.device.type, enabled=t.amp == "fp16")
        self.progress = checkpointing.Progress()
        self.skipped_files: dict[int, int] = {}  # loader worker -> files it skipped so far
        self.weights_written: dict[str, dict] = {}  # model/ file -> {step, size, mtime_ns}
        self.loss_average: float | None = None
        self.train_seconds = 0.0  # wall-clock seconds in training steps (data included), all sessions
        self.model_dir = os.path.join(t.save, "model")
        self.writer = None
        if rank == 0:
            os.makedirs(self.model_dir, exist_ok=True)
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError:
                log.warning("tensorboard is not installed: no TensorBoard logs (pip install tensorboard)")
            else:
                self.writer = SummaryWriter(os.path.join(t.save, "tensorboard"))

    # -- the loop ---------------------------------------------------------------------
    def fit(self) -> int:
        """Train until --max_steps; 0 when done, 130 when a signal stopped it (the state is saved
        for --resume), 1 when it cannot go on.

        The training state is saved on every exit, an exception included (it is re-raised);
        every save is written when this returns (periodic ones by a thread, while training goes on).
        """
        p = self.progress
        if p.step >= self.total_steps:  # a resumed run already there: its files stay as they are
            log.info("step %d of the saved state is not before step %d, where this run ends: nothing to "
                     "train, nothing written (a larger --max_steps continues it)", p.step, self.total_steps)
            return 0
        bar = tqdm(total=self.total_steps, initial=p.step, desc="training", unit="step",
                   dynamic_ncols=True, disable=self.rank != 0)
        status = 0
        # the handler stays until the final save is written: a signal then (torchrun stopping
        # the other ranks of a failed job, a second Ctrl-C) cannot cut that save short
        with self.stop as stop:
            try:
                batches = iter(self.batches(p.step))
                while p.step < self.total_steps and not self._stop_agreed(stop.received):
                    started = clock()
                    loss = self.train_step([next(batches) for _ in range(self.settings.accumulate)])
                    self.train_seconds += clock() - started
                    p.step += 1
                    bar.update(1)
                    bar.set_postfix(loss=f"{loss:.4g}" if loss is not None else "skipped",
                                    lr=f"{self.scheduler.get_last_lr()[0]:.3g}")
                    if self._cannot_go_on():
                        status = 1
                        break
                    self._after_step(loss)
                stopped = self._stop_agreed(stop.received)
                if stop.received is not None:
                    log.warning("%s received: saving the training state and stopping",
                                stops.signal_name(stop.received))
                elif stopped:
                    log.warning("another process of this job received a stop signal: stopping")
                self.interrupted = stopped and p.step < self.total_steps
                self.saver.wait()  # a save still being written: its failure ends the run here
            finally:
                bar.close()
                saved = self._save_on_exit()
                how = "finished" if p.step >= self.total_steps else "stopped"
                whose = " by this process (rank 0)" if self.world_size > 1 else ""  # no collective here
                log.info("%s at step %d of %d after %.1f s of training steps; %d step(s) skipped "
                         "for non-finite losses; %d training file read(s) skipped%s (unreadable or "
                         "smaller than the crop)", how, p.step, self.total_steps, self.train_seconds,
                         p.nonfinite_total, sum(self.skipped_files.values()), whose)
        if self.interrupted and saved:
            log.info(checkpointing.RESUME_HINT)
            return INTERRUPTED
        return status if saved else 1

    def _stop_agreed(self, received: int | None) -> bool:
        """Whether to stop before the next step: a signal reached this process or, under
        torchrun, any other (one tiny all-reduce a step), so every rank stops at the same step
        and rank 0 saves the state that all of them reached."""
        return not distributed.all_agree(received is None, self.device)

    def _cannot_go_on(self) -> bool:
        """Whether training must stop: too many non-finite losses in a row, or broken weights."""
        p = self.progress
        if p.nonfinite_run == 0:
            return False
        if broken := self.nonfinite_weights():  # on their device
            log.error("step %d: %d weight tensor(s) are NaN or infinite (%s, ...): stopping; the "
                      "last checkpoint is kept (lower --lr, set --gclip)", p.step, len(broken), broken[0])
            return True
        if p.nonfinite_run > self.settings.max_nonfinite:
            log.error("%d non-finite losses in a row at step %d: stopping (lower --lr, set "
                      "--gclip, or check the data)", p.nonfinite_run, p.step)
            return True
        return False

    def _save_on_exit(self) -> bool:
        """The final save, written when this returns; a failure is logged (not raised over the
        error that ended training), as is one of the save that was still being written."""
        try:
            self.saver.wait()  # only after an error: otherwise fit waited for it already
        except runfolder.SaveError as e:
            log.error(checkpointing.SAVE_FAILED, e, checkpointing.after_failed_save(self.settings.save))
        try:
            return self.save()
        except runfolder.SaveError as e:
            log.error(checkpointing.SAVE_FAILED, e, checkpointing.after_failed_save(self.settings.save))
            return False

    def train_step(self, micro_batches: list[dict] | dict) -> float | None:
        """One optimiser step on the one-task micro-batches of a step (--accumulate of them, or
        one batch): their mean loss, or None when one was not finite or too large (skipped)."""
        if isinstance(micro_batches, dict):
            micro_batches = [micro_batches]
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        k, values = len(micro_batches), []
        ddp = isinstance(self.model, nn.parallel.DistributedDataParallel)
        for j, batch in enumerate(micro_batches):
            # DDP averages the gradients over the processes once a step: on the last micro-batch
            synced = ddp and j == k - 1
            with self.model.no_sync() if ddp and not synced else contextlib.nullcontext():
                loss = self._micro_loss(batch, self.progress.step * k + j)
                # averaged over the ranks: a rank whose own loss is NaN skips with the others, not alone
                # (a skipped backward would leave its peers waiting in DDP's all-reduce)
                values.append(distributed.mean_over_ranks(loss))
                if not math.isfinite(values[-1]) or self._too_large(values[-1]):
                    if synced:
                        (loss * 0).backward()  # DDP's forward awaits it; the gradients are dropped
                    return self._skip(values[-1])
                self.scaler.scale(loss / k).backward()
        self.progress.nonfinite_run = 0
        if self.settings.gclip > 0:
            self.scaler.unscale_(self.optimizer)
            torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.settings.gclip)
        scale = self.scaler.get_scale() if self.scaler.is_enabled() else 0.0
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        # fp16: a step the scaler skipped (infinite gradients) lowered the scale, and moved nothing
        if self.ema is not None and (not self.scaler.is_enabled() or self.scaler.get_scale() >= scale):
            self.ema.update_parameters(checkpointing.unwrap(self.model))
        return sum(values) / k

    def _micro_loss(self, batch: dict, micro: int) -> Tensor:
        """The loss of one micro-batch; its index in the run, ``micro``, seeds its random crops
        and masks (one per optimiser step without --accumulate)."""
        hr = batch["hr"].to(self.device, non_blocking=True)
        task_id = int(batch["task_id"])
        if batch["lr"] is None:  # --gpu_degrade: bicubic or noise made here, on the device
            seed = seeded("gpu_degrade", self.settings.seed, self.rank, batch["step"]).initial_seed()
            generator = torch.Generator(self.device).manual_seed(seed)  # batch ``step`` of this rank's
            lr_img = synthesize_lr(hr, self.settings.task_names[task_id], generator)
        else:
            lr_img = batch["lr"].to(self.device, non_blocking=True)
        if self.settings.progressive:
            lr_img, hr = progressive_crop(lr_img, hr, *self.stage(self.progress.step),
                                          seeded("progressive", self.settings.seed, micro))
        if "skipped" in batch:
            self.skipped_files[int(batch.get("worker", 0))] = int(batch["skipped"])
        amp = AMP_DTYPES.get(self.settings.amp)
        with torch.autocast(self.device.type, dtype=amp, enabled=amp is not None):
            return self.loss(lr_img, hr, task_id, micro)

    def _skip(self, value: float) -> None:
        """Skip this step (a non-finite or too large loss): no weight moves, the schedule does."""
        self.optimizer.zero_grad(set_to_none=True)
        self.progress.nonfinite_total += 1
        self.progress.nonfinite_run += 1
        log.warning("step %d: loss %s skipped", self.progress.step, value)
        with warnings.catch_warnings():  # torch's warning that the schedule moved before any step
            warnings.simplefilter("ignore", UserWarning)
            self.scheduler.step()

    def loss(self, lr_img: Tensor, hr: Tensor, task_id: int, step: int) -> Tensor:
        """L1 (on the masked cells for mim), plus the weighted contrastive loss under --con_loss."""
        extra = {}
        if self.settings.task_names[task_id] == MIM:  # random cells, the same on a resume
            extra["mask"] = random_token_mask(lr_img.shape[0], lr_img.shape[-1] // self.patch_dim,
                                              self.settings.mask_ratio,
                                              seeded("mim", self.settings.seed, self.rank, step))
        if self.settings.con_loss:
            out, tokens = self.model(lr_img, task_id, return_tokens=True, **extra)
        else:
            out, tokens = self.model(lr_img, task_id, **extra), None
        loss = masked_l1(out, hr, extra["mask"], self.patch_dim) if extra else l1_loss(out, hr)
        if tokens is not None:
            loss = loss + self.settings.con_weight * contrastive_loss(tokens)
        return loss

    @property
    def patch_dim(self) -> int:
        """Pixels per token side of the network (what a mim mask cell covers)."""
        return checkpointing.unwrap(self.model).cfg.patch_dim

    def stage(self, step: int) -> tuple[int, int]:
        """(patch size, batch size) of progressive training at ``step``; the last stage goes on."""
        end = 0
        for patch, size, steps in self.settings.progressive:
            end += steps
            if step < end:
                return patch, size
        return self.settings.progressive[-1][:2]

    def _too_large(self, value: float) -> bool:
        """The authors' --skip_threshold: a loss this many times the running mean is skipped."""
        avg = self.loss_average
        self.loss_average = value if avg is None else 0.99 * avg + 0.01 * value
        return avg is not None and value > self.settings.skip_threshold * avg

    def _after_step(self, loss: float | None) -> None:
        self.saver.check()  # a save that failed in the background stops training, as ever
        step = self.progress.step
        if self.writer is not None and loss is not None:
            self.writer.add_scalar("train/loss", loss, step)
            self.writer.add_scalar("train/lr", self.scheduler.get_last_lr()[0], step)
        if step % self.settings.print_every == 0:
            log.info("step %d: loss %s, lr %.3g, %d file read(s) skipped so far", step, loss,
                     self.scheduler.get_last_lr()[0], sum(self.skipped_files.values()))
        if step % self.settings.save_every == 0:
            self.save(background=True)
        if self.validate is not None and step % self.settings.test_every == 0:
            self.run_validation()

    def run_validation(self) -> None:
        """Evaluate on --data_test (rank 0) and keep the best model by mean PSNR."""
        if self.rank != 0:
            return
        try:  # a validation can outlast Slurm's --signal warning: a stop ends it, and training
            with stops.StopSignals(raise_=True):
                psnr, previews = self.validate(self.eval_net, self.progress.step)
        except KeyboardInterrupt as e:  # no report of this step; the state is saved as after any step
            self.stop.received = stops.stop_signal(e)
            log.warning("the validation of step %d stopped: its results are not kept", self.progress.step)
            return
        p = self.progress
        if self.writer is not None:
            for name, value in psnr.items():
                self.writer.add_scalar(f"val/psnr/{name}", value, p.step)
            for name, image in previews.items():
                self.writer.add_image(f"val/{name}", image.clamp(0, 255) / 255, p.step)
        mean = sum(psnr.values()) / len(psnr)
        if mean > p.best_psnr:
            p.best_psnr, p.best_step = mean, p.step
            weights = checkpointing.bare_state_dict(self.delivered)
            for name in self.weight_names("model_best"):
                self.save_weights(weights, name)
            self.write_record()  # its best_step, for evaluations of model_best.pt
        log.info("step %d: validation PSNR %.3f dB (best %.3f at step %d)", p.step, mean,
                 p.best_psnr, p.best_step)
