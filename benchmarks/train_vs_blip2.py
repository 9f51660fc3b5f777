"""Our training step against transformers' Blip2ForConditionalGeneration doing the same work, side by side.

    python benchmarks/train_vs_blip2.py [--steps 10] [--warmup 3] [--regimes fixed,spread,vocab250k] [--device cpu]

The matched config: an open_clip ViT (224 px, patch 16, width 384, 6 layers, BLIP-2's layout: no LayerNorm before
the blocks), a Q-Former (6 layers at 384, 32 queries, cross-attention every 2nd layer, query branch only, dropout
0.1 as both default to), a Qwen2-architecture LM (512 wide, 4 layers, vocab 4000, tied embeddings); ViT and LM
frozen, no LoRA; batch 8; the LM loss only; AdamW on the Q-Former, its queries, ln_vision and the projection. The
transformers model is ours exported through `vlm export --format hf-blip2`'s code and loaded back by path, so both
start from the same weights (their losses on one batch are printed). Each sample is a 6-token prompt and a caption;
BLIP-2 reads [32 image tokens; prompt; caption] with labels on the caption, ours [visual prefix; prompt; caption]
the same way.

Regimes: `fixed` (32 text tokens per sample), `spread` (uniform 8-64), `vocab250k` (fixed, a 250,112-token
vocabulary as mT0/BLOOMZ have). Steps of every runner are interleaved in one process (the order rotates each
round), the median of `--steps` after `--warmup`. Per runner: samples/s, the peak of tensor memory allocated during
one step (live storages tracked through a dispatch mode on the CPU, `torch.cuda.max_memory_allocated` on a GPU),
FLOPs of that step (FlopCounterMode: each runner's own work, so a runner that skips work counts fewer) and MFU
against a matmul peak measured in the same run. `feature cache` runners read the encoder's tokens instead of pixels,
as `data.features` feeds them (ModelInputs.image_tokens); `group_by_length` forms batches from windows of 16
batches with the stream's own grouping (vlm/data/length_grouping.py).
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import json
import random
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode, register_flop_formula, sdpa_backward_flop_count, sdpa_flop_count
from transformers import Blip2ForConditionalGeneration

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from matched_blip2 import QUERIES, make_parts  # noqa: E402

from vlm.data.batch import IGNORE_INDEX, ModelInputs  # noqa: E402
from vlm.data.length_grouping import group_by_length  # noqa: E402
from vlm.model.vlm import VisionLLM  # noqa: E402
from vlm.objective.objective import Objective  # noqa: E402
from vlm.parts import train_tokenizer  # noqa: E402
from vlm.plan.trace import StepMeter  # noqa: E402
from vlm.release.hf_blip2 import export_hf_blip2  # noqa: E402

BATCH, PROMPT = 8, 6
GROUP_WINDOW = 16  # batches per length-grouping window
REGIMES = {"fixed": (4000, (32, 32)), "spread": (4000, (8, 64)), "vocab250k": (250112, (32, 32))}
SENTENCES = ["a small red circle on the left and a big blue square in the centre",
             "Caption in English:", "ein großer grüner Kreis"] * 40


# FlopCounterMode has no formula for the CPU's fused attention kernels (open_clip's nn.MultiheadAttention runs
# torch's native MHA in eval mode, SDPA picks the CPU flash kernel): without these the counts would miss them.
@register_flop_formula(torch.ops.aten._scaled_dot_product_flash_attention_for_cpu)
def _cpu_flash_flop(query_shape, key_shape, value_shape, *args, out_shape=None, **kwargs) -> int:
    return sdpa_flop_count(query_shape, key_shape, value_shape)


@register_flop_formula(torch.ops.aten._scaled_dot_product_flash_attention_for_cpu_backward)
def _cpu_flash_backward_flop(grad_out_shape, query_shape, key_shape, value_shape, *args, out_shape=None,
                             **kwargs) -> int:
    return sdpa_backward_flop_count(grad_out_shape, query_shape, key_shape, value_shape)


@register_flop_formula(torch.ops.aten._native_multi_head_attention)
def _native_mha_flop(query_shape, key_shape, value_shape, embed_dim, num_head, *args, out_shape=None,
                     **kwargs) -> int:
    (b, length, width), source = query_shape, key_shape[1]  # batch-first
    projections = 2 * b * width * width * (length + 2 * source) + 2 * b * length * width * width  # q, k, v; out
    return projections + 4 * b * length * source * width  # scores and the weighted sum


@dataclass
class Sample:
    image: torch.Tensor  # (3, 224, 224)
    prompt: list[int]
    caption: list[int]


def make_samples(n: int, lengths: tuple[int, int], vocab: int, image_token: int, seed: int) -> list[Sample]:
    """Random images and token ids (never BLIP-2's image placeholder) with text lengths uniform in `lengths`."""
    gen = torch.Generator().manual_seed(seed)
    rng = random.Random(seed)

    def ids(count: int) -> list[int]:
        drawn = torch.randint(10, vocab - 1, (count,), generator=gen)
        return torch.where(drawn >= image_token, drawn + 1, drawn).tolist()

    return [Sample(torch.randn(3, 224, 224, generator=gen), ids(PROMPT), ids(rng.randint(*lengths) - PROMPT))
            for _ in range(n)]


def _right_pad(rows: list[list[int]], value: int) -> torch.Tensor:
    width = max(len(r) for r in rows)
    return torch.tensor([r + [value] * (width - len(r)) for r in rows])


def ours_inputs(samples: list[Sample], pad: int, tokens: torch.Tensor | None = None) -> ModelInputs:
    rows = [s.prompt + s.caption for s in samples]
    labels = [[IGNORE_INDEX] * PROMPT + s.caption for s in samples]
    return ModelInputs(
        input_ids=_right_pad(rows, pad), attention_mask=_right_pad([[1] * len(r) for r in rows], 0),
        labels=_right_pad(labels, IGNORE_INDEX), prompt_ids=torch.tensor([s.prompt for s in samples]),
        prompt_mask=torch.ones(len(samples), PROMPT, dtype=torch.long),
        caption_ids=_right_pad([s.caption for s in samples], pad),
        caption_mask=_right_pad([[1] * len(s.caption) for s in samples], 0),
        image_ids=torch.arange(len(samples)), langs=["en"] * len(samples), tasks=["caption"] * len(samples),
        images=None if tokens is not None else torch.stack([s.image for s in samples]), image_tokens=tokens)


def blip2_inputs(samples: list[Sample], pad: int, image_token: int) -> dict[str, torch.Tensor]:
    rows = [[image_token] * QUERIES + s.prompt + s.caption for s in samples]
    labels = [[IGNORE_INDEX] * (QUERIES + PROMPT) + s.caption for s in samples]
    return {"pixel_values": torch.stack([s.image for s in samples]), "input_ids": _right_pad(rows, pad),
            "attention_mask": _right_pad([[1] * len(r) for r in rows], 0), "labels": _right_pad(labels, IGNORE_INDEX)}


def to_device(batch, device):
    return batch.to(device) if isinstance(batch, ModelInputs) else {k: v.to(device) for k, v in batch.items()}


class Runner:
    """One contender: a module whose forward gives {"loss": ...} or .loss, its optimizer, and its batches."""

    def __init__(self, name: str, module: torch.nn.Module, batches: list, device: torch.device,
                 loss_of: Callable = lambda out: out["loss"]):
        self.name, self.module, self.batches, self.device, self.loss_of = name, module, batches, device, loss_of
        self.params = [p for p in module.parameters() if p.requires_grad]
        self.optimizer = torch.optim.AdamW(self.params, lr=1e-4, betas=(0.9, 0.98), eps=1e-6)
        self.times: list[float] = []
        self.losses: list[float] = []

    def step(self, index: int) -> float:
        batch = self.batches[index % len(self.batches)]
        _sync(self.device)
        start = time.perf_counter()
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.device.type == "cuda"):
            loss = self.loss_of(self.module(**batch) if isinstance(batch, dict) else self.module(batch))
        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.params, 1.0)
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        _sync(self.device)
        self.losses.append(float(loss.detach()))
        return time.perf_counter() - start

    def measure(self, steps: int = 4) -> tuple[int, float]:
        """Over the first `steps` batches: the largest peak of memory allocated during a step above what existed
        before it, and the mean FLOPs of a step."""
        peaks, flops = [], []
        for index in range(min(steps, len(self.batches))):
            counter = FlopCounterMode(display=False)
            if self.device.type == "cuda":
                torch.cuda.reset_peak_memory_stats()
                before = torch.cuda.memory_allocated()
                with counter:
                    self.step(index)
                peaks.append(torch.cuda.max_memory_allocated() - before)
            else:
                meter = StepMeter()
                with counter, meter:
                    self.step(index)
                peaks.append(meter.peaks["forward"])  # one phase: everything the step allocated
            flops.append(counter.get_total_flops())
        return max(peaks), statistics.mean(flops)


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def matmul_peak(device: torch.device, dtype: torch.dtype) -> float:
    """FLOP/s of the best of 10 square matmuls, the machine's practical peak for `dtype`."""
    n = 2048 if device.type == "cpu" else 8192
    a, b = (torch.randn(n, n, device=device, dtype=dtype) for _ in range(2))
    best = float("inf")
    for _ in range(10):
        _sync(device)
        start = time.perf_counter()
        a @ b
        _sync(device)
        best = min(best, time.perf_counter() - start)
    return 2 * n**3 / best


