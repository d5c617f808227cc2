"""A training run's checkpoints: what a save writes (model/ weights, state.pt, training.json) and
how a --resume reads it back and puts every counter and random generator where it was."""
from __future__ import annotations

import functools
import itertools
import logging
import os
import random
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor, nn

import records
import runfolder
import utility
from model.checkpoint import SAFETENSORS_SUFFIX, write_safetensors
from utility import STATE_NAME

log = logging.getLogger("ipt")
SAVE_FAILED = "training state not saved: %s; %s"
# --auto_resume, not --resume: a run started from --pretrain keeps it (its model options), and
# --resume is refused beside --pretrain and --reset
RESUME_HINT = "interrupted: continue this run with the same command and --auto_resume (in place of --reset)"


@dataclass
class Progress:
    """Counters that a resumed run continues from."""

    step: int = 0
    best_psnr: float = float("-inf")
    best_step: int = -1
    nonfinite_total: int = 0
    nonfinite_run: int = 0


def unwrap(model: nn.Module) -> nn.Module:
    """The network inside DistributedDataParallel and torch.compile wrappers."""
    inner = getattr(model, "module", model)
    return getattr(inner, "_orig_mod", inner)


def bare_state_dict(model: nn.Module) -> dict[str, Tensor]:
    """The model's weights in the authors' key format (no DDP or compile wrappers)."""
    return {k: v.detach().cpu() for k, v in unwrap(model).state_dict().items()}


def rng_states() -> dict:
    """Every random generator the training touches, as tensors and plain values (weights-only)."""
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    states = {"torch": torch.get_rng_state(),
              "numpy": [kind, torch.from_numpy(keys.astype(np.int64)), pos, has_gauss, gauss],
              "python": random.getstate()}
    if torch.cuda.is_available():
        states["cuda"] = torch.cuda.get_rng_state_all()
    return states


def set_rng_states(states: dict) -> None:
    """Restore what rng_states saved."""
    torch.set_rng_state(states["torch"])
    kind, keys, pos, has_gauss, gauss = states["numpy"]
    np.random.set_state((kind, keys.numpy().astype(np.uint32), pos, has_gauss, gauss))
    version, internal, gauss = states["python"]  # random.setstate needs tuples, not lists
    random.setstate((version, tuple(internal), gauss))
    if "cuda" in states and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(states["cuda"])


