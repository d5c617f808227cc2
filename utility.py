"""Helpers every part may use; a leaf module (it imports nothing from the project): logging, run
records and their bounded reads, one-line load failures, and what this machine and torchrun offer
(cores, memory, glibc malloc, the garbage collector after start-up, process counts)."""
from __future__ import annotations

import contextlib
import gc
import logging
import os
import pathlib
import pickle
import re
import stat
import subprocess
import sys
import warnings
from collections.abc import Iterator, Mapping
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # loads no torch: option parsing, which uses this module, answers before torch loads
    from torch import Tensor

# ---- Logging ----
LOG_NAME = "log.txt"
STATE_NAME = "state.pt"  # a training run's full state, in its run directory
# beside a run's checkpoints (RUN/model/): the options that built the model, how long it trained
TRAINING_RECORD = "training.json"
RECORD_MAX_BYTES = 1 << 20  # a training record is a few hundred bytes; anything larger is not one
LOG_FORMAT = "%(asctime)s %(levelname)s %(message)s"


def setup_logging(save_dir: str, debug: bool = False, quiet: bool = False) -> logging.Logger:
    """The "ipt" logger, to the console and appended to ``save_dir/log.txt`` (quiet: errors only)."""
    logger = close_logging()
    if quiet:  # the other ranks of a distributed run: no file, errors to the console
        logger.setLevel(logging.ERROR)
        logger.addHandler(logging.StreamHandler())
        return logger
    os.makedirs(save_dir, exist_ok=True)
    logger.setLevel(logging.DEBUG if debug else logging.INFO)
    # a file name that is not UTF-8 (undecodable bytes) is logged as \xNN, never a logging error
    to_file = logging.FileHandler(os.path.join(save_dir, LOG_NAME), encoding="utf-8",
                                  errors="backslashreplace")
    to_file.setFormatter(logging.Formatter(LOG_FORMAT))
    console = logging.StreamHandler()
    console.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    logger.addHandler(console)
    logger.addHandler(to_file)
    return logger


def close_logging() -> logging.Logger:
    """The "ipt" logger without handlers: what setup_logging set up is closed."""
    logger = logging.getLogger("ipt")
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    return logger


# ---- Run records ----
def git_commit(folder: str) -> str | None:
    """The commit checked out in ``folder`` (with '+dirty' for local changes), None outside git."""
    def git(*args: str) -> str:
        return subprocess.run(["git", "-C", folder, *args], capture_output=True, text=True,
                              timeout=10, check=True).stdout.strip()

    try:
        commit = git("rev-parse", "HEAD")
        return commit + ("+dirty" if git("status", "--porcelain", "--untracked-files=no") else "")
    except (OSError, subprocess.SubprocessError):
        return None


