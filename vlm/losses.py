"""Training losses as modules that return named terms and own their collectives."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from vlm.train import distributed


class ContrastiveLoss(nn.Module):
    """Symmetric InfoNCE between image and text features, gathered across ranks.

    The temperature is learned as CLIP's logit scale (log-parameterised) and clamped to
    [1, max_logit_scale]. With gathered features, each rank's positives sit at offset rank * B.
    """

    def __init__(self, init_temperature: float = 0.07, max_logit_scale: float = 100.0):
        super().__init__()
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1.0 / init_temperature)))
        self.max_logit_scale = max_logit_scale

    def scale(self) -> torch.Tensor:
        return self.logit_scale.exp().clamp(1.0, self.max_logit_scale)

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor) -> torch.Tensor:
        """Both (B, D), L2-normalised. Returns the mean of the image->text and text->image cross-entropies."""
        all_images = distributed.gather_with_grad(image_features)
        all_texts = distributed.gather_with_grad(text_features)
        scale = self.scale()
        logits_i2t = scale * image_features.float() @ all_texts.float().t()  # (B, B * world)
        logits_t2i = scale * text_features.float() @ all_images.float().t()
        b = image_features.shape[0]
        targets = torch.arange(b, device=image_features.device) + distributed.rank() * b
        return 0.5 * (F.cross_entropy(logits_i2t, targets) + F.cross_entropy(logits_t2i, targets))
