"""Length-grouped batching (`data.group_by_length`): the examples of a window of N batches are sorted by their
token length and cut into N batches of neighbours, whose order is then shuffled. A batch is padded to its longest
row, so on captions spread over 8-64 tokens a random batch pads most rows to near the maximum, a grouped one
barely at all. The loss of each example is the same either way (padding is masked); what changes is which
examples share a step, only within a window.

transformers' Trainer does the same (`group_by_length`, megabatches of 50 batches) over a map-style dataset; ours
runs on the stream, window by window, so it keeps the stream's determinism and its resume (vlm/data/stream.py).
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from typing import TypeVar

T = TypeVar("T")


def group_by_length(items: Sequence[T], lengths: Sequence[int], batch_size: int, rng: random.Random) -> list[list[T]]:
    """`items` (a window) as batches of `batch_size` items of similar length, in a shuffled order; a stable sort, so
    equal lengths keep the stream's order. A last, short batch holds what is left."""
    if len(items) != len(lengths):
        raise ValueError(f"group_by_length: {len(items)} items but {len(lengths)} lengths")
    order = sorted(range(len(items)), key=lambda i: lengths[i])
    batches = [[items[i] for i in order[start: start + batch_size]] for start in range(0, len(order), batch_size)]
    rng.shuffle(batches)
    return batches
