"""Q-Former weights in and out: initialise from a BERT-family encoder, import from a transformers BLIP-2
checkpoint, export in that layout.

Our module names are transformers' Blip2QFormerModel names, so BLIP-2 keys map by dropping the `qformer.`
prefix; BERT and XLM-R keys map with the renames below (LAVIS `init_Qformer` does the same from
bert-base-uncased, then copies every text FFN into the query FFN).
"""

from __future__ import annotations

import json
import logging
import pickle
import re
from pathlib import Path
from typing import TYPE_CHECKING

import torch
from safetensors import safe_open

from vlm.config import ConfigError, fetch_error

if TYPE_CHECKING:  # the Q-Former module imports this one to read its init_from weights
    from vlm.model.bridges.qformer import QFormer

log = logging.getLogger(__name__)

BLIP2_MODEL_TYPES = ("blip-2",)
# Where the position ids of a model type start: RoBERTa-style models count from padding_idx + 1.
_POSITION_OFFSET_TYPES = ("roberta", "xlm-roberta", "camembert")
_TEXT_FFN = re.compile(r"encoder\.layer\.\d+\.(intermediate|output)\.")


def read_model_config(name_or_path: str) -> dict:
    """config.json of a local folder or hub id (through transformers' cache; fails fast offline)."""
    from transformers import AutoConfig

    try:
        return AutoConfig.from_pretrained(name_or_path).to_dict()
    except (OSError, ValueError) as err:
        raise fetch_error("bridge.init_from", name_or_path, err,
                          instead="a local folder saved with save_pretrained") from None


def is_blip2(config: dict) -> bool:
    return config.get("model_type") in BLIP2_MODEL_TYPES


def _position_offset(config: dict) -> int:
    return config.get("pad_token_id", 1) + 1 if config.get("model_type") in _POSITION_OFFSET_TYPES else 0


def _check(found, expected, what: str, source: str) -> None:
    if found != expected:
        raise ValueError(f"'bridge.init_from' {source}: {what} is {found} but the config asks for {expected}")


# --- BERT / mBERT / XLM-R ----------------------------------------------------------------------------


def init_from_text_encoder(qformer: QFormer, name_or_path: str, config: dict) -> None:
    """Copy a BERT-family encoder (and its MLM head when present) into the Q-Former: self-attention,
    text FFN (also into the query FFN), embeddings and the embedding LayerNorm. Cross-attention, the query
    tokens and the stage-1 heads other than the LM head keep their fresh init."""
    from transformers import AutoModelForMaskedLM

    _check_text_encoder_shape(qformer, config, name_or_path)
    source = AutoModelForMaskedLM.from_pretrained(name_or_path, dtype=torch.float32).state_dict()
    prefix = next((p for p in ("bert.", "roberta.") if any(k.startswith(p) for k in source)), "")
    state = {k[len(prefix):]: v for k, v in source.items() if k.startswith(prefix)}
    heads = {k: v for k, v in source.items() if not k.startswith(prefix)}

    own: dict[str, torch.Tensor] = {"layernorm.weight": state["embeddings.LayerNorm.weight"],
                                    "layernorm.bias": state["embeddings.LayerNorm.bias"]}
    for i in range(len(qformer.encoder.layer)):
        layer = f"encoder.layer.{i}."  # the same prefix on both sides
        for part in ("query", "key", "value"):
            for p in ("weight", "bias"):
                own[f"{layer}attention.attention.{part}.{p}"] = state[f"{layer}attention.self.{part}.{p}"]
        for p in ("dense.weight", "dense.bias", "LayerNorm.weight", "LayerNorm.bias"):
            own[f"{layer}attention.output.{p}"] = state[f"{layer}attention.output.{p}"]
            own[f"{layer}output.{p}"] = own[f"{layer}output_query.{p}"] = state[f"{layer}output.{p}"]
        for p in ("weight", "bias"):
            own[f"{layer}intermediate.dense.{p}"] = own[f"{layer}intermediate_query.dense.{p}"] = \
                state[f"{layer}intermediate.dense.{p}"]

    with torch.no_grad():
        words = qformer.embeddings.word_embeddings.weight
        vocab = state["embeddings.word_embeddings.weight"]
        words[: vocab.shape[0]].copy_(vocab)  # the extra [DEC] row keeps its fresh init
        offset = _position_offset(config)
        n_positions = qformer.embeddings.position_embeddings.weight.shape[0]
        positions = state["embeddings.position_embeddings.weight"][offset: offset + n_positions].clone()
        if "embeddings.token_type_embeddings.weight" in state:
            # BERT adds token type 0 to every token; folding it into the positions keeps the text
            # encoder's outputs exactly while the Q-Former (like LAVIS's) has no token types.
            positions += state["embeddings.token_type_embeddings.weight"][0]
        qformer.embeddings.position_embeddings.weight.copy_(positions)
        _copy_mlm_head(qformer, heads, vocab.shape[0])
    missing = set(own) - set(qformer.state_dict())
    if missing:
        raise ValueError(f"'bridge.init_from' {name_or_path}: no Q-Former slot for {sorted(missing)[:3]}")
    qformer.load_state_dict(own, strict=False)
    log.info("Q-Former initialised from %s (%s, %d layers)", name_or_path, config.get("model_type"),
             len(qformer.encoder.layer))