class Checkpointing:
    """The Trainer's saving and resuming: it reads the Trainer's model, optimizer, scheduler,
    scaler, progress and counters, and writes them under --save (rank 0 only)."""

    _last_snapshot: Snapshot | None = None  # its memory is reused by the next snapshot
    ema: nn.Module | None = None  # the moving average of the weights (torch's AveragedModel)

    @functools.cached_property
    def saver(self) -> runfolder.BackgroundWriter:
        """The thread that writes the checkpoints: one save in flight at most."""
        return runfolder.BackgroundWriter("checkpoint writer")

    def save(self, background: bool = False) -> bool:
        """model_latest.pt (bare weights), the full training state, then training.json, each
        written atomically, of the training as it is now.

        The files are written from a copy on the CPU by the checkpoint thread, after the save
        before this one (waited for; its failure is raised here). With ``background`` training
        goes on while they are written; otherwise they are written when this returns. Weights
        holding a NaN or an infinity are never written (False; the old files are kept). With
        --save_models the weights are also kept as model/model_<step>.pt.
        """
        if self.rank != 0:
            return True
        self.saver.wait()
        broken = self.nonfinite_weights()
        if broken:
            log.error("not saving step %d: %d weight tensor(s) are NaN or infinite (%s); %s and "
                      "the training state are those of the last good save", self.progress.step,
                      len(broken), broken[0], os.path.join(self.model_dir, "model_latest.pt"))
            return False
        snapshot = self.snapshot()
        self.saver.submit(lambda: self._write(snapshot))
        if not background:
            self.saver.wait()
        return True

    @property
    def delivered(self) -> nn.Module:
        """The network whose weights the run delivers: the moving average under --ema_decay (the
        optimiser's weights then live in state.pt only, for --resume)."""
        return unwrap(self.model) if self.ema is None else self.ema.module

    def nonfinite_weights(self) -> list[str]:
        """The weight tensors (and the average's) holding a NaN or an infinity, on their device."""
        ema = [] if self.ema is None else utility.nonfinite_tensors(self.ema.module.state_dict())
        return utility.nonfinite_tensors(unwrap(self.model).state_dict()) + [f"ema:{n}" for n in ema]

    def snapshot(self) -> Snapshot:
        """What a save writes, of this step, copied to the CPU: one more copy of the state in
        memory (the weights, their average and the optimiser's moments), kept for the next
        snapshot to copy into; so no save may be being written while this runs."""
        step = self.progress.step
        names = self.weight_names("model_latest") + (
            self.weight_names(f"model_{step}") if self.settings.save_models else [])
        state = {"model": unwrap(self.model).state_dict(), "optimizer": self.optimizer.state_dict(),
                 "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict(),
                 "progress": vars(self.progress), "loss_average": self.loss_average,
                 "rng": rng_states(), "options": self.record,
                 "loader_workers": self.loader_workers, "schedule_steps": self.schedule_steps,
                 "world_size": self.world_size, "split_origin": self.split_origin,
                 "epoch_steps": self.epoch_steps, "train_seconds": self.train_seconds}
        if self.ema is not None:
            state["ema"] = self.ema.module.state_dict()
        last = self._last_snapshot.state if self._last_snapshot else None
        state, record = runfolder.host_copy((state, self.training_record()), reuse=(last, None))
        self._last_snapshot = Snapshot(step, names, state, record)
        return self._last_snapshot

    def _write(self, snapshot: Snapshot) -> None:
        """The files of a snapshot, always in this order: the weights, state.pt, then
        training.json, which describes weights written before it."""
        delivered = snapshot.state.get("ema", snapshot.state["model"])
        for name in snapshot.weight_files:
            self._write_weights(delivered, name, snapshot.step)
        runfolder.atomic_save(snapshot.state, os.path.join(self.settings.save, STATE_NAME))
        runfolder.write_json(self.record_path, {**snapshot.record, "weights": dict(self.weights_written)})

    def save_weights(self, weights: dict[str, Tensor], name: str) -> None:
        """model/NAME, written atomically once the save in flight is written; training.json will
        tell its step by its size and modification time (a file replaced since, or saved after
        the record, is not described)."""
        self.saver.wait()
        self._write_weights(weights, name, self.progress.step)

    def weight_names(self, stem: str) -> list[str]:
        """The files of model/ that get the weights called ``stem`` (--save_format)."""
        return [stem + suffix for suffix in self.settings.weight_suffixes]

    def _write_weights(self, weights: dict[str, Tensor], name: str, step: int) -> None:
        """model/NAME (a torch file, or .safetensors with the model's options in its metadata),
        written atomically, and what training.json says of it."""
        path = os.path.join(self.model_dir, name)
        if name.endswith(SAFETENSORS_SUFFIX):
            runfolder.atomic_write(
                path, lambda tmp: write_safetensors(weights, tmp, self.architecture or None), durable=True)
        else:
            runfolder.atomic_save(weights, path)
        info = os.stat(path)
        self.weights_written[name] = {"step": step, "size": info.st_size, "mtime_ns": info.st_mtime_ns}

    @property
    def record_path(self) -> str:
        """model/training.json."""
        return os.path.join(self.model_dir, utility.TRAINING_RECORD)

    def write_record(self) -> None:
        """model/training.json: what training_record says now (once the save in flight is written)."""
        self.saver.wait()
        runfolder.write_json(self.record_path, self.training_record())

    def training_record(self) -> dict:
        """What training.json holds: the model's options and how far training went."""
        p = self.progress
        return {"model": self.architecture.get("model"), "architecture": self.architecture,
                "step": p.step, "max_steps": self.total_steps, "schedule_steps": self.schedule_steps,
                "finished": p.step >= self.total_steps, "interrupted": self.interrupted,
                "best_step": p.best_step if p.best_step >= 0 else None,
                "train_seconds": round(self.train_seconds, 3),
                # the weights written are a moving average of the optimiser's, of this decay
                "ema": self.ema is not None, "ema_decay": self.settings.ema_decay,
                "weights": self.weights_written}

    def load(self, path: str) -> None:
        """Continue from a saved training state file."""
        self.load_state(read_state(path))
        log.info("resumed from %s at step %d", path, self.progress.step)

    def load_state(self, state: dict, path: str = STATE_NAME) -> None:
        """Continue from a training state already read (what ``save`` wrote, checked by
        ``read_state``); StateError when it does not fit this model and optimiser."""
        try:
            unwrap(self.model).load_state_dict(state["model"])
            if self.ema is not None:
                self.ema.module.load_state_dict(state["ema"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.scaler.load_state_dict(state["scaler"])
            _check_optimizer_shapes(self.optimizer)
        except (RuntimeError, ValueError, KeyError, TypeError, IndexError) as e:
            raise StateError(f"{path} does not fit this model and optimiser ("
                             f"{utility.load_failure(e)}): continue it with the options it was "
                             f"saved with, or start afresh with --reset") from None
        self.progress = Progress(**state["progress"])
        self.loss_average = state["loss_average"]
        self.train_seconds = float(state.get("train_seconds", 0.0))  # states before it: 0
        set_rng_states(state["rng"])
        record = records.read_training_record(self.record_path)
        self.weights_written = dict((record or {}).get("weights", {}))


def after_failed_save(save: str) -> str:
    """What to do after a save failed: continue from the state saved before, or start again."""
    if os.path.isfile(os.path.join(save, STATE_NAME)):  # after the reason: no room, a folder in the way...
        return "fix that and continue with --resume"
    return "fix that and start again (nothing was saved yet)"


@dataclass
class Snapshot:
    """What one save writes: the training state of a step, copied off the tensors training uses."""

    step: int
    weight_files: list[str]  # the model/ files that get the weights
    state: dict  # state.pt; its "model" is the weights
    record: dict  # training.json, but for its "weights", filled in once they are written


class StateError(RuntimeError):
    """A training state file that cannot be read or was not written by ``Trainer.save``."""


def read_state(path: str) -> dict:
    """A training state written by ``Trainer.save``, read weights-only (no code can run) and
    checked by records.STATE; StateError in one line otherwise."""
    try:
        with utility.quiet_pickle_notes():
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:  # pickle refusals, truncated or foreign files
        raise StateError(f"cannot read the training state {path}: {utility.load_failure(e)} (not "
                         f"a state.pt written by this program, or damaged; move it away, or start "
                         f"afresh with --reset)") from None
    fix = "start afresh with --reset (or another --save)"
    try:
        records.check(state, records.STATE, f"{path} is damaged or not a training state of this program",
                      fix)
    except utility.RecordError as e:
        raise StateError(str(e)) from None
    if state.get("split_origin", 0) > state["progress"]["step"]:
        raise StateError(f"{path}: key 'split_origin' is not a step this run has reached; {fix}")
    return state


def _check_optimizer_shapes(optimizer: torch.optim.Optimizer) -> None:
    """ValueError when a loaded optimiser state holds a tensor of another shape than its weight
    (load_state_dict checks the counts only; the first step would fail deep inside)."""
    for param in itertools.chain.from_iterable(group["params"] for group in optimizer.param_groups):
        for name, value in optimizer.state.get(param, {}).items():
            if isinstance(value, Tensor) and value.dim() > 0 and value.shape != param.shape:
                raise ValueError(f"its optimiser's {name} has shape {tuple(value.shape)} for a "
                                 f"weight of shape {tuple(param.shape)}")
