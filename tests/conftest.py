"""Shared fixtures: tiny parts (shards, CLIP, tokenizer, causal and seq2seq LMs) built once per session
from configs, saved with their libraries' own save functions and loaded back by path."""

from __future__ import annotations

import os

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from dataclasses import dataclass  # noqa: E402
from pathlib import Path  # noqa: E402

import pytest  # noqa: E402
import torch  # noqa: E402
from transformers import T5Config, T5ForConditionalGeneration  # noqa: E402

from data_prep.shards import prepare_synthetic  # noqa: E402
from vlm.config import Config, DemoConfig, LLMConfig, load_config  # noqa: E402
from vlm.data.shards import resolve_shards  # noqa: E402
from vlm.model.llm import load_tokenizer  # noqa: E402
from vlm.parts import make_clip, make_language_model  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
DEMO_CONFIG = ROOT / "configs" / "demo.yaml"
LANGUAGES = ["en", "de", "zh", "hi"]


@dataclass
class TinyParts:
    root: Path
    data: Path
    clip: Path
    lm: Path
    tokenizer: Path
    seq2seq: Path

    def overrides(self, output_dir: Path, kind: str = "causal") -> list[str]:
        """Dotted overrides that turn configs/demo.yaml into a seconds-long run on these parts."""
        lm = self.lm if kind == "causal" else self.seq2seq
        return [
            f"vision.name=local-dir:{self.clip}", f"vision.model_config_dir={ROOT / 'configs' / 'open_clip'}",
            f"llm.name={lm}", f"llm.tokenizer={self.tokenizer}", f"llm.kind={kind}",
            f"data.train=[{self.data}]", f"data.val=[{self.data}]", f"data.languages=[{','.join(LANGUAGES)}]",
            "data.image_size=32", "data.num_workers=0", "data.shuffle_buffer=16",
            "bridge.num_queries=4", "bridge.hidden_size=32", "bridge.num_heads=2", "bridge.num_layers=2",
            "bridge.cross_attention_freq=2", "bridge.itc_dim=16", "bridge.max_text_length=24",
            "bridge.expert_hidden=32",
            "llm.lora_r=4", "llm.max_length=48", "loss.contrastive_dim=16",
            f"train.output_dir={output_dir}", "train.batch_size=8", "train.max_steps=4", "train.warmup_steps=1",
            "train.log_every=1", "train.eval_every=0", "loss.lagging_boost=0", "train.progress=false",
            "train.tensorboard=false",
            "eval.max_new_tokens=6", "eval.batch_size=16", "eval.max_images=12",
        ]

    def config(self, output_dir: Path, *extra: str, kind: str = "causal") -> Config:
        return load_config(DEMO_CONFIG, self.overrides(output_dir, kind) + list(extra))


@pytest.fixture(scope="session")
def tiny_parts(tmp_path_factory) -> TinyParts:
    root = tmp_path_factory.mktemp("parts")
    data = root / "data"
    prepare_synthetic(data, n_train=96, n_val=24, langs=LANGUAGES, seed=0, image_size=32, shard_size=24)
    urls = resolve_shards([str(data)], "train")
    demo = DemoConfig(clip_model="tiny-test-vit", clip_batch_size=16, clip_steps=60, tokenizer_vocab_size=600,
                      lm_hidden_size=32, lm_layers=1, lm_heads=2, lm_batch_size=8, lm_steps=2)
    make_clip(urls, demo, str(ROOT / "configs" / "open_clip"), root / "clip")
    make_language_model(urls, LANGUAGES, demo, root / "lm", root / "tokenizer")
    tokenizer = load_tokenizer(LLMConfig(name=str(root / "tokenizer")))
    torch.manual_seed(0)
    t5 = T5ForConditionalGeneration(T5Config(
        vocab_size=len(tokenizer), d_model=32, d_kv=16, d_ff=64, num_layers=1, num_decoder_layers=1, num_heads=2,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        decoder_start_token_id=tokenizer.pad_token_id, tie_word_embeddings=True))
    t5.save_pretrained(root / "t5")
    return TinyParts(root, data, root / "clip", root / "lm", root / "tokenizer", root / "t5")
