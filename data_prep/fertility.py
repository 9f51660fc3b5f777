"""Tokenizer fertility: how many tokens a tokenizer spends on each language, per character, per word, per text
and against English on the same texts.

A language that costs k times English fits 1/k as many words into the same context, takes k times the
decoding steps per caption and, at equal token budgets, gets less training signal; tokenizers trained mostly on
English and Latin script often cost 3-15x for Indic, Sinhala or Amharic text (Petrov et al. 2023, "Language
Model Tokenizers Introduce Unfairness Between Languages"). On parallel texts (translations of the same
captions, as `vlm prep translate` writes) the ratio of tokens per text is the cost of the same content; on
unrelated texts it is only a rough indicator, which the table says. Shared by `vlm prep` manifests, `vlm plan`
and the evaluation report.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import asdict, dataclass

from data_prep.languages import LANGUAGES, NO_SPACE_LANGUAGES, script_of

REFERENCE = "en"
WARN_FACTOR = 3.0  # a language costing more than this many times English is named in a warning
MAX_TEXTS = 2000  # texts measured per language (the first ones): enough for two significant digits

# Token counts of a batch of texts, without special tokens (a tokenizer's `__call__`, wrapped by `counter`).
TokenCounter = Callable[[list[str]], list[int]]


def counter(tokenizer) -> TokenCounter:
    """A TokenCounter from a transformers tokenizer (or anything called like one)."""

    def count(texts: list[str]) -> list[int]:
        return [len(ids) for ids in tokenizer(texts, add_special_tokens=False)["input_ids"]]

    return count


@dataclass(frozen=True)
class Fertility:
    lang: str
    script: str
    texts: int
    chars: int  # code points other than whitespace
    words: int | None  # whitespace-separated words; None for languages written without spaces (zh, ja, th, ...)
    tokens: int
    vs_reference: float | None  # tokens per text / the reference language's (None without it)

    @property
    def tokens_per_char(self) -> float:
        return self.tokens / max(self.chars, 1)

    @property
    def tokens_per_word(self) -> float | None:
        return None if self.words is None else self.tokens / max(self.words, 1)

    @property
    def tokens_per_text(self) -> float:
        return self.tokens / max(self.texts, 1)

    def to_dict(self) -> dict:
        return {**asdict(self), "tokens_per_char": round(self.tokens_per_char, 4),
                "tokens_per_word": None if self.words is None else round(self.tokens_per_word, 4),
                "tokens_per_text": round(self.tokens_per_text, 3),
                "vs_reference": None if self.vs_reference is None else round(self.vs_reference, 3)}


def language_script(lang: str, texts: Sequence[str] = ()) -> str:
    """The language table's script, else the dominant script of the texts."""
    if lang in LANGUAGES:
        return LANGUAGES[lang].script
    return next((s for s in map(script_of, texts) if s), "unknown")


def measure(count: TokenCounter, texts_by_lang: Mapping[str, Sequence[str]], parallel: bool,
            reference: str = REFERENCE, max_texts: int = MAX_TEXTS) -> dict:
    """The fertility table of `texts_by_lang` (the first `max_texts` non-empty texts of each language):

        {"reference": "en", "parallel": bool, "warn_factor": 3.0,
         "languages": {lang: Fertility.to_dict()}, "scripts": {script: {...sums and ratios}},
         "costly": [languages above warn_factor x the reference]}

    `parallel` says whether the languages' texts translate each other (then vs_reference compares the same content).
    """
    rows: dict[str, Fertility] = {}
    for lang, texts in texts_by_lang.items():
        sample = [t for t in texts if t and t.strip()][:max_texts]
        if not sample:
            continue
        tokens = sum(count(sample))
        chars = sum(len("".join(t.split())) for t in sample)
        words = None if lang in NO_SPACE_LANGUAGES else sum(len(t.split()) for t in sample)
        rows[lang] = Fertility(lang, language_script(lang, sample), len(sample), chars, words, tokens, None)
    base = rows.get(reference)
    if base is not None:
        rows = {lang: _with_ratio(row, base) for lang, row in rows.items()}
    costly = [lang for lang, row in rows.items() if row.vs_reference is not None and row.vs_reference > WARN_FACTOR]
    return {"reference": reference, "parallel": parallel, "warn_factor": WARN_FACTOR,
            "languages": {lang: row.to_dict() for lang, row in rows.items()}, "scripts": _by_script(rows),
            "costly": costly}


def _with_ratio(row: Fertility, base: Fertility) -> Fertility:
    return Fertility(row.lang, row.script, row.texts, row.chars, row.words, row.tokens,
                     row.tokens_per_text / max(base.tokens_per_text, 1e-9))


def _by_script(rows: Mapping[str, Fertility]) -> dict[str, dict]:
    """Per script: its languages, tokens per character over all their texts, and the worst language's ratio."""
    scripts: dict[str, list[Fertility]] = {}
    for row in rows.values():
        scripts.setdefault(row.script, []).append(row)
    out = {}
    for script, members in sorted(scripts.items()):
        ratios = [m.vs_reference for m in members if m.vs_reference is not None]
        out[script] = {"languages": [m.lang for m in members],
                       "tokens_per_char": round(sum(m.tokens for m in members) / max(sum(m.chars for m in members), 1),
                                                4),
                       "max_vs_reference": round(max(ratios), 3) if ratios else None}
    return out


def warnings(table: dict, what: str) -> list[str]:
    """One line per language costing more than warn_factor x the reference, naming the tokenizer (`what`)."""
    same = "the same texts" if table["parallel"] else "texts of its own (not translations: a rough comparison)"
    return [f"{what}: '{lang}' costs {table['languages'][lang]['vs_reference']:.1f}x the tokens of "
            f"'{table['reference']}' on {same} (over {table['warn_factor']:g}x): fewer words fit in llm.max_length and "
            f"each caption takes that many more decoding steps" for lang in table["costly"]]


def markdown(table: dict, what: str) -> list[str]:
    """A markdown table of the languages' figures, then the script summary."""
    ref = table["reference"]
    note = "" if table["parallel"] else " (texts are not translations of each other: ratios are indicative)"
    lines = [f"Tokenizer fertility, {what}{note}:", "",
             f"| lang | script | tokens/char | tokens/word | tokens/text | × {ref} |", "|---|---|---|---|---|---|"]
    for lang, row in table["languages"].items():
        per_word = "—" if row["tokens_per_word"] is None else f"{row['tokens_per_word']:.2f}"
        ratio = "—" if row["vs_reference"] is None else f"{row['vs_reference']:.2f}"
        flag = " ⚠" if lang in table["costly"] else ""
        lines.append(f"| {lang} | {row['script']} | {row['tokens_per_char']:.3f} | {per_word} | "
                     f"{row['tokens_per_text']:.1f} | {ratio}{flag} |")
    lines += ["", f"| script | languages | tokens/char | worst × {ref} |", "|---|---|---|---|"]
    for script, row in table["scripts"].items():
        worst = "—" if row["max_vs_reference"] is None else f"{row['max_vs_reference']:.2f}"
        lines.append(f"| {script} | {', '.join(row['languages'])} | {row['tokens_per_char']:.3f} | {worst} |")
    return lines
