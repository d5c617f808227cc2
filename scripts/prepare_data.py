"""Turn test sets as downloaded into the layout ``--dir_data`` expects, and check them.

    python -m scripts.prepare_data SRC... --out DIR_DATA      # convert, make missing LR, check
    python -m scripts.prepare_data --check DIR_DATA [--make_lr]
    python -m scripts.prepare_data --download SET --out DIR_DATA [--url URL --sha256 HEX]

Exit status: 0 all well; 1 problems found (each named); 2 an error (one line); 130 stopped.
"""
from __future__ import annotations

import argparse
import gc
import os
import sys
import urllib.parse
from collections.abc import Sequence

import stops  # loads no torch

if __name__ == "__main__":  # a stop signal while torch loads is kept, not a silent kill
    stops.early()
    gc.disable()  # while torch loads, until utility.collect_again: as main.py starts

import utility  # noqa: E402
from data.archives import ArchiveError  # noqa: E402
from data.benchmark import HR_DIRS, BenchmarkError, canonical_test_set  # noqa: E402
from data.images import ImageReadError  # noqa: E402
from data.prepare import alias_text, check, convert  # noqa: E402
from data.standard_sets import (  # noqa: E402
    SET_ORDER,
    SHA256_HEX,
    PrepareError,
    SetReport,
    load_standard_sets,
)
from report import display  # noqa: E402
from scripts import cli  # noqa: E402

PROG = "prepare_data.py"  # the name its error lines start with


class Parser(argparse.ArgumentParser):
    """An ArgumentParser whose errors are one line (a PrepareError), not usage and exit."""

    def error(self, message: str) -> None:  # type: ignore[override]
        """Raise the message as a PrepareError."""
        raise PrepareError(message)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    """The command line, its combinations checked."""
    p = Parser(prog="python -m scripts.prepare_data", description=__doc__.splitlines()[0])
    p.add_argument("src", nargs="*", help="folders or .zip/.tar(.gz) archives named after a set, "
                                          "or holding set-named folders")
    p.add_argument("--out", help="DIR_DATA to write (convert and --download)")
    p.add_argument("--check", metavar="DIR_DATA", help="only check DIR_DATA")
    p.add_argument("--make_lr", action="store_true",
                   help="with --check: make missing LR files (convert always does)")
    p.add_argument("--download", metavar="SET", help=f"fetch SET ({', '.join(SET_ORDER)})")
    p.add_argument("--url", help="with --download: fetch this address instead of the table's")
    p.add_argument("--sha256", type=str.lower, help="with --download: the file's SHA-256 (64 hex digits)")
    args = p.parse_args(argv)
    if (args.url or args.sha256) and not args.download:
        raise PrepareError("--url and --sha256 go with --download")
    if args.check and (args.src or args.download or args.out):
        raise PrepareError("--check DIR_DATA takes no SRC, --out or --download")
    if not args.check and not args.out:
        raise PrepareError("give SRC... --out DIR_DATA, --check DIR_DATA or --download SET --out "
                           "DIR_DATA" if not (args.src or args.download) else "--out is required")
    if args.download and args.src:
        raise PrepareError("--download SET takes no SRC")
    if args.out and not (args.src or args.download):
        raise PrepareError("--out: give SRC... or --download SET")
    if args.url and urllib.parse.urlparse(args.url).scheme not in ("http", "https"):
        raise PrepareError(f"--url {args.url}: only http and https addresses")
    if args.url and not args.sha256:
        raise PrepareError("--url needs --sha256 (the file's SHA-256)")
    if args.sha256 and not SHA256_HEX.match(args.sha256):
        raise PrepareError(f"--sha256 {args.sha256}: not 64 hexadecimal digits")
    if args.download:
        set_name = canonical_test_set(args.download)
        if set_name not in SET_ORDER:
            raise PrepareError(f"--download {args.download}: unknown set; known: "
                               f"{', '.join(SET_ORDER)} (or {alias_text()})")
        args.download = set_name
    return args


def print_reports(dir_data: str, reports: list[SetReport]) -> int:
    """Print each set's lines, every problem, then the notes, one line each whatever the file
    names hold (``report.display``); 0 if no problem, else 1."""
    if not reports:
        print(display(f"{dir_data}: no test sets found (expected e.g. "
                      f"{os.path.join(dir_data, HR_DIRS['Set5'][0])}; layouts: docs/DATA.md)"))
        return 1
    for line in (line for r in reports for line in r.lines()):
        print(display(line))
    problems = [p for r in reports for p in r.problems]
    for problem in problems:
        print(f"  {display(problem)}")
    if problems:
        print(f"{len(problems)} problem(s) found")
    for note in (n for r in reports for n in r.notes):
        print(f"  note: {display(note)}")
    return 1 if problems else 0


def main(argv: Sequence[str] | None = None) -> int:
    """Convert, check or download; 0 all well, 1 problems found, 2 an error (one line)."""
    try:
        args = parse_args(argv)
        specs = load_standard_sets()
        if args.check:
            return print_reports(args.check, check(args.check, specs, args.make_lr, PROG))
        fetch = (args.download, args.url, args.sha256) if args.download else None
        return print_reports(args.out, convert(args.src, args.out, specs, PROG, fetch))
    except (PrepareError, ArchiveError, BenchmarkError, ImageReadError, OSError, UnicodeError) as e:
        return cli.say(PROG, str(e))
    except KeyboardInterrupt as stop:  # after the undoing: nothing of this run is left
        return cli.say(PROG, f"stopped by {stops.signal_name(stops.stop_signal(stop))}; nothing was "
                       "written", stops.INTERRUPTED)


if __name__ == "__main__":
    utility.collect_again()
    sys.exit(main())
