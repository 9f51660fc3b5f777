"""The matched small config of the side-by-side benchmarks against transformers' BLIP-2 (train_vs_blip2.py,
generate_vs_blip2.py): an open_clip ViT (224 px, patch 16, width 384, 6 layers, BLIP-2's layout: no LayerNorm before
the blocks), a Q-Former (6 layers at 384, 32 queries, cross-attention every 2nd layer, query branch only) and an LM
with random weights saved with `save_pretrained`, loaded back by path: Qwen2-architecture (512 wide, 4 layers) or
T5-architecture (512 wide, 4 + 4 layers), tied embeddings. ViT and LM frozen, no LoRA, the LM loss only."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import open_clip
import torch
from open_clip.push_to_hf_hub import save_config_for_hf
from safetensors.torch import save_file
from transformers import Qwen2Config, Qwen2ForCausalLM, T5Config, T5ForConditionalGeneration

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from vlm.config import Config, load_config  # noqa: E402

QUERIES = 32
VIT = {"embed_dim": 384,
       "vision_cfg": {"image_size": 224, "layers": 6, "width": 384, "head_width": 64, "patch_size": 16,
                      "no_ln_pre": True},
       "text_cfg": {"context_length": 16, "vocab_size": 1000, "width": 64, "heads": 1, "layers": 1}}


def save_language_model(folder: Path, kind: str, vocab: int, tokenizer) -> None:
    special = dict(pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id, tie_word_embeddings=True)
    torch.manual_seed(0)
    if kind == "qwen2":
        lm = Qwen2ForCausalLM(Qwen2Config(vocab_size=vocab, hidden_size=512, intermediate_size=1408,
                                          num_hidden_layers=4, num_attention_heads=8, num_key_value_heads=8, **special))
    else:
        lm = T5ForConditionalGeneration(T5Config(vocab_size=vocab, d_model=512, d_kv=64, d_ff=1408, num_layers=4,
                                                 num_decoder_layers=4, num_heads=8,
                                                 decoder_start_token_id=tokenizer.pad_token_id, **special))
    lm.save_pretrained(folder)


def make_parts(root: Path, tokenizer, kind: str = "qwen2", vocab: int | None = None, dropout: float = 0.1) -> Config:
    """The ViT, the LM (vocabulary `vocab`, default the tokenizer's) and the tokenizer under `root`, and the config
    that names them."""
    (root / "open_clip").mkdir(parents=True, exist_ok=True)
    (root / "open_clip" / "bench-vit-384.json").write_text(json.dumps(VIT))
    open_clip.add_model_config(root / "open_clip")
    torch.manual_seed(0)
    clip = open_clip.create_model("bench-vit-384", pretrained=None)
    (root / "clip").mkdir(exist_ok=True)
    save_config_for_hf(clip, root / "clip" / "open_clip_config.json", open_clip.get_model_config("bench-vit-384"))
    save_file(clip.state_dict(), str(root / "clip" / "open_clip_model.safetensors"))
    tokenizer.save_pretrained(root / "tokenizer")
    save_language_model(root / "lm", kind, vocab or len(tokenizer), tokenizer)
    return load_config(ROOT / "configs" / "demo.yaml", [
        f"vision.name=local-dir:{root / 'clip'}", f"vision.model_config_dir={root / 'open_clip'}",
        "vision.layer=-1", "vision.include_cls=true",
        "bridge.type=qformer", f"bridge.num_queries={QUERIES}", "bridge.hidden_size=384", "bridge.num_layers=6",
        "bridge.num_heads=6", "bridge.cross_attention_freq=2", "bridge.text_branch=false", f"bridge.dropout={dropout}",
        f"llm.name={root / 'lm'}", f"llm.tokenizer={root / 'tokenizer'}", "llm.lora_r=0",
        f"llm.kind={'causal' if kind == 'qwen2' else 'seq2seq'}", "llm.train_embeddings=false", "llm.max_length=64",
        "loss.contrastive_weight=0", "loss.itc_weight=0", "loss.itm_weight=0", "loss.itg_weight=0",
        "train.precision=fp32", f"train.output_dir={root / 'run'}"])
