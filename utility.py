"""Helpers every part may use; a leaf module (it imports nothing from the project).

- ``setup_logging``: the "ipt" logger, to the console and appended to ``RUN/log.txt``;
- run records: ``sha256_file``, ``git_commit`` (runs ``git`` in a subprocess), ``jsonable``;
- ``atomic_write`` / ``write_json`` / ``write_text`` / ``atomic_save``: files written to a
  temporary and renamed (SaveError on a full disk), ``nonfinite_tensors`` to check weights first;
- ``read_small_file``: a record's bytes, read only from a regular file of bounded size;
- ``keep_freed_memory``: tunes glibc malloc (``mallopt``) so CPU forward passes reuse freed memory;
- ``host_copy`` / ``BackgroundWriter``: a snapshot of tensors on the CPU, written by one thread
  while training goes on.
"""
from __future__ import annotations

import contextlib
import copy
import hashlib
import json
import logging
import os
import re
import shutil
import stat
import subprocess
import tempfile
import threading
from collections.abc import Callable, Mapping

import torch

# ----------------------------------------------------------------------------------------
# Logging
# ----------------------------------------------------------------------------------------
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
    console = logging.StreamHandler()
    console.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    # a file name that is not UTF-8 (undecodable bytes) is logged as \xNN, never a logging error
    to_file = logging.FileHandler(os.path.join(save_dir, LOG_NAME), encoding="utf-8",
                                  errors="backslashreplace")
    to_file.setFormatter(logging.Formatter(LOG_FORMAT))
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