def _check_text_encoder_shape(qformer: QFormer, config: dict, source: str) -> None:
    layer = qformer.encoder.layer[0]
    _check(config.get("hidden_size"), qformer.layernorm.normalized_shape[0], "hidden_size (bridge.hidden_size)", source)
    _check(config.get("num_hidden_layers"), len(qformer.encoder.layer), "num_hidden_layers (bridge.num_layers)",
           source)
    _check(config.get("num_attention_heads"), layer.attention.attention.heads, "num_attention_heads (bridge.num_heads)",
           source)
    _check(config.get("intermediate_size"), layer.intermediate_query.dense.out_features,
           "intermediate_size (bridge.hidden_size * bridge.mlp_ratio)", source)
    _check(config.get("vocab_size"), qformer.dec_token_id, "vocab_size (the size of the bridge tokenizer)", source)
    usable = config.get("max_position_embeddings", 0) - _position_offset(config)
    if usable < qformer.embeddings.position_embeddings.weight.shape[0]:
        raise ValueError(f"'bridge.init_from' {source}: {usable} positions, fewer than bridge.max_text_length")


def _copy_mlm_head(qformer: QFormer, heads: dict[str, torch.Tensor], vocab: int) -> None:
    names = {  # BERT (cls.predictions.*) and RoBERTa/XLM-R (lm_head.*) prediction heads
        "dense.weight": ("cls.predictions.transform.dense.weight", "lm_head.dense.weight"),
        "dense.bias": ("cls.predictions.transform.dense.bias", "lm_head.dense.bias"),
        "LayerNorm.weight": ("cls.predictions.transform.LayerNorm.weight", "lm_head.layer_norm.weight"),
        "LayerNorm.bias": ("cls.predictions.transform.LayerNorm.bias", "lm_head.layer_norm.bias"),
    }
    head = qformer.lm_head
    for ours, candidates in names.items():
        found = next((heads[c] for c in candidates if c in heads), None)
        if found is not None:
            head.get_parameter(ours).copy_(found)
    bias = next((heads[c] for c in ("cls.predictions.bias", "cls.predictions.decoder.bias", "lm_head.bias")
                 if c in heads), None)
    if bias is not None:
        head.bias[:vocab].copy_(bias)


# --- transformers BLIP-2 -----------------------------------------------------------------------------


def _blip2_key(ours: str) -> str:
    if ours.startswith("ln_vision."):
        return "vision_model.post_layernorm." + ours[len("ln_vision."):]
    if ours.startswith(("query_tokens", "language_projection.")):
        return ours
    return "qformer." + ours


