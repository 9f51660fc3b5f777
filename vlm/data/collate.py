"""Tokenise examples and pad them into a batch, with labels only on the target tokens."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vlm.model.llm import IGNORE_INDEX


@dataclass
class Example:
    image: torch.Tensor  # (3, H, W), already transformed
    prompt: str
    target: str
    caption: str  # a caption in the same language, for the contrastive loss
    lang: str
    task: str


def _pad(rows: list[list[int]], value: int) -> torch.Tensor:
    width = max(len(r) for r in rows)
    return torch.tensor([r + [value] * (width - len(r)) for r in rows], dtype=torch.long)


class Collator:
    """Builds the tensors `VisionLLM.forward` reads.

    causal:  input_ids = [prompt, target, eos] right-padded; labels = -100 on prompt and padding.
    seq2seq: input_ids = prompt (encoder side); labels = [target, eos] (decoder side).
    The visual prefix is added by the model, which also masks its positions out of the labels.
    """

    def __init__(self, tokenizer, kind: str, max_length: int):
        self.tokenizer = tokenizer
        self.kind = kind
        self.max_length = max_length
        self.pad_id = tokenizer.pad_token_id
        self.eos_id = tokenizer.eos_token_id

    def encode_many(self, prompts: list[str], targets: list[str]) -> list[tuple[list[int], list[int]]]:
        """Per pair: prompt ids (with the tokenizer's own special tokens) and target ids ending in eos,
        truncated to `max_length` together (the target is kept first). One batched tokenizer call per side."""
        prompt_rows = self.tokenizer(prompts, add_special_tokens=True)["input_ids"]
        # A causal LM reads the target right after the prompt, so it starts with a space there.
        texts = [" " + t for t in targets] if self.kind == "causal" else list(targets)
        target_rows = self.tokenizer(texts, add_special_tokens=False)["input_ids"]
        pairs = []
        for prompt_ids, target_ids in zip(prompt_rows, target_rows):
            target_ids = target_ids[: self.max_length - 1] + [self.eos_id]
            pairs.append((prompt_ids[: max(self.max_length - len(target_ids), 1)], target_ids))
        return pairs

    def encode(self, prompt: str, target: str) -> tuple[list[int], list[int]]:
        return self.encode_many([prompt], [target])[0]

    def text_batch(self, prompts: list[str], targets: list[str]) -> dict[str, torch.Tensor]:
        ids, labels, masks = [], [], []
        for prompt_ids, target_ids in self.encode_many(prompts, targets):
            if self.kind == "causal":
                ids.append(prompt_ids + target_ids)
                labels.append([IGNORE_INDEX] * len(prompt_ids) + target_ids)
            else:
                ids.append(prompt_ids)
                labels.append(target_ids)
            masks.append([1] * len(ids[-1]))
        return {
            "input_ids": _pad(ids, self.pad_id),
            "attention_mask": _pad(masks, 0),
            "labels": _pad(labels, IGNORE_INDEX),
        }

    def __call__(self, examples: list[Example]) -> dict:
        batch = self.text_batch([e.prompt for e in examples], [e.target for e in examples])
        captions = [self.tokenizer(e.caption, add_special_tokens=False)["input_ids"][: self.max_length] or [self.eos_id]
                    for e in examples]
        batch["caption_ids"] = _pad(captions, self.pad_id)
        batch["caption_mask"] = _pad([[1] * len(c) for c in captions], 0)
        batch["images"] = torch.stack([e.image for e in examples])
        batch["langs"] = [e.lang for e in examples]
        batch["tasks"] = [e.task for e in examples]
        return batch
