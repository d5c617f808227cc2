"""IPT: build the network from options, load checkpoints, restore whole images."""
from __future__ import annotations

from dataclasses import fields

from torch import nn

from .checkpoint import CheckpointError, load_checkpoint
from .ipt import IPT, IPTConfig, default_task_names, task_scale
from .tiling import restore

__all__ = ["IPT", "IPTConfig", "build_model", "load_checkpoint", "CheckpointError", "restore",
           "default_task_names", "task_scale"]


def build_model(args: object) -> nn.Module:
    """The network named by ``args.model``, shaped by the attributes of ``args`` that it knows."""
    name = getattr(args, "model", "ipt").lower()
    if name != "ipt":
        raise ValueError(f"unknown model {name!r}; available: ipt")
    cfg = IPTConfig(**{f.name: getattr(args, f.name) for f in fields(IPTConfig) if hasattr(args, f.name)})
    return IPT(cfg)
