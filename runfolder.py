"""The run folder's life: its lock (``RunLock``), the files written into it (``atomic_write`` and
its wrappers: a crash leaves the old file or the new one), and the background writer (``host_copy``,
``BackgroundWriter``)."""
from __future__ import annotations

import contextlib
import copy
import json
import math
import os
import pathlib
import re
import shutil
import socket
import stat
import tempfile
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor

import torch

import records
from utility import O_NONBLOCK, file_kind, jsonable, read_small_file

# set by torchrun: the same for every restart of one job, "none" for every job without --rdzv_id
ELASTIC_RUN_ID = "TORCHELASTIC_RUN_ID"
LOCK_NAME = ".lock"  # {"host", "pid", "started", "command", "run_id"} of the process using the run
LOCK_RENEW_SECONDS = 30  # the holder touches its lock this often: proof of life for other hosts
# another host's lock not renewed for this long is a dead process's: 3 renewals missed
LOCK_MISSED_RENEWALS = 3


class LockError(RuntimeError):
    """A run directory that another live process is using."""


class RunLock(contextlib.AbstractContextManager):
    """``RUN/.lock``: created atomically by the process that runs there, removed when it ends.

    A live holder is never displaced. On this host the holder is alive while its process runs
    (its PID and start time); the lock of another host is alive while the holder renews it (it
    touches the file every LOCK_RENEW_SECONDS). A lock of another host counts as stale once not
    renewed for ``stale_after`` seconds (--dist_timeout), or for LOCK_MISSED_RENEWALS renewals when
    it was taken under the same torchrun run id (``--rdzv_id``) as ours: the earlier attempt of
    this job, whose node died. A stale lock is reported and taken over.
    """

    def __init__(self, folder: str, command: str = "", stale_after: float = 1800, option: str = "--save"):
        self.path = os.path.join(folder, LOCK_NAME)
        self.command, self.option = command, option  # option: what names the folder, in the refusal
        self.stale_after = max(stale_after, LOCK_RENEW_SECONDS * LOCK_MISSED_RENEWALS)
        self.held = False
        self._fd: int | None = None  # the lock file this process created, open for renewals
        self._stop_renewing = threading.Event()

    def acquire(self) -> str | None:
        """Take the lock; a note when a stale one was replaced, LockError when it is held.

        The record is written to a temporary first and hard-linked into place, which fails if the
        lock exists: another process never sees a lock without its record.
        """
        record = {"host": socket.gethostname(), "pid": os.getpid(), "started": process_start(os.getpid()),
                  "command": self.command, "run_id": os.environ.get(ELASTIC_RUN_ID) or None}
        tmp = f"{self.path}.{os.getpid()}"
        pathlib.Path(tmp).write_text(json.dumps(record), encoding="utf-8")
        try:
            note = self._link(tmp)
        finally:
            pathlib.Path(tmp).unlink(missing_ok=True)
        self._fd = os.open(self.path, os.O_RDONLY | O_NONBLOCK)
        threading.Thread(target=self._renew, name="run lock renewal", daemon=True).start()
        return note

    def _link(self, record_file: str) -> str | None:
        """Link the written record to the lock's name, replacing a stale lock once."""
        note = None
        for _ in range(2):
            try:
                self._create(record_file)
            except FileExistsError:
                holder, identity = self._holder()
                why_stale, expiry = self._stale(holder)
                if why_stale is None:
                    raise LockError(
                        f"{os.path.dirname(self.path)} is in use by process {holder.get('pid')} on "
                        f"{holder.get('host')} ({holder.get('command') or 'command unknown'}): wait "
                        f"for it or give another {self.option}; if that process is gone, delete "
                        f"{self.path}{expiry}") from None
                note = f"removed a stale lock {self.path} of process {holder.get('pid')} on " \
                       f"{holder.get('host')}: {why_stale}"
                self._remove_if(identity)
                continue
            self.held = True
            if removed := remove_stale_temporaries(os.path.dirname(self.path)):
                note = (note + "; " if note else "") + (
                    f"removed {len(removed)} temporary file(s) a killed process left: "
                    + ", ".join(os.path.basename(r) for r in removed[:3]))
            return note
        raise LockError(f"cannot take the lock {self.path}: another process took it meanwhile")

    def _create(self, record_file: str) -> None:
        """The lock file holding the record; FileExistsError when there is one already."""
        try:
            os.link(record_file, self.path)
        except FileExistsError:
            raise
        except OSError:  # no hard links on this file system: create exclusively, then write
            with open(self.path, "x", encoding="utf-8") as f:  # "x": O_CREAT | O_EXCL, FILE_MODE
                f.write(pathlib.Path(record_file).read_text(encoding="utf-8"))

    def _holder(self) -> tuple[dict, tuple[int, int] | None]:
        """(the holder's record, the lock file's (device, inode)); a record that cannot be read
        (left by a crash, or larger than a record) reads as a dead process of this host; anything
        but a regular file is refused (LockError)."""
        identity, holder = None, {}
        with contextlib.suppress(OSError, ValueError, RecursionError):
            info = os.lstat(self.path)
            identity = (info.st_dev, info.st_ino)
            if not stat.S_ISREG(info.st_mode):  # never a lock this program wrote: not ours to remove
                raise LockError(f"{self.path} is {file_kind(info.st_mode)}, not a lock file this program "
                                f"wrote: move it away, then start again")
            record = json.loads(read_small_file(self.path))
            holder = record if records.problem(record, records.LOCK) is None else {}
            holder["renewed"] = info.st_mtime
        holder.setdefault("host", socket.gethostname())
        return holder, identity

    def _stale(self, holder: dict) -> tuple[str | None, str]:
        """(why the holder no longer runs, None while it may; while it may, when another host's lock
        will count as stale, for the refusal: "" on this host). "none", torchrun's id of every job
        without --rdzv_id, identifies no job."""
        if holder.get("host") == socket.gethostname():
            pid = holder.get("pid")  # checked by records.LOCK
            if pid is None or pid == os.getpid():
                return "its record names no other process", ""
            started = process_start(pid)
            if not pid_exists(pid) or (holder.get("started") and started != holder.get("started")):
                return "that process no longer runs", ""
            return None, ""
        renewed = holder.get("renewed")  # another host's holder: alive while it renews the lock
        age = time.time() - renewed if isinstance(renewed, float) else math.inf
        ours = os.environ.get(ELASTIC_RUN_ID)
        same_job = bool(ours) and ours != "none" and holder.get("run_id") == ours
        limit = LOCK_RENEW_SECONDS * LOCK_MISSED_RENEWALS if same_job else self.stale_after
        if age > limit:
            return (f"not renewed for {age:.0f} s, stale after {limit:.0f} s"
                    + (" (an earlier attempt of this torchrun job)" if same_job else "")), ""
        return None, (f" (its holder renews it every {LOCK_RENEW_SECONDS} s, last {age:.0f} s ago; it "
                      f"is stale {limit:.0f} s after that{'' if same_job else ', --dist_timeout'})")

    def _remove_if(self, identity: tuple[int, int] | None) -> None:
        """Remove the lock if it is still the file judged stale: moved aside first (atomic), and
        put back if another process replaced it meanwhile (its fresh lock)."""
        aside = f"{self.path}.{os.getpid()}.stale"
        try:
            os.rename(self.path, aside)
        except FileNotFoundError:
            return
        info = os.lstat(aside)
        if identity is not None and (info.st_dev, info.st_ino) != identity:
            with contextlib.suppress(OSError):
                os.link(aside, self.path)
        pathlib.Path(aside).unlink(missing_ok=True)

    def _renew(self) -> None:
        """Touch the lock this process created (through its descriptor: never another's file)."""
        while not self._stop_renewing.wait(LOCK_RENEW_SECONDS):
            with contextlib.suppress(OSError, TypeError):
                os.utime(self._fd)

    def release(self) -> None:
        """Remove the lock if this process holds it."""
        self._stop_renewing.set()
        if self._fd is not None:
            with contextlib.suppress(OSError):
                os.close(self._fd)
            self._fd = None
        if self.held:
            pathlib.Path(self.path).unlink(missing_ok=True)
            self.held = False

    def __exit__(self, *exc) -> None:
        self.release()