def jsonable(value: object) -> object:
    """Options and results as plain JSON values (tuples as lists, other objects as strings)."""
    if isinstance(value, dict):
        return {str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [jsonable(v) for v in value]
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return str(value)


class RecordError(ValueError):
    """A record this program wrote (training.json, ...) that is damaged or was not written by it."""


# What os.stat's st_mode says a path is, for messages; anything else is a regular file
FILE_KINDS = ((stat.S_ISDIR, "a folder"), (stat.S_ISFIFO, "a named pipe (FIFO)"),
              (stat.S_ISCHR, "a character device"), (stat.S_ISBLK, "a block device"),
              (stat.S_ISSOCK, "a socket"), (stat.S_ISLNK, "a symbolic link"))
O_NONBLOCK = getattr(os, "O_NONBLOCK", 0)  # opening a FIFO this way returns at once


def file_kind(mode: int, other: str = "not a file") -> str:
    """What an st_mode says a path is ("a folder", "a named pipe (FIFO)", ...), ``other`` for the
    rest (a regular file)."""
    return next((what for test, what in FILE_KINDS if test(mode)), other)


def read_small_file(path: str, max_bytes: int = RECORD_MAX_BYTES) -> bytes:
    """The bytes of ``path`` if it is (or links to) a regular file of at most ``max_bytes``;
    RecordError saying what it is otherwise. A pipe or device is never read: the descriptor is
    opened non-blocking and checked before one byte is read."""
    fd = os.open(path, os.O_RDONLY | O_NONBLOCK)
    with os.fdopen(fd, "rb") as f:
        mode = os.fstat(fd).st_mode
        if not stat.S_ISREG(mode):
            raise RecordError(f"{path}: it is {file_kind(mode)}, not a regular file")
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:
        raise RecordError(f"{path}: larger than a record ({max_bytes} bytes)")
    return data


MAX_COUNT = 10 ** 12  # steps, epochs, and every other count of a record or option: past any real run
MAX_LOADER_WORKERS = 1024  # loader worker processes of one rank: a large node's cores, with room
MAX_INT64 = 2 ** 63 - 1  # file sizes and st_mtime_ns: what the operating system's fields hold


def last_line(error: BaseException) -> str:
    """The message of an error in one line, without the worker traceback a DataLoader puts before it."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if len(lines) > 1 and "Traceback" in str(error):  # raised in a loader worker
        return lines[-1].split(": ", 1)[-1]
    return lines[0] if lines else type(error).__name__


# torch.load's weights-only refusal names the global a pickle would call, in one of two wordings
UNSAFE_GLOBAL = re.compile(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) (\S+)")
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")
# lines of torch's refusal that advise loading unsafely or point to its docs, and the heading of
# load_state_dict's list of the keys that do not fit: never shown
TORCH_ADVICE = re.compile(r"weights.only|Weights only load failed|Check the documentation|"
                          r"^Error\(s\) in loading state_dict", re.I)


@contextlib.contextmanager
def quiet_pickle_notes() -> Iterator[None]:
    """Within: torch.load's note on a pickle protocol other than torch's (two lines of its source
    on stderr, before it reads or refuses the file) is not shown; a refusal is load_failure's line."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Detected pickle protocol", category=UserWarning)
        yield


def load_failure(error: BaseException) -> str:
    """One line saying why ``torch.load(..., weights_only=True)`` or a ``load_state_dict`` failed
    on a file (never torch's advice to load it unsafely)."""
    text = ANSI_ESCAPE.sub("", str(error))
    if unsafe := UNSAFE_GLOBAL.search(text):  # a pickle that would call something: refused, never run
        return f"it would run code ({unsafe.group(1).rstrip('.,')}) when loaded, which is refused"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    lines = [line for line in lines if not TORCH_ADVICE.search(line)] or (
        ["it holds objects other than tensors and plain values, which is refused"] if lines else [])
    said = f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__
    return f"not a file torch.save wrote ({said})" if isinstance(error, pickle.UnpicklingError) else said


def nonfinite_tensors(tensors: Mapping[str, Tensor]) -> list[str]:
    """The names of the floating-point tensors that hold a NaN or an infinity."""
    return [k for k, v in tensors.items() if v.is_floating_point() and not v.isfinite().all()]


def usable_cpus() -> int:
    """The CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def cpuinfo(*keys: str) -> str | None:
    """The first value in /proc/cpuinfo of one of ``keys`` ("model name"; "flags" on x86,
    "Features" on Arm); None where it has none or cannot be read (not Linux)."""
    with contextlib.suppress(OSError), open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
        for line in f:
            key, _, value = line.partition(":")
            if key.strip() in keys:
                return value.strip()
    return None


def available_memory() -> int | None:
    """Bytes this process may still allocate on the CPU: MemAvailable, lowered by a cgroup's
    memory limit when one is set (None when neither can be read)."""
    found = []
    with contextlib.suppress(OSError, ValueError, IndexError), open("/proc/meminfo", encoding="ascii") as f:
        found += [int(line.split()[1]) * 1024 for line in f if line.startswith("MemAvailable:")]
    with contextlib.suppress(OSError, ValueError):
        limit = pathlib.Path("/sys/fs/cgroup/memory.max").read_text(encoding="ascii").strip()
        used = int(pathlib.Path("/sys/fs/cgroup/memory.current").read_text(encoding="ascii"))
        if limit.isdigit():
            found.append(max(int(limit) - used, 0))
    return min(found) if found else None


def torchrun_count(name: str, default: int) -> int:
    """The count torchrun sets in environment variable ``name`` (``default`` without it); one
    line and exit status 2 when it holds something else."""
    text = os.environ.get(name, str(default))
    if not (text.isascii() and text.isdigit() and len(text) < 10 and int(text) >= min(default, 1)):
        print(f"main.py: error: the environment variable {name}={text[:40]!r} is not a count "
              f"(torchrun sets it; unset it to run one process)", file=sys.stderr)
        sys.exit(2)
    return int(text)


M_TRIM_THRESHOLD, M_MMAP_MAX = -1, -4  # glibc mallopt parameters (malloc.h)
KEEP_FREED_BYTES = 1 << 30  # freed heap memory glibc may keep for reuse before returning it


def keep_freed_memory() -> bool:
    """Ask glibc malloc to reuse freed heap blocks instead of mapping large ones afresh per call.

    On the CPU each forward pass allocates activations of tens of MB; by default glibc serves
    those with mmap and unmaps them on free, so every call page-faults them in again (about 1.3x
    slower for the full-size model). False where the C library is not glibc (nothing changed).
    """
    import ctypes

    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(M_MMAP_MAX, 0) and libc.mallopt(M_TRIM_THRESHOLD, KEEP_FREED_BYTES))
    except (OSError, AttributeError):
        return False


def collect_again() -> None:
    """Turn Python's garbage collector back on where start-up turned it off (main.py and the
    scripts that load torch do).

    Start-up makes about a million objects that live as long as the process (torch, the tables of
    its compiler, which torch's optimisers import, the model): collecting while they are made
    costs about a second of every run's start. Frozen, they stay out of every later collection's
    walk, the last ones at exit included (another 0.5 s), and forked loader workers do not copy
    the memory pages such walks would touch.
    """
    if not gc.isenabled():
        gc.freeze()
        gc.enable()
