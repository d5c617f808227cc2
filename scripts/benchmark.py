"""The project's benchmarks: each section measures one part and rewrites its part of BENCHMARKS.md.

    python -m scripts.benchmark [SECTION ...] [--doc docs/BENCHMARKS.md] [--reps 3] [--smoke]

With no SECTION every section runs. Each prints a Markdown table and replaces the text between
``<!-- NAME:begin -->`` and ``<!-- NAME:end -->`` in the doc (appending the section when the
markers are missing), leaving the other sections as they are. Timings are medians of
interleaved repetitions in one run. ``--smoke`` (the test suite runs it) keeps its one torch
thread in the child processes too and measures the tiling's peak memory of ``official`` only.
"""
from __future__ import annotations

import argparse
import logging
import sys
import tempfile
from collections.abc import Callable, Sequence

import stops  # loads no torch

if __name__ == "__main__":  # a stop is one line and exit 130, not a traceback
    stops.early()

import torch  # noqa: E402

from option import OptionParser  # noqa: E402  (errors in one line, exit status 2)
from scripts.bench_inference import bf16_section, forward_section, tiling_section  # noqa: E402
from scripts.bench_training import compile_section, loader_section, saving_section, training_section  # noqa: E402
from scripts.cli import FAILED, check_paths, say  # noqa: E402
from scripts.timing import DOC, FULL, SMOKE, write_section  # noqa: E402

DEFAULT_REPS = 5
MAX_REPS = 1000  # the median of more says nothing new
SECTIONS: dict[str, Callable[[argparse.Namespace], str]] = {
    "loader": loader_section, "tiling": tiling_section, "forward": forward_section,
    "training": training_section, "saving": saving_section, "bf16": bf16_section,
    "compile": compile_section}


def main(argv: Sequence[str] | None = None) -> int:
    """Run the named sections (default: all), print them and write them into the doc."""
    p = OptionParser(prog="benchmark.py", description="Run the project's benchmarks.")
    p.add_argument("sections", nargs="*", metavar="SECTION",
                   help=f"one or more of {', '.join(SECTIONS)} (default: all)")
    p.add_argument("--doc", default=None,
                   help="Markdown file to update (default docs/BENCHMARKS.md; a temporary file "
                        "with --smoke)")
    p.add_argument("--reps", type=int, default=None,
                   help=f"repetitions, median taken (default {DEFAULT_REPS}; 1 with --smoke)")
    p.add_argument("--smoke", action="store_true",
                   help="every section at minimal sizes, one repetition and one torch thread, "
                        "in seconds: checks that the code runs (CI), its figures mean little")
    args = p.parse_args(argv)
    if unknown := [n for n in args.sections if n not in SECTIONS]:
        p.error(f"unknown section(s) {', '.join(unknown)}; known: {', '.join(SECTIONS)}")
    if args.reps is not None and not 1 <= args.reps <= MAX_REPS:
        p.error(f"--reps {args.reps}: give 1 to {MAX_REPS}")
    if args.doc is not None:
        check_paths(p, args, ["doc"])
    args.sizes = SMOKE if args.smoke else FULL
    args.reps = args.reps or (1 if args.smoke else DEFAULT_REPS)
    if args.doc is None:
        args.doc = tempfile.mkstemp(prefix="benchmarks-smoke-", suffix=".md")[1] if args.smoke else DOC
    logging.basicConfig(level=logging.ERROR)
    threads = torch.get_num_threads()
    if args.sizes.threads:
        torch.set_num_threads(args.sizes.threads)
    try:
        for name in args.sections or list(SECTIONS):
            body = SECTIONS[name](args)
            print(body)
            try:
                write_section(args.doc, name, body)
            except (OSError, UnicodeError) as e:  # SaveError names the file and the reason; the
                # section is printed above; a doc not UTF-8 is no doc this writes
                return say("benchmark.py", f"--doc {args.doc}: {e}", FAILED)
    finally:
        torch.set_num_threads(threads)  # as it was, for a caller in the same process (the tests)
    print(f"updated {args.doc}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
