"""Alignment training-step throughput for the demo-sized model, variants measured side by side.

Builds the parts from configs only (random CLIP from configs/open_clip/demo-tiny-vit.json, random
Qwen2 LM with the demo's size, a tokenizer trained on a few sentences), then times forward + backward +
AdamW of `VisionLLM` on one fixed batch per variant. Run from the repository root:

    python benchmarks/train_step.py [--steps 20] [--out benchmarks/train_step.json]
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import statistics
import tempfile
import time
from pathlib import Path

import open_clip
import torch
from open_clip.push_to_hf_hub import save_config_for_hf
from safetensors.torch import save_file
from transformers import Qwen2Config, Qwen2ForCausalLM, T5Config, T5ForConditionalGeneration

from vlm.config import load_config
from vlm.data.collate import Example
from vlm.model.vlm import VisionLLM
from vlm.objective.objective import Objective
from vlm.parts import train_tokenizer

ROOT = Path(__file__).resolve().parent.parent
SENTENCES = ["Caption in English: a small red circle on the left and a big blue square in the centre",
             "中文描述：左边有一个小的红色圆形", "हिंदी में विवरण: बाईं ओर एक छोटा लाल वृत्त",
             "Question: how many shapes are there? Answer: two"] * 50


def make_parts(root: Path) -> dict[str, Path]:
    open_clip.add_model_config(ROOT / "configs" / "open_clip")
    clip = open_clip.create_model("demo-tiny-vit", pretrained=None)
    (root / "clip").mkdir()
    save_config_for_hf(clip, root / "clip" / "open_clip_config.json", open_clip.get_model_config("demo-tiny-vit"))
    save_file(clip.state_dict(), str(root / "clip" / "open_clip_model.safetensors"))
    tokenizer = train_tokenizer(SENTENCES, 1024)
    tokenizer.save_pretrained(root / "tokenizer")
    common = dict(vocab_size=len(tokenizer), pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id)
    Qwen2ForCausalLM(Qwen2Config(hidden_size=128, intermediate_size=384, num_hidden_layers=3, num_attention_heads=4,
                                 num_key_value_heads=4, tie_word_embeddings=True, **common)).save_pretrained(root / "causal")
    T5ForConditionalGeneration(T5Config(d_model=128, d_kv=32, d_ff=384, num_layers=2, num_decoder_layers=2, num_heads=4,
                                        decoder_start_token_id=tokenizer.pad_token_id, **common)).save_pretrained(root / "seq2seq")
    return {"clip": root / "clip", "tokenizer": root / "tokenizer", "causal": root / "causal", "seq2seq": root / "seq2seq"}


def batch_for(model: VisionLLM, kind: str, size: int) -> dict:
    torch.manual_seed(0)
    examples = [Example(torch.randn(3, 64, 64), "Caption in English:",
                        "a small red circle on the left and a big blue square in the centre",
                        "a small red circle on the left and a big blue square in the centre", "en", "caption")
                for _ in range(size)]
    return model.collator()(examples)


def time_variant(parts: dict, overrides: list[str], steps: int, bf16: bool, cached: bool = False) -> dict:
    """`cached`: the batch carries the frozen encoder's tokens (bf16, as `vlm prep features` stores them) instead of
    pixels, as training with data.features does."""
    kind = "seq2seq" if "llm.kind=seq2seq" in overrides else "causal"
    cfg = load_config(ROOT / "configs" / "demo.yaml", [
        f"vision.name=local-dir:{parts['clip']}", f"llm.name={parts[kind]}", f"llm.tokenizer={parts['tokenizer']}",
        *overrides])
    torch.manual_seed(0)
    model = VisionLLM(cfg).load_weights()
    objective = Objective(model).train()
    batch = batch_for(model, kind, cfg.train.batch_size)
    if cached:
        batch = dataclasses.replace(batch, images=None, image_tokens=model.vision(batch.images).to(torch.bfloat16))
    optimizer = torch.optim.AdamW([p for p in objective.parameters() if p.requires_grad], lr=1e-4)
    times = []
    for i in range(steps + 3):
        start = time.perf_counter()
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=bf16):
            loss = objective(batch)["loss"]
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if i >= 3:  # warm-up steps are not counted
            times.append(time.perf_counter() - start)
    median = statistics.median(times)
    trainable = sum(p.numel() for p in objective.parameters() if p.requires_grad)
    return {"median_step_ms": round(1000 * median, 1), "samples_per_s": round(cfg.train.batch_size / median, 1),
            "trainable_params": trainable}


STAGE2_ONLY = ["bridge.text_branch=false", "loss.itc_weight=0", "loss.itm_weight=0", "loss.itg_weight=0"]
VARIANTS = [
    ("demo config (Q-Former + ITC/ITM/ITG, causal, LoRA r=8 + embeddings), fp32", [], False),
    ("Q-Former without ITM", ["loss.itm_weight=0"], False),
    ("Q-Former query branch only (no ITC/ITM/ITG; mBLIP stage 2)", STAGE2_ONLY, False),
    ("MoE bridge (4 experts, dense)", ["bridge.type=moe"], False),
    ("MoE bridge (4 experts, top-1 + balance loss)", ["bridge.type=moe", "bridge.top_k=1",
                                                      "loss.moe_balance_weight=0.01"], False),
    ("MLP bridge", ["bridge.type=mlp"], False),
    ("demo config, bf16 autocast", [], True),
    ("LoRA only (embeddings frozen)", ["llm.train_embeddings=false"], False),
    ("embeddings only (no LoRA)", ["llm.lora_r=0"], False),
    ("bridge + heads only (no LoRA, embeddings frozen)", ["llm.lora_r=0", "llm.train_embeddings=false"], False),
    ("seq2seq (T5, 2+2 layers), fp32", ["llm.kind=seq2seq"], False),
    ("batch 64", ["train.batch_size=64"], False),
]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "train_step.json"))
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        parts = make_parts(Path(tmp))
        for name, overrides, bf16 in VARIANTS:
            row = {"variant": name, **time_variant(parts, overrides, args.steps, bf16)}
            rows.append(row)
            print(json.dumps(row), flush=True)
    info = {"torch": torch.__version__, "threads": torch.get_num_threads(), "cuda": torch.cuda.is_available()}
    Path(args.out).write_text(json.dumps({"machine": info, "rows": rows}, indent=2) + "\n")
    base = rows[0]["median_step_ms"]
    print("\n| variant | median step (ms) | samples/s | ratio to demo config | trainable params |")
    print("|---|---|---|---|---|")
    for row in rows:
        print(f"| {row['variant']} | {row['median_step_ms']} | {row['samples_per_s']} | "
              f"{row['median_step_ms'] / base:.2f} | {row['trainable_params']:,} |")


if __name__ == "__main__":
    main()
