"""Captioning metrics: CIDEr-D, BLEU-4, chrF, language fidelity, and the majority-caption baseline.

`caption_scores` is the entry point: CIDEr-D, BLEU and chrF of one language on one tokenisation, with the
tokenizer's name recorded beside them. CIDEr and BLEU are reported x100 (the "CIDEr 80" convention of papers),
chrF 0-100, like every other score in eval/. Tokenisation is ours (eval.text_tokenizers: NFC, casefold,
punctuation stripped, characters for zh/ja/th, whitespace words otherwise), identical for references and
hypotheses, and never Java's PTBTokenizer, which leaves zh/ja/th sentences as one giant token. CIDEr-D is our
pure-Python eval.cider; BLEU and chrF are sacrebleu's, fed the same tokens.
"""

from collections import Counter

import sacrebleu

from data_prep.language_id import in_language
from eval.cider import corpus_cider_d
from eval.text_tokenizers import resolve_tokenizer, tokenize

_References = dict[str, list[str]]
_Hypotheses = dict[str, str]


def tokenize_for_metric(text: str, lang: str, tokenizer: str | None = None) -> list[str]:
    """Tokens of `text` for the captioning metrics: `tokenizer` by name, or `lang`'s default
    (eval.text_tokenizers.metric_tokenizer) when None or ""."""
    return tokenize(text, resolve_tokenizer(lang, tokenizer))


def _check_ids(references: _References, hypotheses: _Hypotheses) -> None:
    if not references:
        raise ValueError("references is empty")
    if references.keys() != hypotheses.keys():
        only_ref = sorted(references.keys() - hypotheses.keys())[:3]
        only_hyp = sorted(hypotheses.keys() - references.keys())[:3]
        raise ValueError(f"ids differ: only in references {only_ref}, only in hypotheses {only_hyp}")
    for key, refs in references.items():
        if isinstance(refs, str) or not refs:
            raise ValueError(f"references[{key!r}] must be a non-empty list of strings")


def _tokenized(
    references: _References, hypotheses: _Hypotheses, lang: str, tokenizer: str | None
) -> tuple[str, dict[str, list[str]], dict[str, str]]:
    """The tokenizer name, then references and hypotheses as space-joined tokens, in the order of references."""
    _check_ids(references, hypotheses)
    name = resolve_tokenizer(lang, tokenizer)
    refs = {key: [" ".join(tokenize(r, name)) for r in rs] for key, rs in references.items()}
    hyps = {key: " ".join(tokenize(hypotheses[key], name)) for key in references}
    return name, refs, hyps


def _cider(refs: dict[str, list[str]], hyps: dict[str, str]) -> tuple[float, dict[str, float]]:
    score, per_id = corpus_cider_d(refs, hyps)
    return 100.0 * score, {key: 100.0 * s for key, s in per_id.items()}


def _streams(refs: dict[str, list[str]]) -> list[list[str | None]]:
    # sacrebleu wants reference *streams* of equal length; ids with fewer references are padded with None,
    # which sacrebleu documents as "no reference for this segment".
    n_streams = max(len(rs) for rs in refs.values())
    return [[rs[i] if i < len(rs) else None for rs in refs.values()] for i in range(n_streams)]


def _bleu(refs: dict[str, list[str]], hyps: dict[str, str]) -> float:
    # tokenize="none": the text is already our tokens joined by spaces (and already casefolded).
    return float(sacrebleu.corpus_bleu(list(hyps.values()), _streams(refs), tokenize="none").score)


def _chrf(refs: dict[str, list[str]], hyps: dict[str, str]) -> float:
    # chrF (character 6-grams, beta 2, no word n-grams); it ignores whitespace, so the tokenizer acts only
    # through normalisation and punctuation stripping.
    return float(sacrebleu.corpus_chrf(list(hyps.values()), _streams(refs)).score)


def cider_d(
    references: _References, hypotheses: _Hypotheses, lang: str, tokenizer: str | None = None
) -> tuple[float, dict[str, float]]:
    """Corpus CIDEr-D x100 and per-id scores x100 (eval.cider, equal to pycocoevalcap's Cider) on the tokens of
    `tokenizer` (default: `lang`'s).

    IDF comes from the references being scored, so the score depends on the set: compute it per
    language, on the full eval set, never on a pooled multilingual one. Fewer than 2 images: ValueError.
    """
    _, refs, hyps = _tokenized(references, hypotheses, lang, tokenizer)
    return _cider(refs, hyps)


def bleu(references: _References, hypotheses: _Hypotheses, lang: str, tokenizer: str | None = None) -> float:
    """Corpus BLEU-4 (0-100, sacrebleu's defaults: exponential smoothing, brevity penalty on the closest
    reference length) on the tokens of `tokenizer` (default: `lang`'s), passed with tokenize="none".
    Ids may have different numbers of references."""
    _, refs, hyps = _tokenized(references, hypotheses, lang, tokenizer)
    return _bleu(refs, hyps)


def chrf(references: _References, hypotheses: _Hypotheses, lang: str, tokenizer: str | None = None) -> float:
    """Corpus chrF (0-100): sacrebleu's chrF (character n-grams up to 6, beta 2), not chrF++ (which adds word
    uni- and bigrams: on character-tokenised zh/ja/th those would re-count character n-grams). chrF drops
    whitespace, so of the tokenizer only its normalisation (NFC, casefold, punctuation stripped) matters;
    the name is taken for symmetry with `bleu` and `cider_d`."""
    _, refs, hyps = _tokenized(references, hypotheses, lang, tokenizer)
    return _chrf(refs, hyps)


def caption_scores(
    references: _References, hypotheses: _Hypotheses, lang: str, tokenizer: str | None = None
) -> dict:
    """CIDEr-D (x100), BLEU-4 and chrF (0-100) of `hypotheses` against `references` (ids -> captions) in
    `lang`, all on one tokenisation: `tokenizer` by name (eval.text_tokenizers.TOKENIZERS; None or "" means
    `lang`'s default, an unknown name raises ValueError). Returns {"cider", "bleu", "chrf", "tokenizer": name,
    "n_images"}. Needs at least 2 images (CIDEr-D's IDF is 0 for one)."""
    name, refs, hyps = _tokenized(references, hypotheses, lang, tokenizer)
    return {
        "cider": _cider(refs, hyps)[0],
        "bleu": _bleu(refs, hyps),
        "chrf": _chrf(refs, hyps),
        "tokenizer": name,
        "n_images": len(refs),
    }


def language_fidelity(hypotheses: list[str], lang: str) -> float:
    """Percent of hypotheses in the requested language (`in_language`): catches English where German was
    asked for, which a script check alone cannot."""
    if not hypotheses:
        raise ValueError("language_fidelity needs at least one hypothesis")
    return 100.0 * sum(in_language(h, lang) for h in hypotheses) / len(hypotheses)


def majority_caption(train_captions: list[str]) -> str:
    """The most frequent training caption (ties: first seen), predicted for every image as the
    captioning baseline. Whitespace is collapsed before counting."""
    if not train_captions:
        raise ValueError("majority_caption needs at least one training caption")
    counts = Counter(" ".join(c.split()) for c in train_captions)
    return counts.most_common(1)[0][0]
