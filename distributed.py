"""Running under torchrun: this process's rank, world and device, the job's process group, and
what a peer's failure looks like."""
from __future__ import annotations

import contextlib
import datetime
import gc
import os
import re
from collections.abc import Iterator

import torch
from torch import Tensor

import stops
import utility

GLOO_SOURCE = re.compile(r"^\[[^\]]*\]\s*")  # "[.../pair.cc:545] " before gloo's message
PEER_FAILURE = re.compile(r"closed by peer|reset by peer|remote worker|gloo|NCCL|timed? ?out",
                          re.IGNORECASE)  # how gloo and NCCL say a peer died or stalled


class JoinError(RuntimeError):
    """This process could not join the torchrun job's process group."""


def world_size() -> int:
    """The number of processes of this torchrun job (1 otherwise)."""
    return utility.torchrun_count("WORLD_SIZE", 1)


def rank() -> int:
    """This process's rank under torchrun (0 otherwise)."""
    return utility.torchrun_count("RANK", 0)


def pick_device(cpu: bool) -> torch.device:
    """CUDA (this process's GPU under torchrun) unless ``cpu`` or none is present."""
    local = utility.torchrun_count("LOCAL_RANK", 0)
    return torch.device(f"cuda:{local}" if torch.cuda.is_available() and not cpu else "cpu")


def message(error: BaseException) -> str:
    """A collective's error in one line, without gloo's source prefix."""
    return GLOO_SOURCE.sub("", utility.last_line(error))


@contextlib.contextmanager
def process_group(device: torch.device, timeout: int) -> Iterator[None]:
    """Inside: this process has joined the torchrun job's process group (gloo on the CPU, nccl
    on CUDA; collectives give up after ``timeout`` s), left on the way out. JoinError when the
    peers cannot be reached."""
    try:
        if device.type == "cuda":
            torch.cuda.set_device(device)
        wait = datetime.timedelta(seconds=timeout)
        own, world = rank(), world_size()
        # torchrun keeps one store across the restarts of a job (--max-restarts): the keys of each
        # attempt get their own prefix, or a restarted rank reads a dead rank's address from it
        store, _, _ = next(torch.distributed.rendezvous("env://", own, world, timeout=wait))
        attempt = os.environ.get("TORCHELASTIC_RESTART_COUNT", "0")
        torch.distributed.init_process_group(
            "nccl" if device.type == "cuda" else "gloo", timeout=wait, rank=own, world_size=world,
            store=torch.distributed.PrefixStore(f"ipt_attempt_{attempt}", store))
    except (torch.distributed.DistError, RuntimeError, ValueError) as e:
        raise JoinError(f"cannot join the torchrun job's processes ({message(e)}): check the "
                        f"rendezvous and the network, then start again") from None
    try:
        yield
    finally:
        stops.ignore_stop_signals()
        # what start-up froze (utility.collect_again) is collectable again and collected now: a
        # DDP model left in a reference cycle holds the group, whose threads must end before exit
        gc.unfreeze()
        gc.collect()
        with contextlib.suppress(torch.distributed.DistError, RuntimeError):
            torch.distributed.destroy_process_group()
        gc.freeze()  # what is left lives until exit: Python's last collections skip it (1.3 s a rank)


def all_agree(ok: bool, device: torch.device) -> bool:
    """Whether ``ok`` holds on every rank of the torchrun job (one all-reduce; ``ok`` alone
    without a process group)."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return ok
    return mean_over_ranks(torch.tensor(float(ok), device=device if device.type == "cuda" else "cpu")) == 1


def mean_over_ranks(value: Tensor) -> float:
    """``value`` (one number) averaged over the ranks of the torchrun job (one all-reduce; ``value``
    alone without a process group): what every rank decides on, so that all decide alike."""
    if not (torch.distributed.is_available() and torch.distributed.is_initialized()):
        return value.item()
    total = value.detach().float().reshape(1).clone()
    torch.distributed.all_reduce(total)
    return total.item() / torch.distributed.get_world_size()


def peer_failure(error: BaseException) -> str | None:
    """What a collective's error says when a peer died or stalled (None: another error)."""
    if not (isinstance(error, (torch.distributed.DistError, RuntimeError))
            and PEER_FAILURE.search(str(error))):
        return None
    return message(error).split(". This is typically")[0]


def finish(world: int) -> None:
    """Wait for every rank at the end of training (its state is saved), so that no rank tears
    gloo down while another still saves (that can abort it); a stop signal from here on (torchrun
    stopping the ranks still running) must not turn this exit into a kill."""
    if world > 1:
        stops.ignore_stop_signals()
        torch.distributed.barrier()
