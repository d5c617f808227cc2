"""Stop signals: SIGINT, SIGTERM, SIGUSR1 and SIGHUP end any command cleanly, in one line, exit 130
(``StopSignals``, ``early``; ``ignore_stop_signals`` in loader workers, ``stop_when_orphaned`` in
torchrun ranks). It imports nothing heavy (no torch), so that ``early`` can run first."""
from __future__ import annotations

import atexit
import contextlib
import logging
import multiprocessing.util  # imported first: atexit runs early()'s _at_exit before its exit function
import os
import re
import signal
import sys
import threading
import time

# What a terminal (SIGINT; SIGHUP when it closes, as torchrun forwards it), timeout/Slurm/Kubernetes
# (SIGTERM) and Slurm's --signal (SIGUSR1) send
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGHUP)
INTERRUPTED = 130  # the exit status of a run stopped by a signal (128 + SIGINT), as shells use


def signal_name(signum: int) -> str:
    """SIGINT, SIGTERM, ... of a signal number."""
    try:
        return signal.Signals(signum).name
    except ValueError:
        return f"signal {signum}"


def stop_signal(stop: KeyboardInterrupt) -> int:
    """The signal behind a stop: ``Interrupted``'s, else SIGINT (a plain Ctrl-C)."""
    return getattr(stop, "signum", signal.SIGINT)


class Interrupted(KeyboardInterrupt):
    """A stop signal raised as an exception (a KeyboardInterrupt, so Ctrl-C code handles it)."""

    def __init__(self, signum: int):
        super().__init__(signal_name(signum))
        self.signum = signum


class StopSignals:
    """Within ``with``: SIGINT, SIGTERM and SIGUSR1 set ``received`` (the signal's number) and,
    with ``raise_=True``, raise ``Interrupted`` in the main thread. Outside the main thread it
    changes nothing. Only the process that entered it reacts: a forked child ignores them. The
    handler logs nothing: logging from a signal handler can re-enter a logging handler's lock.
    With ``ignore_after=True`` they are ignored from the end of the block on (a torchrun rank
    whose work is over: torchrun stopping the ranks still running must not turn its exit into a
    kill; torchrun itself kills a rank that does not end within its shutdown timeout)."""

    def __init__(self, raise_: bool = False, ignore_after: bool = False):
        self.raise_, self.ignore_after = raise_, ignore_after
        self.received: int | None = None
        self._previous: dict = {}
        self._pid = os.getpid()

    def __enter__(self) -> StopSignals:
        for sig in STOP_SIGNALS:
            with contextlib.suppress(ValueError):  # not the main thread
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame) -> None:
        if os.getpid() != self._pid:  # a forked child (a loader worker): its parent stops it
            return
        self.received = signum
        sys.unraisablehook = quiet_unraisable  # what the stop ends in finalisers is part of it
        if self.raise_:
            raise Interrupted(signum)

    def __exit__(self, *exc) -> None:
        for sig, handler in self._previous.items():
            signal.signal(sig, signal.SIG_IGN if self.ignore_after else handler)


def wait_for_stop(seconds: float) -> None:
    """Wait until a stop signal arrives (taken here: no handler runs) or ``seconds`` pass."""
    signal.pthread_sigmask(signal.SIG_BLOCK, STOP_SIGNALS)
    signal.sigtimedwait(STOP_SIGNALS, seconds)


PARENT_CHECK_SECONDS = 0.25  # how often a torchrun rank looks whether its agent still runs


def stop_when_orphaned(log: logging.Logger) -> None:
    """Send this process SIGTERM (a clean stop) when its parent dies: a torchrun rank whose agent
    was killed (kill -9, the OOM killer) would otherwise train on as an orphan. A thread watches
    the parent's PID, which changes when the process is re-parented."""
    parent = os.getppid()

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(PARENT_CHECK_SECONDS)
        log.warning("the process that started this one (%d, torchrun) is gone: stopping as on "
                    "SIGTERM", parent)
        os.kill(os.getpid(), signal.SIGTERM)

    threading.Thread(target=watch, name="parent watch", daemon=True).start()


# a loader worker that a signal to the process group ended before its worker_init_fn ran (torch
# gives workers a SIGTERM handler of its own until then), as torch reports it to the parent
WORKER_ENDED = re.compile(r"DataLoader worker \(pid\(?s?\)? ?[\d, ]+\) "
                          r"(is killed by signal|exited unexpectedly)")


def quiet_unraisable(unraisable: sys.UnraisableHookArgs) -> None:
    """sys.unraisablehook once a stop came: a stop raised in a finaliser (a DataLoader's
    ``__del__``), or a loader worker the same signal ended, is part of that stop and printed as no
    error (the stop says itself in one line); anything else as usual."""
    error = unraisable.exc_value
    if not (isinstance(error, KeyboardInterrupt) or WORKER_ENDED.search(str(error))):
        sys.__unraisablehook__(unraisable)


def ignore_stop_signals(worker_id: int = 0) -> None:
    """A DataLoader ``worker_init_fn``: the worker ignores the stop signals, which reach the whole
    process group, and leaves the stop to the main process (which ends its workers itself)."""
    for sig in STOP_SIGNALS:
        signal.signal(sig, signal.SIG_IGN)


def early() -> None:
    """An entry point's first call, before its heavy imports: from now on a stop signal raises
    ``Interrupted``, and one that no handler catches (during imports, before the command's own
    ``StopSignals``) ends the program in one line with exit status 130, not a silent kill."""
    def stop(signum: int, frame) -> None:
        raise Interrupted(signum)

    for sig in STOP_SIGNALS:
        signal.signal(sig, stop)
    sys.excepthook = _stopped_or_as_before
    atexit.register(_at_exit)


def _at_exit() -> None:
    """The exit status is decided: a stop during the interpreter's teardown, which puts back the
    default handlers (a kill, 128 + the signal), is ignored. Loader workers that an error kept
    (a traceback holds their iterator) are killed: multiprocessing's exit would send them SIGTERM,
    which they ignore (``ignore_stop_signals``), and wait for them forever."""
    ignore_stop_signals()
    for child in multiprocessing.active_children():
        if child.daemon:
            child.kill()


def _stopped_or_as_before(kind: type, error: BaseException, trace) -> None:
    """sys.excepthook: a stop that reached the top is one line and exit 130; the rest as usual."""
    if not issubclass(kind, KeyboardInterrupt):
        sys.__excepthook__(kind, error, trace)
        return
    print(f"{os.path.basename(sys.argv[0])}: {signal_name(stop_signal(error))} received: stopped",
          file=sys.stderr, flush=True)
    sys.stdout.flush()
    os._exit(INTERRUPTED)  # the exception is over; nothing is left to unwind
