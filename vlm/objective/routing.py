"""Per-language MoE routing statistics gathered during training (the `routing` rows of metrics.jsonl)."""

from __future__ import annotations

import torch

from vlm import distributed


class RoutingStats:
    """Per-language sums of MoE routing weights seen in training, emptied at every log step."""

    def __init__(self):
        self.sums: dict[str, torch.Tensor] = {}
        self.counts: dict[str, int] = {}

    def add(self, langs: list[str], probs: torch.Tensor) -> None:
        probs = probs.detach().float().cpu()
        for lang, row in zip(langs, probs):
            self.sums[lang] = self.sums.get(lang, torch.zeros_like(row)) + row
            self.counts[lang] = self.counts.get(lang, 0) + 1

    def pop(self, languages: list[str], num_experts: int) -> dict[str, list[float]]:
        """Mean weight per expert and language over every rank (a collective: call it on all ranks)."""
        table = torch.zeros(len(languages), num_experts + 1, dtype=torch.float64)
        for i, lang in enumerate(languages):
            if lang in self.sums:
                table[i, :num_experts] = self.sums[lang].double()
                table[i, num_experts] = self.counts[lang]
        table = distributed.all_reduce_sum(table)
        self.sums, self.counts = {}, {}
        return {lang: (table[i, :num_experts] / table[i, num_experts]).tolist()
                for i, lang in enumerate(languages) if table[i, num_experts] > 0}
