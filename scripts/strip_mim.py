"""Write a checkpoint without its masked-image-modelling entries, for the authors' code.

    python -m scripts.strip_mim RUN/model/model_latest.pt IPT_six.pt [--tasks sr2+...+mim]

A model pre-trained with a ``mim`` head (``--tasks sr2+sr3+sr4+derain+denoise30+denoise50+mim``)
keeps the authors' keys for its six tasks; the mim head, tail, query row and ``mask_token`` are
extra. This drops them (the other heads renumbered in order), so the authors' ``ipt.py`` loads the
result with ``load_state_dict(..., strict=True)``. The head names come from the training.json
beside the input, or from --tasks; names that the file's shapes contradict (an SR head's tail
has an upsampler, a scale-1 head's none) are refused. Scale-1 heads (mim, derain, denoise) look
alike, so which one is dropped is said with where its name came from.
"""
from __future__ import annotations

import sys

import records
import runfolder
import utility
from model.checkpoint import CheckpointError, read_checkpoint, strip_mim
from model.mim import mim_heads
from option import OptionParser  # errors in one line, exit status 2
from scripts.cli import FAILED, output_problem, say

PROG = "strip_mim.py"


def head_names(path: str, tasks: str | None) -> tuple[list[str], str]:
    """The input's head names and where they come from: --tasks, else its training record's."""
    if tasks:
        return tasks.split("+"), "per --tasks"
    record = records.read_training_record(path, strict=True)  # a damaged one: RecordError
    recorded = (record or {}).get("architecture", {}).get("tasks")
    if not isinstance(recorded, str):
        raise SystemExit(f"{PROG}: no {utility.TRAINING_RECORD} with the head names beside "
                         f"{path}: give them with --tasks")
    return recorded.split("+"), f"per {utility.TRAINING_RECORD}"


def main(argv: list[str] | None = None) -> int:
    """Read, strip, write; 1 with a message when the input cannot be stripped, 2 for a bad output."""
    p = OptionParser(prog=PROG, description=__doc__.splitlines()[0])
    p.add_argument("input")
    p.add_argument("output")
    p.add_argument("--tasks", default=None, help="the input's head names, A+B (default: its record)")
    a = p.parse_args(argv)
    if problem := output_problem(a.output, "IPT_six.pt"):
        return say(PROG, *problem)
    try:
        state, _ = read_checkpoint(a.input, "INPUT")  # its error names the argument
        names, source = head_names(a.input, a.tasks)
        if names and all(n == "mim" for n in names):  # it wrote a file with no head at all
            return say(PROG, f"{a.input} has only a mim head ({source}): nothing would be left for "
                             f"the authors' code", FAILED)
        stripped = strip_mim(state, names)
        if not mim_heads(names):
            print(f"{PROG}: {a.input} has no mim head ({'+'.join(names)}, {source}); writing it unchanged")
        for i in mim_heads(names):
            print(f"{PROG}: dropping head {i} (mim, {source}; its shapes match any scale-1 head)")
        runfolder.atomic_save(stripped, a.output)
    except (CheckpointError, ValueError) as e:  # utility.RecordError is a ValueError
        return say(PROG, f"{a.input}: {e}", FAILED)
    except runfolder.SaveError as e:
        return say(PROG, str(e), FAILED)
    kept = [n for n in names if n != "mim"]
    print(f"{PROG}: wrote {a.output}: heads {'+'.join(kept)}, {len(stripped)} entries "
          f"({len(state) - len(stripped)} dropped)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
