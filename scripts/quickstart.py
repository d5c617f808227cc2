"""The quickstart journey: pre-train a tiny IPT on six tasks, fine-tune SR x2, evaluate.

Usage: python scripts/quickstart.py [--out experiment/quickstart] [--pretrain_steps N]
[--finetune_steps N]. Options shared by the phases are in configs/quickstart.yaml.
"""
from __future__ import annotations

import argparse
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import main as ipt_main  # noqa: E402

CONFIG = os.path.join(ROOT, "configs", "quickstart.yaml")
PRETRAIN_STEPS = 2000
FINETUNE_STEPS = 1500


def phases(out: str, pretrain_steps: int, finetune_steps: int) -> list[tuple[str, list[str]]]:
    """(title, main.py arguments) of each phase."""
    pre, fine = os.path.join(out, "pretrain"), os.path.join(out, "finetune_sr2")
    latest = os.path.join("model", "model_latest.pt")
    return [
        ("pre-train six tasks", ["--scale", "2+3+4+1+1+1", "--max_steps", str(pretrain_steps),
                                 "--save", pre, "--reset"]),
        ("fine-tune sr2", ["--task", "sr2", "--pretrain", os.path.join(pre, latest),
                           "--max_steps", str(finetune_steps), "--save", fine, "--reset"]),
        ("evaluate sr2 (fine-tuned)", ["--test_only", "--task", "sr2", "--pretrain",
                                       os.path.join(fine, latest), "--save", os.path.join(out, "eval_sr2"),
                                       "--save_results"]),
        ("evaluate every head (pre-trained)", ["--test_only", "--scale", "2+3+4+1+1+1", "--pretrain",
                                               os.path.join(pre, latest), "--save",
                                               os.path.join(out, "eval_pretrained"), "--save_results"]),
    ]


def main(argv: list[str] | None = None) -> int:
    """Run the phases one after the other; stop at the first that fails."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=os.path.join("experiment", "quickstart"))
    p.add_argument("--pretrain_steps", type=int, default=PRETRAIN_STEPS)
    p.add_argument("--finetune_steps", type=int, default=FINETUNE_STEPS)
    a = p.parse_args(argv)
    start = time.time()
    for title, extra in phases(a.out, a.pretrain_steps, a.finetune_steps):
        print(f"\n=== {title} ===", flush=True)
        code = ipt_main.main(["--config", CONFIG, *extra])
        if code != 0:
            print(f"quickstart: phase '{title}' failed (exit status {code})", file=sys.stderr)
            return code
    print(f"\nquickstart done in {(time.time() - start) / 60:.1f} min; tables: "
          f"{os.path.join(a.out, 'eval_sr2', 'results.md')}, "
          f"{os.path.join(a.out, 'eval_pretrained', 'results.md')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
