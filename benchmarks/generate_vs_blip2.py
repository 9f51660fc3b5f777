"""Batched greedy captioning: our VisionLLM against transformers' Blip2ForConditionalGeneration.generate, side by side.

    python benchmarks/generate_vs_blip2.py [--rounds 10] [--warmup 2] [--lms qwen2,t5] [--max-new-tokens 30]

The matched config of benchmarks/train_vs_blip2.py: an open_clip ViT (224 px, patch 16, width 384, 6 layers, no
LayerNorm before the blocks), a Q-Former (6 layers at 384, 32 queries, cross-attention every 2nd layer, query branch
only), and an LM with random weights saved with `save_pretrained` and loaded by path: Qwen2-architecture (512 wide,
4 layers, tied embeddings) or T5-architecture (512 wide, 4 + 4 layers). The tokenizer is a byte-level BPE of 4,000
tokens, the LM's vocabulary, so every id the LM can emit decodes. The transformers model is ours exported through
`vlm export --format hf-blip2`'s code and loaded back by path: the same weights.

Both caption the same 8 images (pixel tensors: preprocessing is left out on both sides) with `max_new_tokens`,
`num_beams=1`, `do_sample=False`, the tokenizer's eos, and the tokenizer's other special tokens suppressed on both
sides (`suppress_tokens`: a random T5 would otherwise say only padding). Timed: ours the encoder on the pixels, then
`VisionLLM.generate_from_tokens` per prompt (tokenisation, Q-Former, LM decoding, detokenisation: with one prompt
this is `VisionLLM.generate`); theirs `generate` per prompt on the processor's input ids (32 `<image>` placeholders +
the prompt, built once) and `batch_decode` of the new tokens. Regimes: `one prompt` (every image under the same
caption prompt) and `8 languages` (the same images under each language's caption prompt, as `vlm eval` asks them:
our encoder runs once per image, transformers' generate takes pixels and runs it per call). Both decode through
transformers' `generate` (a lean greedy loop of our own was tried: within noise of `generate` on this CPU, so dropped).
Rounds are interleaved in one process (the order rotates), the median of `--rounds` after
`--warmup`. Outputs are compared every round (decoded text) and once as token ids. Random weights rarely pick eos,
so captions tend to run the whole `max_new_tokens`: the script prints how many stopped early, so the work is known
to be the same on both sides.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import string
import sys
import tempfile
import time
from pathlib import Path

import torch
from PIL import Image
from transformers import (
    Blip2ForConditionalGeneration,
    Blip2Processor,
)

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from matched_blip2 import make_parts  # noqa: E402

from vlm.data.templates import caption_prompt  # noqa: E402
from vlm.model.vlm import VisionLLM  # noqa: E402
from vlm.parts import train_tokenizer  # noqa: E402
from vlm.release.hf_blip2 import export_hf_blip2  # noqa: E402

BATCH, VOCAB = 8, 4000
LANGUAGES = ["en", "de", "fr", "hi", "si", "zh", "ar", "ru"]  # configs/demo.yaml's
PROMPTS = [caption_prompt(lang) for lang in LANGUAGES]
def _tokenizer():
    """A BPE of VOCAB tokens, the LM's vocabulary, so every id the LM can emit decodes: random words give the trainer
    enough distinct pairs to merge."""
    rng = random.Random(0)
    words = ["".join(rng.choices(string.ascii_lowercase, k=rng.randint(2, 7))) for _ in range(6000)]
    text = [" ".join(rng.choices(words, k=12)) for _ in range(4000)] + PROMPTS * 20
    return train_tokenizer(text, VOCAB)


class Ours:
    name = "ours (encoder, then VisionLLM.generate_from_tokens)"

    def __init__(self, model: VisionLLM, pixels: torch.Tensor, decoding: dict):
        self.model, self.pixels, self.decoding = model, pixels, decoding

    def __call__(self, prompts: list[str]) -> list[list[str]]:
        tokens = self.model.vision(self.pixels)  # once per image, whatever the number of prompts
        return [self.model.generate_from_tokens(tokens, [p] * len(tokens), **self.decoding) for p in prompts]

    def token_ids(self, prompts: list[str]) -> list[torch.Tensor]:
        """The ids our generate decodes, read off the tokenizer's batch_decode."""
        tokenizer, seen = self.model.tokenizer, []
        decode = tokenizer.batch_decode
        tokenizer.batch_decode = lambda ids, **kw: seen.append(torch.as_tensor(ids)) or decode(ids, **kw)
        try:
            self(prompts)
        finally:
            del tokenizer.batch_decode
        return seen


