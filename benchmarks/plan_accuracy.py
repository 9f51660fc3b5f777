"""`vlm plan`'s memory estimate against the measured peak of real training steps on this CPU.

For each variant: the planner's estimate for the CPU (`trace_model(cfg, "cpu")`: fp32, one process) at
train.batch_size, and the peak resident memory of `train.steps` steps of the real trainer on the planner's batch in
a fresh process with glibc's mmap threshold pinned (vlm.plan.measure). The parts are built from configs with random
weights (open_clip demo-tiny-vit, a byte-level BPE tokenizer, Qwen2 and T5 LMs of the sizes below); the rest is
configs/demo.yaml (Q-Former with ITC, ITM and ITG, LoRA, trained embeddings). Run from the repository root:

    python benchmarks/plan_accuracy.py [--steps 3] [--out benchmarks/plan_accuracy.json]
"""

from __future__ import annotations

import argparse
import json
import platform
import tempfile
from pathlib import Path

import open_clip
import torch
from open_clip.push_to_hf_hub import save_config_for_hf
from safetensors.torch import save_file
from transformers import Qwen2Config, Qwen2ForCausalLM, T5Config, T5ForConditionalGeneration

from vlm.config import load_config
from vlm.parts import train_tokenizer
from vlm.plan.measure import measure_peak
from vlm.plan.planner import trace_model

ROOT = Path(__file__).resolve().parent.parent
MIB = 2**20
SENTENCES = ["Caption in English: a small red circle on the left and a big blue square in the centre",
             "Question: how many shapes are there? Answer: two",
             "Beschreibung auf Deutsch: ein großer grüner Kreis"] * 50
# name -> (LM kind, width, layers, overrides)
VARIANTS = {
    "causal 256x4, batch 16, 256 tokens": ("causal", 256, 4, ["train.batch_size=16", "llm.max_length=256"]),
    "causal 384x6, batch 24, 320 tokens": ("causal", 384, 6, ["train.batch_size=24", "llm.max_length=320"]),
    "seq2seq 256x(3+3), batch 16, 256 tokens": ("seq2seq", 256, 3, ["train.batch_size=16", "llm.max_length=256"]),
    "causal 256x4, MoE top-1 bridge": ("causal", 256, 4, ["train.batch_size=16", "llm.max_length=256",
                                                          "bridge.type=moe", "bridge.top_k=1"]),
}


def make_parts(root: Path) -> dict[str, Path]:
    open_clip.add_model_config(ROOT / "configs" / "open_clip")
    clip = open_clip.create_model("demo-tiny-vit", pretrained=None)
    (root / "clip").mkdir()
    save_config_for_hf(clip, root / "clip" / "open_clip_config.json", open_clip.get_model_config("demo-tiny-vit"))
    save_file(clip.state_dict(), str(root / "clip" / "open_clip_model.safetensors"))
    tokenizer = train_tokenizer(SENTENCES, 1024)
    tokenizer.save_pretrained(root / "tokenizer")
    common = {"vocab_size": len(tokenizer), "pad_token_id": tokenizer.pad_token_id,
              "eos_token_id": tokenizer.eos_token_id}
    parts = {"clip": root / "clip", "tokenizer": root / "tokenizer"}
    for kind, width, layers, _ in VARIANTS.values():
        folder = root / f"{kind}-{width}x{layers}"
        parts[f"{kind}-{width}x{layers}"] = folder
        if folder.exists():
            continue
        torch.manual_seed(0)
        if kind == "causal":
            lm = Qwen2ForCausalLM(Qwen2Config(hidden_size=width, intermediate_size=4 * width, num_hidden_layers=layers,
                                              num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=True,
                                              **common))
        else:
            lm = T5ForConditionalGeneration(T5Config(d_model=width, d_kv=width // 4, d_ff=4 * width, num_layers=layers,
                                                     num_decoder_layers=layers, num_heads=4,
                                                     decoder_start_token_id=tokenizer.pad_token_id, **common))
        lm.save_pretrained(folder)
    return parts


def run_variant(parts: dict[str, Path], kind: str, width: int, layers: int, overrides: list[str],
                checkpointing: bool, steps: int) -> dict:
    cfg = load_config(ROOT / "configs" / "demo.yaml", [
        f"vision.name=local-dir:{parts['clip']}", f"vision.model_config_dir={ROOT / 'configs' / 'open_clip'}",
        f"llm.name={parts[f'{kind}-{width}x{layers}']}", f"llm.tokenizer={parts['tokenizer']}", f"llm.kind={kind}",
        "data.languages=[en,de]", f"train.activation_checkpointing={str(checkpointing).lower()}", *overrides])
    step = trace_model(cfg, "cpu").steps[checkpointing][0]
    measured = measure_peak(cfg, steps=steps)
    return {"estimated_bytes": step.peak, "activations_bytes": step.activations,
            "resident_bytes": step.resident, "measured_bytes": measured.peak_bytes,
            "ratio": step.peak / measured.peak_bytes, "seconds_per_step": measured.seconds / measured.steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "plan_accuracy.json"))
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        parts = make_parts(Path(tmp))
        for name, (kind, width, layers, overrides) in VARIANTS.items():
            for checkpointing in (False, True):
                row = {"variant": name, "checkpointing": checkpointing,
                       **run_variant(parts, kind, width, layers, overrides, checkpointing, args.steps)}
                rows.append(row)
                print(json.dumps(row), flush=True)
    Path(args.out).write_text(json.dumps({"machine": platform.processor() or platform.machine(),
                                          "torch": torch.__version__, "steps": args.steps, "rows": rows}, indent=2)
                              + "\n")
    print("\n| variant | activation checkpointing | estimated MiB (activations) | measured MiB | estimate / measured |"
          " s per step |")
    print("|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['variant']} | {'on' if r['checkpointing'] else 'off'} | {r['estimated_bytes'] / MIB:.0f} "
              f"({r['activations_bytes'] / MIB:.0f}) | {r['measured_bytes'] / MIB:.0f} | {r['ratio']:.3f} | "
              f"{r['seconds_per_step']:.1f} |")


if __name__ == "__main__":
    main()
