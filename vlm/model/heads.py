"""The CG-VLM-style contrastive head: projections of the visual tokens and of the caption's LLM input embeddings
into one space, shared by training (the contrastive term) and retrieval."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


def mean_token_features(token_feats: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """CG-VLM-style text feature: the masked mean of the per-token L2-normalised features.

    token_feats (B, L, D), e.g. caption token embeddings; mask (B, L), 1 for real tokens, 0 for padding.
    Returns (B, D) = mean_j t_j / |t_j| over the real tokens, deliberately NOT renormalised, so that for a unit
    image vector p, <p, result> = mean_j cos(p, t_j): "maximise the averaged similarity between pooled image
    features and text-token embeddings". Paired with a normalised pooled image feature in `ContrastiveLoss`, the
    logits are scale * (average token cosine). Its norm is <= 1 (1 only if all tokens are parallel).
    Computed in fp32 (fp64 stays fp64); a row without real tokens gives the zero vector.
    """
    unit = F.normalize(token_feats.to(torch.promote_types(token_feats.dtype, torch.float32)), dim=-1)
    weights = mask.to(unit.dtype).unsqueeze(-1)  # (B, L, 1)
    return (unit * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1.0)


class ContrastiveHead(nn.Module):
    """CG-VLM-style alignment in the LLM's input space: the mean of the visual tokens against the caption's
    token embeddings. The text feature is the mean of per-token unit vectors, so the score is the average
    cosine between the pooled image and each caption token (CG-VLM's "averaged similarity")."""

    def __init__(self, llm_width: int, dim: int):
        super().__init__()
        self.vision_proj = nn.Linear(llm_width, dim)
        self.text_proj = nn.Linear(llm_width, dim)

    def reset_parameters(self) -> None:
        self.vision_proj.reset_parameters()
        self.text_proj.reset_parameters()

    def image(self, visual_tokens: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.vision_proj(visual_tokens.float().mean(dim=1)), dim=-1)

    def text(self, token_embeds: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return mean_token_features(F.normalize(self.text_proj(token_embeds.float()), dim=-1), mask)