def blip2_state_dict(qformer: QFormer) -> dict[str, torch.Tensor]:
    """Our query branch, ln_vision and language projection under Blip2ForConditionalGeneration's keys
    (ln_vision is BLIP-2's `vision_model.post_layernorm`). The text branch has no place in that class."""
    text_only = ("embeddings.", "lm_head.", "vision_proj.", "text_proj.", "itm_head.")
    out = {}
    for key, value in qformer.state_dict().items():
        if key.startswith(text_only) or _TEXT_FFN.match(key):
            continue
        out[_blip2_key(key)] = value.detach().clone()
    return out


def blip2_qformer_config(qformer: QFormer, cross_attention_freq: int) -> dict:
    """The `qformer_config` and `num_query_tokens` entries of a Blip2Config describing this Q-Former."""
    layer = qformer.encoder.layer[0]
    return {
        "num_query_tokens": qformer.num_queries,
        "qformer_config": {
            "hidden_size": qformer.layernorm.normalized_shape[0],
            "num_hidden_layers": len(qformer.encoder.layer),
            "num_attention_heads": layer.attention.attention.heads,
            "intermediate_size": layer.intermediate_query.dense.out_features,
            "cross_attention_frequency": cross_attention_freq,
            "encoder_hidden_size": qformer.ln_vision.normalized_shape[0],
            "hidden_act": "gelu",
            "layer_norm_eps": 1e-12,
        },
    }


_INDEXES = ("model.safetensors.index.json", "pytorch_model.bin.index.json")
_SINGLE_FILES = ("model.safetensors", "pytorch_model.bin")


def _checkpoint_files(name_or_path: str, wanted) -> list[Path]:
    """The weight files that hold a key satisfying `wanted`: for a sharded checkpoint only those shards are
    opened (or, for a hub id, downloaded), so a 7B BLIP-2's LLM shards are never fetched."""
    folder = Path(name_or_path)
    if folder.is_dir():
        fetch = (lambda name: folder / name if (folder / name).is_file() else None)
    else:
        fetch = _hub_fetcher(name_or_path)
    for index_name in _INDEXES:
        index = fetch(index_name)
        if index is not None:
            weight_map = json.loads(Path(index).read_text())["weight_map"]
            shards = sorted({shard for key, shard in weight_map.items() if wanted(key)})
            return [Path(fetch(shard)) for shard in shards]
    for name in _SINGLE_FILES:
        found = fetch(name)
        if found is not None:
            return [Path(found)]
    raise FileNotFoundError(f"'bridge.init_from' {name_or_path}: no model.safetensors or pytorch_model.bin found")


def _hub_fetcher(repo_id: str):
    from huggingface_hub import hf_hub_download
    from huggingface_hub.errors import EntryNotFoundError

    def fetch(name: str) -> str | None:
        try:
            return hf_hub_download(repo_id, name)
        except EntryNotFoundError:
            return None

    return fetch


def _read_tensors(files: list[Path], wanted) -> dict[str, torch.Tensor]:
    """Only the tensors whose key satisfies `wanted`."""
    out: dict[str, torch.Tensor] = {}
    for path in files:
        if path.suffix == ".safetensors":
            with safe_open(str(path), framework="pt") as f:
                out.update({k: f.get_tensor(k) for k in f.keys() if wanted(k)})
        else:
            try:
                state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
            except pickle.UnpicklingError:  # weights_only refused a global: never run it, say which file
                raise ConfigError(f"'bridge.init_from' {path}: refused, it holds objects other than tensors") from None
            out.update({k: v for k, v in state.items() if wanted(k)})
    return out


