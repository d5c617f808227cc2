"""Task names: sr<s>, derain, denoise<sigma>, mim; their family and scale. A leaf module.

A head of the network carries one task name: ``sr<s>`` (super-resolution by an integer s >= 2),
``derain``, ``denoise<sigma>`` (Gaussian noise of standard deviation sigma on the 0..255 scale,
``denoise30``, ``denoise12.5``), or ``mim`` (masked image modelling, a pre-training task: the
clean image with random tokens masked is the input, the clean image the target). The family is
the name without its number.
"""
from __future__ import annotations

SR, DERAIN, DENOISE, MIM = "sr", "derain", "denoise", "mim"
MIN_SR_SCALE = 2
# the scale-1 heads of the authors' six-task model (--scale 2+3+4+1+1+1), in order
SCALE_ONE_TASKS = (DERAIN, f"{DENOISE}30", f"{DENOISE}50")
NAME_FORMS = "sr<s> (s >= 2), derain, denoise<sigma> or mim"


def task_kind(name: str) -> tuple[str, float]:
    """('sr', s), ('denoise', sigma), ('derain', 1) or ('mim', 1) for a task name; ValueError
    for another."""
    number = name[len(SR):]
    if name.startswith(SR) and number.isdigit() and int(number) >= MIN_SR_SCALE:
        return SR, int(number)
    if name.startswith(DENOISE):
        try:
            return DENOISE, float(name[len(DENOISE):])
        except ValueError:
            pass
    if name in (DERAIN, MIM):
        return name, 1
    raise ValueError(f"unknown task {name!r}: expected {NAME_FORMS}")


def task_family(name: str) -> str:
    """'sr', 'derain', 'denoise' or 'mim': a task name without its number; ValueError for another."""
    return task_kind(name)[0]


def task_scale(name: str) -> int:
    """The scale a task implies: sr<s> -> s, the others 1; ValueError for another."""
    family, value = task_kind(name)
    return int(value) if family == SR else 1


def default_task_names(scales: list[int]) -> list[str]:
    """sr<s> for each scale > 1; the scale-1 entries are, in order, derain, denoise30, denoise50."""
    if sum(s <= 1 for s in scales) > len(SCALE_ONE_TASKS):
        raise ValueError("more than three scale-1 heads: name them with --tasks")
    unit_names = iter(SCALE_ONE_TASKS)
    return [f"{SR}{s}" if s > 1 else next(unit_names) for s in scales]
