"""The machine a script's figures come from, in one line (benchmark.py and compare.py write it)."""
from __future__ import annotations

import datetime
import os
import platform
import re

import torch


def cpu_cores() -> int:
    """The CPU cores this process may run on."""
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()


def cpu_model() -> str:
    """The CPU's model name (from /proc/cpuinfo on Linux), or what platform knows of it."""
    model = platform.processor() or "unknown CPU"
    try:
        with open("/proc/cpuinfo") as f:
            found = re.search(r"^model name\s*:\s*(.+)$", f.read(), re.MULTILINE)
        return found.group(1).strip() if found else model
    except OSError:
        return model


def machine() -> str:
    """CPU model, core count, GPU when present, Python and torch versions and the date, in one line."""
    gpu = f"; {torch.cuda.get_device_name()}" if torch.cuda.is_available() else ""
    date = datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%d")
    return (f"{cpu_model()}, {cpu_cores()} core(s){gpu}; Python {platform.python_version()}, "
            f"torch {torch.__version__}; {date}")
