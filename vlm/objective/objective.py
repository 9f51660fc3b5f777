"""`Objective`: the network plus the terms it is trained with, as one module whose forward is one step's loss.

    lm           next-token loss of the LLM on the caption or answer (every bridge)
    contrastive  CG-VLM-style: pooled visual tokens vs the LLM's input embeddings of the caption tokens
    itc/itm/itg  BLIP-2 stage 1 on a bridge's text branch (the Q-Former's)
    <bridge's>   terms a bridge computes itself (`Bridge.loss_terms`, e.g. the MoE's `moe_balance`)

The objective owns the learnable temperatures of its contrastive losses; a strategy wraps the objective (so the
network's and the objective's parameters are trained, synchronised and checkpointed together), and releases hold
the network alone.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from vlm import distributed
from vlm.config import Config
from vlm.data.batch import IGNORE_INDEX, ModelInputs
from vlm.model.bridge import Bridge
from vlm.model.vlm import VisionLLM
from vlm.objective.losses import ContrastiveLoss, ItcLoss, itg_loss, sample_itm_negatives
from vlm.objective.routing import RoutingStats


def active_loss_weights(cfg: Config, bridge: Bridge) -> dict[str, float]:
    """The weighted terms this config trains. Terms of another bridge type are inactive, so switching
    `bridge.type` needs no other change to a config."""
    weights = {"lm": cfg.loss.lm_weight, "contrastive": cfg.loss.contrastive_weight}
    weights.update({term: getattr(cfg.loss, f"{term}_weight") for term in bridge.loss_terms})
    return {name: w for name, w in weights.items() if w > 0}


class Objective(nn.Module):
    def __init__(self, model: VisionLLM):
        super().__init__()
        loss = model.cfg.loss
        self.model = model
        self.weights = active_loss_weights(model.cfg, model.bridge)
        with torch.device(model.device):  # the temperatures live beside the network (the meta device too)
            self.contrastive_loss = ContrastiveLoss(loss.init_temperature, loss.max_logit_scale)
            if model.has_text_branch:
                self.itc_loss = ItcLoss(loss.init_temperature, loss.max_logit_scale, loss.itc_label_smoothing)
        self.routing = RoutingStats()

    def logit_scales(self) -> dict[str, float]:
        """The learnt temperatures' logit scales, for the metrics. A collective under FSDP2, whose sharded
        parameters are gathered whole first: call it on every rank."""
        losses = {"logit_scale": self.contrastive_loss}
        if "itc" in self.weights:
            losses["itc_logit_scale"] = self.itc_loss
        return {name: float(loss.scale(_whole(loss.logit_scale)).detach()) for name, loss in losses.items()}

    def forward(self, inputs: ModelInputs) -> dict[str, torch.Tensor]:
        """Returns {"loss": the weighted sum, and every active term under its own name}."""
        model, bridge, weights = self.model, self.model.bridge, self.weights
        image_tokens = model.image_tokens(inputs)
        text_ids = text_mask = itg_states = None
        if model.has_text_branch:
            text_ids, text_mask = _trim_bridge_text(inputs.bridge_ids, inputs.bridge_mask)
        if "itg" in weights:  # one pass gives the query outputs and the ITG text states (see bridges/qformer.py)
            states = bridge.decode(image_tokens, text_ids, text_mask)
            queries, itg_states = states[:, : bridge.num_queries], states[:, bridge.num_queries:]
            out = bridge.project(queries)
        elif bridge.reads_prompt:
            out = bridge(image_tokens, model.llm.embed(inputs.prompt_ids), inputs.prompt_mask)
        else:
            out = bridge(image_tokens)

        terms: dict[str, torch.Tensor] = {}
        if "lm" in weights:
            lm = model.llm(out.visual_tokens, inputs.input_ids, inputs.attention_mask, inputs.labels)
            terms["lm"] = _global_mean(lm, (inputs.labels != IGNORE_INDEX).sum())
        if "contrastive" in weights:
            # A prompt-routed MoE would leak the pair's language (and a VQA question's content) into the image
            # side, letting in-batch matching succeed on language alone; its contrastive features are routed
            # without text (uniform mixture), exactly as retrieval computes them.
            visual_tokens = bridge(image_tokens).visual_tokens if bridge.reads_prompt else out.visual_tokens
            terms["contrastive"] = self.contrastive_loss(
                model.contrastive_head.image(visual_tokens),
                model.contrastive_head.text(model.llm.embed(inputs.caption_ids), inputs.caption_mask))
        if model.has_text_branch:
            terms.update(self._stage1_terms(inputs.image_ids, image_tokens, text_ids, text_mask, out.hidden,
                                            itg_states))
        terms.update({name: value for name, value in out.losses.items() if name in weights})
        if out.router_probs is not None and self.training:
            self.routing.add(inputs.langs, out.router_probs)
        total = sum(weights[name] * value for name, value in terms.items())
        return {"loss": total, **terms}

    def _stage1_terms(self, image_ids: torch.Tensor, image_tokens: torch.Tensor, ids: torch.Tensor,
                      mask: torch.Tensor, queries: torch.Tensor,
                      itg_states: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """BLIP-2 ITC, ITM (hard negatives from the ITC softmax) and ITG on the bridge's text branch."""
        weights, bridge = self.weights, self.model.bridge
        terms: dict[str, torch.Tensor] = {}
        if "itc" in weights:
            image_ids = _unique_where_unknown(image_ids.to(ids.device))
            text_feats = bridge.text_features(bridge.encode_text(ids, mask))
            itc = self.itc_loss(bridge.image_features(queries), text_feats, image_ids)
            terms["itc"] = itc.loss
            if "itm" in weights:
                terms["itm"] = self._itm_loss(image_tokens, ids, mask, image_ids, itc)
        if itg_states is not None:
            itg = itg_loss(bridge.lm_logits(itg_states), ids, mask, self.model.cfg.loss.itg_label_smoothing)
            terms["itg"] = _global_mean(itg, mask[:, 1:].sum())
        return terms

    def _itm_loss(self, image_tokens, ids, mask, image_ids, itc) -> torch.Tensor:
        """(text, image) positives, (text, hard negative image) and (hard negative text, image) pairs."""
        bridge = self.model.bridge
        negatives = sample_itm_negatives(itc.sim_i2t, itc.sim_t2i, image_ids, itc.image_ids_all,
                                         scale=self.itc_loss.scale().detach())
        all_tokens, all_ids, all_mask = (distributed.all_gather(t) for t in (image_tokens, ids, mask))
        keep_i, keep_t = negatives.valid_image_neg, negatives.valid_text_neg
        pair_tokens = torch.cat([image_tokens, all_tokens[negatives.image_for_text][keep_i], image_tokens[keep_t]])
        pair_ids = torch.cat([ids, ids[keep_i], all_ids[negatives.text_for_image][keep_t]])
        pair_mask = torch.cat([mask, mask[keep_i], all_mask[negatives.text_for_image][keep_t]])
        labels = torch.zeros(pair_ids.shape[0], dtype=torch.long, device=ids.device)
        labels[: ids.shape[0]] = 1
        logits = bridge.itm_logits(bridge.encode_multimodal(pair_tokens, pair_ids, pair_mask))
        return F.cross_entropy(logits.float(), labels)


