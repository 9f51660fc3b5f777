"""Training losses as modules that return named terms and own their collectives.

- `ContrastiveLoss`: CLIP-style symmetric InfoNCE on one vector per image and per text.
- `ItcLoss`: BLIP-2 image-text contrastive loss, max over the Q-Former queries, soft multi-positive targets.
- `sample_itm_negatives`: BLIP-2 hard-negative sampling for image-text matching (ITM). The ITM loss itself is
  a plain `F.cross_entropy(logits, labels)` on the query-averaged 2-way logits, so there is no wrapper for it.
- `itg_loss`: BLIP-2 image-grounded text generation, shifted next-token CE as `BertLMHeadModel` computes it.

Distributed convention (open_clip's "local loss + gather with grad"): each rank computes the loss of its own B
rows against the columns gathered from all W ranks. The gather's backward sums every rank's gradient into the
owner's slice, so each rank's feature gradient is W times the gradient of the full-batch loss, and DDP's averaging
of the parameter gradients (divide by W) gives exactly the single-process full-batch gradient.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import nn

from vlm import distributed


def _upcast(x: torch.Tensor) -> torch.Tensor:
    """At least fp32: half/bfloat16 go to float32, float64 stays float64 (the tests check in float64)."""
    return x.to(torch.promote_types(x.dtype, torch.float32))


class LearnableLogitScale(nn.Module):
    """Base for losses with a CLIP-style learnable temperature.

    The parameter is the log of the logit scale (init log(1 / init_temperature)); `scale()` is its exp clamped to
    [1, max_logit_scale], so the temperature never goes below 1 / max_logit_scale (CLIP caps the scale at 100).
    """

    def __init__(self, init_temperature: float = 0.07, max_logit_scale: float = 100.0):
        super().__init__()
        # One element, not a 0-d tensor: FSDP2 shards every parameter along its first dimension.
        self.logit_scale = nn.Parameter(torch.tensor([math.log(1.0 / init_temperature)]))
        self.max_logit_scale = max_logit_scale

    def scale(self, logit_scale: torch.Tensor | None = None) -> torch.Tensor:
        """The clamped logit scale, a 0-d tensor (of `logit_scale`, default the parameter itself)."""
        logit_scale = self.logit_scale if logit_scale is None else logit_scale
        return logit_scale[0].exp().clamp(1.0, self.max_logit_scale)


class ContrastiveLoss(LearnableLogitScale):
    """Symmetric InfoNCE between image and text features, gathered across ranks.

    The temperature is learned as CLIP's logit scale (log-parameterised) and clamped to
    [1, max_logit_scale]. With gathered features, each rank's positives sit at offset rank * B.
    """

    def forward(self, image_features: torch.Tensor, text_features: torch.Tensor,
                weights: torch.Tensor | None = None) -> torch.Tensor:
        """Both (B, D), L2-normalised. Returns the mean of the image->text and text->image cross-entropies (with (B,)
        `weights`, each pair's rows weighted: see `weighted_mean`)."""
        all_images = distributed.gather_with_grad(image_features)
        all_texts = distributed.gather_with_grad(text_features)
        scale = self.scale()
        logits_i2t = scale * _upcast(image_features) @ _upcast(all_texts).t()  # (B, B * world)
        logits_t2i = scale * _upcast(text_features) @ _upcast(all_images).t()
        b = image_features.shape[0]
        targets = torch.arange(b, device=image_features.device) + distributed.rank() * b
        if weights is None:
            return 0.5 * (F.cross_entropy(logits_i2t, targets) + F.cross_entropy(logits_t2i, targets))
        rows = F.cross_entropy(logits_i2t, targets, reduction="none") + F.cross_entropy(logits_t2i, targets,
                                                                                         reduction="none")
        return 0.5 * weighted_mean(rows, weights)


def weighted_mean(values: torch.Tensor, weights: torch.Tensor) -> torch.Tensor:
    """sum_i w_i v_i / sum_i w_i over this rank's rows, rescaled (`distributed.share_of_global_mean`) so that the
    ranks' average is the weighted mean over the global batch, as one process computes it."""
    weights = weights.to(values.dtype)
    total = weights.sum()
    mean = (weights * values).sum() / total.clamp(min=torch.finfo(values.dtype).tiny)
    factor = distributed.share_of_global_mean(total)
    return mean if factor is None else mean * factor.to(mean.device)


@dataclass
class ItcOutput:
    """What `ItcLoss` returns.

    `sim_i2t` (B, B*W): local images x all texts; `sim_t2i` (B, B*W): local texts x all images. Both are the
    max-over-queries cosine similarities *before* the temperature, detached, in fp32 (fp64 for fp64 inputs): the
    inputs of `sample_itm_negatives` and of ITC retrieval. `image_ids_all` (B*W,) are the gathered image ids
    (column j of both matrices belongs to pair j); `scale` is the detached logit scale used for the loss.
    """

    loss: torch.Tensor
    sim_i2t: torch.Tensor
    sim_t2i: torch.Tensor
    image_ids_all: torch.Tensor
    scale: torch.Tensor


def _soft_target_ce(logits: torch.Tensor, positives: torch.Tensor, label_smoothing: float) -> torch.Tensor:
    """Per row, -sum_j target_j * log_softmax(logits)_j, with target = positives / #positives smoothed as
    (1 - ls) * target + ls / #columns. With one positive per row this is F.cross_entropy(label_smoothing=ls)."""
    targets = positives.to(logits.dtype)
    targets = targets / targets.sum(dim=1, keepdim=True).clamp(min=1.0)
    targets = (1.0 - label_smoothing) * targets + label_smoothing / logits.shape[1]
    return -(targets * F.log_softmax(logits, dim=1)).sum(dim=1)


class ItcLoss(LearnableLogitScale):
    """BLIP-2 image-text contrastive loss (LAVIS `Blip2Qformer` ITC), with a clamped learnable temperature.

    s_i2t[i, j] = max_q <z_iq, t_j> for local images i and all gathered texts j; s_t2i[j, i] = max_q <t_j, z_iq>
    for local texts j and all gathered images i. The positives of a row are all gathered columns with the row's
    image id (with `image_ids=None` only the pair itself, at column rank * B + row). Unlike LAVIS, which gathers
    without grad, features are gathered with `distributed.gather_with_grad`, so the gathered side gets gradient
    too and the loss matches the single-process full-batch loss (see the module docstring).
    """

    def __init__(self, init_temperature: float = 0.07, max_logit_scale: float = 100.0, label_smoothing: float = 0.1):
        super().__init__(init_temperature, max_logit_scale)
        self.label_smoothing = label_smoothing

    def forward(self, image_feats: torch.Tensor, text_feats: torch.Tensor,
                image_ids: torch.Tensor | None = None, weights: torch.Tensor | None = None) -> ItcOutput:
        """image_feats (B, Q, D), L2-normalised per query; text_feats (B, D), L2-normalised; image_ids (B,) long,
        ids that are unique per image across all ranks (e.g. dataset indices), or None for "every pair distinct";
        (B,) `weights` weigh each local pair's two rows (`weighted_mean`)."""
        b, q, d = image_feats.shape
        all_images = _upcast(distributed.gather_with_grad(image_feats))  # (B*W, Q, D)
        all_texts = _upcast(distributed.gather_with_grad(text_feats))  # (B*W, D)
        local_images, local_texts = _upcast(image_feats), _upcast(text_feats)
        n_all = all_texts.shape[0]
        # Memory: each similarity materialises a (B, B*W, Q) intermediate before the max over queries (and autograd
        # keeps the argmax indices). At B=100, W=8, Q=32 that is 2.6M floats, small; it grows as B^2 * W * Q.
        sim_i2t = (local_images.reshape(b * q, d) @ all_texts.t()).view(b, q, n_all).amax(dim=1)
        sim_t2i = (local_texts @ all_images.reshape(n_all * q, d).t()).view(b, n_all, q).amax(dim=2)

        if image_ids is None:
            image_ids = torch.arange(b, device=image_feats.device) + distributed.rank() * b
        image_ids_all = distributed.all_gather(image_ids.to(image_feats.device).long())
        positives = image_ids.to(image_ids_all.device)[:, None] == image_ids_all[None, :]  # (B, B*W)

        scale = self.scale()
        rows = (_soft_target_ce(scale * sim_i2t, positives, self.label_smoothing)
                + _soft_target_ce(scale * sim_t2i, positives, self.label_smoothing))
        loss = 0.5 * (rows.mean() if weights is None else weighted_mean(rows, weights))
        return ItcOutput(loss=loss, sim_i2t=sim_i2t.detach(), sim_t2i=sim_t2i.detach(),
                         image_ids_all=image_ids_all, scale=scale.detach())


@dataclass
class ItmNegatives:
    """One sampled hard negative per local pair (all indices point into the gathered batch, 0..B*W-1).

    `image_for_text[j]`: a gathered image for local text j; `text_for_image[i]`: a gathered text for local image i.
    Where `valid_*` is False the row had no candidate (every gathered pair has the same image id: a batch of one,
    or all duplicates); the index there is 0 and the caller must drop that negative from the ITM loss, e.g. with
    label -100 and `F.cross_entropy(..., ignore_index=-100)`.
    """

    image_for_text: torch.Tensor
    text_for_image: torch.Tensor
    valid_image_neg: torch.Tensor
    valid_text_neg: torch.Tensor


_SAMPLING_EPS = 1e-12


def _sample_negatives(sim: torch.Tensor, positives: torch.Tensor, scale: torch.Tensor | float,
                      generator: torch.Generator | None) -> tuple[torch.Tensor, torch.Tensor]:
    logits = (_upcast(sim) * scale).nan_to_num(nan=0.0)  # finite and at least fp32 (fp16 sims overflow at ~6e4)
    big = torch.finfo(logits.dtype).max / 4  # inf - inf would give NaN in the softmax; max/4 - (-max/4) does not
    logits = logits.clamp(-big, big).masked_fill(positives, -math.inf)
    valid = (~positives).any(dim=1)
    weights = F.softmax(logits, dim=1).nan_to_num(nan=0.0)  # rows of only -inf (invalid) give NaN -> 0
    # a tiny floor keeps every candidate drawable and every valid row's sum > 0; positives stay exactly 0
    weights = (weights + _SAMPLING_EPS).masked_fill(positives, 0.0)
    weights[~valid, 0] = 1.0  # dummy distribution for rows without candidates; their index is reset below
    index = torch.multinomial(weights, 1, generator=generator).squeeze(1)
    return torch.where(valid, index, torch.zeros_like(index)), valid


@torch.no_grad()
def sample_itm_negatives(sim_i2t: torch.Tensor, sim_t2i: torch.Tensor, image_ids_local: torch.Tensor | None,
                         image_ids_all: torch.Tensor, scale: torch.Tensor | float,
                         generator: torch.Generator | None = None) -> ItmNegatives:
    """BLIP-2 hard negatives: for each local text one gathered image, for each local image one gathered text,
    drawn with `torch.multinomial` from softmax(scale * sim) over the row with every positive (same image id,
    which covers the pair itself and duplicates) at weight 0. Importance sampling toward hard negatives, as LAVIS.

    sim_i2t, sim_t2i (B, B*W) and image_ids_all (B*W,) as in `ItcOutput`; image_ids_local (B,), or None to take
    this rank's slice of image_ids_all. `scale` is the ITC logit scale (1 / temperature), e.g. `ItcOutput.scale`.
    `generator` must live on the similarities' device. Done in fp32 under no_grad; never NaN/inf, never raises
    for rows without a candidate (see `ItmNegatives`).
    """
    b = sim_i2t.shape[0]
    if image_ids_local is None:
        image_ids_local = image_ids_all[distributed.rank() * b:(distributed.rank() + 1) * b]
    positives = image_ids_local.to(image_ids_all.device)[:, None] == image_ids_all[None, :]
    positives = positives.to(sim_i2t.device)
    if isinstance(scale, torch.Tensor):
        scale = scale.detach()
    image_for_text, valid_image = _sample_negatives(sim_t2i, positives, scale, generator)
    text_for_image, valid_text = _sample_negatives(sim_i2t, positives, scale, generator)
    return ItmNegatives(image_for_text=image_for_text, text_for_image=text_for_image,
                        valid_image_neg=valid_image, valid_text_neg=valid_text)


def itg_loss(logits: torch.Tensor, target_ids: torch.Tensor, target_mask: torch.Tensor,
             label_smoothing: float = 0.1, sample_weights: torch.Tensor | None = None) -> torch.Tensor:
    """BLIP-2 ITG: shifted next-token cross-entropy, as `BertLMHeadModel.forward` computes it.

    logits (B, L, V) at position t predict target_ids[:, t + 1]; a position is kept when its next token is real
    (target_mask[:, t + 1] == 1), so the last position and every position whose next token is padding are ignored.
    Mean over the kept tokens (weighted by their row's (B,) `sample_weights`, when given), in fp32, with label
    smoothing. Returns 0 (with a graph) if nothing is kept.
    """
    keep = target_mask[:, 1:].bool()  # (B, L-1)
    # Select the kept rows before upcasting: with a 250k vocabulary the fp32 (B, L, V) copy is the big cost.
    kept_logits = _upcast(logits[:, :-1][keep])  # (N, V)
    if kept_logits.shape[0] == 0:
        return logits.sum() * 0.0
    targets = target_ids[:, 1:][keep].long()
    if sample_weights is None:
        return F.cross_entropy(kept_logits, targets, label_smoothing=label_smoothing)
    token_weights = sample_weights.to(kept_logits.dtype)[keep.nonzero()[:, 0]]
    losses = F.cross_entropy(kept_logits, targets, label_smoothing=label_smoothing, reduction="none")
    return (token_weights * losses).sum() / token_weights.sum()
