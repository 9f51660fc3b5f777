"""Quality filters for machine-translated text. Each returns a reason string when the text fails, else None."""

from __future__ import annotations

from data_prep.languages import matches_language_script

# Languages written without spaces: one character is a fair length unit and repetition token.
_UNSPACED = frozenset({"zh", "ja"})
LENGTH_RATIO = (0.2, 5.0)
UNSPACED_LENGTH_RATIO = (0.1, 5.0)  # a CJK character carries several Latin letters' worth of meaning
MAX_REPEATS = 4  # a token repeated more often than this in a row is a decoding loop


def empty(out: str | None) -> str | None:
    return "empty" if out is None or not out.strip() else None


def wrong_script(out: str, tgt: str) -> str | None:
    return None if matches_language_script(out, tgt) else "wrong_script"


def length_ratio(src: str, out: str, tgt: str) -> str | None:
    low, high = UNSPACED_LENGTH_RATIO if tgt in _UNSPACED else LENGTH_RATIO
    ratio = len(out.strip()) / max(len(src.strip()), 1)
    return None if low <= ratio <= high else "length_ratio"


def repetition(out: str, tgt: str) -> str | None:
    tokens = list(out.replace(" ", "")) if tgt in _UNSPACED else out.split()
    run = 1
    for previous, token in zip(tokens, tokens[1:]):
        run = run + 1 if token == previous else 1
        if run > MAX_REPEATS:
            return "repetition"
    return None


def check_translation(src: str, out: str | None, tgt: str) -> str | None:
    """The first failing filter's reason, or None when the translation is kept."""
    if reason := empty(out):
        return reason
    return wrong_script(out, tgt) or length_ratio(src, out, tgt) or repetition(out, tgt)
