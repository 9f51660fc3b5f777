"""Parrot's text-guided mixture-of-experts projector on top of LLaVA's 2-layer MLP projection.

From Parrot (AIDC-AI/Parrot, parrot/model/moe_model/moe.py): the projected CLS token attends, single-head and
without learned weights, over the prompt's LLM word embeddings; the pooled vector feeds a bias-free linear router
with a softmax over the experts; each expert is a bias-free SwiGLU run on every visual token; there is one routing
decision per image-prompt pair, so the prompt's language picks the experts.

Ours:
- `moe_init="identity"`: out = V + sum_e w_e E_e(V) with every `down_proj` zero-initialised, so a fresh MoE passes
  the projection through unchanged. Parrot's stage 2 starts from random experts that perturb the visual interface
  learnt in stage 1; `moe_init="parrot"` keeps Parrot's out = sum_e w_e E_e(V) + parrot_residual * V.
- optional top-k routing that runs an expert only on the rows that chose it (Parrot evaluates every expert), and a
  Switch-Transformer balance loss (Parrot has none).
- batched over the batch with padding-aware attention (Parrot loops over samples); router math in fp32.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vlm.config import BridgeConfig
from vlm.model.bridge import Bridge, BridgeOutput
from vlm.model.bridges.mlp import MLPProjector


class SwiGLU(nn.Module):
    """Parrot's expert: down_proj(silu(gate_proj(x)) * up_proj(x)), bias-free."""

    def __init__(self, width: int, inner: int):
        super().__init__()
        self.gate_proj = nn.Linear(width, inner, bias=False)
        self.up_proj = nn.Linear(width, inner, bias=False)
        self.down_proj = nn.Linear(inner, width, bias=False)

    def forward(self, x: Tensor) -> Tensor:
        return self.down_proj(F.silu(self.gate_proj(x)) * self.up_proj(x))


class MoEProjector(Bridge):
    """Parrot's MoE after the 2-layer projection; routed by the prompt, one decision per image-prompt pair.

    The router query is the first visual token, the CLS token when the vision tower keeps it (`include_cls`).
    """

    reads_prompt = True

    def __init__(self, cfg: BridgeConfig, vision_width: int, llm_width: int, text_vocab_size: int = 0):
        super().__init__()
        self.projector = MLPProjector(cfg, vision_width, llm_width)
        self.router = nn.Linear(llm_width, cfg.num_experts, bias=False)
        inner = cfg.expert_hidden or llm_width
        self.experts = nn.ModuleList(SwiGLU(llm_width, inner) for _ in range(cfg.num_experts))
        self.top_k = cfg.top_k
        self.identity = cfg.moe_init == "identity"
        self.parrot_residual = cfg.parrot_residual
        self._init_experts()

    def _init_experts(self) -> None:
        if self.identity:
            for expert in self.experts:
                nn.init.zeros_(expert.down_proj.weight)
        else:  # Parrot's MoE is new in a Hugging Face model, which draws it from N(0, initializer_range=0.02)
            for weight in [self.router.weight, *self.experts.parameters()]:
                nn.init.normal_(weight, std=0.02)

    @property
    def loss_terms(self) -> tuple[str, ...]:
        return ("moe_balance",)

    def shard_units(self) -> list[nn.Module]:
        return list(self.experts)

    def may_skip_parameters(self, active_terms: set[str]) -> bool:
        return self.top_k > 0

    def reset_parameters(self) -> None:
        super().reset_parameters()
        self._init_experts()

    @staticmethod
    def describe(cfg: BridgeConfig) -> str:
        routing = f"top-{cfg.top_k}" if cfg.top_k else "dense"
        return f"Parrot-style MoE projector, {cfg.num_experts} SwiGLU experts, {routing} routing by the prompt"

    def forward(self, image_tokens: Tensor, text_embeds: Tensor | None = None,
                text_mask: Tensor | None = None) -> BridgeOutput:
        v = self.projector(image_tokens).visual_tokens
        probs = self.route(v[:, 0], text_embeds, text_mask)
        mixed = torch.zeros_like(v)
        if self.top_k:
            top, chosen = probs.topk(self.top_k, dim=-1)
            weights = (top / top.sum(-1, keepdim=True)).to(v.dtype)
            for e, expert in enumerate(self.experts):
                rows, slot = (chosen == e).nonzero(as_tuple=True)
                if rows.numel():
                    mixed = mixed.index_add(0, rows, weights[rows, slot, None, None] * expert(v[rows]))
        else:
            chosen = probs.argmax(-1, keepdim=True)
            weights = probs.to(v.dtype)
            for e, expert in enumerate(self.experts):
                mixed = mixed + weights[:, e, None, None] * expert(v)
        out = v + mixed if self.identity else mixed + self.parrot_residual * v
        return BridgeOutput(visual_tokens=out, hidden=out, router_probs=probs,
                            losses={"moe_balance": load_balance_loss(probs, chosen)})

    def route(self, query: Tensor, text_embeds: Tensor | None, text_mask: Tensor | None) -> Tensor:
        """Router weights (B, E), fp32: `query` (B, H) attends over the unmasked prompt embeddings (B, L, H), the
        router reads the pooled vector. Without text, or with an all-padding row, the pool is 0: uniform weights."""
        with torch.autocast(query.device.type, enabled=False):
            query = query.float()
            pooled = torch.zeros_like(query)  # kept as a tensor so the router stays in the graph
            if text_embeds is not None:
                keys = text_embeds.float()
                keep = torch.ones(keys.shape[:2], dtype=torch.bool, device=keys.device) if text_mask is None \
                    else text_mask != 0
                scores = torch.einsum("bh,blh->bl", query, keys) / math.sqrt(query.shape[-1])
                # A finite fill instead of -inf keeps all-padding rows NaN-free; `* keep` then zeroes them.
                alpha = scores.masked_fill(~keep, torch.finfo(scores.dtype).min).softmax(-1) * keep
                pooled = torch.einsum("bl,blh->bh", alpha, keys)
            return F.linear(pooled, self.router.weight.float()).softmax(-1)


def load_balance_loss(probs: Tensor, chosen: Tensor) -> Tensor:
    """Switch-Transformer load balancing E * sum_e f_e * P_e for router weights `probs` (B, E) and the experts
    each row was dispatched to, `chosen` (B, k). P_e is the batch mean of probs[:, e], f_e the share of the B * k
    dispatches that went to e (no gradient), so the loss is 1.0 when routing is uniform."""
    num_experts = probs.shape[-1]
    share = F.one_hot(chosen, num_experts).to(probs.dtype).mean((0, 1))
    return num_experts * (share * probs.mean(0)).sum()


BRIDGE = MoEProjector
