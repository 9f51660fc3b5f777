"""Tokenise examples and pad them into a batch, with labels only on the target tokens."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vlm.data.batch import IGNORE_INDEX, ModelInputs


@dataclass
class Example:
    image: torch.Tensor | None  # (3, H, W), already transformed; None when image_tokens stand in for it
    prompt: str
    target: str
    caption: str  # a caption in the same language, for the contrastive loss
    lang: str
    task: str
    image_id: int = -1  # the same for every example of one image (ITC/ITM treat them as positives); -1: unknown
    image_tokens: torch.Tensor | None = None  # (N, D) the frozen encoder's output, from a feature cache


def _pad(rows: list[list[int]], value: int) -> torch.Tensor:
    width = max(len(r) for r in rows)
    return torch.tensor([r + [value] * (width - len(r)) for r in rows], dtype=torch.long)


def bridge_text_ids(tokenizer, texts: list[str], max_length: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Q-Former text input: [start] tokens [end], padded to `max_length` (a fixed width, so ranks can gather
    it for ITM negatives). start/end are the tokenizer's [CLS]/[SEP] (BERT), <s>/</s> (XLM-R) or bos/eos."""
    start = tokenizer.cls_token_id if tokenizer.cls_token_id is not None else tokenizer.bos_token_id
    end = tokenizer.sep_token_id if tokenizer.sep_token_id is not None else tokenizer.eos_token_id
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    if start is None or end is None:
        raise ValueError("the bridge tokenizer has neither cls/sep nor bos/eos tokens to frame a text")
    rows = [[start] + ids[: max_length - 2] + [end]
            for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]
    ids = torch.full((len(rows), max_length), pad, dtype=torch.long)
    mask = torch.zeros((len(rows), max_length), dtype=torch.long)
    for i, row in enumerate(rows):
        ids[i, : len(row)] = torch.tensor(row)
        mask[i, : len(row)] = 1
    return ids, mask


def _visual_input(examples: list[Example]) -> dict[str, torch.Tensor]:
    """The batch's pixels (`images`) or, read from a feature cache, its encoder tokens (`image_tokens`)."""
    if examples[0].image_tokens is not None:
        return {"image_tokens": torch.stack([e.image_tokens for e in examples])}
    return {"images": torch.stack([e.image for e in examples])}


class Collator:
    """Builds the `ModelInputs` the model and its objective read.

    causal:  input_ids = [prompt, target, eos] right-padded; labels = -100 on prompt and padding.
    seq2seq: input_ids = prompt (encoder side); labels = [target, eos] (decoder side).
    prompt_ids: the prompt alone (the MoE router reads its embeddings); caption_ids: the caption, for the
    contrastive loss; bridge_ids: the caption in the Q-Former's tokenizer, when it has a text branch.
    The visual prefix is added by the model, which also masks its positions out of the labels.
    """

    def __init__(self, tokenizer, kind: str, max_length: int, bridge_tokenizer=None, bridge_max_length: int = 32):
        self.tokenizer = tokenizer
        self.kind = kind
        self.max_length = max_length
        self.pad_id = tokenizer.pad_token_id
        self.eos_id = tokenizer.eos_token_id
        self.bridge_tokenizer = bridge_tokenizer
        self.bridge_max_length = bridge_max_length

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

    def lengths(self, examples: list[Example]) -> list[int]:
        """The LM tokens each example takes (prompt + target), for length-grouped batching."""
        pairs = self.encode_many([e.prompt for e in examples], [e.target for e in examples])
        return [len(prompt) + len(target) for prompt, target in pairs]

    def encode(self, prompt: str, target: str) -> tuple[list[int], list[int]]:
        return self.encode_many([prompt], [target])[0]

    def text_batch(self, prompts: list[str], targets: list[str]) -> dict[str, torch.Tensor]:
        ids, labels, masks, prompt_rows = [], [], [], []
        for prompt_ids, target_ids in self.encode_many(prompts, targets):
            prompt_rows.append(prompt_ids)
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
            "prompt_ids": _pad(prompt_rows, self.pad_id),
            "prompt_mask": _pad([[1] * len(r) for r in prompt_rows], 0),
        }

    def __call__(self, examples: list[Example]) -> ModelInputs:
        text = self.text_batch([e.prompt for e in examples], [e.target for e in examples])
        captions = [self.tokenizer(e.caption, add_special_tokens=False)["input_ids"][: self.max_length] or [self.eos_id]
                    for e in examples]
        bridge = {}
        if self.bridge_tokenizer is not None:
            bridge["bridge_ids"], bridge["bridge_mask"] = bridge_text_ids(
                self.bridge_tokenizer, [e.caption for e in examples], self.bridge_max_length)
        return ModelInputs(
            **text,
            caption_ids=_pad(captions, self.pad_id),
            caption_mask=_pad([[1] * len(c) for c in captions], 0),
            image_ids=torch.tensor([e.image_id for e in examples], dtype=torch.long),
            **_visual_input(examples),
            langs=[e.lang for e in examples],
            tasks=[e.task for e in examples],
            **bridge,
        )