def import_blip2(qformer: QFormer, name_or_path: str, config: dict, cross_attention_freq: int) -> list[str]:
    """Load the Q-Former, query tokens, language projection and ln_vision of a
    Blip2ForConditionalGeneration checkpoint (the Salesforce/blip2-* layout). The language projection is
    skipped, with a log line, when the checkpoint's LLM width differs from ours (re-aligning BLIP-2's
    Q-Former to a new LLM, as mBLIP does); a text branch the checkpoint lacks keeps its init.
    Returns the keys of our module that were not imported."""
    source = str(name_or_path)
    qcfg = config.get("qformer_config", {})
    _check(config.get("num_query_tokens"), qformer.num_queries, "num_query_tokens (bridge.num_queries)", source)
    expected = blip2_qformer_config(qformer, cross_attention_freq)["qformer_config"]
    for key, what in (("hidden_size", "bridge.hidden_size"), ("num_hidden_layers", "bridge.num_layers"),
                      ("num_attention_heads", "bridge.num_heads"),
                      ("intermediate_size", "bridge.hidden_size * bridge.mlp_ratio"),
                      ("cross_attention_frequency", "bridge.cross_attention_freq")):
        _check(qcfg.get(key), expected[key], f"qformer_config.{key} ({what})", source)
    vision_width = config.get("vision_config", {}).get("hidden_size", qcfg.get("encoder_hidden_size"))
    if vision_width != expected["encoder_hidden_size"]:
        raise ValueError(f"'bridge.init_from' {source}: its Q-Former reads {vision_width}-wide image tokens but "
                         f"the vision encoder gives {expected['encoder_hidden_size']}; pick a vision.name of that width")

    ours = qformer.state_dict()
    by_blip2_key = {_blip2_key(k): k for k in ours}
    wanted = by_blip2_key.__contains__
    tensors = _read_tensors(_checkpoint_files(source, wanted), wanted)
    state = {by_blip2_key[k]: v.float() for k, v in tensors.items()}
    projection = state.get("language_projection.weight")
    if projection is not None and projection.shape != ours["language_projection.weight"].shape:
        log.info("bridge.init_from %s: language projection %s does not fit the LLM %s; it starts fresh",
                 source, tuple(projection.shape), tuple(ours["language_projection.weight"].shape))
        state = {k: v for k, v in state.items() if not k.startswith("language_projection.")}
    if not any(k.startswith("encoder.") for k in state):
        raise ValueError(f"'bridge.init_from' {source}: no qformer.* weights found in the checkpoint")
    qformer.load_state_dict(state, strict=False)
    if qformer.text_branch:
        _fill_text_ffn_from_query_ffn(qformer, state)
    return sorted(set(ours) - set(state))


def _fill_text_ffn_from_query_ffn(qformer: QFormer, imported: dict[str, torch.Tensor]) -> None:
    """A generation checkpoint has no text FFN: start it from the imported query FFN (the mirror image of
    LAVIS copying the text FFN into the query FFN)."""
    with torch.no_grad():
        for i, layer in enumerate(qformer.encoder.layer):
            if f"encoder.layer.{i}.intermediate.dense.weight" in imported:
                continue
            layer.intermediate.load_state_dict(layer.intermediate_query.state_dict())
            layer.output.load_state_dict(layer.output_query.state_dict())


def initialise(qformer: QFormer, name_or_path: str, cross_attention_freq: int) -> None:
    """`bridge.init_from`: a BLIP-2 checkpoint is imported, anything else is read as a BERT-family encoder."""
    config = read_model_config(name_or_path)
    if is_blip2(config):
        skipped = import_blip2(qformer, name_or_path, config, cross_attention_freq)
        log.info("Q-Former imported from BLIP-2 checkpoint %s; kept fresh: %d tensors", name_or_path, len(skipped))
    else:
        if not qformer.text_branch:
            raise ValueError(f"'bridge.init_from' {name_or_path} is a text encoder ({config.get('model_type')}): "
                             "set bridge.text_branch=true to initialise the Q-Former from it")
        init_from_text_encoder(qformer, name_or_path, config)
