"""One process: the objective as it is."""

from __future__ import annotations

from torch import nn

from vlm.objective.objective import Objective
from vlm.train.strategies.base import Strategy


class Single(Strategy):
    name = "single"

    def wrap(self, objective: Objective) -> nn.Module:
        return objective


STRATEGY = Single