# ----------------------------------------------------------------------------------------
# Run records
# ----------------------------------------------------------------------------------------
def sha256_file(path: str) -> str:
    """The SHA-256 of a file, hex."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


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


class SaveError(OSError):
    """A file that could not be written (full disk, no permission); the previous one is kept."""


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


FILE_MODE = 0o666 & ~_umask()  # what open() would give a new file
# torch.save reports a failed write (a full disk) as a RuntimeError of several wordings; a
# loader worker's death, raised by its SIGCHLD handler while a save runs, is not about the file
NOT_A_WRITE_FAILURE = re.compile(r"DataLoader worker")


def unwritable(folder: str) -> str | None:
    """Why no file can be written in ``folder`` (the OS's reason), or None when one can: a
    temporary file is made there and removed to find out."""
    try:
        with tempfile.TemporaryFile(dir=folder):
            return None
    except OSError as e:
        return e.strerror or str(e)


def atomic_write(path: str, write: Callable[[str], None], durable: bool = False) -> None:
    """Call ``write(tmp)`` on a fresh temporary beside ``path``, then rename it over ``path``
    (``durable``: with the temporary's data flushed to disk first, so a power cut or kernel crash
    after the rename cannot leave an empty file in its place).

    The temporary has a unique name (two processes never share one) and is created anew, so a
    symlink at ``path`` is replaced, never followed. On failure the temporary is removed, the
    previous ``path`` is left as it was, and a SaveError says which file and how much space is free.
    """
    folder = os.path.dirname(path) or "."
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    except OSError as e:
        raise SaveError(_save_failure(path, e)) from None
    os.close(fd)
    try:
        os.chmod(tmp, FILE_MODE)
        write(tmp)
        if durable:
            with open(tmp, "rb") as f:
                os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        with contextlib.suppress(OSError):
            os.remove(tmp)
        if isinstance(e, OSError) or (isinstance(e, RuntimeError) and not NOT_A_WRITE_FAILURE.search(str(e))):
            raise SaveError(_save_failure(path, e)) from None
        raise


def _save_failure(path: str, error: BaseException) -> str:
    """One line: the file, why it could not be written, and the free space where it goes."""
    reason = str(error).splitlines()[0] if str(error) else type(error).__name__
    if isinstance(error, OSError) and error.strerror:
        reason = error.strerror
    try:
        free = f"{shutil.disk_usage(os.path.dirname(path) or '.').free / 2 ** 20:.1f} MiB free there"
    except OSError:
        free = "free space unknown"
    return f"cannot write {path} ({reason}; {free}); the previous file, if any, is kept"


def write_json(path: str, data: object) -> None:
    """Write JSON atomically (see ``atomic_write``)."""
    def dump(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(jsonable(data), f, indent=2)

    atomic_write(path, dump)


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


def is_count(value: object, least: int = 0, most: int = MAX_COUNT) -> bool:
    """An int (not a bool) from ``least`` to ``most``: what a record's counts and steps must be."""
    return isinstance(value, int) and not isinstance(value, bool) and least <= value <= most


def last_line(error: BaseException) -> str:
    """The message of an error in one line, without the worker traceback a DataLoader puts
    before it."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if len(lines) > 1 and "Traceback" in str(error):  # raised in a loader worker
        return lines[-1].split(": ", 1)[-1]
    return lines[0] if lines else type(error).__name__


def write_text(path: str, text: str) -> None:
    """Write a text file atomically (see ``atomic_write``)."""
    def dump(tmp: str) -> None:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)

    atomic_write(path, dump)


def atomic_save(obj: object, path: str) -> None:
    """torch.save atomically and durably (see ``atomic_write``): a crash mid-write, or a machine
    that goes down just after, leaves the old file or the new one, never a damaged one."""
    atomic_write(path, lambda tmp: torch.save(obj, tmp), durable=True)


# torch.load's weights-only refusal names the global a pickle would call, in one of two wordings
UNSAFE_GLOBAL = re.compile(r"(?:Unsupported global: GLOBAL|unsupported GLOBAL) (\S+)")
ANSI_ESCAPE = re.compile(r"\x1b\[[0-9;]*m")
# lines of torch's refusal that advise loading unsafely or point to its docs: never shown
TORCH_ADVICE = re.compile(r"weights.only|Weights only load failed|Check the documentation", re.I)


def load_failure(error: BaseException) -> str:
    """One line saying why ``torch.load(..., weights_only=True)`` failed on a file (never torch's
    advice to load it unsafely)."""
    text = ANSI_ESCAPE.sub("", str(error))
    unsafe = UNSAFE_GLOBAL.search(text)
    if unsafe:  # a pickle that would call something: refused, never run
        return f"it would run code ({unsafe.group(1).rstrip('.,')}) when loaded, which is refused"
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    lines = [line for line in lines if not TORCH_ADVICE.search(line)] or (
        ["it holds objects other than tensors and plain values, which is refused"] if lines else [])
    return f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__


def nonfinite_tensors(tensors: Mapping[str, torch.Tensor]) -> list[str]:
    """The names of the floating-point tensors that hold a NaN or an infinity."""
    return [k for k, v in tensors.items() if v.is_floating_point() and not torch.isfinite(v).all()]


TEMPORARY_NAME = re.compile(r"^\..+\.[^.]+\.tmp$")  # what atomic_write creates: .NAME.XXXXXX.tmp
RUN_SUBFOLDERS = ("", "model")  # where a run writes its files atomically


def remove_stale_temporaries(folder: str) -> list[str]:
    """Remove the temporaries of atomic writes in a run directory (and its model/) that a killed
    process left; only the holder of the run's lock may call it (no one else writes there)."""
    removed = []
    for sub in RUN_SUBFOLDERS:
        where = os.path.join(folder, sub)
        with contextlib.suppress(OSError):
            for entry in os.scandir(where):
                if TEMPORARY_NAME.match(entry.name) and entry.is_file(follow_symlinks=False):
                    with contextlib.suppress(OSError):
                        os.remove(entry.path)
                        removed.append(entry.path)
    return removed


def usable_cpus() -> int:
    """The CPU cores this process may run on."""
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


def cpuinfo(*keys: str) -> str | None:
    """The first value in /proc/cpuinfo of one of ``keys`` ("model name"; "flags" on x86,
    "Features" on Arm); None where it has none or cannot be read (not Linux)."""
    try:
        with open("/proc/cpuinfo", encoding="ascii", errors="replace") as f:
            for line in f:
                key, _, value = line.partition(":")
                if key.strip() in keys:
                    return value.strip()
    except OSError:
        return None
    return None


def available_memory() -> int | None:
    """Bytes this process may still allocate on the CPU: MemAvailable, lowered by a cgroup's
    memory limit when one is set (None when neither can be read)."""
    found = []
    try:
        with open("/proc/meminfo", encoding="ascii") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    found.append(int(line.split()[1]) * 1024)
    except (OSError, ValueError, IndexError):
        pass
    try:
        with open("/sys/fs/cgroup/memory.max", encoding="ascii") as f:
            limit = f.read().strip()
        with open("/sys/fs/cgroup/memory.current", encoding="ascii") as f:
            used = int(f.read().strip())
        if limit.isdigit():
            found.append(max(int(limit) - used, 0))
    except (OSError, ValueError):
        pass
    return min(found) if found else None


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


# ----------------------------------------------------------------------------------------
# Writing checkpoints beside the training
# ----------------------------------------------------------------------------------------
def host_copy(value: object, reuse: object = None) -> object:
    """A copy of nested dicts, lists and tuples whose tensors are on the CPU: a clone of a CPU
    tensor, page-locked (pinned) memory for a CUDA tensor. It shares no storage with ``value``, so
    training may go on while it is written. ``reuse``, an earlier copy of the same layout that
    nothing reads any more, has its tensors overwritten where shape and dtype match, instead of
    memory allocated (and page-faulted in) afresh. Other values are copied with deepcopy."""
    cuda_devices = set()

    def copy_of(item: object, old: object) -> object:
        if isinstance(item, torch.Tensor):
            item = item.detach()
            fits = (isinstance(old, torch.Tensor) and old.device.type == "cpu"
                    and old.shape == item.shape and old.dtype == item.dtype)
            if item.device.type == "cuda":
                cuda_devices.add(item.device)
                target = old if fits else torch.empty_like(item, device="cpu", pin_memory=True)
                return target.copy_(item, non_blocking=True)
            if fits:
                return old.copy_(item)
            return item.clone() if item.device.type == "cpu" else item.to("cpu")
        if isinstance(item, dict):
            olds = old if isinstance(old, dict) else {}
            return {k: copy_of(v, olds.get(k)) for k, v in item.items()}
        if isinstance(item, (list, tuple)):
            olds = old if isinstance(old, (list, tuple)) and len(old) == len(item) else [None] * len(item)
            items = [copy_of(v, o) for v, o in zip(item, olds, strict=False)]
            return type(item)(*items) if hasattr(item, "_fields") else type(item)(items)
        return copy.deepcopy(item)

    result = copy_of(value, reuse)
    for device in cuda_devices:  # the copies, queued on each device's stream, have landed
        torch.cuda.synchronize(device)
    return result


class BackgroundWriter:
    """Runs one job at a time in a thread of its own (never two, never a queue): ``submit`` first
    waits for the job in flight. An exception a job raises is raised again in the caller's thread
    by the next ``wait``, ``submit`` or ``check``, once."""

    def __init__(self, name: str = "writer"):
        self.name = name
        self._thread: threading.Thread | None = None
        self._error: BaseException | None = None

    def submit(self, job: Callable[[], None]) -> None:
        """Start ``job`` in the background once the previous one is done (its error raised here)."""
        self.wait()
        self._thread = threading.Thread(target=self._run, args=(job,), name=self.name)
        self._thread.start()

    def _run(self, job: Callable[[], None]) -> None:
        try:
            job()
        except BaseException as e:  # handed to the caller's thread, never a thread's traceback
            self._error = e

    @property
    def busy(self) -> bool:
        """Whether a job is being run now."""
        return self._thread is not None and self._thread.is_alive()

    def wait(self) -> None:
        """Block until the job in flight is done; raise the exception it ended with, if any."""
        if self._thread is not None:
            self._thread.join()
            self._thread = None
        error, self._error = self._error, None
        if error is not None:
            raise error

    def check(self) -> None:
        """Raise the exception of a job that has ended with one (without waiting for a running job)."""
        if self._error is not None and not self.busy:
            self.wait()
