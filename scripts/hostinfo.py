"""The machine a script's figures come from, in one line (the benchmark and compare write it)."""
from __future__ import annotations

import datetime
import platform

import torch

import utility


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux), or what platform knows of it."""
    return utility.cpuinfo("model name") or platform.processor() or platform.machine() or "unknown CPU"


def machine() -> str:
    """CPU model, core count, GPU when present, Python and torch versions and the date, in one line."""
    gpu = f"; {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    return (f"{cpu_model()}, {utility.usable_cpus()} core(s){gpu}; Python {platform.python_version()}, "
            f"torch {torch.__version__}; {date}")
