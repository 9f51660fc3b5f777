"""Per-language validation losses and the weights that up-weight the lagging languages (loss.lagging_boost).

A language lags when its validation loss has fallen less than the others' since training began: the trainer
validates once before the first step (the baseline) and, at every validation after it, weighs each language by
its progress r_L = loss_L / baseline_L against the mean progress. Progress, not the loss itself: per-token losses
differ between languages for reasons other than how well they are learnt (a script the tokenizer splits into
characters makes many easy tokens: the demo's Chinese has the lowest per-token loss and the weakest retrieval),
while the validation examples are the same at every validation, so the ratio cancels what a language's tokens
and tasks make of its loss. Clipping bounds how far any language is pushed, and since every weighted term is a
weighted mean, only the ratios between the weights matter.
"""

from __future__ import annotations

import torch


def language_losses(languages: list[str], table: torch.Tensor) -> dict[str, float]:
    """The mean token loss per language from (len(languages), 2) sums and counts; languages that had no
    validation tokens are left out."""
    return {lang: float(total / count) for lang, (total, count) in zip(languages, table.tolist()) if count > 0}


def lagging_weights(losses: dict[str, float], baseline: dict[str, float], boost: float,
                    max_weight: float) -> dict[str, float]:
    """w_L = (r_L / mean r)^boost with r_L = losses[L] / baseline[L], clipped to [1 / max_weight, max_weight], for
    the languages both measure (a positive baseline)."""
    progress = {lang: loss / baseline[lang] for lang, loss in losses.items() if baseline.get(lang, 0) > 0}
    if not progress:
        return {}
    mean = sum(progress.values()) / len(progress)
    return {lang: min(max((r / mean) ** boost, 1.0 / max_weight), max_weight) for lang, r in progress.items()}
