"""CIDEr-D (Vedantam, Zitnick and Parikh 2015, the "-D" variant the COCO caption server reports), in plain Python.

Why our own: the reference implementation, pycocoevalcap, is a ~100 MB wheel (it ships the Stanford CoreNLP,
METEOR and SPICE jars for its Java tokenizer and metrics) and has been unmaintained since 2020, while its CIDEr
is a page of pure Python. This module gives the same numbers with no Java and no jars at runtime;
pycocoevalcap is only a test dependency, and tests/test_captioning.py checks that we equal its `Cider` within
1e-6, corpus and per image.

What is computed, pycocoevalcap's quirks included (its cider/cider_scorer.py):
- n-grams of order 1..n (n = 4) over tokens; a string is split on whitespace, as pycocoevalcap does, so the
  caller's tokenisation decides the n-grams (eval.text_tokenizers for the captioning metrics).
- Document frequency df(g): the number of images whose references contain g, counting an image once however
  many of its references have g. idf(g) = log(#images) - log(max(1, df(g))): an n-gram no reference has gets
  the full log(#images), and with a single image every weight is 0, hence the >= 2 images guard here.
- Per order, tf-idf vectors h (hypothesis) and r (one reference); similarity sum_g min(h_g, r_g) * r_g /
  (|h| |r|): the hypothesis weight is clipped, the norms are not. 0 when either vector is all zeros.
- A Gaussian length penalty exp(-(len_h - len_r)^2 / (2 sigma^2)), sigma = 6, where pycocoevalcap's "length"
  is the number of bigrams of the sentence, max(tokens - 1, 0), not its number of tokens. Copied as is. It
  only changes the difference of lengths when one sentence is empty, whose similarity is 0 anyway, so it
  never moves a score; it is kept so the code reads like the definition it must match.
- Per image: the mean over orders of the per-reference similarities averaged over the references, times 10.
  Corpus: the mean over images. Scale as pycocoevalcap (the "CIDEr 80" of papers is 0.8 here).
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass

Sentence = str | Sequence[str]  # a whitespace-tokenised string, or its list of tokens
NGram = tuple[str, ...]


def _tokens(sentence: Sentence, where: str) -> tuple[str, ...]:
    if isinstance(sentence, str):
        return tuple(sentence.split())
    if isinstance(sentence, Sequence) and all(isinstance(token, str) for token in sentence):
        if any(not token or token != "".join(token.split()) for token in sentence):
            # e.g. pycocoevalcap's one-sentence list ["a dog runs"], which would read as one token here
            raise ValueError(f"{where}: tokens must be non-empty and free of whitespace, got {list(sentence)!r}")
        return tuple(sentence)
    raise TypeError(f"{where} must be a string or a sequence of token strings, got {type(sentence).__name__}")


def _ngram_counts(tokens: tuple[str, ...], n: int) -> Counter[NGram]:
    return Counter(tokens[i:i + k] for k in range(1, n + 1) for i in range(len(tokens) - k + 1))


@dataclass(frozen=True)
class _Cooked:
    """One sentence: its n-gram counts and pycocoevalcap's length (its number of bigrams)."""

    counts: Counter[NGram]
    length: int


def _cook(sentence: Sentence, n: int, where: str) -> _Cooked:
    tokens = _tokens(sentence, where)
    return _Cooked(_ngram_counts(tokens, n), max(len(tokens) - 1, 0) if n >= 2 else 0)


def _check(references: Mapping[str, Sequence[Sentence]], hypotheses: Mapping[str, Sentence]) -> None:
    if references.keys() != hypotheses.keys():
        only_ref = sorted(references.keys() - hypotheses.keys())[:3]
        only_hyp = sorted(hypotheses.keys() - references.keys())[:3]
        raise ValueError(f"ids differ: only in references {only_ref}, only in hypotheses {only_hyp}")
    for key, refs in references.items():
        if isinstance(refs, str) or not isinstance(refs, Sequence) or not refs:
            raise ValueError(f"references[{key!r}] must be a non-empty list of sentences")
    if len(references) < 2:
        # idf = log(#images) - log(df) is identically 0 for one image: every score would read 0.
        raise ValueError(f"CIDEr-D needs at least 2 images, got {len(references)}")


def corpus_cider_d(
    references: Mapping[str, Sequence[Sentence]],
    hypotheses: Mapping[str, Sentence],
    *,
    n: int = 4,
    sigma: float = 6.0,
) -> tuple[float, dict[str, float]]:
    """CIDEr-D of tokenised hypotheses (one per id) against tokenised references (a non-empty list per id):
    the corpus score and the per-id scores, on pycocoevalcap's scale (0 to 10 per image, not x100).

    IDF comes from the references being scored, so the score depends on the whole set: score each language on
    its full eval set, never on a pooled multilingual one or a subsample meant to stand for the full one."""
    _check(references, hypotheses)
    refs = {key: [_cook(r, n, f"references[{key!r}][{i}]") for i, r in enumerate(rs)] for key, rs in references.items()}
    hyps = {key: _cook(hypotheses[key], n, f"hypotheses[{key!r}]") for key in references}

    document_frequency: Counter[NGram] = Counter()
    for cooked in refs.values():
        document_frequency.update(set().union(*(c.counts for c in cooked)))
    log_images = math.log(len(references))

    def tfidf(cooked: _Cooked) -> tuple[list[dict[NGram, float]], list[float]]:
        weights: list[dict[NGram, float]] = [{} for _ in range(n)]
        squares = [0.0] * n
        for gram, tf in cooked.counts.items():
            weight = tf * (log_images - math.log(max(1, document_frequency[gram])))
            weights[len(gram) - 1][gram] = weight
            squares[len(gram) - 1] += weight * weight
        return weights, [math.sqrt(s) for s in squares]

    scores: dict[str, float] = {}
    for key, hyp in hyps.items():
        hyp_weights, hyp_norms = tfidf(hyp)
        total = 0.0  # similarity summed over orders and references
        for ref in refs[key]:
            ref_weights, ref_norms = tfidf(ref)
            penalty = math.exp(-((hyp.length - ref.length) ** 2) / (2 * sigma**2))
            for order in range(n):
                norms = hyp_norms[order] * ref_norms[order]
                if norms == 0:
                    continue
                ref_order = ref_weights[order]
                dot = sum(min(w, ref_order.get(g, 0.0)) * ref_order.get(g, 0.0) for g, w in hyp_weights[order].items())
                total += dot / norms * penalty
        scores[key] = 10.0 * total / (n * len(refs[key]))
    return math.fsum(scores.values()) / len(scores), scores