def batches_of(samples: list[Sample], grouped: bool, seed: int) -> list[list[Sample]]:
    if not grouped:
        return [samples[i: i + BATCH] for i in range(0, len(samples) - BATCH + 1, BATCH)]
    window = GROUP_WINDOW * BATCH
    rng = random.Random(seed)
    return [batch for start in range(0, len(samples) - window + 1, window)
            for batch in group_by_length(samples[start: start + window],
                                         [PROMPT + len(s.caption) for s in samples[start: start + window]], BATCH, rng)]


def run_regime(name: str, args, root: Path, device: torch.device) -> dict:
    vocab, lengths = REGIMES[name]
    cfg = make_parts(root / name, train_tokenizer(SENTENCES, 512), vocab=vocab)
    torch.manual_seed(0)
    model = VisionLLM(cfg).load_weights()
    export_hf_blip2(model, root / name / "hf", {})
    blip2 = Blip2ForConditionalGeneration.from_pretrained(root / name / "hf", dtype=torch.float32)
    blip2.requires_grad_(False)
    for part in (blip2.qformer, blip2.language_projection, blip2.vision_model.post_layernorm):
        part.requires_grad_(True)
    blip2.query_tokens.requires_grad_(True)
    pad, image_token = model.tokenizer.pad_token_id, blip2.config.image_token_id
    rounds = args.warmup + args.steps
    windows = -(-rounds // GROUP_WINDOW) * GROUP_WINDOW  # whole grouping windows
    samples = make_samples(windows * BATCH, lengths, vocab, image_token, seed=1)
    model.to(device)
    blip2.to(device).train()
    objective = Objective(model).train()

    plain = batches_of(samples, grouped=False, seed=0)
    with torch.no_grad():  # the encoder once per image, as `vlm prep features` runs it
        cached = {id(s): t for batch in plain for s, t in zip(batch, model.vision(torch.stack(
            [s.image for s in batch]).to(device)).cpu())}

    def ours(batches, cache):
        return [to_device(ours_inputs(b, pad, torch.stack([cached[id(s)] for s in b]) if cache else None), device)
                for b in batches]

    reference = copy.deepcopy(objective)
    reference.model.llm.cfg = dataclasses.replace(cfg.llm, labelled_logits=False)
    runners = [Runner("transformers BLIP-2", blip2, [to_device(blip2_inputs(b, pad, image_token), device)
                                                    for b in plain], device, loss_of=lambda out: out.loss),
               Runner("ours", objective, ours(plain, False), device),
               Runner("ours, transformers' LM loss (llm.labelled_logits=false)", reference, ours(plain, False), device),
               Runner("ours + feature cache", copy.deepcopy(objective), ours(plain, True), device)]
    if lengths[0] != lengths[1]:
        grouped = batches_of(samples, grouped=True, seed=0)
        runners += [Runner("ours + group_by_length", copy.deepcopy(objective), ours(grouped, False), device),
                    Runner("ours + feature cache + group_by_length", copy.deepcopy(objective), ours(grouped, True),
                           device)]

    # Same weights, same batch: the two models' losses before any step.
    with torch.no_grad():
        blip2_loss = float(blip2(**runners[0].batches[0]).loss)
        ours_loss = float(objective(runners[1].batches[0])["loss"])
    peak = 0.0
    for r in range(rounds):
        # The peak is taken between rounds too, so that it sees the machine as the steps do (it is shared).
        peak = max(peak, matmul_peak(device, torch.float32 if device.type == "cpu" else torch.bfloat16))
        order = runners[r % len(runners):] + runners[: r % len(runners)]
        for runner in order:
            elapsed = runner.step(r)
            if r >= args.warmup:
                runner.times.append(elapsed)
    rows = []
    for runner in runners:
        memory, flops = runner.measure()
        median = statistics.median(runner.times)
        rows.append({"runner": runner.name, "median_s": median, "samples_per_s": BATCH / median,
                     "peak_step_bytes": memory, "flops_per_step": flops, "mfu": flops / median / peak})
    base = rows[0]
    for row in rows:
        row["speed_ratio"] = row["samples_per_s"] / base["samples_per_s"]
        row["memory_ratio"] = row["peak_step_bytes"] / base["peak_step_bytes"]
    tokens = [PROMPT + len(s.caption) for s in samples]
    return {"regime": name, "vocab": vocab, "text_tokens": lengths, "mean_text_tokens": statistics.mean(tokens),
            "matmul_peak_flops": peak, "initial_loss": {"transformers": blip2_loss, "ours": ours_loss}, "rows": rows}


def print_regime(result: dict) -> None:
    lo, hi = result["text_tokens"]
    print(f"\n## {result['regime']}: vocab {result['vocab']:,}, text tokens {lo}-{hi} "
          f"(mean {result['mean_text_tokens']:.1f}); matmul peak {result['matmul_peak_flops'] / 1e9:.1f} GFLOP/s; "
          f"initial loss transformers {result['initial_loss']['transformers']:.6f}, "
          f"ours {result['initial_loss']['ours']:.6f}")
    print("| runner | median step (ms) | samples/s | x transformers | peak step memory (MiB) | x transformers "
          "| GFLOP/step | MFU |")
    print("|---|---|---|---|---|---|---|---|")
    for row in result["rows"]:
        print(f"| {row['runner']} | {row['median_s'] * 1e3:.1f} | {row['samples_per_s']:.1f} | "
              f"{row['speed_ratio']:.2f} | {row['peak_step_bytes'] / 2**20:.1f} | {row['memory_ratio']:.2f} | "
              f"{row['flops_per_step'] / 1e9:.1f} | {row['mfu'] * 100:.1f}% |")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--regimes", default="fixed,spread,vocab250k")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "train_vs_blip2.json"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.regimes.split(","):
            results.append(run_regime(name, args, Path(tmp), device))
            print_regime(results[-1])
    Path(args.json).write_text(json.dumps({"device": str(device), "torch": torch.__version__,
                                           "threads": torch.get_num_threads(), "results": results}, indent=1))


if __name__ == "__main__":
    main()
