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
from vlm.config import Config, ConfigError
from vlm.data.batch import IGNORE_INDEX, ModelInputs
from vlm.model.bridge import Bridge
from vlm.model.lm_loss import CAUSAL_BACKBONE_HEADS, SEQ2SEQ_HEADS
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
            # Per-language weights of the examples: loss.language_weights, times the lagging languages' weights
            # that the trainer sets after each validation from the losses of the one before the first step
            # (buffers, so that checkpoints keep both; a baseline of 0: not measured).
            self.languages = list(model.cfg.data.languages)
            self.register_buffer("static_language_weights", torch.tensor(
                [loss.language_weights.get(lang, 1.0) for lang in self.languages]), persistent=False)
            if loss.lagging_boost > 0:
                self.register_buffer("lagging_weights", torch.ones(len(self.languages)))
                self.register_buffer("lagging_baseline", torch.zeros(len(self.languages)))
        self.weighs_languages = bool(loss.language_weights) or loss.lagging_boost > 0
        if self.weighs_languages and "lm" in self.weights and not model.llm.computes_labelled_logits:
            raise ConfigError("'loss.language_weights' and 'loss.lagging_boost' weigh the LM loss per token: they "
                              "need llm.labelled_logits=true and an LM architecture it supports "
                              f"({', '.join(sorted(CAUSAL_BACKBONE_HEADS | SEQ2SEQ_HEADS))}, without LoRA on the "
                              "output layer)")
        self.routing = RoutingStats()

    def language_weights(self) -> dict[str, float]:
        """Each of data.languages' current weight (1.0 everywhere without language weighting)."""
        table = self._language_table()
        return {lang: float(w) for lang, w in zip(self.languages, table.tolist())}

    def _language_table(self) -> torch.Tensor:
        lagging = getattr(self, "lagging_weights", None)
        return self.static_language_weights if lagging is None else self.static_language_weights * lagging

    def example_weights(self, langs: list[str]) -> torch.Tensor | None:
        """(B,) weights of a batch's examples by language, or None when languages are not weighted."""
        if not self.weighs_languages:
            return None
        table = self._language_table()
        index = torch.tensor([self.languages.index(lang) for lang in langs], device=table.device)
        return table[index]

    def logit_scales(self) -> dict[str, float]:
        """The learnt temperatures' logit scales, for the metrics. A collective under FSDP2, whose sharded
        parameters are gathered whole first: call it on every rank."""
        losses = {"logit_scale": self.contrastive_loss}
        if "itc" in self.weights:
            losses["itc_logit_scale"] = self.itc_loss
        return {name: float(loss.scale(_whole(loss.logit_scale)).detach()) for name, loss in losses.items()}

    def forward(self, inputs: ModelInputs, by_language: bool = False) -> dict[str, torch.Tensor]:
        """Returns {"loss": the weighted sum, and every active term under its own name}. With `by_language` (no
        gradient; an LM computing labelled logits) also "lm_by_language": (len(data.languages), 2) float64 sums of
        the LM's token cross-entropies and token counts per language, for per-language validation losses."""
        model, bridge, weights = self.model, self.model.bridge, self.weights
        example_weights = self.example_weights(inputs.langs)
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
        extra: dict[str, torch.Tensor] = {}
        if "lm" in weights and by_language:
            sums, counts = model.llm.sample_losses(out.visual_tokens, inputs.input_ids, inputs.attention_mask,
                                                   inputs.labels)
            terms["lm"] = _global_mean(*_weighted_token_mean(sums, counts, example_weights))
            extra["lm_by_language"] = self._per_language(inputs.langs, sums, counts)
        elif "lm" in weights:
            lm = model.llm(out.visual_tokens, inputs.input_ids, inputs.attention_mask, inputs.labels,
                           sample_weights=example_weights)
            tokens = (inputs.labels != IGNORE_INDEX).sum(dim=1)
            terms["lm"] = _global_mean(lm, _weighted_count(tokens, example_weights))
        if "contrastive" in weights:
            # A prompt-routed MoE would leak the pair's language (and a VQA question's content) into the image
            # side, letting in-batch matching succeed on language alone; its contrastive features are routed
            # without text (uniform mixture), exactly as retrieval computes them.
            visual_tokens = bridge(image_tokens).visual_tokens if bridge.reads_prompt else out.visual_tokens
            terms["contrastive"] = self.contrastive_loss(
                model.contrastive_head.image(visual_tokens),
                model.contrastive_head.text(model.llm.embed(inputs.caption_ids), inputs.caption_mask), example_weights)
        if model.has_text_branch:
            terms.update(self._stage1_terms(inputs.image_ids, image_tokens, text_ids, text_mask, out.hidden,
                                            itg_states, example_weights))
        terms.update({name: value for name, value in out.losses.items() if name in weights})
        if out.router_probs is not None and self.training:
            self.routing.add(inputs.langs, out.router_probs)
        total = sum(weights[name] * value for name, value in terms.items())
        return {"loss": total, **terms, **extra}

    def _per_language(self, langs: list[str], sums: torch.Tensor, counts: torch.Tensor) -> torch.Tensor:
        index = torch.tensor([self.languages.index(lang) for lang in langs], device=sums.device)
        table = torch.zeros(len(self.languages), 2, dtype=torch.float64, device=sums.device)
        table[:, 0].index_add_(0, index, sums.double())
        table[:, 1].index_add_(0, index, counts.double())
        return table

    def _stage1_terms(self, image_ids: torch.Tensor, image_tokens: torch.Tensor, ids: torch.Tensor,
                      mask: torch.Tensor, queries: torch.Tensor, itg_states: torch.Tensor | None,
                      example_weights: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """BLIP-2 ITC, ITM (hard negatives from the ITC softmax) and ITG on the bridge's text branch."""
        weights, bridge = self.weights, self.model.bridge
        terms: dict[str, torch.Tensor] = {}
        if "itc" in weights:
            image_ids = _unique_where_unknown(image_ids.to(ids.device))
            text_feats = bridge.text_features(bridge.encode_text(ids, mask))
            itc = self.itc_loss(bridge.image_features(queries), text_feats, image_ids, example_weights)
            terms["itc"] = itc.loss
            if "itm" in weights:
                terms["itm"] = self._itm_loss(image_tokens, ids, mask, image_ids, itc, example_weights)
        if itg_states is not None:
            itg = itg_loss(bridge.lm_logits(itg_states), ids, mask, self.model.cfg.loss.itg_label_smoothing,
                           example_weights)
            terms["itg"] = _global_mean(itg, _weighted_count(mask[:, 1:].sum(dim=1), example_weights))
        return terms

    def _itm_loss(self, image_tokens, ids, mask, image_ids, itc, example_weights=None) -> torch.Tensor:
        """(text, image) positives, (text, hard negative image) and (hard negative text, image) pairs; with
        `example_weights`, each pair weighs as the local example it was formed for."""
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
        if example_weights is None:
            return F.cross_entropy(logits.float(), labels)
        pair_weights = torch.cat([example_weights, example_weights[keep_i], example_weights[keep_t]])
        losses = F.cross_entropy(logits.float(), labels, reduction="none")
        return (pair_weights * losses).sum() / pair_weights.sum()


def _weighted_count(counts: torch.Tensor, example_weights: torch.Tensor | None) -> torch.Tensor:
    """The denominator of a per-token mean: the tokens, or their weights' sum."""
    return counts.sum() if example_weights is None else (counts * example_weights).sum()


def _weighted_token_mean(sums: torch.Tensor, counts: torch.Tensor,
                         example_weights: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(mean, denominator) of per-sample token-loss sums, weighted by example."""
    weights = torch.ones_like(sums) if example_weights is None else example_weights.to(sums.dtype)
    denominator = (counts * weights).sum()
    return (sums * weights).sum() / denominator.clamp(min=1e-12), denominator


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
