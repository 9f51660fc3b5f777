"""The batch a plan is made for: every example at the longest the collator lets through (`Workload`), synthesised as
the `ModelInputs` the objective reads (`synthetic_inputs`), on the meta device for a trace or on the CPU for a
measured step."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from vlm.data.batch import IGNORE_INDEX, ModelInputs
from vlm.model.vlm import VisionLLM

PROMPT_TOKENS = 16  # an instruction or a short question in the LLM's tokenizer; the target gets the rest


@dataclass(frozen=True)
class Workload:
    """Token counts of one example. causal: the LM reads visual + prompt + target; seq2seq: the encoder reads
    visual + prompt, the decoder the target. The caption (contrastive loss) is as long as the target."""

    image_size: int  # pixels, the encoder's own input size (its preprocess resizes to it)
    encoder_tokens: tuple[int, int]  # (N, D) of the frozen encoder's output: what a feature cache stores per image
    visual_tokens: int  # what the bridge puts in front of the LM input
    prompt_tokens: int
    target_tokens: int
    bridge_text_tokens: int  # the Q-Former text branch's caption (bridge.max_text_length), 0 without one
    seq2seq: bool

    @classmethod
    def of(cls, model: VisionLLM, prompt_tokens: int = PROMPT_TOKENS) -> Workload:
        """llm.max_length split into prompt and target as the collator truncates (the target is kept first)."""
        cfg = model.cfg
        prompt = max(1, min(prompt_tokens, cfg.llm.max_length - 1))
        image_size = _image_size(model)
        with torch.no_grad():  # the frozen encoder's token count, from one image (no data on the meta device)
            tokens = model.vision(torch.zeros(1, 3, image_size, image_size, device=model.device))
        visual = cfg.bridge.num_queries if cfg.bridge.type == "qformer" else tokens.shape[1]
        return cls(image_size=image_size, encoder_tokens=tuple(tokens.shape[1:]), visual_tokens=visual,
                   prompt_tokens=prompt, target_tokens=cfg.llm.max_length - prompt,
                   bridge_text_tokens=cfg.bridge.max_text_length if model.has_text_branch else 0,
                   seq2seq=cfg.llm.kind == "seq2seq")

    @property
    def lm_tokens(self) -> int:
        """Positions the LM runs over (encoder + decoder for seq2seq)."""
        return self.visual_tokens + self.prompt_tokens + self.target_tokens


def _image_size(model: VisionLLM) -> int:
    size = model.vision.visual.image_size
    return int(size[0] if isinstance(size, (tuple, list)) else size)


def synthetic_inputs(model: VisionLLM, workload: Workload, batch_size: int,
                     device: str | torch.device = "meta") -> ModelInputs:
    """A batch of `batch_size` distinct images at `workload`'s lengths, no padding, random token ids."""
    cfg, b, device = model.cfg, batch_size, torch.device(device)
    vocab = model.llm.model.get_input_embeddings().num_embeddings
    prompt, target = workload.prompt_tokens, workload.target_tokens

    def ids(width: int, high: int = vocab) -> torch.Tensor:
        return torch.randint(0, high, (b, width), device=device)

    def ones(width: int) -> torch.Tensor:
        return torch.ones(b, width, dtype=torch.long, device=device)

    prompt_ids, target_ids = ids(prompt), ids(target)
    if workload.seq2seq:
        input_ids, labels = prompt_ids, target_ids
    else:
        input_ids = torch.cat([prompt_ids, target_ids], dim=1)
        labels = torch.cat([torch.full_like(prompt_ids, IGNORE_INDEX), target_ids], dim=1)
    bridge = {}
    if workload.bridge_text_tokens:
        text_vocab = model.bridge.dec_token_id  # the [DEC] row after the tokenizer's vocabulary
        bridge = {"bridge_ids": ids(workload.bridge_text_tokens, text_vocab),
                  "bridge_mask": ones(workload.bridge_text_tokens)}
    return ModelInputs(
        input_ids=input_ids, attention_mask=ones(input_ids.shape[1]), labels=labels,
        prompt_ids=prompt_ids, prompt_mask=ones(prompt), caption_ids=target_ids, caption_mask=ones(target),
        image_ids=torch.arange(b, device=device),
        langs=[cfg.data.languages[i % len(cfg.data.languages)] for i in range(b)],
        tasks=[cfg.data.tasks[i % len(cfg.data.tasks)] for i in range(b)],
        images=torch.randn(b, 3, workload.image_size, workload.image_size, device=device), **bridge)