def _whole(param: torch.Tensor) -> torch.Tensor:
    return param.full_tensor() if hasattr(param, "full_tensor") else param  # a DTensor shard under FSDP2


def _global_mean(local_mean: torch.Tensor, local_count: torch.Tensor) -> torch.Tensor:
    """A per-token mean of this rank's batch, rescaled so that ranks average to the global batch's token mean
    (`distributed.share_of_global_mean`); unchanged on one process."""
    factor = distributed.share_of_global_mean(local_count)
    return local_mean if factor is None else local_mean * factor.to(local_mean.device)


def _trim_bridge_text(ids: torch.Tensor, mask: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Drop the padding columns no rank uses: the collator pads to bridge.max_text_length so that ranks can
    gather the text for ITM negatives, but most captions are far shorter (the Q-Former's text passes cost
    in proportion to the width)."""
    width = int(distributed.all_reduce_max(mask.sum(dim=1).max().clone()))
    return ids[:, :width], mask[:, :width]


def _unique_where_unknown(image_ids: torch.Tensor) -> torch.Tensor:
    """Examples without an image id (-1) get an id of their own, distinct across ranks."""
    b = image_ids.shape[0]
    own = -(1 + distributed.rank() * b + torch.arange(b, device=image_ids.device))
    return torch.where(image_ids < 0, own, image_ids)
