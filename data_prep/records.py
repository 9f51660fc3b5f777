"""Translate the English texts of records (captions + QA) into more languages, filtering and counting.

A record is `{"captions": {lang: [text, ...]}, "qa": [{"lang", "question", "answers": [...]}, ...], ...}`.
Each distinct English text is translated and judged once per target language (`Verdicts`); applying the
verdicts to a record adds the kept translations and reports one `Event` per caption or QA item.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import sacrebleu

from data_prep.filters import FilterConfig, check_translation

SOURCE = "en"
KEPT = "kept"
# tgt -> English text -> (translation or None, reason it was dropped or KEPT)
Verdicts = dict[str, dict[str, tuple[str | None, str]]]


@dataclass(frozen=True)
class Event:
    """What happened to one caption or QA item in one target language."""

    lang: str
    field: str  # "caption" | "qa"
    source: str  # the caption, or the question
    output: str | None  # its translation (for QA: the question's)
    reason: str  # KEPT or the filter that dropped it

    def stats_key(self) -> str:
        return f"{self.lang}/{self.reason}"


def source_texts(record: dict) -> list[str]:
    """The English texts of a record in order: captions, then each QA item's question and answers."""
    texts = list(record.get("captions", {}).get(SOURCE, []))
    for item in record.get("qa", []):
        if item.get("lang") == SOURCE:
            texts += [item["question"], *item["answers"]]
    return texts


def judge(texts: list[str], outputs: list[str | None], tgt: str, filters: FilterConfig,
          back_translate: Callable[[list[str]], list[str | None]] | None = None) -> dict[str, tuple[str | None, str]]:
    """Each text's (translation, KEPT or the first failing filter). With `back_translate` (target -> English,
    used when filters.back_translation_chrf > 0), kept translations are also scored by chrF of their back
    translation against the source."""
    if len(outputs) != len(texts):
        raise ValueError(f"the translator returned {len(outputs)} outputs for {len(texts)} texts ({tgt})")
    judged = {src: (out, check_translation(src, out, tgt, filters) or KEPT) for src, out in zip(texts, outputs)}
    if filters.back_translation_chrf > 0 and back_translate is not None:
        kept = [src for src, (_, reason) in judged.items() if reason == KEPT]
        backs = back_translate([judged[src][0] for src in kept])
        for src, back in zip(kept, backs):
            if back is None or sacrebleu.sentence_chrf(back, [src]).score < filters.back_translation_chrf:
                judged[src] = (judged[src][0], "back_translation")
    return judged


def apply_verdicts(record: dict, verdicts: Verdicts) -> tuple[dict, list[Event]]:
    """A copy of `record` with the kept translations added (earlier ones into those languages replaced).

    A caption is added when kept; a QA item only when its question and every answer are.
    """
    targets = set(verdicts)
    new = {
        **record,
        "captions": {lang: caps for lang, caps in record.get("captions", {}).items() if lang not in targets},
        "qa": [item for item in record.get("qa", []) if item.get("lang") not in targets],
    }
    events = []
    english_qa = [item for item in record.get("qa", []) if item.get("lang") == SOURCE]
    for tgt, judged in verdicts.items():
        captions = []
        for caption in record.get("captions", {}).get(SOURCE, []):
            out, reason = judged[caption]
            events.append(Event(tgt, "caption", caption, out, reason))
            if reason == KEPT:
                captions.append(out)
        if captions:
            new["captions"][tgt] = captions
        for item in english_qa:
            texts = (item["question"], *item["answers"])
            reason = next((judged[t][1] for t in texts if judged[t][1] != KEPT), KEPT)
            events.append(Event(tgt, "qa", item["question"], judged[item["question"]][0], reason))
            if reason == KEPT:
                answers = [judged[t][0] for t in item["answers"]]
                new["qa"].append({**item, "lang": tgt, "question": judged[item["question"]][0], "answers": answers})
    return new, events


def summary_table(stats: Counter) -> list[dict]:
    """Per target language: items kept and dropped by reason, from "lang/reason" stats keys."""
    rows: dict[str, Counter] = {}
    for key, n in stats.items():
        lang, _, reason = key.partition("/")
        if reason:
            rows.setdefault(lang, Counter())[reason] += n
    return [{"lang": lang, "total": sum(c.values()), **dict(sorted(c.items()))} for lang, c in sorted(rows.items())]
