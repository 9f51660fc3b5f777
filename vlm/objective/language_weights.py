"""Per-language validation losses and the weights that up-weight the lagging languages (loss.lagging_boost).

Per-token losses differ between languages for reasons other than how well they are learnt (a tokenizer that
splits a script into bytes makes many easy tokens), so the boost reads a language's loss against the mean of the
others at the same validation: it moves weight towards the languages that stay behind as training goes on, and a
language that is simply costlier per token starts with a weight it keeps. Clipping bounds how far any language is
pushed, and since every weighted term is a weighted mean, only the ratios between the weights matter.
"""

from __future__ import annotations

import torch


def language_losses(languages: list[str], table: torch.Tensor) -> dict[str, float]:
    """The mean token loss per language from (len(languages), 2) sums and counts; languages that had no
    validation tokens are left out."""
    return {lang: float(total / count) for lang, (total, count) in zip(languages, table.tolist()) if count > 0}


def lagging_weights(losses: dict[str, float], boost: float, max_weight: float) -> dict[str, float]:
    """w_L = (loss_L / mean loss)^boost, clipped to [1 / max_weight, max_weight]."""
    if not losses:
        return {}
    mean = sum(losses.values()) / len(losses)
    return {lang: min(max((loss / mean) ** boost, 1.0 / max_weight), max_weight) for lang, loss in losses.items()}
