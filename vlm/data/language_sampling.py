"""Temperature sampling of the language each training sample teaches (data.language_alpha)."""

from __future__ import annotations

import logging
import random
from collections.abc import Mapping

from vlm.config import DataConfig
from vlm.data.shards import manifest_language_counts

log = logging.getLogger(__name__)


class LanguageSampler:
    """Temperature sampling of the language a sample teaches, towards the target mix q_L ∝ n_L^alpha, where
    n_L counts the samples holding language L (alpha 1: the data's natural mix; 0: uniform).

    With p_L = n_L / sum n and weights w_L = q_L / p_L, a sample whose available languages are A is kept with
    probability min(1, sum_{L in A} w_L / max_L w_L) and then teaches L in A with probability ∝ w_L. Samples
    holding one language each (mBLIP-style data) are thus kept in proportion to w_L and reach q exactly;
    samples holding every language are always kept and teach L ∝ q_L. Without counts (`counts=None`) every
    sample is taken to hold every language: a uniform choice among a sample's languages, nothing rejected.
    """

    def __init__(self, languages: list[str], counts: Mapping[str, int] | None, alpha: float):
        n = {lang: (1 if counts is None else int(counts.get(lang, 0))) for lang in languages}
        present = {lang: c for lang, c in n.items() if c > 0}
        if not present:
            raise ValueError(f"data.languages {', '.join(languages)}: the manifest counts no training samples in "
                             f"any of them")
        total = sum(present.values())
        powered = {lang: c**alpha for lang, c in present.items()}
        norm = sum(powered.values())
        self.natural = {lang: present.get(lang, 0) / total for lang in languages}
        self.target = {lang: powered.get(lang, 0.0) / norm for lang in languages}
        self.weights = {lang: self.target[lang] / self.natural[lang] for lang in present}
        self.max_weight = max(self.weights.values())
        self.missing = [lang for lang in languages if lang not in present]

    @property
    def single_language_acceptance(self) -> float:
        """The share of samples kept when every sample holds one language: sum_L p_L w_L / max w = 1 / max w."""
        return 1.0 / self.max_weight

    def choose(self, available: list[str], rng: random.Random) -> str | None:
        """The language this sample teaches, or None when it is rejected."""
        weights = [self.weights.get(lang, 0.0) for lang in available]
        total = sum(weights)
        if total <= 0:
            return None
        keep = total / self.max_weight
        if keep < 1.0 and rng.random() >= keep:
            return None
        if min(weights) == max(weights):  # the same draw as a plain uniform choice
            return rng.choice(available)
        return rng.choices(available, weights=weights)[0]


def language_sampler(cfg: DataConfig, counts: Mapping[str, int] | None = None) -> LanguageSampler:
    """The training stream's language sampler: counts from the manifests of data.train unless given."""
    if counts is None:
        counts = manifest_language_counts(cfg.train, "train")
        if counts is None:
            log.warning("data.train has no per-language sample counts (manifest.json counts.train.languages); "
                        "language sampling assumes every sample holds every language (data.language_alpha "
                        "has no effect)")
    sampler = LanguageSampler(cfg.languages, counts, cfg.language_alpha)
    if sampler.missing:
        log.warning("data.languages %s: no training samples in the manifest counts", ", ".join(sampler.missing))
    if counts is not None:
        log.info("language sampling (alpha %s): natural mix %s, target mix %s; single-language samples "
                 "would be kept at %.0f%%", cfg.language_alpha, _mix(sampler.natural), _mix(sampler.target),
                 100 * sampler.single_language_acceptance)
    return sampler


def _mix(shares: dict[str, float]) -> str:
    return " ".join(f"{lang} {share:.2f}" for lang, share in shares.items())
