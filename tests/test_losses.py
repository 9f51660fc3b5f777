"""The contrastive loss against a hand computation, and its clamped learnable temperature."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from vlm.losses import ContrastiveLoss


def _hand_infonce(images: list[list[float]], texts: list[list[float]], scale: float) -> float:
    """Symmetric InfoNCE written out with loops: -log softmax of the matching pair, both directions."""
    n = len(images)
    sim = [[scale * sum(a * b for a, b in zip(images[i], texts[j])) for j in range(n)] for i in range(n)]
    i2t = -sum(sim[i][i] - math.log(sum(math.exp(sim[i][j]) for j in range(n))) for i in range(n)) / n
    t2i = -sum(sim[j][j] - math.log(sum(math.exp(sim[i][j]) for i in range(n))) for j in range(n)) / n
    return 0.5 * (i2t + t2i)


def test_matches_hand_computation():
    torch.manual_seed(0)
    images = F.normalize(torch.randn(5, 8, dtype=torch.float64), dim=-1)
    texts = F.normalize(torch.randn(5, 8, dtype=torch.float64), dim=-1)
    loss_fn = ContrastiveLoss(init_temperature=0.1, max_logit_scale=100.0)
    expected = _hand_infonce(images.tolist(), texts.tolist(), scale=10.0)
    assert loss_fn(images, texts).item() == pytest.approx(expected, rel=1e-6)


def test_perfect_alignment_beats_random_and_swapping_sides_is_symmetric():
    torch.manual_seed(1)
    feats = F.normalize(torch.randn(8, 16), dim=-1)
    loss_fn = ContrastiveLoss(init_temperature=0.05)
    aligned = loss_fn(feats, feats).item()
    shuffled = loss_fn(feats, feats[torch.randperm(8)]).item()
    assert aligned < 0.1 < math.log(8) < shuffled + 1.0
    other = F.normalize(torch.randn(8, 16), dim=-1)
    assert loss_fn(feats, other).item() == pytest.approx(loss_fn(other, feats).item(), rel=1e-6)


def test_temperature_is_learnable_and_clamped():
    loss_fn = ContrastiveLoss(init_temperature=0.07, max_logit_scale=50.0)
    assert loss_fn.scale().item() == pytest.approx(1 / 0.07, rel=1e-5)
    feats = F.normalize(torch.randn(4, 8), dim=-1)
    loss_fn(feats, F.normalize(torch.randn(4, 8), dim=-1)).backward()
    assert loss_fn.logit_scale.grad is not None and loss_fn.logit_scale.grad.abs() > 0
    with torch.no_grad():
        loss_fn.logit_scale.fill_(math.log(1e4))
    assert loss_fn.scale().item() == pytest.approx(50.0)
    with torch.no_grad():
        loss_fn.logit_scale.fill_(-5.0)
    assert loss_fn.scale().item() == pytest.approx(1.0)
