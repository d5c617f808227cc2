"""Does pre-training help at equal compute? Pre-train a tiny IPT three ways, fine-tune, score.

    python -m scripts.study --pool Sun80 --dir_data DATA [--seeds 1+2+3]   # run, record, report
    python -m scripts.study --report_only [--records docs/study]          # the report alone

Pre-training on six tasks, mim, or both, then fine-tuning sr2 and denoise30, against fine-tuning
alone at equal steps and at equal seconds, for each seed: docs/STUDY.md says what each row is.
Every run is a main.py run under --work: a finished one is not redone, an interrupted one
continues from its last save, so a killed study continues where it stopped. The runs' small
records go to --records; --doc gets a table per task and a plot, which --report_only re-makes
from the records alone.
"""
from __future__ import annotations

import argparse
import os
import re
import shlex
import sys

import stops  # (loads no torch)

if __name__ == "__main__":  # a stop signal while torch loads is kept, not a silent kill
    stops.early()

import utility  # noqa: E402
from option import OptionParser  # noqa: E402  (errors in one line, exit status 2)
from records import MAX_SEED  # noqa: E402
from scripts.cli import FAILED, say  # noqa: E402
from scripts.study_records import PROG, TASKS  # noqa: E402
from scripts.study_report import table, write_report  # noqa: E402
from scripts.study_runs import collect, run_all  # noqa: E402

SEED = re.compile(r"[0-9]{1,19}")  # MAX_SEED has 19 digits


def parse(argv: list[str] | None) -> argparse.Namespace:
    """The study's options."""
    p = OptionParser(prog=PROG, description=__doc__.splitlines()[0])
    p.add_argument("--pool", action="append", default=[],
                   help="a folder of photos for (pre-)training, at any depth; repeat for more")
    p.add_argument("--dir_data", help="holds benchmark/Set5 and benchmark/CBSD68 (not with --report_only)")
    p.add_argument("--work", default=os.path.join("experiment", "study"), help="runs go here")
    p.add_argument("--records", default=os.path.join("docs", "study"),
                   help="the runs' small records are copied here; --report_only reads them")
    p.add_argument("--doc", default=os.path.join("docs", "STUDY.md"))
    p.add_argument("--report_only", action="store_true",
                   help="re-make --doc and its plot from --records alone (no run, no data)")
    p.add_argument("--seeds", default="1+2+3", help="seeds, A+B+C")
    p.add_argument("--pretrain_steps", type=int, default=400)
    p.add_argument("--finetune_steps", type=int, default=1000)
    p.add_argument("--val_every", type=int, default=250, help="fine-tuning steps between validations")
    p.add_argument("--noise_images", type=int, default=68,
                   help="CBSD68 images scored (the first N by name; 68: all)")
    p.add_argument("--val_images", type=int, default=3, help="CBSD68 images validated on")
    p.add_argument("--options", default="", help="more main.py options for every run (--n_feats 64 ...)")
    p.add_argument("--launcher", default="", help="run each main.py under this (torchrun --nproc_per_node 8)")
    p.add_argument("--smoke", action="store_true", help="a few steps on two images: checks the wiring")
    p.add_argument("--variant", default="main", choices=("main", "ema"),
                   help="main: the rows above; ema: the equal-steps reference again with --ema_decay "
                        "0.995, on sr2 (its records join the main study's)")
    a = p.parse_args(argv)
    words = a.seeds.split("+")  # distinct integers 0..MAX_SEED
    if not all(SEED.fullmatch(w) for w in words):
        p.error(f"--seeds {a.seeds!r}: give non-negative integers joined by +, like 1+2")
    if max(map(int, words)) > MAX_SEED or len(set(map(int, words))) != len(words):
        p.error(f"--seeds {a.seeds!r}: give distinct seeds of at most {MAX_SEED}")
    a.seeds = [int(w) for w in words]
    if not a.report_only and not a.dir_data:
        p.error("--dir_data: give the folder of the prepared test sets (or --report_only)")
    for name in ("pretrain_steps", "finetune_steps", "val_every", "noise_images", "val_images"):
        if getattr(a, name) < 1:  # main.py reads --max_steps 0 as "train --epochs"
            p.error(f"--{name} {getattr(a, name)}: give at least 1")
    for name in ("options", "launcher"):
        try:
            shlex.split(getattr(a, name))
        except ValueError as e:
            p.error(f"--{name} {getattr(a, name)!r}: {e} (quote it as a shell would)")
    if a.smoke:
        a.pretrain_steps, a.finetune_steps, a.val_every = 4, 4, 2
        a.noise_images, a.val_images = 2, 1
    return a


def main(argv: list[str] | None = None) -> int:
    """Run the study (unless --report_only), copy its records, and write its doc and plot."""
    a = parse(argv)
    a.argv = sys.argv[1:] if argv is None else list(argv)
    try:
        if not a.report_only:
            run_all(a)
            collect(a)
        found = write_report(a.records, a.doc)
    except utility.RecordError as e:  # MetricsError, StudyError
        return say(PROG, str(e), FAILED)
    for task in TASKS:
        print(table(found, task))
    print(f"{PROG}: {a.doc} and its plot written from {a.records}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
