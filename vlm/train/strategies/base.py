"""What a training strategy owns: wrapping the objective for its ranks, gradient sync and accumulation, clipping,
precision, the state dicts of checkpoints, and how the model is evaluated mid-run. The trainer's loop is one for
every strategy; a new strategy is one new file in this folder exposing its class as `STRATEGY`.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn
from torch.distributed._composable import checkpoint
from torch.distributed.checkpoint.state_dict import StateDictOptions, get_state_dict, set_state_dict

from vlm import precision
from vlm.config import Config, TrainConfig
from vlm.data.batch import ModelInputs
from vlm.model.vlm import VisionLLM
from vlm.objective.objective import Objective

# Checkpoints hold what training changes: the frozen encoder and LM weights are never written, so loading leaves
# them out too (every trainable tensor is checked to be there first: checkpoint._check_tensors).
STATE_DICT_OPTIONS = StateDictOptions(ignore_frozen_params=True)
LOAD_OPTIONS = StateDictOptions(ignore_frozen_params=True, strict=False)


class Strategy:
    name = "base"

    def __init__(self, cfg: TrainConfig, device: torch.device):
        self.cfg, self.device = cfg, device
        self.objective: Objective | None = None
        self.module: nn.Module | None = None  # what the loop calls: the objective as this strategy wraps it

    # --- set-up -------------------------------------------------------------------------------------

    def check(self, cfg: Config) -> None:
        """Refuse, in one line and before anything is built, a config this strategy cannot train."""

    def prepare(self, objective: Objective) -> nn.Module:
        """Activation checkpointing (if asked for), then the strategy's own wrapping; build the optimizer after
        this, on the parameters it leaves in place."""
        if self.cfg.activation_checkpointing:
            for unit in objective.model.shard_units():
                checkpoint(unit)  # non-reentrant; the RNG state is replayed, so dropout matches the first pass
        self.objective = objective
        self.module = self.wrap(objective)
        return self.module

    def wrap(self, objective: Objective) -> nn.Module:
        raise NotImplementedError

    # --- one step -----------------------------------------------------------------------------------

    def forward(self, inputs: ModelInputs, **options) -> dict[str, torch.Tensor]:
        """The objective's forward through this strategy's wrapper (`options` go to Objective.forward)."""
        with precision.autocast(self.cfg.precision, self.device):
            return self.module(inputs.to(self.device), **options)

    def accumulating(self, last_micro_step: bool) -> contextlib.AbstractContextManager:
        """The context of one micro-step's forward and backward: gradients are synchronised on the last only."""
        return contextlib.nullcontext()

    def clip_grad_norm(self, max_norm: float) -> float:
        return float(torch.nn.utils.clip_grad_norm_(self.objective.parameters(), max_norm))

    # --- checkpoints and evaluation -----------------------------------------------------------------

    def state_dicts(self, optimizer: torch.optim.Optimizer) -> dict:
        """The trainable weights and the optimizer state, keyed by parameter names without any wrapper's prefix,
        as torch.distributed.checkpoint saves and reshards them (a checkpoint of one strategy and world size
        loads into another)."""
        model, optim = get_state_dict(self.module, optimizer, options=STATE_DICT_OPTIONS)
        return {"model": model, "optim": optim}

    def load_state_dicts(self, optimizer: torch.optim.Optimizer, state: dict) -> None:
        set_state_dict(self.module, optimizer, model_state_dict=state["model"], optim_state_dict=state["optim"],
                       options=LOAD_OPTIONS)

    @contextlib.contextmanager
    def evaluation(self) -> Iterator[VisionLLM]:
        """The network, ready for a mid-run evaluation that every rank runs on its own share of the images."""
        yield self.objective.model
