"""Write a checkpoint without its masked-image-modelling entries, for the authors' code.

    python scripts/strip_mim.py RUN/model/model_latest.pt IPT_six.pt [--tasks sr2+...+mim]

A model pre-trained with a ``mim`` head (``--tasks sr2+sr3+sr4+derain+denoise30+denoise50+mim``)
keeps the authors' keys for its six tasks; the mim head, tail, query row and ``mask_token`` are
extra. This drops them (the other heads renumbered in order), so the authors' ``ipt.py`` loads the
result with ``load_state_dict(..., strict=True)``. The head names come from the training.json
beside the input, or from --tasks; names that the file's shapes contradict (an SR head's tail
has an upsampler, a scale-1 head's none) are refused. Scale-1 heads (mim, derain, denoise) look
alike, so which one is dropped is said with where its name came from.
"""
from __future__ import annotations

import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import utility  # noqa: E402
from model.checkpoint import CheckpointError, read_state_dict, strip_mim  # noqa: E402
from model.mim import mim_heads  # noqa: E402
from option import OptionParser  # noqa: E402  (errors in one line, exit status 2)

PROG = "strip_mim.py"
FAILED, BAD_OPTIONS = 1, 2


def head_names(path: str, tasks: str | None) -> tuple[list[str], str]:
    """The input's head names and where they come from: --tasks, else its training record's."""
    if tasks:
        return tasks.split("+"), "per --tasks"
    record = utility.read_training_record(path, strict=True)  # a damaged one: RecordError
    recorded = (record or {}).get("architecture", {}).get("tasks")
    if not isinstance(recorded, str):
        raise SystemExit(f"{PROG}: no {utility.TRAINING_RECORD} with the head names beside "
                         f"{path}: give them with --tasks")
    return recorded.split("+"), f"per {utility.TRAINING_RECORD}"


def check_output(path: str) -> str:
    """'' when ``path`` can be written as a file, else why not."""
    if os.path.isdir(path):
        return f"output {path} is a folder: give a file name, like {os.path.join(path, 'IPT_six.pt')}"
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        return f"output {path}: its folder {folder} does not exist: create it first"
    return ""


def main(argv: list[str] | None = None) -> int:
    """Read, strip, write; 1 with a message when the input cannot be stripped, 2 for a bad output."""
    p = OptionParser(prog=PROG, description=__doc__.splitlines()[0])
    p.add_argument("input")
    p.add_argument("output")
    p.add_argument("--tasks", default=None, help="the input's head names, A+B (default: its record)")
    a = p.parse_args(argv)
    wrong = check_output(a.output)
    if wrong:
        print(f"{PROG}: {wrong}", file=sys.stderr)
        return BAD_OPTIONS
    try:
        state = read_state_dict(a.input)
        names, source = head_names(a.input, a.tasks)
        stripped = strip_mim(state, names)
        if not mim_heads(names):
            print(f"{PROG}: {a.input} has no mim head ({'+'.join(names)}, {source}); writing it unchanged")
        for i in mim_heads(names):
            print(f"{PROG}: dropping head {i} (mim, {source}; its shapes match any scale-1 head)")
        utility.atomic_save(stripped, a.output)
    except (CheckpointError, ValueError) as e:  # utility.RecordError is a ValueError
        print(f"{PROG}: {a.input}: {e}", file=sys.stderr)
        return FAILED
    except utility.SaveError as e:
        print(f"{PROG}: {e}", file=sys.stderr)
        return FAILED
    kept = [n for n in names if n != "mim"]
    print(f"{PROG}: wrote {a.output}: heads {'+'.join(kept)}, {len(stripped)} entries "
          f"({len(state) - len(stripped)} dropped)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
