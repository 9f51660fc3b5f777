"""A transformers language model behind one interface, causal or encoder-decoder, frozen + optional LoRA.

The visual tokens always enter as a prefix of input embeddings: in front of the prompt for a causal LM,
in front of the encoder input for a seq2seq LM. Everything kind-specific stays in this file.
"""

from __future__ import annotations

import copy

import torch
from peft import LoraConfig, TaskType, get_peft_model
from peft.tuners.lora import LoraLayer
from torch import nn
from transformers import (
    MODEL_FOR_CAUSAL_LM_MAPPING,
    MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING,
    AutoConfig,
    AutoModelForCausalLM,
    AutoModelForSeq2SeqLM,
    AutoTokenizer,
    PretrainedConfig,
    PreTrainedModel,
)
from transformers.initialization import no_init_weights
from transformers.pytorch_utils import Conv1D

from vlm.config import ConfigError, LLMConfig, fetch_error, first_line
from vlm.data.batch import IGNORE_INDEX
from vlm.model.lm_loss import (
    final_hidden_states,
    labelled_lm_loss,
    labelled_token_losses,
    supports_labelled_logits,
)
from vlm.model.weights import copy_tensors
from vlm.precision import weight_dtype

# The layer types peft's LoRA wraps: a module named in llm.lora_targets must be one of them.
LORA_LAYERS = (nn.Linear, nn.Embedding, nn.Conv1d, nn.Conv2d, nn.Conv3d, Conv1D)


def load_tokenizer(cfg: LLMConfig):
    key, source = ("llm.tokenizer", cfg.tokenizer) if cfg.tokenizer else ("llm.name", cfg.name)
    try:
        tokenizer = AutoTokenizer.from_pretrained(source, trust_remote_code=cfg.trust_remote_code)
    except OSError as err:
        raise fetch_error(key, source, err) from None
    except ValueError as err:  # a folder without tokenizer files
        raise ConfigError(f"'{key}' ({source}): no tokenizer transformers can load ({first_line(err)})") from None
    if tokenizer.pad_token_id is None:
        tokenizer.pad_token = tokenizer.eos_token  # decoder-only LMs often ship without a pad token
    return tokenizer


def _auto_class(cfg: LLMConfig):
    return AutoModelForCausalLM if cfg.kind == "causal" else AutoModelForSeq2SeqLM


def model_config(cfg: LLMConfig):
    """The transformers config `llm.name` points at (config.json only), checked against `llm.kind` and against
    the architectures transformers builds for that kind."""
    try:
        config = AutoConfig.from_pretrained(cfg.name, trust_remote_code=cfg.trust_remote_code)
    except OSError as err:
        raise fetch_error("llm.name", cfg.name, err) from None
    except ValueError as err:  # a model_type transformers does not know, or remote code not trusted
        raise ConfigError(f"'llm.name' ({cfg.name}): {first_line(err)}") from None
    _check_kind(cfg, config.is_encoder_decoder)
    _check_architecture(cfg, config)
    return config


def _check_architecture(cfg: LLMConfig, config: PretrainedConfig) -> None:
    mapping = MODEL_FOR_CAUSAL_LM_MAPPING if cfg.kind == "causal" else MODEL_FOR_SEQ_TO_SEQ_CAUSAL_LM_MAPPING
    remote = cfg.trust_remote_code and _auto_class(cfg).__name__ in (getattr(config, "auto_map", None) or {})
    if type(config) not in mapping and not remote:
        what = "causal (decoder-only)" if cfg.kind == "causal" else "seq2seq (encoder-decoder)"
        raise ConfigError(f"'llm.name' ({cfg.name}) is a '{config.model_type}' model, not a {what} LM that "
                          f"transformers' {_auto_class(cfg).__name__} builds: choose a language model")


def _ties_output_embeddings(cfg: LLMConfig) -> bool:
    """What config.json itself says of tying the output layer to the input embeddings. transformers 5's T5 and
    mT5 configs always say they tie (and `from_pretrained` unties when the checkpoint holds both); mT0 and
    Flan-T5 publish `tie_word_embeddings: false` and an lm_head of their own, so a model built from the config
    must not tie them."""
    raw, _ = PretrainedConfig.get_config_dict(cfg.name)
    return raw.get("tie_word_embeddings", True) is not False


