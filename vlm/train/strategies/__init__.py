"""Training strategies, one file each, named by `train.strategy` (see base.py for the interface)."""

from __future__ import annotations

import importlib

import torch

from vlm import distributed
from vlm.config import ConfigError, TrainConfig
from vlm.train.strategies.base import Strategy


def resolve_strategy(name: str) -> str:
    """`train.strategy` for this launch ("auto": ddp under torchrun with several ranks, single otherwise), checked
    against the launch before anything is built: one line naming the problem."""
    world = int(distributed.launch_world_size())
    if name == "auto":
        return "ddp" if world > 1 else "single"
    if name != "single" and not distributed.launched_by_torchrun():
        raise ConfigError(f"'train.strategy' is '{name}', which needs torchrun "
                          f"(torchrun --nproc_per_node=N -m vlm.cli train ...); use 'single' or 'auto' in one process")
    if name == "single" and world > 1:
        raise ConfigError(f"'train.strategy' is 'single' but torchrun started {world} ranks, which would each train "
                          "alone; use 'ddp', 'fsdp2' or 'auto'")
    return name


def make_strategy(cfg: TrainConfig, device: torch.device) -> Strategy:
    """The strategy `cfg.strategy` names: vlm/train/strategies/<name>.py's STRATEGY."""
    return importlib.import_module(f"vlm.train.strategies.{resolve_strategy(cfg.strategy)}").STRATEGY(cfg, device)
