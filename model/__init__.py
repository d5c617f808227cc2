"""The networks (IPT, Restormer): build one from options, load checkpoints, restore whole images."""
from __future__ import annotations

from torch import nn

from . import ipt, restormer
from .checkpoint import CheckpointError, load_body, load_checkpoint
from .ipt import IPT, IPTConfig
from .restormer import Restormer, RestormerConfig
from .tiling import restore

__all__ = ["IPT", "IPTConfig", "Restormer", "RestormerConfig", "build_model", "load_body", "load_checkpoint",
           "CheckpointError", "restore", "MODELS", "parameter_count"]

# --model name -> (network, its config)
MODELS = {"ipt": (IPT, IPTConfig), "restormer": (Restormer, RestormerConfig)}


def build_model(config: IPTConfig | RestormerConfig) -> nn.Module:
    """The network a config describes: IPT for an IPTConfig, Restormer for a RestormerConfig."""
    for network, config_type in MODELS.values():
        if isinstance(config, config_type):
            return network(config)
    raise TypeError(f"build_model takes an IPTConfig or a RestormerConfig, not {type(config).__name__}")


def parameter_count(config: IPTConfig | RestormerConfig) -> int:
    """The number of weights of the network a config describes, without building it."""
    return (ipt if isinstance(config, IPTConfig) else restormer).parameter_count(config)