def _untie_output_embeddings(model: PreTrainedModel) -> None:
    """Give the output layer a weight of its own (the input embeddings' other users stay tied)."""
    head, table = model.get_output_embeddings(), model.get_input_embeddings()
    if head is None or head.weight is not table.weight:
        return
    name = next(n for n, m in model.named_modules() if m is head) + ".weight"
    head.weight = nn.Parameter(torch.empty_like(head.weight), requires_grad=head.weight.requires_grad)
    model.all_tied_weights_keys.pop(name, None)


def _check_kind(cfg: LLMConfig, is_encoder_decoder: bool) -> None:
    if is_encoder_decoder != (cfg.kind == "seq2seq"):
        found, kind = ("an encoder-decoder", "seq2seq") if is_encoder_decoder else ("a decoder-only", "causal")
        raise ConfigError(f"'llm.kind' is '{cfg.kind}' but '{cfg.name}' is {found} model: set llm.kind={kind}")


def _check_lora_targets(cfg: LLMConfig, model: nn.Module) -> None:
    """Every module llm.lora_targets names is a layer of the model LoRA can wrap (peft matches a target against
    the end of each module's dotted name; it would accept a list where only some match)."""
    if cfg.lora_targets == "all-linear":
        return
    names = [name for name, module in model.named_modules() if isinstance(module, LORA_LAYERS)]
    for target in (t.strip() for t in cfg.lora_targets.split(",")):
        if not any(name == target or name.endswith("." + target) for name in names):
            known = sorted({name.rsplit(".", 1)[-1] for name in names})
            raise ConfigError(f"'llm.lora_targets': '{cfg.name}' has no linear or embedding layer named "
                              f"'{target}' (LoRA can wrap: {', '.join(known)})")