class Theirs:
    name = "transformers (Blip2ForConditionalGeneration.generate)"

    def __init__(self, folder: Path, pixels: torch.Tensor, decoding: dict):
        self.processor = Blip2Processor.from_pretrained(folder)
        self.model = Blip2ForConditionalGeneration.from_pretrained(folder, dtype=torch.float32).eval()
        self.pixels, self.decoding, self.text = pixels, decoding, {}

    def _text(self, prompt: str) -> dict:
        """The processor's input ids for `prompt`, built once (image placeholders, then the prompt)."""
        if prompt not in self.text:
            n = len(self.pixels)
            self.text[prompt] = self.processor(text=[prompt] * n, images=[Image.new("RGB", (8, 8))] * n,
                                               return_tensors="pt")
        return self.text[prompt]

    def _ids(self, prompt: str) -> torch.Tensor:
        text = self._text(prompt)
        with torch.no_grad():
            ids = self.model.generate(pixel_values=self.pixels, input_ids=text["input_ids"],
                                      attention_mask=text["attention_mask"], **self.decoding)
        if not self.model.config.is_encoder_decoder:  # a decoder-only LM returns the prompt first
            ids = ids[:, text["input_ids"].shape[1]:]
        return ids

    def token_ids(self, prompts: list[str]) -> list[torch.Tensor]:
        return [self._ids(p) for p in prompts]

    def __call__(self, prompts: list[str]) -> list[list[str]]:
        return [[t.strip() for t in self.processor.batch_decode(self._ids(p), skip_special_tokens=True)]
                for p in prompts]


def measure(contenders: list, prompts: list[str], args) -> dict:
    """contenders[0] is transformers; every other one is compared with it (ratio, identical outputs)."""
    times: dict[str, list[float]] = {c.name: [] for c in contenders}
    same_text = True
    for r in range(args.warmup + args.rounds):
        outputs = {}
        for contender in contenders[r % len(contenders):] + contenders[: r % len(contenders)]:
            start = time.perf_counter()
            outputs[contender.name] = contender(prompts)
            if r >= args.warmup:
                times[contender.name].append(time.perf_counter() - start)
        same_text &= all(out == outputs[contenders[0].name] for out in outputs.values())
    theirs_ids, *others = (c.token_ids(prompts) for c in contenders)
    same_ids = all(a.shape == b.shape and bool((a == b).all()) for ours in others for a, b in zip(theirs_ids, ours))
    captions = BATCH * len(prompts)
    rows = [{"runner": name, "median_s": statistics.median(t), "captions_per_s": captions / statistics.median(t)}
            for name, t in times.items()]
    for row in rows:
        row["ratio"] = row["captions_per_s"] / rows[0]["captions_per_s"]
    return {"prompts": len(prompts), "rows": rows, "same_text": same_text, "same_ids": same_ids, "ids": theirs_ids,
            "example": outputs[contenders[0].name][0][0]}


def run_lm(kind: str, args, root: Path) -> list[dict]:
    cfg = make_parts(root / kind, _tokenizer(), kind)
    torch.manual_seed(0)
    model = VisionLLM(cfg).load_weights().eval()
    export_hf_blip2(model, root / kind / "hf", {})
    pixels = torch.randn(BATCH, 3, 224, 224, generator=torch.Generator().manual_seed(1))
    tokenizer = model.tokenizer
    decoding = {"max_new_tokens": args.max_new_tokens, "num_beams": 1, "do_sample": False,
                "suppress_tokens": [i for i in tokenizer.all_special_ids if i != tokenizer.eos_token_id]}
    contenders = [Theirs(root / kind / "hf", pixels, decoding), Ours(model, pixels, decoding)]
    results = []
    for regime, prompts in (("one prompt", [PROMPTS[0]]), (f"{len(PROMPTS)} languages", PROMPTS)):
        result = measure(contenders, prompts, args)
        new = [ids[:, 1:] if model.llm.is_seq2seq else ids for ids in result.pop("ids")]  # after a decoder start
        result.update(lm=kind, regime=regime, rows_with_eos=sum(int((t == tokenizer.eos_token_id).any(1).sum())
                                                                for t in new),
                      new_tokens=max(t.shape[1] for t in new))
        results.append(result)
    return results


def print_result(result: dict, args) -> None:
    print(f"\n## {result['lm']} LM, {result['regime']}: batch {BATCH}, max_new_tokens {args.max_new_tokens}, greedy; "
          f"{result['rows_with_eos']}/{BATCH * result['prompts']} captions stopped at eos, the longest has "
          f"{result['new_tokens']} new tokens")
    print("| runner | median round (ms) | captions/s | x transformers |")
    print("|---|---|---|---|")
    for row in result["rows"]:
        print(f"| {row['runner']} | {row['median_s'] * 1e3:.1f} | {row['captions_per_s']:.1f} | {row['ratio']:.2f} |")
    print(f"identical outputs (every runner's against transformers'): text every round "
          f"{'yes' if result['same_text'] else 'NO'}, token ids {'yes' if result['same_ids'] else 'NO'}")
    print(f"e.g. {result['example'][:80]!r}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=10)
    parser.add_argument("--warmup", type=int, default=2)
    parser.add_argument("--lms", default="qwen2,t5")
    parser.add_argument("--max-new-tokens", type=int, default=30)
    parser.add_argument("--threads", type=int, default=0)
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "generate_vs_blip2.json"))
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    results = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind in args.lms.split(","):
            for result in run_lm(kind, args, Path(tmp)):
                print_result(result, args)
                results.append(result)
    Path(args.json).write_text(json.dumps({"torch": torch.__version__, "threads": torch.get_num_threads(),
                                           "max_new_tokens": args.max_new_tokens, "results": results}, indent=1))
    if not all(r["same_text"] and r["same_ids"] for r in results):
        sys.exit("greedy outputs differ")


if __name__ == "__main__":
    main()
