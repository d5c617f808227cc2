"""Small pure helpers: quantisation, metrics, logging. A leaf module."""
from __future__ import annotations

import logging
import os

import torch


def quantize(x: torch.Tensor, rgb_range: float = 255) -> torch.Tensor:
    """Clamp to [0, rgb_range] and round to the 256 levels of 8-bit images."""
    scale = 255 / rgb_range
    return x.mul(scale).clamp(0, 255).round().div(scale)


# ----------------------------------------------------------------------------------------
# Logging
# ----------------------------------------------------------------------------------------
LOG_NAME = "log.txt"
LOG_FORMAT = "%(asctime)s %(levelname)s %(message)s"


def setup_logging(save_dir: str, debug: bool = False) -> logging.Logger:
    """The "ipt" logger, writing to the console and appending to ``save_dir/log.txt``."""
    os.makedirs(save_dir, exist_ok=True)
    logger = logging.getLogger("ipt")
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
        handler.close()
    logger.setLevel(logging.DEBUG if debug else logging.INFO)
    console = logging.StreamHandler()
    console.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    to_file = logging.FileHandler(os.path.join(save_dir, LOG_NAME), encoding="utf-8")
    to_file.setFormatter(logging.Formatter(LOG_FORMAT))
    logger.addHandler(console)
    logger.addHandler(to_file)
    return logger