class LanguageModel(nn.Module):
    """Built from `llm.name`'s config alone (`device="meta"`: no memory either); `load_weights` reads the
    pretrained weights. The tokenizer is read when first used."""

    def __init__(self, cfg: LLMConfig, device: str | torch.device = "cpu"):
        super().__init__()
        self.cfg = cfg
        self._tokenizer = None
        # Structure only: transformers' initialisation is skipped, since the weights step overwrites every
        # tensor (and skipping it leaves the RNG where loading a pretrained model leaves it).
        with torch.device(device), no_init_weights():
            model = _auto_class(cfg).from_config(model_config(cfg), dtype=weight_dtype(cfg.dtype),
                                                 trust_remote_code=cfg.trust_remote_code)
        model.tie_weights()  # no_init_weights skips the tying that init_weights does
        if not _ties_output_embeddings(cfg):
            _untie_output_embeddings(model)
        model.requires_grad_(False)
        if cfg.lora_r > 0:
            _check_lora_targets(cfg, model)
            model = get_peft_model(model, self._lora_config())
        if cfg.train_embeddings:
            model.get_input_embeddings().requires_grad_(True)
        self.model = model
        self.is_seq2seq = cfg.kind == "seq2seq"
        self.hidden_size = model.get_input_embeddings().embedding_dim

    @property
    def tokenizer(self):
        if self._tokenizer is None:
            self._tokenizer = load_tokenizer(self.cfg)
        return self._tokenizer

    @property
    def base_model(self) -> PreTrainedModel:
        """The transformers model (with LoRA layers injected, when there are any)."""
        return self.model.get_base_model() if self.cfg.lora_r > 0 else self.model

    def load_weights(self) -> None:
        """Read the pretrained weights through transformers' own loader and copy them (and the buffers) into the
        built model; the LoRA adapter keeps its initialisation."""
        try:
            pretrained = _auto_class(self.cfg).from_pretrained(self.cfg.name, dtype=weight_dtype(self.cfg.dtype),
                                                               trust_remote_code=self.cfg.trust_remote_code)
        except OSError as err:  # a config.json in the cache (or a folder) without its weights
            raise fetch_error("llm.name", self.cfg.name, err) from None
        # Materialising from the meta device (to_empty) unties shared tables: tie them again, as built.
        self.base_model.tie_weights(recompute_mapping=False)
        copy_tensors(pretrained, self.base_model, rename=lambda name: name.replace(".base_layer.", "."),
                     skip=lambda name: "lora_" in name)
        self.base_model.generation_config = pretrained.generation_config  # generation_config.json, if any

    def reset_adapter(self) -> None:
        """Fresh LoRA initialisation (A: peft's Kaiming-uniform, B: zeros), for a model built on the meta device."""
        for module in self.model.modules():
            if isinstance(module, LoraLayer):
                for adapter in module.active_adapters:
                    module.reset_lora_parameters(adapter, True)

    def decoder_blocks(self) -> list[nn.Module]:
        """The transformer blocks (encoder and decoder ones for seq2seq): FSDP2's and activation checkpointing's
        units. transformers names them `_no_split_modules` on each model class."""
        names = set(getattr(self.base_model, "_no_split_modules", None) or ())
        return [m for m in self.base_model.modules() if type(m).__name__ in names]

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

    @property
    def computes_labelled_logits(self) -> bool:
        """Whether the loss is taken at the labelled positions only (vlm/model/lm_loss.py), which per-sample
        weights and per-sample losses need."""
        return self.cfg.labelled_logits and supports_labelled_logits(self.base_model)

    def _inputs(self, prefix: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """[prefix; text] embeddings, their attention mask and labels (-100 on the visual positions)."""
        prefix = prefix.to(self.dtype)
        embeds = torch.cat([prefix, self.embed(input_ids)], dim=1)
        ones = attention_mask.new_ones(prefix.shape[:2])
        mask = torch.cat([ones, attention_mask], dim=1)
        if not self.is_seq2seq:
            ignore = labels.new_full(prefix.shape[:2], IGNORE_INDEX)  # no loss on the visual positions
            labels = torch.cat([ignore, labels], dim=1)
        return embeds, mask, labels

    def forward(self, prefix: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                labels: torch.Tensor, sample_weights: torch.Tensor | None = None) -> torch.Tensor:
        """Mean next-token loss over the labelled target tokens (with (B,) `sample_weights`, each token weighted by
        its sample's weight: the weighted mean).

        causal:  input_ids = prompt + target (right-padded), labels = -100 except on the target.
        seq2seq: input_ids = prompt (encoder side), labels = target (decoder side, -100 on padding).
        """
        embeds, mask, labels = self._inputs(prefix, input_ids, attention_mask, labels)
        if self.computes_labelled_logits:
            hidden = final_hidden_states(self.base_model, embeds, mask, labels)
            return labelled_lm_loss(self.base_model, hidden, labels, sample_weights)
        if sample_weights is not None:
            raise ValueError("per-sample LM loss weights need llm.labelled_logits and an architecture it supports")
        # No KV cache in training: nothing reads it, and activation checkpointing's recomputation would append to it.
        return self.model(inputs_embeds=embeds, attention_mask=mask, labels=labels, use_cache=False).loss

    @torch.no_grad()
    def sample_losses(self, prefix: torch.Tensor, input_ids: torch.Tensor, attention_mask: torch.Tensor,
                      labels: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(B,) summed next-token cross-entropy of each sample's labelled tokens and (B,) their counts (float32), for
        per-language validation losses. Needs `computes_labelled_logits`."""
        embeds, mask, labels = self._inputs(prefix, input_ids, attention_mask, labels)
        hidden = final_hidden_states(self.base_model, embeds, mask, labels)
        losses, samples = labelled_token_losses(self.base_model, hidden, labels)
        b = input_ids.shape[0]
        sums = torch.zeros(b, dtype=torch.float32, device=losses.device).index_add_(0, samples, losses)
        counts = torch.zeros(b, dtype=torch.float32, device=losses.device).index_add_(
            0, samples, torch.ones_like(losses))
        return sums, counts

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
        # Ranks generate for their own images, as many times as those need: transformers must not keep them in
        # lock-step (it would under FSDP), since the trainer's FSDP2 evaluation gathers every unit whole first.
        out = self.model.generate(
            inputs_embeds=embeds,
            attention_mask=mask,
            pad_token_id=self.tokenizer.pad_token_id,
            eos_token_id=self.tokenizer.eos_token_id,
            **{"synced_gpus": False, **generate_kwargs},
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
