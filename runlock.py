"""``RUN/.lock``: one process per run directory, and a live holder is never displaced.

On the holder's host it is alive while its process runs (its PID and start time); the lock of
another host is alive while the holder renews it. The lock is read like every record, through
``utility.read_small_file`` and records.LOCK; a lock that is not a regular file is refused, never removed.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import socket
import stat
import threading
import time

import records
from utility import FILE_MODE, O_NONBLOCK, file_kind, read_small_file, remove_stale_temporaries

# set by torchrun: the same for every restart of one job, "none" for every job without --rdzv_id
ELASTIC_RUN_ID = "TORCHELASTIC_RUN_ID"
LOCK_NAME = ".lock"  # {"host", "pid", "started", "command", "run_id"} of the process using the run
LOCK_RENEW_SECONDS = 30  # the holder touches its lock this often: proof of life for other hosts
# another host's lock not renewed for this long is a dead process's: 3 renewals missed
LOCK_MISSED_RENEWALS = 3


class LockError(RuntimeError):
    """A run directory that another live process is using."""


class RunLock:
    """``RUN/.lock``: created atomically by the process that runs there, removed when it ends.

    A live holder is never displaced. On this host the holder is alive while its process runs
    (its PID and start time); the lock of another host is alive while the holder renews it (it
    touches the file every LOCK_RENEW_SECONDS). A lock of another host counts as stale once not
    renewed for ``stale_after`` seconds (--dist_timeout), or for LOCK_MISSED_RENEWALS renewals when
    it was taken under the same torchrun run id (``--rdzv_id``) as ours: the earlier attempt of
    this job, whose node died. A stale lock is reported and taken over.
    """

    def __init__(self, folder: str, command: str = "", stale_after: float = 1800):
        self.path = os.path.join(folder, LOCK_NAME)
        self.command = command
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
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(record, f)
        try:
            note = self._link(tmp)
        finally:
            with contextlib.suppress(FileNotFoundError):
                os.remove(tmp)
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
                why_stale = self._stale(holder)
                if why_stale is None:
                    raise LockError(
                        f"{os.path.dirname(self.path)} is in use by process {holder.get('pid')} on "
                        f"{holder.get('host')} ({holder.get('command') or 'command unknown'}): wait "
                        f"for it or give another --save; if that process is gone, delete "
                        f"{self.path}{self._expiry(holder)}") from None
                note = f"removed a stale lock {self.path} of process {holder.get('pid')} on " \
                       f"{holder.get('host')}: {why_stale}"
                self._remove_if(identity)
                continue
            self.held = True
            removed = remove_stale_temporaries(os.path.dirname(self.path))
            if removed:
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
            fd = os.open(self.path, os.O_CREAT | os.O_EXCL | os.O_WRONLY, FILE_MODE)
            with os.fdopen(fd, "w", encoding="utf-8") as f, open(record_file, encoding="utf-8") as r:
                f.write(r.read())

    def _holder(self) -> tuple[dict, tuple[int, int] | None]:
        """(the holder's record, the lock file's (device, inode)); a record that cannot be read
        (left by a crash, or larger than a record) reads as a dead process of this host; anything
        but a regular file is refused (LockError)."""
        identity, holder = None, {}
        try:
            info = os.lstat(self.path)
            identity = (info.st_dev, info.st_ino)
            if not stat.S_ISREG(info.st_mode):  # never a lock this program wrote: not ours to remove
                raise LockError(f"{self.path} is {file_kind(info.st_mode)}, not a lock file this program "
                                f"wrote: move it away, then start again")
            holder = json.loads(read_small_file(self.path))
            holder = holder if records.problem(holder, records.LOCK) is None else {}
            holder["renewed"] = info.st_mtime
        except (OSError, ValueError, RecursionError):
            holder = {}
        holder.setdefault("host", socket.gethostname())
        return holder, identity

    def _stale(self, holder: dict) -> str | None:
        """Why the holder no longer runs; None while it may."""
        if holder.get("host") == socket.gethostname():
            pid = holder.get("pid")  # checked by records.LOCK
            if pid is None or pid == os.getpid():
                return "its record names no other process"
            started = process_start(pid)
            if not pid_exists(pid) or (holder.get("started") and started != holder.get("started")):
                return "that process no longer runs"
            return None
        age, limit, same_job = self._age(holder)
        if age > limit:
            return (f"not renewed for {age:.0f} s, stale after {limit:.0f} s"
                    + (" (an earlier attempt of this torchrun job)" if same_job else ""))
        return None

    def _age(self, holder: dict) -> tuple[float, float, bool]:
        """(seconds since another host's holder renewed its lock, the seconds after which it is
        stale, whether it was taken under our torchrun run id); "none", torchrun's id of every
        job without --rdzv_id, identifies no job."""
        renewed = holder.get("renewed")
        ours = os.environ.get(ELASTIC_RUN_ID)
        same_job = bool(ours) and ours != "none" and holder.get("run_id") == ours
        limit = LOCK_RENEW_SECONDS * LOCK_MISSED_RENEWALS if same_job else self.stale_after
        return (time.time() - renewed if isinstance(renewed, float) else math.inf), limit, same_job

    def _expiry(self, holder: dict) -> str:
        """When another host's lock will count as stale, for the refusal ("" on this host)."""
        if holder.get("host") == socket.gethostname():
            return ""
        age, limit, same_job = self._age(holder)
        return (f" (its holder renews it every {LOCK_RENEW_SECONDS} s, last {age:.0f} s ago; it is "
                f"stale {limit:.0f} s after that{'' if same_job else ', --dist_timeout'})")

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
        with contextlib.suppress(FileNotFoundError):
            os.remove(aside)

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
            with contextlib.suppress(FileNotFoundError):
                os.remove(self.path)
            self.held = False

    def __enter__(self) -> RunLock:
        return self

    def __exit__(self, *exc) -> None:
        self.release()


def process_start(pid: int) -> str | None:
    """When process ``pid`` started (boot id and clock ticks since boot, from /proc), so that a
    PID reused by another process is told apart; None where /proc does not say."""
    try:
        with open("/proc/sys/kernel/random/boot_id", encoding="ascii") as f:
            boot = f.read().strip()
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return f"{boot}:{fields[19]}"  # starttime, the 22nd field of stat (2 before the split)
    except (OSError, IndexError):
        return None


def pid_exists(pid: int) -> bool:
    """Whether a process of that number runs on this host."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
