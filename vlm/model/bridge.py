"""The bridge interface: image tokens (and, for a router, the prompt) -> the LLM's visual prefix.

Each bridge is one file in vlm/model/bridges/, named by its `bridge.type`, exposing its class as `BRIDGE`. The
rest of the stack (model, objective, strategies, planner, release card) talks to this interface only, so a new
bridge is that file plus its keys in `BridgeConfig` and its name in `config.BRIDGE_TYPES`.
"""

from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import ClassVar

import torch
from torch import nn

from vlm.config import BridgeConfig


@dataclass
class BridgeOutput:
    visual_tokens: torch.Tensor  # (B, T, H_llm): the LLM's visual prefix
    hidden: torch.Tensor  # (B, T, H_bridge): per-token states before the LLM projection (Q-Former query outputs)
    router_probs: torch.Tensor | None = None  # (B, E): routing weights per image-prompt pair (a router's)
    # Auxiliary training terms the bridge computes itself (names from `Bridge.loss_terms`), e.g. MoE balancing.
    losses: dict[str, torch.Tensor] = field(default_factory=dict)


class Bridge(nn.Module):
    """Base of every bridge. Subclasses build their layers in `__init__(cfg, vision_width, llm_width,
    text_vocab_size)` and implement `forward`; the class attributes and methods below have safe defaults."""

    # The bridge reads the prompt's LLM input embeddings (a router); the model then passes them to `forward`.
    reads_prompt: ClassVar[bool] = False
    # `bridge.text_branch` builds a text branch (ITC/ITM/ITG) of `text_vocab_size` tokens; such a bridge implements
    # the Q-Former's text-branch methods (encode_queries, project, decode, encode_text, text_features,
    # image_features, encode_multimodal, itm_logits, lm_logits) and sets `self.text_branch`.
    supports_text_branch: ClassVar[bool] = False

    def __init__(self):
        super().__init__()
        self.text_branch = False

    def forward(self, image_tokens: torch.Tensor, text_embeds: torch.Tensor | None = None,
                text_mask: torch.Tensor | None = None) -> BridgeOutput:
        raise NotImplementedError

    @property
    def loss_terms(self) -> tuple[str, ...]:
        """Training terms this bridge adds to the LM and contrastive ones, weighted by `loss.<term>_weight`."""
        return ()

    def shard_units(self) -> list[nn.Module]:
        """The blocks FSDP2 shards (and activation checkpointing wraps) one by one; the rest stays in the root."""
        return []

    def may_skip_parameters(self, active_terms: set[str]) -> bool:
        """Whether a step training `active_terms` can leave some of the bridge's trainable parameters without a
        gradient (DDP must then look for them): a head of an inactive term, an expert no pair picked."""
        return False

    def reset_parameters(self) -> None:
        """Fresh initialisation of every weight, for a model materialised from the meta device: each layer's own
        `reset_parameters` in module order; subclasses initialise their own parameters (and those of layers
        without a `reset_parameters`) after it."""
        for module in self.modules():
            if not isinstance(module, Bridge) and hasattr(module, "reset_parameters"):
                module.reset_parameters()

    def load_pretrained(self, cfg: BridgeConfig) -> None:
        """Read the bridge's own pretrained weights, if its config names any (the weights step of a build)."""

    @staticmethod
    def describe(cfg: BridgeConfig) -> str:
        """One line for the model card."""
        raise NotImplementedError


def bridge_class(name: str) -> type[Bridge]:
    """The class of `bridge.type` (validated against config.BRIDGE_TYPES): vlm/model/bridges/<name>.py's BRIDGE."""
    return importlib.import_module(f"vlm.model.bridges.{name}").BRIDGE
