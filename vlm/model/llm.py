"""A transformers language model behind one interface, causal or encoder-decoder, frozen + optional LoRA.

The visual tokens always enter as a prefix of input embeddings: in front of the prompt for a causal LM,
in front of the encoder input for a seq2seq LM. Everything kind-specific stays in this file.
"""

from __future__ import annotations

import copy

import torch
from peft import LoraConfig, TaskType, get_peft_model
from torch import nn
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer, PreTrainedModel

from vlm.config import LLMConfig

IGNORE_INDEX = -100
_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def resolve_dtype(name: str) -> torch.dtype:
    """'auto' loads bf16 weights on a GPU and fp32 on the CPU (bf16 matmuls are ~2x slower there)."""
    if name == "auto":
        return torch.bfloat16 if torch.cuda.is_available() else torch.float32
    return _DTYPES[name]


def load_tokenizer(cfg: LLMConfig):
    tokenizer = AutoTokenizer.from_pretrained(cfg.tokenizer or cfg.name, trust_remote_code=cfg.trust_remote_code)
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token  # decoder-only LMs often ship without a pad token
    return tokenizer


def load_model(cfg: LLMConfig) -> PreTrainedModel:
    config = AutoConfig.from_pretrained(cfg.name, trust_remote_code=cfg.trust_remote_code)
    _check_kind(cfg, config.is_encoder_decoder)  # before any weights are read
    auto = AutoModelForCausalLM if cfg.kind == "causal" else AutoModelForSeq2SeqLM
    return auto.from_pretrained(cfg.name, config=config, dtype=resolve_dtype(cfg.dtype),
                                trust_remote_code=cfg.trust_remote_code)


def _check_kind(cfg: LLMConfig, is_encoder_decoder: bool) -> None:
    if is_encoder_decoder != (cfg.kind == "seq2seq"):
        found = "an encoder-decoder" if is_encoder_decoder else "a decoder-only"
        raise ValueError(f"llm.kind is '{cfg.kind}' but '{cfg.name}' is {found} model")


class LanguageModel(nn.Module):
    def __init__(self, cfg: LLMConfig, model: PreTrainedModel | None = None, tokenizer=None):
        super().__init__()
        self.cfg = cfg
        self.tokenizer = tokenizer if tokenizer is not None else load_tokenizer(cfg)
        model = model if model is not None else load_model(cfg)
        _check_kind(cfg, model.config.is_encoder_decoder)
        model.requires_grad_(False)
        if cfg.lora_r > 0:
            model = get_peft_model(model, self._lora_config())
        if cfg.train_embeddings:
            model.get_input_embeddings().requires_grad_(True)
        self.model = model
        self.is_seq2seq = cfg.kind == "seq2seq"
        self.hidden_size = model.get_input_embeddings().embedding_dim

    def _lora_config(self) -> LoraConfig:
        targets = self.cfg.lora_targets
        return LoraConfig(
            r=self.cfg.lora_r,
            lora_alpha=self.cfg.lora_alpha,
            lora_dropout=self.cfg.lora_dropout,
            target_modules=targets if targets == "all-linear" else [t.strip() for t in targets.split(",")],
            task_type=TaskType.SEQ_2_SEQ_LM if self.cfg.kind == "seq2seq" else TaskType.CAUSAL_LM,
        )

    @property
    def dtype(self) -> torch.dtype:
        return self.model.get_input_embeddings().weight.dtype

    def embed(self, ids: torch.Tensor) -> torch.Tensor:
        return self.model.get_input_embeddings()(ids)

    def forward(self, prefix: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                labels: torch.Tensor) -> torch.Tensor:
        """Mean next-token loss over the labelled target tokens.

        causal:  input_ids = prompt + target (right-padded), labels = -100 except on the target.
        seq2seq: input_ids = prompt (encoder side), labels = target (decoder side, -100 on padding).
        """
        prefix = prefix.to(self.dtype)
        embeds = torch.cat([prefix, self.embed(input_ids)], dim=1)
        ones = attention_mask.new_ones(prefix.shape[:2])
        mask = torch.cat([ones, attention_mask], dim=1)
        if not self.is_seq2seq:
            ignore = labels.new_full(prefix.shape[:2], IGNORE_INDEX)  # no loss on the visual positions
            labels = torch.cat([ignore, labels], dim=1)
        return self.model(inputs_embeds=embeds, attention_mask=mask, labels=labels).loss

    @torch.no_grad()
    def generate(self, prefix: torch.Tensor, prompt_ids: torch.Tensor, prompt_mask: torch.Tensor,
                 **generate_kwargs) -> list[str]:
        """Decode continuations of [visual prefix; prompt]. Prompts may be padded on either side."""
        prefix = prefix.to(self.dtype)
        embeds = torch.cat([prefix, self.embed(prompt_ids)], dim=1)
        mask = torch.cat([prompt_mask.new_ones(prefix.shape[:2]), prompt_mask], dim=1)
        if not self.is_seq2seq:
            # Move every padding position to the left (a stable sort keeps token order), so a
            # decoder-only model sees [pad..., prefix, prompt] and continues right after the prompt.
            order = torch.sort(mask, dim=1, stable=True).indices
            embeds = embeds.gather(1, order.unsqueeze(-1).expand_as(embeds))
            mask = mask.gather(1, order)
        out = self.model.generate(
            inputs_embeds=embeds,
            attention_mask=mask,
            pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=self.tokenizer.eos_token_id,
            **generate_kwargs,
        )
        # With inputs_embeds only, decoder-only generate returns just the new tokens; seq2seq
        # returns the decoder sequence; special tokens (decoder start, eos, pad) are skipped.
        return [text.strip() for text in self.tokenizer.batch_decode(out, skip_special_tokens=True)]

    def save_base(self, folder) -> None:
        """Save the transformers model as trained but without its LoRA adapter (the release keeps the adapter
        beside it): peft's injected `base_layer` names are undone, so the folder loads as a plain model."""
        if self.cfg.lora_r == 0:
            self.model.save_pretrained(folder)
            return
        base = self.model.get_base_model()
        state = {k.replace(".base_layer.", "."): v for k, v in base.state_dict().items() if "lora_" not in k}
        base.save_pretrained(folder, state_dict=state)

    def merged_model(self) -> PreTrainedModel:
        """The underlying transformers model with any LoRA adapters merged in (for release)."""
        if self.cfg.lora_r > 0:
            return copy.deepcopy(self.model).merge_and_unload()  # a copy: training may go on
        return self.model
