"""The networks (IPT, Restormer): build one from options, load checkpoints, restore whole images."""
from __future__ import annotations

from dataclasses import fields

from torch import nn

from .checkpoint import CheckpointError, load_checkpoint
from .ipt import IPT, IPTConfig, default_task_names, task_scale
from .restormer import Restormer, RestormerConfig
from .tiling import restore

__all__ = ["IPT", "IPTConfig", "Restormer", "RestormerConfig", "build_model", "load_checkpoint",
           "CheckpointError", "restore", "default_task_names", "task_scale", "MODELS"]

# --model name -> (network, its config); a config takes the attributes of the options it names
MODELS = {"ipt": (IPT, IPTConfig), "restormer": (Restormer, RestormerConfig)}


def build_model(args: object) -> nn.Module:
    """The network named by ``args.model``, shaped by the attributes of ``args`` that it knows."""
    name = getattr(args, "model", "ipt").lower()
    if name not in MODELS:
        raise ValueError(f"unknown model {name!r}; available: {', '.join(MODELS)}")
    network, config = MODELS[name]
    return network(config(**{f.name: getattr(args, f.name) for f in fields(config) if hasattr(args, f.name)}))
