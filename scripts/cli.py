"""What the scripts share: one-line refusals, their exit statuses, a job run under the stop signals."""
from __future__ import annotations

import argparse
import contextlib
import os
import sys
from collections.abc import Callable, Iterator, Mapping, Sequence

import runfolder
import utility
from stops import INTERRUPTED, StopSignals, stop_signal

REPOSITORY = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # where python -m scripts.NAME runs
FAILED, BAD_OPTION = 1, 2  # exit statuses: a job that failed, a command line that cannot work


class Refusal(Exception):
    """A job that cannot be done: its one-line message and exit status."""

    def __init__(self, message: str, status: int = FAILED):
        super().__init__(message)
        self.status = status


def say(prog: str, line: str, status: int = BAD_OPTION) -> int:
    """``PROG: line`` on stderr; returns ``status``."""
    print(f"{prog}: {line}", file=sys.stderr, flush=True)
    return status


def run_stoppable(prog: str, job: Callable[[StopSignals], int], stopped: Callable[[int], str],
                  failures: tuple[type[BaseException], ...] = (),
                  describe: Callable[[BaseException], str] = str) -> int:
    """``job(stop)`` with SIGINT, SIGTERM and SIGUSR1 raising KeyboardInterrupt: its exit status;
    after a stop the line ``stopped(signal)`` and 130; after a Refusal or one of ``failures`` the
    line ``describe(error)`` and the Refusal's status (else 1). A failure raised once a stop came
    is that stop: torch.onnx, for one, turns the KeyboardInterrupt into an error of its own."""
    stop = StopSignals(raise_=True)
    try:
        with stop:
            return job(stop)
    except KeyboardInterrupt as e:
        return say(prog, stopped(stop_signal(e)), INTERRUPTED)
    except (Refusal, *failures) as e:
        if stop.received is not None:
            return say(prog, stopped(stop.received), INTERRUPTED)
        return say(prog, describe(e), getattr(e, "status", FAILED))


@contextlib.contextmanager
def holding_lock(prog: str, folder: str, option: str, argv: Sequence[str] | None) -> Iterator[None]:
    """Within: this command holds ``folder``'s run lock (runfolder.RunLock, as main.py's --save), so
    a second command there gets a LockError naming ``option``; a killed run's lock is taken over,
    said in one line."""
    command = " ".join([prog, *(sys.argv[1:] if argv is None else argv)])
    with runfolder.RunLock(folder, command, option=option) as lock:
        if note := lock.acquire():  # a killed run's lock and temporaries removed
            say(prog, note)
        yield


def check_limits(parser: argparse.ArgumentParser, args: argparse.Namespace,
                 limits: Mapping[str, tuple[int, int]]) -> None:
    """``parser.error`` (one line, exit status 2) for the first option outside its (least, most)."""
    for name, (least, most) in limits.items():
        value = getattr(args, name)
        if not least <= value <= most:
            parser.error(f"--{name} {value}: give {least} to {most:,}")


def check_paths(parser: argparse.ArgumentParser, args: argparse.Namespace, names: Sequence[str]) -> None:
    """``parser.error`` (one line, exit status 2) for the first path option that can name no file
    ("" would write into the current folder)."""
    for name in names:
        if problem := path_problem(getattr(args, name)):
            parser.error(f"--{name} {getattr(args, name)!r} {problem}")


def path_problem(path: str) -> str | None:
    """Why ``path`` can be no file name (empty, a NUL byte, characters it cannot be encoded
    with), or None."""
    if not path:
        return "is empty"
    if "\0" in path:
        return "holds a NUL byte"
    try:
        os.fsencode(path)
    except UnicodeError:
        return "holds characters no file name can hold"
    return None


def kind_of(path: str) -> str:
    """What ``path`` is, in a few words ("a named pipe (FIFO)", "a file", "a broken link", ...)."""
    try:
        return utility.file_kind(os.stat(path).st_mode, "a file")
    except OSError:
        return "a broken link"


def output_problem(path: str, like: str) -> tuple[str, int] | None:
    """(why, exit status) when no file can be written at ``path`` (a folder, in no folder, in one
    that cannot be written), else None; ``like`` is the file name suggested for a folder."""
    if os.path.isdir(path):
        return f"output {path} is a folder: give a file name, like {os.path.join(path, like)}", BAD_OPTION
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        return f"output {path}: its folder {folder} does not exist: create it first", BAD_OPTION
    why = runfolder.unwritable(folder)
    return (f"output {path}: cannot write in {folder} ({why})", FAILED) if why else None
