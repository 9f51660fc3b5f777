"""DistributedDataParallel: every rank holds the whole model, gradients are averaged over ranks in the backward
pass (all-reduced in buckets as they are ready), and only on the last micro-step of an accumulation."""

from __future__ import annotations

import contextlib

from torch import nn
from torch.nn.parallel import DistributedDataParallel

from vlm.objective.objective import Objective
from vlm.train.strategies.base import Strategy


class DDP(Strategy):
    name = "ddp"

    def wrap(self, objective: Objective) -> nn.Module:
        # An inactive term's head, or experts no pair picked (top-k routing), get no gradient in some steps:
        # DDP must then look for unused parameters.
        # Gradients as views of the all-reduce buckets: no second copy of them on every GPU.
        return DistributedDataParallel(objective, find_unused_parameters=may_skip_parameters(objective),
                                       gradient_as_bucket_view=True)

    def accumulating(self, last_micro_step: bool) -> contextlib.AbstractContextManager:
        return contextlib.nullcontext() if last_micro_step else self.module.no_sync()


def may_skip_parameters(objective: Objective) -> bool:
    """Whether a step can leave trainable parameters without a gradient: the contrastive head when that term is
    off (the LM term off leaves LoRA without one), or whatever the bridge says of its own."""
    terms = set(objective.weights)
    return not {"lm", "contrastive"} <= terms or objective.model.bridge.may_skip_parameters(terms)


STRATEGY = DDP
