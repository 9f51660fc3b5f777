"""What travels from the data stream to the model: `ModelInputs` (tensors the network and its objective read)
and `StreamTelemetry` (where the stream is and what it skipped), kept apart in a `Batch`.

A batch carries either pixels (`images`, encoded by the frozen tower on the fly) or the tower's output tokens
(`image_tokens`, e.g. read from a feature cache); the model takes whichever is there.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field

import torch

IGNORE_INDEX = -100  # the label of positions no loss reads (prompt, padding, visual prefix)


@dataclass
class ModelInputs:
    """One batch of examples, collated. causal: input_ids = [prompt, target, eos] with labels -100 on the prompt
    and padding; seq2seq: input_ids = prompt (encoder), labels = [target, eos] (decoder). prompt_ids: the prompt
    alone (the MoE router reads it); caption_ids: a caption in the example's language (contrastive loss);
    bridge_ids: that caption in the Q-Former's tokenizer, when it has a text branch."""

    input_ids: torch.Tensor  # (B, L)
    attention_mask: torch.Tensor  # (B, L)
    labels: torch.Tensor  # (B, L) causal, (B, T) seq2seq
    prompt_ids: torch.Tensor  # (B, P)
    prompt_mask: torch.Tensor  # (B, P)
    caption_ids: torch.Tensor  # (B, C)
    caption_mask: torch.Tensor  # (B, C)
    image_ids: torch.Tensor  # (B,) long; equal ids mark the same image (ITC/ITM positives), -1 unknown
    langs: list[str]  # the language each example teaches
    tasks: list[str]  # caption | vqa | match
    images: torch.Tensor | None = None  # (B, 3, H, W) transformed pixels
    image_tokens: torch.Tensor | None = None  # (B, N, D) the frozen encoder's tokens, instead of pixels
    bridge_ids: torch.Tensor | None = None  # (B, max_text_length)
    bridge_mask: torch.Tensor | None = None

    def __post_init__(self):
        if (self.images is None) == (self.image_tokens is None):
            raise ValueError("ModelInputs needs exactly one of images (pixels) and image_tokens (encoder output)")

    def __len__(self) -> int:
        return self.input_ids.shape[0]

    def to(self, device: torch.device) -> ModelInputs:
        moved = {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}
        return ModelInputs(**{name: value.to(device, non_blocking=True) if isinstance(value, torch.Tensor) else value
                              for name, value in moved.items()})


@dataclass
class StreamTelemetry:
    """Where one loader worker's stream stands after this batch, and what it skipped since its previous batch."""

    role: int  # the worker role that produced the batch (see TrainStream)
    consumed: int  # raw samples this role has read so far, bad ones included
    epoch: int  # the pass over its shards this role is in
    bad_samples: dict[str, int] = field(default_factory=dict)  # reason -> samples skipped since the last batch
    rejected: int = 0  # samples language sampling turned away since the last batch
    # With data.group_by_length, batches come a window at a time: `consumed` is then where this batch's window
    # starts, and `window_batches` how many of the window's batches have been handed out (0: the window is done).
    window_batches: int = 0


@dataclass
class Batch:
    inputs: ModelInputs
    telemetry: StreamTelemetry
