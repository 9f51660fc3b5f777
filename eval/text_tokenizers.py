"""Named tokenizers for the captioning metrics (CIDEr-D, BLEU, chrF): one name describes every captioning number.

The tokenizer decides the n-grams, so it is fixed per language, applied identically to references and
hypotheses, and its name is recorded next to the scores (`eval.captioning.caption_scores`).

Every tokenizer first normalises the text the same way (`normalize_for_metric`):
  1. NFC, then casefold, then NFC again: composed and decomposed input ("é" / "e" + U+0301) give the same
     text, and case is folded the Unicode way ("Straße" -> "strasse").
  2. Every Unicode punctuation character (category P*: ".", "'", "«", "。", "，", "？", "।" ...) becomes a word
     break, as does U+200B ZERO WIDTH SPACE. Nothing else is touched: combining marks (M*: Devanagari, Thai,
     Sinhala vowel signs, virama, nukta), ZWJ/ZWNJ and symbols (S*: "$", "+", emoji) stay.
Then:
  "whitespace"  splits on whitespace: "a dog's ball!" -> ["a", "dog", "s", "ball"].
  "char"        one token per character, for scripts written without spaces. A character keeps its combining
                marks and joiners ("ม่" is one token), and a virama or ZWJ glues the next letter on (conjuncts,
                Khmer coeng and Myanmar stacked consonants). Runs of Latin (full-width included), Greek and
                Cyrillic letters and of decimal digits stay whole words, as in sacrebleu's "zh" tokenizer:
                "坐在iPhone旁，2个" -> ["坐", "在", "iphone", "旁", "2", "个"].
Defaults (`metric_tokenizer`): "char" for data_prep.languages.NO_SPACE_LANGUAGES (zh, ja, th, lo, km, my),
"whitespace" for every other code. Pure Python, no dictionaries, deterministic.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Callable
from functools import lru_cache
from types import MappingProxyType

from data_prep.languages import NO_SPACE_LANGUAGES

_ZWSP = "\u200b"
_ZWNJ, _ZWJ = "\u200c", "\u200d"
_VIRAMA_CLASS = 9  # canonical combining class of viramas, Khmer coeng, Myanmar's invisible stacker
# Letters of these scripts stay whole words inside "char" mode (Unicode character-name prefixes).
_WORD_SCRIPTS = ("LATIN ", "FULLWIDTH LATIN ", "GREEK ", "CYRILLIC ")


def normalize_for_metric(text: str) -> str:
    """NFC + casefold (+ NFC), punctuation and zero-width spaces turned into spaces; marks and joiners kept."""
    text = unicodedata.normalize("NFC", unicodedata.normalize("NFC", text).casefold())
    return "".join(" " if ch == _ZWSP or unicodedata.category(ch)[0] == "P" else ch for ch in text)


def whitespace_tokens(text: str) -> list[str]:
    """Normalised text split on whitespace."""
    return normalize_for_metric(text).split()


@lru_cache(maxsize=4096)
def _is_word_char(ch: str) -> bool:
    category = unicodedata.category(ch)
    return category == "Nd" or (category[0] == "L" and unicodedata.name(ch, "").startswith(_WORD_SCRIPTS))


def char_tokens(text: str) -> list[str]:
    """Normalised text, one token per character cluster; Latin/Greek/Cyrillic words and numbers stay whole."""
    tokens: list[str] = []
    attached = False  # the previous character belongs to tokens[-1] (no space or break since)
    in_word = False  # tokens[-1] is a Latin/Greek/Cyrillic/digit run, which the next such character extends
    glue = False  # the previous character was a virama or ZWJ: the next letter joins tokens[-1]
    for ch in normalize_for_metric(text):
        if ch.isspace():
            attached = in_word = glue = False
        elif unicodedata.category(ch)[0] == "M" or ch in (_ZWJ, _ZWNJ):
            if attached:
                tokens[-1] += ch  # a vowel sign, tone mark, virama or joiner stays on its base character
            else:
                tokens.append(ch)  # an orphan mark (after a space) is a token of its own
            attached = True
            glue = unicodedata.combining(ch) == _VIRAMA_CLASS or ch == _ZWJ
        else:
            word_char = _is_word_char(ch)
            if attached and (glue or (in_word and word_char)):
                tokens[-1] += ch
            else:
                tokens.append(ch)
            attached, in_word, glue = True, word_char, False
    return tokens


TOKENIZERS: MappingProxyType[str, Callable[[str], list[str]]] = MappingProxyType(
    {"char": char_tokens, "whitespace": whitespace_tokens}
)


def metric_tokenizer(lang: str) -> str:
    """The default tokenizer name for `lang`: "char" for languages written without spaces, else "whitespace"."""
    return "char" if lang in NO_SPACE_LANGUAGES else "whitespace"


def _check_name(name: str) -> str:
    if name not in TOKENIZERS:
        raise ValueError(f"unknown metric tokenizer {name!r} (known: {', '.join(sorted(TOKENIZERS))})")
    return name


def resolve_tokenizer(lang: str, name: str | None = None) -> str:
    """`name` if given (None or "" mean `lang`'s default), checked against the registry."""
    return _check_name(name or metric_tokenizer(lang))


def tokenize(text: str, name: str) -> list[str]:
    """Tokens of `text` under the registered tokenizer `name` (ValueError naming the known ones otherwise)."""
    return TOKENIZERS[_check_name(name)](text)