def process_start(pid: int) -> str | None:
    """When process ``pid`` started (boot id and clock ticks since boot, from /proc), so that a
    PID reused by another process is told apart; None where /proc does not say."""
    try:
        boot = pathlib.Path("/proc/sys/kernel/random/boot_id").read_text(encoding="ascii").strip()
        stat_line = pathlib.Path(f"/proc/{pid}/stat").read_text(encoding="ascii", errors="replace")
        fields = stat_line.rsplit(")", 1)[1].split()
        return f"{boot}:{fields[19]}"  # starttime, the 22nd field of stat (2 before the split)
    except (OSError, IndexError):
        return None


def pid_exists(pid: int) -> bool:
    """Whether a process of that number runs on this host."""
    try:
        with contextlib.suppress(PermissionError):  # another user's
            os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


# ---- Files written atomically ----
class SaveError(OSError):
    """A file that could not be written (full disk, no permission); the previous one is kept."""


_UMASK = os.umask(0)  # read by setting it; put back at once
os.umask(_UMASK)
FILE_MODE = 0o666 & ~_UMASK  # what open() would give a new file
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
    write_text(path, json.dumps(jsonable(data), indent=2))


def write_text(path: str, text: str) -> None:
    """Write a text file atomically (see ``atomic_write``)."""
    atomic_write(path, lambda tmp: pathlib.Path(tmp).write_text(text, encoding="utf-8"))


