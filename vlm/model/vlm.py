"""VisionLLM, the network: frozen image encoder -> bridge (vlm/model/bridges/) -> language model, the visual
tokens as its prefix, plus the CG-VLM-style contrastive head. Inference (captions, answers, retrieval features)
lives here; the training terms are `vlm.objective.Objective`'s, release folders `vlm.release`'s.

Building reads configs only (and nothing at all on the meta device); `load_weights` is the separate step that
reads the pretrained weights:

    model = VisionLLM(cfg, device="meta")   # structure: parameter counts, FLOPs, sharding plans
    model = VisionLLM(cfg).load_weights()   # ready to train or evaluate
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import AutoTokenizer

from data_prep.languages import get_language
from vlm.config import Config, fetch_error
from vlm.data.batch import ModelInputs
from vlm.data.collate import Collator, bridge_text_ids
from vlm.data.templates import caption_prompt, templates_for, vqa_prompt
from vlm.model import qformer_weights
from vlm.model.bridge import BridgeOutput, bridge_class
from vlm.model.heads import ContrastiveHead
from vlm.model.llm import LanguageModel
from vlm.model.vision import ImageEncoder


def load_bridge_tokenizer(cfg: Config, llm_tokenizer):
    """The Q-Former text branch's tokenizer: bridge.tokenizer, else a BERT-family bridge.init_from, else the LLM's."""
    source = _bridge_tokenizer_source(cfg)
    if not source:
        return llm_tokenizer
    try:
        return AutoTokenizer.from_pretrained(source)
    except OSError as err:
        raise fetch_error("bridge.tokenizer" if cfg.bridge.tokenizer else "bridge.init_from", source, err) from None


def _bridge_tokenizer_source(cfg: Config) -> str:
    if cfg.bridge.tokenizer:
        return cfg.bridge.tokenizer
    if cfg.bridge.init_from and not qformer_weights.is_blip2(qformer_weights.read_model_config(cfg.bridge.init_from)):
        return cfg.bridge.init_from
    return ""


class VisionLLM(nn.Module):
    def __init__(self, cfg: Config, device: str | torch.device = "cpu"):
        super().__init__()
        self.cfg = cfg
        self.vision = ImageEncoder(cfg.vision, device)
        self.llm = LanguageModel(cfg.llm, device)
        bridge_cls = bridge_class(cfg.bridge.type)
        self.has_text_branch = bridge_cls.supports_text_branch and cfg.bridge.text_branch
        self._bridge_tokenizer = None
        with torch.device(device):
            self.bridge = bridge_cls(cfg.bridge, self.vision.width, self.llm.hidden_size,
                                     self._text_vocab_size() if self.has_text_branch else 0)
            self.contrastive_head = ContrastiveHead(self.llm.hidden_size, cfg.loss.contrastive_dim)

    def _text_vocab_size(self) -> int:
        """A BERT-family init_from fixes the text vocabulary (its config says how big, no tokenizer needed);
        otherwise it is the text branch tokenizer's."""
        source = _bridge_tokenizer_source(self.cfg)
        if source and source == self.cfg.bridge.init_from:
            return int(qformer_weights.read_model_config(source)["vocab_size"])
        return len(self.bridge_tokenizer)

    def load_weights(self, device: str | torch.device | None = None) -> VisionLLM:
        """The weights step: the pretrained encoder and LM (and the bridge's `init_from`) are read and copied in.
        A model built on the meta device is first materialised on `device` (default: the CPU; ignored otherwise)
        and its new parts (bridge, heads, LoRA adapter) initialised afresh. The global RNG is left as it was."""
        if self.device.type == "meta":
            self.to_empty(device=device or "cpu")
            self.init_new_parameters()
        with torch.random.fork_rng(devices=[]):
            self.vision.load_weights()
            self.llm.load_weights()
            self.bridge.load_pretrained(self.cfg.bridge)
        return self

    def init_new_parameters(self) -> None:
        """Initialise what no pretrained checkpoint holds (bridge, contrastive head, LoRA adapter), as the
        constructors do; for a model materialised from the meta device."""
        self.llm.reset_adapter()
        self.bridge.reset_parameters()
        self.contrastive_head.reset_parameters()

    def shard_units(self) -> list[nn.Module]:
        """The blocks a sharding strategy wraps one by one: the LM's transformer blocks and the bridge's own."""
        return [*self.llm.decoder_blocks(), *self.bridge.shard_units()]

    @property
    def tokenizer(self):
        return self.llm.tokenizer

    @property
    def bridge_tokenizer(self):
        if self.has_text_branch and self._bridge_tokenizer is None:
            self._bridge_tokenizer = load_bridge_tokenizer(self.cfg, self.llm.tokenizer)
        return self._bridge_tokenizer

    @property
    def device(self) -> torch.device:
        return self.contrastive_head.vision_proj.weight.device

    @property
    def bridge_reads_prompt(self) -> bool:
        return self.bridge.reads_prompt

    @property
    def uses_itc_retrieval(self) -> bool:
        """Retrieval ranks by the Q-Former's ITC (max over queries) when it was trained, else by the
        CG-VLM-style head."""
        return self.has_text_branch and self.cfg.loss.itc_weight > 0

    @property
    def can_itm_rerank(self) -> bool:
        """The ITM head was trained, so it can re-rank retrieval candidates (BLIP-2's protocol)."""
        return self.uses_itc_retrieval and self.cfg.loss.itm_weight > 0

    def collator(self) -> Collator:
        return Collator(self.tokenizer, self.cfg.llm.kind, self.cfg.llm.max_length,
                        bridge_tokenizer=self.bridge_tokenizer, bridge_max_length=self.cfg.bridge.max_text_length)

    # --- the visual prefix ----------------------------------------------------------------------

    def image_tokens(self, inputs: ModelInputs) -> torch.Tensor:
        """The frozen encoder's tokens of a batch: given (a feature cache), or computed from its pixels."""
        if inputs.image_tokens is not None:  # stored in bf16 or fp16, perhaps: cast to what the encoder returns
            return inputs.image_tokens.to(next(self.vision.parameters()).dtype)
        return self.vision(inputs.images)

    def visual(self, images: torch.Tensor, prompt_ids: torch.Tensor | None = None,
               prompt_mask: torch.Tensor | None = None) -> BridgeOutput:
        """Images (and, for a router, the prompt's LLM token ids) -> the bridge's output."""
        return self.visual_from_tokens(self.vision(images), prompt_ids, prompt_mask)

    def visual_from_tokens(self, image_tokens: torch.Tensor, prompt_ids: torch.Tensor | None = None,
                           prompt_mask: torch.Tensor | None = None) -> BridgeOutput:
        """`visual` from the frozen encoder's tokens, for callers that run the encoder once per image."""
        if self.bridge_reads_prompt and prompt_ids is not None:
            return self.bridge(image_tokens, self.llm.embed(prompt_ids), prompt_mask)
        return self.bridge(image_tokens)

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

    # --- trained weights ---------------------------------------------------------------------------------

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
