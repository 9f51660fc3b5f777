"""Quality filters for machine-translated text. Each check returns a reason string when a translation
fails, else None; `check_translation` runs them in order and returns the first reason.

mBLIP filters nothing but its VQA labels; a seq2seq MT model does fail in known ways (empty output, the
source copied back, the wrong language or script, n-gram loops, truncation or hallucinated run-ons), and
each failure is cheap to catch. Back-translation chrF (optional, twice the MT cost) is applied by the
translation job, which owns the translator.
"""

from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

from data_prep.language_id import in_language
from data_prep.languages import NO_SPACE_LANGUAGES, get_language, matches_language_script, script_of

# Characters of a translation per character of English, roughly (Flores-200 dev set averages). Languages
# not listed are taken as 1.0; `length_ratio_tolerance` makes the accepted band wide around it.
TYPICAL_LENGTH_RATIO = {
    "zh": 0.3, "ja": 0.35, "ko": 0.45, "th": 0.9, "ar": 0.85, "fa": 0.9, "he": 0.8, "ur": 0.95,
    "de": 1.15, "fr": 1.15, "es": 1.1, "it": 1.1, "pt": 1.05, "nl": 1.1, "ru": 1.05, "uk": 1.0,
    "el": 1.15, "fi": 1.05, "vi": 1.1, "id": 1.1, "ta": 1.3, "ml": 1.3, "te": 1.1, "kn": 1.2, "si": 1.05,
}


@dataclass(frozen=True)  # hashable: check_translation memoises on it
class FilterConfig:
    """Thresholds of the translation filters (config section `prep.filters`); each check can be switched off."""

    copy: bool = True  # drop an output equal to its source (casefolded), for sources of short_text chars or more
    script: bool = True  # drop an output whose dominant script is not the language's
    # An n-gram (n = 1..3) repeated back to back more than this many times is a decoding loop; 0: off.
    max_repeats: int = 4
    # Output/source characters must lie within [r / t, r * t] of the language's TYPICAL_LENGTH_RATIO r; 0: off.
    length_ratio_tolerance: float = 3.0
    # fastText lid.176 must rank the target language in its top 3 (unless it is unsure); languages lid.176
    # does not know are judged by script alone.
    language_id: bool = True
    # Texts shorter than this (answers like "red", "2", "Paris") skip the copy and LID checks and the lower
    # length bound, whose statistics mean nothing on a word or two.
    short_text: int = 16
    # > 0: translate kept outputs back to the source language and drop those whose chrF against the source
    # is below this (0-100). Doubles the translation cost; needs a backend that translates into the source.
    back_translation_chrf: float = 0.0


def validate_filters(cfg: FilterConfig, key: str = "prep.filters") -> None:
    checks = (
        (cfg.max_repeats >= 0, "max_repeats", "must be >= 0"),
        (cfg.length_ratio_tolerance == 0 or cfg.length_ratio_tolerance >= 1, "length_ratio_tolerance",
         "must be 0 (off) or >= 1"),
        (cfg.short_text >= 0, "short_text", "must be >= 0"),
        (0 <= cfg.back_translation_chrf <= 100, "back_translation_chrf", "must be in [0, 100]"),
    )
    for ok, name, message in checks:
        if not ok:
            raise ValueError(f"'{key}.{name}' {message}")


def _casefolded(text: str) -> str:
    return " ".join(text.casefold().split())


def copied(src: str, out: str, cfg: FilterConfig) -> str | None:
    if cfg.copy and len(src.strip()) >= cfg.short_text and _casefolded(src) == _casefolded(out):
        return "copy"
    return None


def wrong_script(src: str, out: str, tgt: str) -> str | None:
    # Text without letters ("2", "3.5 m") is fine when its source had none either.
    if script_of(out) is None and script_of(src) is None:
        return None
    return None if matches_language_script(out, tgt) else "wrong_script"


def _tokens(text: str, tgt: str) -> list[str]:
    return list(text.replace(" ", "")) if tgt in NO_SPACE_LANGUAGES else text.split()


def repetition(out: str, tgt: str, max_repeats: int) -> str | None:
    """Some n-gram (n = 1..3) repeated back to back more than `max_repeats` times ("a a a a a", "le chat le
    chat le chat ...")."""
    if not max_repeats:
        return None
    tokens = _tokens(out, tgt)
    for n in (1, 2, 3):
        for start in range(n):
            grams = [tuple(tokens[i : i + n]) for i in range(start, len(tokens) - n + 1, n)]
            run = 1
            for previous, gram in zip(grams, grams[1:]):
                run = run + 1 if gram == previous else 1
                if run > max_repeats:
                    return "repetition"
    return None


def length_ratio(src: str, out: str, tgt: str, tolerance: float, short_text: int) -> str | None:
    """Output/source characters outside [r / t, r * t]. A short source ("red", "2") only has the upper bound,
    measured against `short_text` characters: a sentence for a word is still a run-on, a short word is not."""
    if not tolerance:
        return None
    typical = TYPICAL_LENGTH_RATIO.get(tgt, 1.0)
    n_src, n_out = len(src.strip()), len(out.strip())
    if n_out > typical * tolerance * max(n_src, short_text):
        return "length_ratio"
    if n_src >= short_text and n_out < typical / tolerance * n_src:
        return "length_ratio"
    return None


def language_id(out: str, tgt: str) -> str | None:
    return None if in_language(out, tgt) else "language_id"


@lru_cache(maxsize=1 << 18)  # short answers and questions recur in every shard; a verdict never changes
def check_translation(src: str, out: str | None, tgt: str, cfg: FilterConfig | None = None) -> str | None:
    """The first failing filter's reason, or None when the translation is kept. None as `out` means the
    translator could not translate the text ("untranslatable")."""
    cfg = cfg or FilterConfig()
    get_language(tgt)  # an unknown code fails loudly here, not as a silent "wrong_script"
    if out is None:
        return "untranslatable"
    if not out.strip():
        return "empty"
    long_enough = len(src.strip()) >= cfg.short_text
    return (
        copied(src, out, cfg)
        or (wrong_script(src, out, tgt) if cfg.script else None)
        or repetition(out, tgt, cfg.max_repeats)
        or length_ratio(src, out, tgt, cfg.length_ratio_tolerance, cfg.short_text)
        or (language_id(out, tgt) if cfg.language_id and long_enough else None)
    )