def atomic_save(obj: object, path: str) -> None:
    """torch.save atomically and durably (see ``atomic_write``): a crash mid-write, or a machine
    that goes down just after, leaves the old file or the new one, never a damaged one."""
    atomic_write(path, lambda tmp: torch.save(obj, tmp), durable=True)


TEMPORARY_NAME = re.compile(r"^\..+\.[^.]+\.tmp$")  # what atomic_write creates: .NAME.XXXXXX.tmp
RUN_SUBFOLDERS = ("", "model")  # where a run writes its files atomically


def remove_stale_temporaries(folder: str) -> list[str]:
    """Remove the temporaries of atomic writes in a run directory (and its model/) that a killed
    process left; only the holder of the run's lock may call it (no one else writes there)."""
    removed = []
    for sub in RUN_SUBFOLDERS:
        with contextlib.suppress(OSError):
            for entry in os.scandir(os.path.join(folder, sub)):
                if TEMPORARY_NAME.match(entry.name) and entry.is_file(follow_symlinks=False):
                    with contextlib.suppress(OSError):
                        os.remove(entry.path)
                        removed.append(entry.path)
    return removed


# ---- Writing checkpoints beside the training ----
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
        self._job: Future | None = None

    def submit(self, job: Callable[[], None]) -> None:
        """Start ``job`` in the background once the previous one is done (its error raised here)."""
        self.wait()
        pool = ThreadPoolExecutor(1, thread_name_prefix=self.name)
        self._job = pool.submit(job)  # an exception is kept for the caller, never a thread's traceback
        pool.shutdown(wait=False)  # its thread ends with the job

    @property
    def busy(self) -> bool:
        """Whether a job is being run now."""
        return self._job is not None and not self._job.done()

    def wait(self) -> None:
        """Block until the job in flight is done; raise the exception it ended with, if any."""
        job, self._job = self._job, None
        if job is not None:
            job.result()

    def check(self) -> None:
        """Raise the exception of a job that has ended with one (without waiting for a running job)."""
        if self._job is not None and self._job.done():
            self.wait()
