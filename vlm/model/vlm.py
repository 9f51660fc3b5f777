"""VisionLLM: frozen image encoder -> bridge (qformer | moe | mlp) -> language model (visual tokens as a
prefix), with the training terms each bridge supports:

    lm           next-token loss of the LLM on the caption or answer (every bridge)
    contrastive  CG-VLM-style: pooled visual tokens vs the LLM's input embeddings of the caption tokens
    itc/itm/itg  BLIP-2 stage 1 on the Q-Former's own text branch
    moe_balance  load balancing of the MoE router
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import torch
import torch.nn.functional as F
from huggingface_hub import save_torch_state_dict
from safetensors import safe_open
from safetensors.torch import load_file
from torch import nn
from transformers import AutoTokenizer

from data_prep.languages import get_language
from vlm.config import Config, InputError, check_paths, config_from_dict
from vlm.data.collate import Collator, bridge_text_ids
from vlm.losses import ContrastiveLoss, ItcLoss, itg_loss, mean_token_features, sample_itm_negatives
from vlm.model import qformer_weights
from vlm.model.bridge import BridgeOutput
from vlm.model.llm import LanguageModel
from vlm.model.projectors import MLPProjector, MoEProjector
from vlm.model.qformer import QFormer
from vlm.model.vision import ImageEncoder
from vlm.train import distributed


def active_loss_weights(cfg: Config) -> dict[str, float]:
    """The weighted terms this config trains. Terms of another bridge type are inactive, so switching
    `bridge.type` needs no other change to a config."""
    loss, bridge = cfg.loss, cfg.bridge
    weights = {"lm": loss.lm_weight, "contrastive": loss.contrastive_weight}
    if bridge.type == "qformer" and bridge.text_branch:
        weights.update(itc=loss.itc_weight, itm=loss.itm_weight, itg=loss.itg_weight)
    if bridge.type == "moe":
        weights["moe_balance"] = loss.moe_balance_weight
    return {name: w for name, w in weights.items() if w > 0}


def load_bridge_tokenizer(cfg: Config, llm_tokenizer):
    """The Q-Former text branch's tokenizer: bridge.tokenizer, else a BERT-family bridge.init_from, else the LLM's."""
    source = cfg.bridge.tokenizer
    if not source and cfg.bridge.init_from:
        if not qformer_weights.is_blip2(qformer_weights.read_model_config(cfg.bridge.init_from)):
            source = cfg.bridge.init_from
    return AutoTokenizer.from_pretrained(source) if source else llm_tokenizer


def build_bridge(cfg: Config, vision_width: int, llm_width: int, text_vocab_size: int = 0) -> nn.Module:
    b = cfg.bridge
    if b.type == "qformer":
        bridge = QFormer(b, vision_width, llm_width, text_vocab_size)
        if b.init_from:
            qformer_weights.initialise(bridge, b.init_from, b.cross_attention_freq)
        return bridge
    if b.type == "mlp":
        return MLPProjector(b, vision_width, llm_width)
    if b.type == "moe":
        return MoEProjector(b, vision_width, llm_width)
    raise ValueError(f"unknown bridge.type '{b.type}'")


class ContrastiveHead(nn.Module):
    """CG-VLM-style alignment in the LLM's input space: the mean of the visual tokens against the caption's
    token embeddings. The text feature is the mean of per-token unit vectors, so the score is the average
    cosine between the pooled image and each caption token (CG-VLM's "averaged similarity")."""

    def __init__(self, llm_width: int, dim: int):
        super().__init__()
        self.vision_proj = nn.Linear(llm_width, dim)
        self.text_proj = nn.Linear(llm_width, dim)

    def image(self, visual_tokens: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.vision_proj(visual_tokens.float().mean(dim=1)), dim=-1)

    def text(self, token_embeds: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        return mean_token_features(F.normalize(self.text_proj(token_embeds.float()), dim=-1), mask)


class RoutingStats:
    """Per-language sums of MoE routing weights seen in training, emptied at every log step."""

    def __init__(self):
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}

    def add(self, langs: list[str], probs: torch.Tensor) -> None:
        probs = probs.detach().float().cpu()
        for lang, row in zip(langs, probs):
            self.sums[lang] = self.sums.get(lang, torch.zeros_like(row)) + row
            self.counts[lang] = self.counts.get(lang, 0) + 1

    def pop(self, languages: list[str], num_experts: int) -> dict[str, list[float]]:
        """Mean weight per expert and language over every rank (a collective: call it on all ranks)."""
        table = torch.zeros(len(languages), num_experts + 1, dtype=torch.float64)
        for i, lang in enumerate(languages):
            if lang in self.sums:
                table[i, :num_experts] = self.sums[lang].double()
                table[i, num_experts] = self.counts[lang]
        table = distributed.all_reduce_sum(table)
        self.sums, self.counts = {}, {}
        return {lang: (table[i, :num_experts] / table[i, num_experts]).tolist()
                for i, lang in enumerate(languages) if table[i, num_experts] > 0}


class VisionLLM(nn.Module):
    def __init__(self, cfg: Config, vision: ImageEncoder | None = None, llm: LanguageModel | None = None):
        super().__init__()
        self.cfg = cfg
        self.vision = vision if vision is not None else ImageEncoder(cfg.vision)
        self.llm = llm if llm is not None else LanguageModel(cfg.llm)
        self.has_text_branch = cfg.bridge.type == "qformer" and cfg.bridge.text_branch
        self.bridge_tokenizer = load_bridge_tokenizer(cfg, self.llm.tokenizer) if self.has_text_branch else None
        self.bridge = build_bridge(cfg, self.vision.width, self.llm.hidden_size,
                                   len(self.bridge_tokenizer) if self.has_text_branch else 0)
        self.loss_weights = active_loss_weights(cfg)
        self.contrastive_head = ContrastiveHead(self.llm.hidden_size, cfg.loss.contrastive_dim)
        self.contrastive_loss = ContrastiveLoss(cfg.loss.init_temperature, cfg.loss.max_logit_scale)
        if self.has_text_branch:
            self.itc_loss = ItcLoss(cfg.loss.init_temperature, cfg.loss.max_logit_scale, cfg.loss.itc_label_smoothing)
        self.routing = RoutingStats()

    @property
    def tokenizer(self):
        return self.llm.tokenizer

    @property
    def device(self) -> torch.device:
        return self.contrastive_head.vision_proj.weight.device

    @property
    def bridge_reads_prompt(self) -> bool:
        return isinstance(self.bridge, MoEProjector)

    @property
    def uses_itc_retrieval(self) -> bool:
        """Retrieval ranks by the Q-Former's ITC (max over queries) when it was trained, else by the
        CG-VLM-style head."""
        return "itc" in self.loss_weights

    def collator(self) -> Collator:
        return Collator(self.tokenizer, self.cfg.llm.kind, self.cfg.llm.max_length,
                        bridge_tokenizer=self.bridge_tokenizer, bridge_max_length=self.cfg.bridge.max_text_length)

    # --- training ------------------------------------------------------------------------------

    def visual(self, images: torch.Tensor, prompt_ids: torch.Tensor | None = None,
               prompt_mask: torch.Tensor | None = None) -> BridgeOutput:
        """Images (and, for the MoE router, the prompt's LLM token ids) -> the bridge's output."""
        return self.visual_from_tokens(self.vision(images), prompt_ids, prompt_mask)

    def visual_from_tokens(self, image_tokens: torch.Tensor, prompt_ids: torch.Tensor | None = None,
                           prompt_mask: torch.Tensor | None = None) -> BridgeOutput:
        """`visual` from the frozen encoder's tokens, for callers that run the encoder once per image."""
        if self.bridge_reads_prompt and prompt_ids is not None:
            return self.bridge(image_tokens, self.llm.embed(prompt_ids), prompt_mask)
        return self.bridge(image_tokens)

    def forward(self, batch: dict) -> dict[str, torch.Tensor]:
        """Returns {"loss": the weighted sum, and every active term under its own name}."""
        weights = self.loss_weights
        image_tokens = self.vision(batch["images"])
        if self.has_text_branch:
            batch = {**batch, **_trim_bridge_text(batch["bridge_ids"], batch["bridge_mask"])}
        itg_states = None
        if isinstance(self.bridge, QFormer):
            if "itg" in weights:  # one pass gives the query outputs and the ITG text states (see qformer.py)
                states = self.bridge.decode(image_tokens, batch["bridge_ids"], batch["bridge_mask"])
                queries, itg_states = states[:, : self.bridge.num_queries], states[:, self.bridge.num_queries:]
            else:
                queries = self.bridge.encode_queries(image_tokens)
            out = self.bridge.project(queries)
        elif self.bridge_reads_prompt:
            out = self.bridge(image_tokens, self.llm.embed(batch["prompt_ids"]), batch["prompt_mask"])
        else:
            out = self.bridge(image_tokens)

        terms: dict[str, torch.Tensor] = {}
        if "lm" in weights:
            terms["lm"] = self.llm(out.visual_tokens, batch["input_ids"], batch["attention_mask"], batch["labels"])
        if "contrastive" in weights:
            # A prompt-routed MoE would leak the pair's language (and a VQA question's content) into the image
            # side, letting in-batch matching succeed on language alone; its contrastive features are routed
            # without text (uniform mixture), exactly as retrieval computes them.
            visual_tokens = self.bridge(image_tokens).visual_tokens if self.bridge_reads_prompt else out.visual_tokens
            terms["contrastive"] = self.contrastive_loss(
                self.contrastive_head.image(visual_tokens),
                self.contrastive_head.text(self.llm.embed(batch["caption_ids"]), batch["caption_mask"]))
        if self.has_text_branch:
            terms.update(self._stage1_terms(batch, image_tokens, out.hidden, itg_states))
        if out.router_probs is not None:
            if "moe_balance" in weights:
                terms["moe_balance"] = out.balance_loss
            if self.training:
                self.routing.add(batch["langs"], out.router_probs)
        total = sum(weights[name] * value for name, value in terms.items())
        return {"loss": total, **terms}

    def _stage1_terms(self, batch: dict, image_tokens: torch.Tensor, queries: torch.Tensor,
                      itg_states: torch.Tensor | None) -> dict[str, torch.Tensor]:
        """BLIP-2 ITC, ITM (hard negatives from the ITC softmax) and ITG on the Q-Former's text branch."""
        weights, bridge = self.loss_weights, self.bridge
        ids, mask = batch["bridge_ids"], batch["bridge_mask"]
        terms: dict[str, torch.Tensor] = {}
        if "itc" in weights:
            image_ids = _unique_where_unknown(batch["image_ids"].to(ids.device))
            text_feats = bridge.text_features(bridge.encode_text(ids, mask))
            itc = self.itc_loss(bridge.image_features(queries), text_feats, image_ids)
            terms["itc"] = itc.loss
            if "itm" in weights:
                terms["itm"] = self._itm_loss(image_tokens, ids, mask, image_ids, itc)
        if itg_states is not None:
            terms["itg"] = itg_loss(bridge.lm_logits(itg_states), ids, mask, self.cfg.loss.itg_label_smoothing)
        return terms

    def _itm_loss(self, image_tokens, ids, mask, image_ids, itc) -> torch.Tensor:
        """(text, image) positives, (text, hard negative image) and (hard negative text, image) pairs."""
        negatives = sample_itm_negatives(itc.sim_i2t, itc.sim_t2i, image_ids, itc.image_ids_all,
                                         scale=self.itc_loss.scale().detach())
        all_tokens, all_ids, all_mask = (distributed.all_gather(t) for t in (image_tokens, ids, mask))
        keep_i, keep_t = negatives.valid_image_neg, negatives.valid_text_neg
        pair_tokens = torch.cat([image_tokens, all_tokens[negatives.image_for_text][keep_i], image_tokens[keep_t]])
        pair_ids = torch.cat([ids, ids[keep_i], all_ids[negatives.text_for_image][keep_t]])
        pair_mask = torch.cat([mask, mask[keep_i], all_mask[negatives.text_for_image][keep_t]])
        labels = torch.zeros(pair_ids.shape[0], dtype=torch.long, device=ids.device)
        labels[: ids.shape[0]] = 1
        logits = self.bridge.itm_logits(self.bridge.encode_multimodal(pair_tokens, pair_ids, pair_mask))
        return F.cross_entropy(logits.float(), labels)

    # --- inference -----------------------------------------------------------------------------

    def _prompt_ids(self, prompts: list[str]) -> tuple[torch.Tensor, torch.Tensor]:
        enc = self.tokenizer(prompts, padding=True, return_tensors="pt")
        return enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device)

    @torch.no_grad()
    def route(self, image_tokens: torch.Tensor, prompts: list[str]) -> BridgeOutput:
        """The bridge output for the encoder's tokens under `prompts` (MoE expert-usage statistics)."""
        prompt_ids, prompt_mask = self._prompt_ids(prompts)
        return self.visual_from_tokens(image_tokens, prompt_ids, prompt_mask)

    @torch.no_grad()
    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """Retrieval features: (B, Q, itc_dim) per-query features for the Q-Former's ITC, else (B, D) from the
        pooled visual tokens (a MoE routed without text: language-neutral, as in training)."""
        return self.encode_image_tokens(self.vision(images))

    @torch.no_grad()
    def encode_image_tokens(self, image_tokens: torch.Tensor) -> torch.Tensor:
        """`encode_image` from the frozen encoder's tokens (`self.vision(images)`), for callers that keep them."""
        if self.uses_itc_retrieval:
            return self.bridge.image_features(self.bridge.encode_queries(image_tokens))
        return self.contrastive_head.image(self.bridge(image_tokens).visual_tokens)

    @torch.no_grad()
    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """Captions -> (B, D), L2-normalised: the Q-Former's [CLS] feature for ITC, else the LLM-embedding head."""
        if self.uses_itc_retrieval:
            ids, mask = bridge_text_ids(self.bridge_tokenizer, texts, self.cfg.bridge.max_text_length)
            return self.bridge.text_features(self.bridge.encode_text(ids.to(self.device), mask.to(self.device)))
        enc = self.tokenizer(texts, add_special_tokens=False, padding=True, return_tensors="pt",
                             truncation=True, max_length=self.cfg.llm.max_length)
        ids, mask = enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device)
        return self.contrastive_head.text(self.llm.embed(ids), mask)

    @staticmethod
    def similarity(image_features: torch.Tensor, text_features: torch.Tensor, chunk: int = 256) -> torch.Tensor:
        """(N, M) scores; per-query image features are scored by their best query (BLIP-2's max over queries),
        `chunk` images at a time: the (N, Q, M) intermediate would be 3.3 GB for XM3600's 3,600 images x
        7,200 captions x 32 queries."""
        if image_features.dim() == 2:
            return image_features @ text_features.t()
        return torch.cat([torch.einsum("nqd,md->nqm", image_features[i: i + chunk], text_features).amax(dim=1)
                          for i in range(0, image_features.shape[0], chunk)])

    @torch.no_grad()
    def itm_scores(self, image_tokens: torch.Tensor, texts: list[str]) -> torch.Tensor:
        """(B,) ITM "match" logits of image i with text i, for re-ranking ITC candidates (BLIP-2 protocol).
        Takes the frozen encoder's tokens (`self.vision(images)`), computed once per image by the caller."""
        ids, mask = bridge_text_ids(self.bridge_tokenizer, texts, self.cfg.bridge.max_text_length)
        states = self.bridge.encode_multimodal(image_tokens, ids.to(self.device), mask.to(self.device))
        return self.bridge.itm_logits(states)[:, 1].float()

    @torch.no_grad()
    def generate(self, images: torch.Tensor, prompts: list[str] | None = None, lang: str | None = None,
                 **generate_kwargs) -> list[str]:
        """One output per image. Without `lang`, `prompts` are used as they are (a caption instruction or a
        question, one per image). With `lang`, the model's own templates (data.templates) ask for that
        language: `prompts` are then questions (VQA), and no prompts means captions."""
        if lang is not None:
            from vlm.data.templates import caption_prompt, templates_for, vqa_prompt

            get_language(lang)  # an unknown code fails here, in one line
            templates = templates_for(self.cfg.data)
            prompts = ([caption_prompt(lang, templates=templates)] * images.shape[0] if prompts is None
                       else [vqa_prompt(q, lang, templates=templates) for q in prompts])
        if prompts is None or len(prompts) != images.shape[0]:
            raise ValueError(f"generate: {images.shape[0]} images but {0 if prompts is None else len(prompts)} prompts")
        return self.generate_from_tokens(self.vision(images), prompts, **generate_kwargs)

    @torch.no_grad()
    def generate_from_tokens(self, image_tokens: torch.Tensor, prompts: list[str], **generate_kwargs) -> list[str]:
        """`generate` from the frozen encoder's tokens: an evaluator asks many prompts (languages, questions)
        of one image and runs the encoder once. Decoding options go to transformers' `generate`."""
        if len(prompts) != image_tokens.shape[0]:
            raise ValueError(f"generate: {image_tokens.shape[0]} images but {len(prompts)} prompts")
        prompt_ids, prompt_mask = self._prompt_ids(prompts)
        prefix = self.visual_from_tokens(image_tokens, prompt_ids, prompt_mask).visual_tokens
        return self.llm.generate(prefix, prompt_ids, prompt_mask, **generate_kwargs)

    # --- state ---------------------------------------------------------------------------------

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Only what training changes: the frozen encoder and LLM weights are never written to checkpoints."""
        names = {name for name, p in self.named_parameters() if p.requires_grad}
        return {k: v.detach() for k, v in self.state_dict().items() if k in names}

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        expected = set(self.trainable_state_dict())
        missing, unexpected = expected - set(state), set(state) - expected
        if missing or unexpected:
            raise ValueError(f"checkpoint does not match the model: missing {sorted(missing)[:3]}, "
                             f"unexpected {sorted(unexpected)[:3]}")
        self.load_state_dict(state, strict=False)

    # --- release folders -----------------------------------------------------------------------

    def save_pretrained(self, folder: str | Path, extra_files: dict[str, str] | None = None,
                        delta: bool = False, merge_lora: bool = False, max_shard_size: int | str = "5GB") -> Path:
        """A self-contained folder: config.json, model.safetensors (bridge, heads and the LoRA adapter), vision/
        (open_clip layout), llm/ (transformers layout, the base weights as trained), tokenizer/, plus
        `extra_files` (name -> text). `merge_lora` folds the adapter into llm/ instead (a plain transformers
        LM, faster to run; equal to the unmerged model within float rounding).
        `delta`: only what training changed (bridge, heads, LoRA adapter, trained embeddings) in
        model.safetensors, and a config naming the base encoder, LM and tokenizers as training did (hub ids
        or paths), which `from_pretrained` loads first. Written into a temporary folder and renamed, so a kill
        never leaves a half-written release. model.safetensors is split into model-0000k-of-0000n.safetensors
        + model.safetensors.index.json (the transformers layout) past `max_shard_size`."""
        folder = Path(folder)
        tmp = staging_folder(folder)
        tmp.mkdir(parents=True)
        if delta:
            return self._save_delta(tmp, folder, extra_files or {}, max_shard_size)
        keep_adapter = self.cfg.llm.lora_r > 0 and not merge_lora
        self.vision.save(tmp / RELEASE_VISION)
        if keep_adapter:
            self.llm.save_base(tmp / RELEASE_LLM)
        else:
            self.llm.merged_model().save_pretrained(tmp / RELEASE_LLM)
        # The tokenizer gets its own folder: next to a model config.json, transformers' AutoTokenizer
        # would swap a generic tokenizer.json for the model type's own class and pre-tokenizer.
        self.tokenizer.save_pretrained(tmp / RELEASE_TOKENIZER)
        if self.bridge_tokenizer is not None:
            self.bridge_tokenizer.save_pretrained(tmp / RELEASE_BRIDGE_TOKENIZER)
        own = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()
               if not k.startswith(("vision.", "llm.")) or (keep_adapter and "lora_" in k)}
        _save_weights(own, tmp, max_shard_size)
        (tmp / "config.json").write_text(json.dumps(release_config(self.cfg, keep_adapter), indent=2,
                                                    ensure_ascii=False) + "\n")
        if self.cfg.data.templates:  # a user's prompt templates travel with the model they trained
            shutil.copyfile(self.cfg.data.templates, tmp / RELEASE_TEMPLATES)
        return publish_folder(tmp, folder, extra_files or {})

    def _save_delta(self, tmp: Path, folder: Path, extra_files: dict[str, str], max_shard_size: int | str) -> Path:
        trainable = set(self.trainable_state_dict())
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()
                 if not k.startswith(("vision.", "llm.")) or k in trainable}
        _save_weights(state, tmp, max_shard_size)
        raw = self.cfg.to_dict()
        if self.cfg.data.templates:
            shutil.copyfile(self.cfg.data.templates, tmp / RELEASE_TEMPLATES)
            raw["data"]["templates"] = RELEASE_TEMPLATES
        (tmp / "config.json").write_text(json.dumps(raw, indent=2, ensure_ascii=False) + "\n")
        (tmp / RELEASE_FORM).write_text(json.dumps({"form": "delta"}) + "\n")
        return publish_folder(tmp, folder, extra_files)

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> "VisionLLM":
        folder = Path(folder)
        cfg = release_model_config(folder)
        check_weight_files(folder)
        if (folder / RELEASE_FORM).is_file():  # delta: the base parts load from where training found them
            check_paths(cfg)
        model = cls(cfg)
        # The adapter of an unmerged or delta release is rebuilt from the config and is, with a delta's trained
        # embeddings, the only trainable weight inside the base parts that model.safetensors holds.
        model._load_own(folder, base=("vision.", "llm."), allowed=set(model.trainable_state_dict()))
        return model.eval()

    def _load_own(self, folder: Path, base: tuple[str, ...], allowed: set[str]) -> None:
        """Load model.safetensors: every weight outside the `base` parts, plus the `allowed` ones inside them."""
        own = _load_weights(folder)
        missing, unexpected = self.load_state_dict(own, strict=False)
        missing = [k for k in missing if not k.startswith(base) or k in allowed]
        if missing or unexpected:
            raise ValueError(f"{folder / RELEASE_WEIGHTS} does not match the config: missing {missing[:3]}, "
                             f"unexpected {list(unexpected)[:3]}")


RELEASE_VISION = "vision"
RELEASE_LLM = "llm"
RELEASE_TOKENIZER = "tokenizer"
RELEASE_BRIDGE_TOKENIZER = "bridge_tokenizer"
RELEASE_WEIGHTS = "model.safetensors"
RELEASE_TEMPLATES = "templates.yaml"
RELEASE_FORM = "delta.json"  # present only in a delta release
RELEASE_INDEX = "model.safetensors.index.json"  # present only when the weights are sharded


def release_model_config(folder: Path) -> Config:
    """The config of a native release, its parts pointing into the folder (a delta's base parts stay where
    training found them); a transformers BLIP-2 export is named as such, in one line."""
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} is not a release folder: config.json is missing")
    raw = json.loads((folder / "config.json").read_text())
    if raw.get("model_type") == "blip-2":
        raise InputError(f"{folder} is a Blip2ForConditionalGeneration export (--format hf-blip2): load it with "
                         "transformers, or use the native release")
    if raw.get("data", {}).get("templates"):
        raw["data"]["templates"] = str(folder / RELEASE_TEMPLATES)
    if not (folder / RELEASE_FORM).is_file():
        raw["vision"]["name"] = f"local-dir:{folder / RELEASE_VISION}"
        raw["vision"]["visual_weights"] = str(folder / RELEASE_VISION / "visual.safetensors")
        raw["llm"]["name"] = str(folder / RELEASE_LLM)
        raw["llm"]["tokenizer"] = str(folder / RELEASE_TOKENIZER)
        if raw["bridge"].get("tokenizer"):
            raw["bridge"]["tokenizer"] = str(folder / RELEASE_BRIDGE_TOKENIZER)
    return config_from_dict(raw)


def staging_folder(folder: Path) -> Path:
    """Where a release is written before it is renamed into place (emptied of any earlier attempt)."""
    tmp = folder.with_name(f".{folder.name}.tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    return tmp


def publish_folder(tmp: Path, folder: Path, extra_files: dict[str, str]) -> Path:
    """Write `extra_files` (name -> text) into `tmp`, then rename it to `folder`: a kill never leaves a
    half-written release, and an earlier one stays whole until the new one is complete."""
    for name, text in extra_files.items():
        (tmp / name).write_text(text)
    if folder.exists():
        shutil.rmtree(folder)
    os.replace(tmp, folder)
    return folder


def _save_weights(state: dict[str, torch.Tensor], folder: Path, max_shard_size: int | str) -> None:
    # huggingface_hub writes transformers' layout: one model.safetensors, or shards and an index.
    save_torch_state_dict(state, folder, filename_pattern="model{suffix}.safetensors", max_shard_size=max_shard_size)


def _load_weights(folder: Path) -> dict[str, torch.Tensor]:
    index = folder / RELEASE_INDEX
    if not index.is_file():
        return load_file(str(folder / RELEASE_WEIGHTS))
    state: dict[str, torch.Tensor] = {}
    for name in sorted(set(json.loads(index.read_text())["weight_map"].values())):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder / name}: a shard listed in {index.name} is missing")
        state.update(load_file(str(folder / name)))
    return state


def check_weight_files(folder: Path) -> None:
    """Read the header of every safetensors file in a release (cheap) before anything loads: a truncated or
    corrupted download fails here in one line naming the file, not deep inside torch or transformers."""
    for path in sorted(Path(folder).rglob("*.safetensors")):
        try:
            with safe_open(str(path), framework="pt"):
                pass
        except Exception as err:  # noqa: BLE001 - SafetensorError, OSError: all mean an unusable file
            raise InputError(f"{path}: not a readable safetensors file ({str(err).splitlines()[0]}); "
                             f"export or download the release again") from None


def _trim_bridge_text(ids: torch.Tensor, mask: torch.Tensor) -> dict[str, torch.Tensor]:
    """Drop the padding columns no rank uses: the collator pads to bridge.max_text_length so that ranks can
    gather the text for ITM negatives, but most captions are far shorter (the Q-Former's text passes cost
    in proportion to the width)."""
    width = distributed.all_reduce_max(mask.sum(dim=1).max().clone())
    return {"bridge_ids": ids[:, : int(width)], "bridge_mask": mask[:, : int(width)]}


def _unique_where_unknown(image_ids: torch.Tensor) -> torch.Tensor:
    """Examples without an image id (-1) get an id of their own, distinct across ranks."""
    b = image_ids.shape[0]
    own = -(1 + distributed.rank() * b + torch.arange(b, device=image_ids.device))
    return torch.where(image_ids < 0, own, image_ids)


def release_config(cfg: Config, keep_adapter: bool = False) -> dict:
    """The config as stored in a release: the parts point into the folder itself; LoRA is merged unless
    `keep_adapter` (its weights are then in model.safetensors)."""
    cfg = dataclasses.replace(
        cfg,
        vision=dataclasses.replace(cfg.vision, name=f"local-dir:{RELEASE_VISION}", pretrained="", model_config_dir="",
                                   visual_weights=f"{RELEASE_VISION}/visual.safetensors"),
        llm=dataclasses.replace(cfg.llm, name=RELEASE_LLM, tokenizer=RELEASE_TOKENIZER,
                                lora_r=cfg.llm.lora_r if keep_adapter else 0, train_embeddings=False),
        # The bridge weights are in model.safetensors: nothing is initialised from elsewhere again.
        bridge=dataclasses.replace(cfg.bridge, init_from="",
                                   tokenizer=RELEASE_BRIDGE_TOKENIZER if cfg.bridge.text_branch else ""),
        data=dataclasses.replace(cfg.data, templates=RELEASE_TEMPLATES if cfg.data.templates else ""),
    )
    return cfg.to_dict()
