"""Write a checkpoint without its masked-image-modelling entries, for the authors' code.

    python scripts/strip_mim.py RUN/model/model_latest.pt IPT_six.pt [--tasks sr2+...+mim]

A model pre-trained with a ``mim`` head (``--tasks sr2+sr3+sr4+derain+denoise30+denoise50+mim``)
keeps the authors' keys for its six tasks; the mim head, tail, query row and ``mask_token`` are
extra. This drops them (the other heads renumbered in order), so the authors' ``ipt.py`` loads the
result with ``load_state_dict(..., strict=True)``. The head names come from the training.json
beside the input, or from --tasks.
"""
from __future__ import annotations

import argparse
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import utility  # noqa: E402
from model.checkpoint import CheckpointError, read_state_dict, strip_mim  # noqa: E402
from model.mim import mim_heads  # noqa: E402


def head_names(path: str, tasks: str | None) -> list[str]:
    """The input's head names: --tasks, else its training record's."""
    if tasks:
        return tasks.split("+")
    record = utility.read_training_record(path)
    recorded = (record or {}).get("architecture", {}).get("tasks")
    if not isinstance(recorded, str):
        raise SystemExit(f"strip_mim.py: no {utility.TRAINING_RECORD} with the head names beside "
                         f"{path}: give them with --tasks")
    return recorded.split("+")


def main(argv: list[str] | None = None) -> int:
    """Read, strip, write; 1 with a message when the input cannot be stripped."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("input")
    p.add_argument("output")
    p.add_argument("--tasks", default=None, help="the input's head names, A+B (default: its record)")
    a = p.parse_args(argv)
    names = head_names(a.input, a.tasks)
    try:
        state = read_state_dict(a.input)
        stripped = strip_mim(state, names)
    except (CheckpointError, ValueError) as e:
        print(f"strip_mim.py: {e}", file=sys.stderr)
        return 1
    if not mim_heads(names):
        print(f"strip_mim.py: {a.input} has no mim head ({'+'.join(names)}); writing it unchanged")
    utility.atomic_save(stripped, a.output)
    kept = [n for n in names if n != "mim"]
    print(f"strip_mim.py: wrote {a.output}: heads {'+'.join(kept)}, {len(stripped)} entries "
          f"({len(state) - len(stripped)} dropped)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
