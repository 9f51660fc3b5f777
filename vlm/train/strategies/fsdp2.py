"""FSDP2 (`fully_shard`): parameters, gradients and optimizer state sharded over the ranks, one unit per LM
transformer block and per bridge unit (`VisionLLM.shard_units`) and a root unit for the rest. Each unit is
all-gathered for its forward and again for its backward, its gradients reduce-scattered, so a rank holds 1/N of
the model between uses. A unit holds LoRA weights and frozen (bf16) base weights alike.

On a GPU with bf16 (train.precision auto or bf16) a MixedPrecisionPolicy all-gathers the parameters in bf16 and
reduces the gradients in fp32; the optimizer steps on the fp32 shards. The frozen image encoder is left out of
sharding: it needs no gradients, and sharding it would all-gather it every step.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import torch
from torch import nn
from torch.distributed.device_mesh import init_device_mesh
from torch.distributed.fsdp import FSDPModule, MixedPrecisionPolicy, fully_shard

from vlm import distributed, precision
from vlm.config import Config, ConfigError
from vlm.model.vlm import VisionLLM
from vlm.objective.objective import Objective
from vlm.train.strategies.base import Strategy


class FSDP2(Strategy):
    name = "fsdp2"

    def check(self, cfg: Config) -> None:
        # FSDP2 flattens a unit's trainable parameters into one buffer of one dtype; a trained embedding table
        # held in the LM's half precision would share the root unit with the fp32 heads.
        dtype = precision.weight_dtype(cfg.llm.dtype, self.device)
        if cfg.llm.train_embeddings and dtype != torch.float32:
            raise ConfigError(f"'train.strategy' fsdp2 trains one dtype per unit, but llm.train_embeddings=true "
                              f"would train the {str(dtype).removeprefix('torch.')} embedding table beside float32 "
                              "heads: set llm.dtype=float32, llm.train_embeddings=false or another strategy")

    def wrap(self, objective: Objective) -> nn.Module:
        mesh = init_device_mesh(self.device.type, (distributed.world_size(),))
        policy = None
        if self.device.type == "cuda" and precision.uses_bf16_autocast(self.cfg.precision, self.device):
            policy = MixedPrecisionPolicy(param_dtype=torch.bfloat16, reduce_dtype=torch.float32)
        kwargs = {"mesh": mesh} | ({"mp_policy": policy} if policy is not None else {})
        for unit in objective.model.shard_units():
            fully_shard(unit, **kwargs)
        # The root's parameters (embeddings, output layer, heads) are used again by the backward right away.
        fully_shard(objective, reshard_after_forward=False, ignored_params=set(objective.model.vision.parameters()),
                    **kwargs)
        return objective

    def accumulating(self, last_micro_step: bool) -> contextlib.AbstractContextManager:
        self.module.set_requires_gradient_sync(last_micro_step)
        return contextlib.nullcontext()

    def clip_grad_norm(self, max_norm: float) -> float:
        norm = torch.nn.utils.clip_grad_norm_(self.objective.parameters(), max_norm)
        return float(norm.full_tensor() if hasattr(norm, "full_tensor") else norm)

    @contextlib.contextmanager
    def evaluation(self) -> Iterator[VisionLLM]:
        """Every unit gathered whole for the evaluation: ranks generate for different images, so they run
        different numbers of forward passes, which per-unit all-gathers would deadlock on."""
        units = [m for m in self.module.modules() if isinstance(m, FSDPModule)]
        for unit in units:
            unit.set_reshard_after_forward(False, recurse=False)
            unit.unshard()
        try:
            yield self.objective.model
        finally:
            for unit in units:
                unit.reshard()
                unit.set_reshard_after_forward(unit is not self.module, recurse=False)


STRATEGY = FSDP2
