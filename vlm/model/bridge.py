"""What every bridge returns. Every bridge is called as bridge(image_tokens, text_embeds=None, text_mask=None);
`text_embeds` (B, L, H_llm) are the LLM input embeddings of the prompt, read by the MoE router only."""

from __future__ import annotations

from dataclasses import dataclass

import torch


@dataclass
class BridgeOutput:
    visual_tokens: torch.Tensor  # (B, T, H_llm): the LLM's visual prefix
    hidden: torch.Tensor  # (B, T, H_bridge): per-token states before the LLM projection (Q-Former query outputs)
    router_probs: torch.Tensor | None = None  # (B, E): MoE routing weights per image-prompt pair
    balance_loss: torch.Tensor | None = None  # MoE load-balancing term (Switch-style), a scalar
