"""What a plan knows of the objective's parameters: trainable and frozen counts per part, and how FSDP2 splits them
into a replicated encoder, sharded units and a root (vlm/train/strategies/fsdp2.py)."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import nn

from vlm.objective.objective import Objective

PARTS = ("vision encoder", "bridge", "LM base", "LoRA", "heads")


@dataclass
class PartCount:
    trainable: int = 0
    frozen: int = 0

    @property
    def total(self) -> int:
        return self.trainable + self.frozen


def _part_of(name: str) -> str:
    if name.startswith("model.vision."):
        return "vision encoder"
    if name.startswith("model.bridge."):
        return "bridge"
    if name.startswith("model.llm."):
        return "LoRA" if "lora_" in name else "LM base"
    return "heads"  # the contrastive head and the objective's learnable temperatures


def count_parameters(objective: Objective) -> dict[str, PartCount]:
    """Parameters per part (tied tables once), in PARTS order."""
    counts = {part: PartCount() for part in PARTS}
    for name, param in objective.named_parameters():
        count = counts[_part_of(name)]
        if param.requires_grad:
            count.trainable += param.numel()
        else:
            count.frozen += param.numel()
    return counts


@dataclass(frozen=True)
class ShardLayout:
    """Bytes per GPU of FSDP2's parameter layout: `replicated` (the frozen encoder, which fully_shard ignores, and
    the buffers) whole on every GPU, `sharded` (everything else, as stored) split over them. During a step the root
    unit is gathered from the forward to the end of the backward (reshard_after_forward=False) and a shard unit
    while it runs, the next one prefetched; each keeps unsharded gradients until they are reduce-scattered."""

    mixed_precision: bool  # parameters gathered in bf16 (they then need no autocast copies)
    replicated: int
    sharded: int
    root_gathered: int
    root_gradients: int
    unit_gathered: int  # the largest unit
    unit_gradients: int

    @property
    def step_buffers(self) -> int:
        """Gathered parameters and unsharded gradients at the backward's worst: the root, the running unit and the
        prefetched one."""
        return self.root_gathered + self.root_gradients + 2 * self.unit_gathered + self.unit_gradients


def shard_layout(objective: Objective, gather_dtype: torch.dtype | None) -> ShardLayout:
    """`gather_dtype`: the MixedPrecisionPolicy's param_dtype (bf16 on a GPU with bf16 autocast; gradients then
    reduce in fp32), or None to gather parameters as stored."""
    vision = set(objective.model.vision.parameters())
    units = [_distinct(unit.parameters()) for unit in objective.model.shard_units()]
    in_units = {p for unit in units for p in unit}
    root = [p for p in _distinct(objective.parameters()) if p not in vision and p not in in_units]
    gathered = [_gathered_bytes(unit, gather_dtype) + _gradient_bytes(unit, gather_dtype) for unit in units]
    largest = units[max(range(len(units)), key=gathered.__getitem__)] if units else []
    return ShardLayout(
        mixed_precision=gather_dtype is not None, replicated=_stored_bytes([*vision, *objective.buffers()]),
        sharded=_stored_bytes([*root, *in_units]),
        root_gathered=_gathered_bytes(root, gather_dtype), root_gradients=_gradient_bytes(root, gather_dtype),
        unit_gathered=_gathered_bytes(largest, gather_dtype), unit_gradients=_gradient_bytes(largest, gather_dtype))


def _distinct(params: Iterable[nn.Parameter]) -> list[nn.Parameter]:
    return list(dict.fromkeys(params))


def _stored_bytes(tensors: Iterable[torch.Tensor]) -> int:
    return sum(t.numel() * t.element_size() for t in _distinct(tensors))


def _gathered_bytes(params: list[nn.Parameter], gather_dtype: torch.dtype | None) -> int:
    return sum(p.numel() * (gather_dtype.itemsize if gather_dtype and p.is_floating_point() else p.element_size())
               for p in params)


def _gradient_bytes(params: list[nn.Parameter], gather_dtype: torch.dtype | None) -> int:
    """Unsharded gradients in the gathered dtype, plus their fp32 copy for the reduce-scatter under mixed precision."""
    trainable = [p for p in params if p.requires_grad]
    reduce_copy = sum(p.numel() * 4 for p in trainable) if gather_dtype else 0
    return _gathered_bytes(trainable, gather_dtype) + reduce_copy
