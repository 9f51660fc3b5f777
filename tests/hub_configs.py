"""The published config.json files of the hub models the recipes in configs/ name, and a Hugging Face cache that
holds only them, so `AutoConfig.from_pretrained("bigscience/bloomz-7b1")` resolves offline, exactly as on a
machine whose cache is warm. No weights are in it: whatever tries to read one fails.

The configs are the released ones (BLIP-2's nested configs trimmed to the fields that differ from transformers'
defaults or that the code reads: vision/qformer widths and depths, num_query_tokens, the T5 text config).
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import huggingface_hub.constants

BLOOMZ_7B1 = {
    "apply_residual_connection_post_layernorm": False,
    "architectures": ["BloomForCausalLM"],
    "attention_dropout": 0.0,
    "attention_softmax_in_fp32": True,
    "bias_dropout_fusion": True,
    "bos_token_id": 1,
    "eos_token_id": 2,
    "hidden_dropout": 0.0,
    "hidden_size": 4096,
    "initializer_range": 0.02,
    "layer_norm_epsilon": 1e-05,
    "masked_softmax_fusion": True,
    "model_type": "bloom",
    "n_head": 32,
    "n_inner": None,
    "n_layer": 30,
    "offset_alibi": 100,
    "pad_token_id": 3,
    "pretraining_tp": 1,
    "skip_bias_add": True,
    "skip_bias_add_qkv": False,
    "slow_but_exact": False,
    "torch_dtype": "float16",
    "transformers_version": "4.22.2",
    "unk_token_id": 0,
    "use_cache": True,
    "vocab_size": 250880,
}

MT0_XL = {
    "architectures": ["MT5ForConditionalGeneration"],
    "d_ff": 5120,
    "d_kv": 64,
    "d_model": 2048,
    "decoder_start_token_id": 0,
    "dense_act_fn": "gelu_new",
    "dropout_rate": 0.1,
    "eos_token_id": 1,
    "feed_forward_proj": "gated-gelu",
    "initializer_factor": 1.0,
    "is_encoder_decoder": True,
    "is_gated_act": True,
    "layer_norm_epsilon": 1e-06,
    "model_type": "mt5",
    "num_decoder_layers": 24,
    "num_heads": 32,
    "num_layers": 24,
    "output_past": True,
    "pad_token_id": 0,
    "relative_attention_max_distance": 128,
    "relative_attention_num_buckets": 32,
    "tie_word_embeddings": False,
    "tokenizer_class": "T5Tokenizer",
    "torch_dtype": "float32",
    "transformers_version": "4.23.1",
    "use_cache": True,
    "vocab_size": 250112,
}

QWEN15_7B_CHAT = {
    "architectures": ["Qwen2ForCausalLM"],
    "attention_dropout": 0.0,
    "bos_token_id": 151643,
    "eos_token_id": 151645,
    "hidden_act": "silu",
    "hidden_size": 4096,
    "initializer_range": 0.02,
    "intermediate_size": 11008,
    "max_position_embeddings": 32768,
    "max_window_layers": 28,
    "model_type": "qwen2",
    "num_attention_heads": 32,
    "num_hidden_layers": 32,
    "num_key_value_heads": 32,
    "rms_norm_eps": 1e-06,
    "rope_theta": 1000000.0,
    "sliding_window": 32768,
    "tie_word_embeddings": False,
    "torch_dtype": "bfloat16",
    "transformers_version": "4.37.0",
    "use_cache": True,
    "use_sliding_window": False,
    "vocab_size": 151936,
}

XLM_ROBERTA_BASE = {
    "architectures": ["XLMRobertaForMaskedLM"],
    "attention_probs_dropout_prob": 0.1,
    "bos_token_id": 0,
    "eos_token_id": 2,
    "hidden_act": "gelu",
    "hidden_dropout_prob": 0.1,
    "hidden_size": 768,
    "initializer_range": 0.02,
    "intermediate_size": 3072,
    "layer_norm_eps": 1e-05,
    "max_position_embeddings": 514,
    "model_type": "xlm-roberta",
    "num_attention_heads": 12,
    "num_hidden_layers": 12,
    "output_past": True,
    "pad_token_id": 1,
    "position_embedding_type": "absolute",
    "type_vocab_size": 1,
    "vocab_size": 250002,
}

BLIP2_FLAN_T5_XL = {
    "architectures": ["Blip2ForConditionalGeneration"],
    "initializer_factor": 1.0,
    "initializer_range": 0.02,
    "model_type": "blip-2",
    "num_query_tokens": 32,
    "qformer_config": {
        "attention_probs_dropout_prob": 0.1,
        "cross_attention_frequency": 2,
        "encoder_hidden_size": 1408,
        "hidden_act": "gelu",
        "hidden_dropout_prob": 0.1,
        "hidden_size": 768,
        "initializer_range": 0.02,
        "intermediate_size": 3072,
        "layer_norm_eps": 1e-12,
        "max_position_embeddings": 512,
        "model_type": "blip_2_qformer",
        "num_attention_heads": 12,
        "num_hidden_layers": 12,
        "pad_token_id": 0,
        "position_embedding_type": "absolute",
        "vocab_size": 30522,
    },
    "text_config": {
        "architectures": ["T5ForConditionalGeneration"],
        "d_ff": 5120,
        "d_kv": 64,
        "d_model": 2048,
        "decoder_start_token_id": 0,
        "dense_act_fn": "gelu",
        "eos_token_id": 1,
        "feed_forward_proj": "gated-gelu",
        "is_gated_act": True,
        "layer_norm_epsilon": 1e-06,
        "model_type": "t5",
        "n_positions": 512,
        "num_decoder_layers": 24,
        "num_heads": 32,
        "num_layers": 24,
        "output_past": True,
        "pad_token_id": 0,
        "relative_attention_max_distance": 128,
        "relative_attention_num_buckets": 32,
        "tie_word_embeddings": False,
        "torch_dtype": "bfloat16",
        "vocab_size": 32128,
    },
    "tie_word_embeddings": False,
    "torch_dtype": "float32",
    "use_decoder_only_language_model": False,
    "vision_config": {
        "attention_dropout": 0.0,
        "dropout": 0.0,
        "hidden_act": "gelu",
        "hidden_size": 1408,
        "image_size": 224,
        "initializer_factor": 1.0,
        "initializer_range": 1e-10,
        "intermediate_size": 6144,
        "layer_norm_eps": 1e-06,
        "model_type": "blip_2_vision_model",
        "num_attention_heads": 16,
        "num_hidden_layers": 39,
        "patch_size": 14,
        "projection_dim": 512,
        "qkv_bias": True,
    },
}

HUB_CONFIGS = {
    "bigscience/bloomz-7b1": BLOOMZ_7B1,
    "bigscience/mt0-xl": MT0_XL,
    "Qwen/Qwen1.5-7B-Chat": QWEN15_7B_CHAT,
    "FacebookAI/xlm-roberta-base": XLM_ROBERTA_BASE,
    "Salesforce/blip2-flan-t5-xl": BLIP2_FLAN_T5_XL,
}


def write_hub_cache(cache: Path) -> Path:
    """The hub cache layout (models--org--name/snapshots/<commit>/config.json, refs/main -> commit) holding the
    config.json of every model in HUB_CONFIGS; the commit is a stand-in, the SHA-1 of the file's text."""
    for repo_id, config in HUB_CONFIGS.items():
        text = json.dumps(config, indent=2) + "\n"
        commit = hashlib.sha1(text.encode()).hexdigest()
        repo = cache / f"models--{repo_id.replace('/', '--')}"
        (repo / "snapshots" / commit).mkdir(parents=True)
        (repo / "snapshots" / commit / "config.json").write_text(text)
        (repo / "refs").mkdir()
        (repo / "refs" / "main").write_text(commit)
    return cache


def use_hub_cache(monkeypatch, cache: Path) -> Path:
    """Point huggingface_hub (and transformers, which reads the same constants at call time) at `cache`, offline.

    huggingface_hub reads HF_HUB_CACHE and HF_HUB_OFFLINE from the environment once, at import, into
    `huggingface_hub.constants`; the environment is set too, for anything imported later."""
    write_hub_cache(cache)
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    return cache
