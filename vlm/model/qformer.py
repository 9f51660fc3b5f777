"""Q-Former bridge: learned queries that read the frozen image tokens through cross-attention.

BERT-style post-LN layers as in BLIP-2: self-attention over the queries, cross-attention to the
LayerNorm'd image tokens every `cross_attention_freq` layers, then a feed-forward block. Module names
follow BERT/BLIP-2 (query/key/value, dense, LayerNorm) so released weights can be mapped onto it.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vlm.config import BridgeConfig


@dataclass
class BridgeOutput:
    visual_tokens: torch.Tensor  # (B, Q, H_llm): the LLM prefix
    pooled: torch.Tensor  # (B, H_bridge): one vector per image for the contrastive head


class Attention(nn.Module):
    def __init__(self, hidden: int, heads: int, kv_width: int, dropout: float):
        super().__init__()
        self.heads = heads
        self.query = nn.Linear(hidden, hidden)
        self.key = nn.Linear(kv_width, hidden)
        self.value = nn.Linear(kv_width, hidden)
        self.dense = nn.Linear(hidden, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=1e-12)
        self.dropout = dropout

    def _split(self, x: torch.Tensor) -> torch.Tensor:
        b, n, d = x.shape
        return x.view(b, n, self.heads, d // self.heads).transpose(1, 2)  # (B, heads, N, d_head)

    def forward(self, x: torch.Tensor, memory: torch.Tensor) -> torch.Tensor:
        q, k, v = self._split(self.query(x)), self._split(self.key(memory)), self._split(self.value(memory))
        p = self.dropout if self.training else 0.0
        attended = F.scaled_dot_product_attention(q, k, v, dropout_p=p)  # (B, heads, N, d_head)
        attended = attended.transpose(1, 2).flatten(2)
        out = F.dropout(self.dense(attended), p, self.training)
        return self.LayerNorm(out + x)


class FeedForward(nn.Module):
    def __init__(self, hidden: int, inner: int, dropout: float):
        super().__init__()
        self.intermediate = nn.Linear(hidden, inner)
        self.output = nn.Linear(inner, hidden)
        self.LayerNorm = nn.LayerNorm(hidden, eps=1e-12)
        self.dropout = dropout

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.output(F.gelu(self.intermediate(x)))
        return self.LayerNorm(F.dropout(out, self.dropout, self.training) + x)


class QFormerLayer(nn.Module):
    def __init__(self, cfg: BridgeConfig, vision_width: int, has_cross_attention: bool):
        super().__init__()
        h = cfg.hidden_size
        self.attention = Attention(h, cfg.num_heads, h, cfg.dropout)
        self.crossattention = Attention(h, cfg.num_heads, vision_width, cfg.dropout) if has_cross_attention else None
        self.ffn = FeedForward(h, int(h * cfg.mlp_ratio), cfg.dropout)

    def forward(self, queries: torch.Tensor, image_tokens: torch.Tensor) -> torch.Tensor:
        x = self.attention(queries, queries)
        if self.crossattention is not None:
            x = self.crossattention(x, image_tokens)
        return self.ffn(x)


class QFormer(nn.Module):
    """(B, N, D_vision) image tokens -> BridgeOutput with (B, Q, H_llm) visual tokens."""

    def __init__(self, cfg: BridgeConfig, vision_width: int, llm_width: int):
        super().__init__()
        h = cfg.hidden_size
        # Queries carry no position embeddings (BLIP-2); init matches BERT's initializer_range.
        self.query_tokens = nn.Parameter(torch.randn(1, cfg.num_queries, h) * 0.02)
        self.ln_vision = nn.LayerNorm(vision_width)
        self.embed_norm = nn.LayerNorm(h, eps=1e-12)
        self.layers = nn.ModuleList(
            QFormerLayer(cfg, vision_width, has_cross_attention=(i % cfg.cross_attention_freq == 0))
            for i in range(cfg.num_layers)
        )
        self.proj = nn.Linear(h, llm_width)  # BLIP-2's language_projection
        self.dropout = cfg.dropout
        self.hidden_size = h

    def forward(self, image_tokens: torch.Tensor) -> BridgeOutput:
        memory = self.ln_vision(image_tokens)
        x = self.query_tokens.expand(image_tokens.shape[0], -1, -1)
        x = F.dropout(self.embed_norm(x), self.dropout, self.training)
        for layer in self.layers:
            x = layer(x, memory)
        return BridgeOutput(visual_tokens=self.proj(x), pooled=x.mean(dim=1))


def build_bridge(cfg: BridgeConfig, vision_width: int, llm_width: int) -> nn.Module:
    if cfg.type == "qformer":
        return QFormer(cfg, vision_width, llm_width)
    raise ValueError(f"unknown bridge.type '{cfg.type}'")
