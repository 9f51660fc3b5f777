"""Translate the English texts of records (captions + QA) into more languages, filtering and counting.

A record is `{"captions": {lang: [text, ...]}, "qa": [{"lang", "question", "answers": [...]}, ...], ...}`.
Each distinct English text is translated and judged once per target language (`Verdicts`); applying the
verdicts to a record adds the kept translations and reports one `Event` per caption or QA item.

Only what a target language lacks is translated: captions in a language the record already has captions in
(native ones, e.g. from `vlm prep shards --lang auto`) are kept and none are translated into it, and the same
for QA items; `retranslate` replaces them with translations instead.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

import sacrebleu

from data_prep.filters import FilterConfig, check_translation
from data_prep.sources.language_tags import LID_KEY, QA_CONFIDENCE

SOURCE = "en"
KEPT = "kept"
NATIVE = "native"  # an item already in the target language, kept as it was
# tgt -> English text -> (translation or None, reason it was dropped or KEPT)
Verdicts = dict[str, dict[str, tuple[str | None, str]]]


@dataclass(frozen=True)
class Event:
    """What happened to one caption or QA item in one target language."""

    lang: str
    field: str  # "caption" | "qa"
    source: str  # the caption, or the question
    output: str | None  # its translation (for QA: the question's)
    reason: str  # KEPT, NATIVE or the filter that dropped it

    def stats_key(self) -> str:
        return f"{self.lang}/{self.reason}"

    @property
    def dropped(self) -> bool:
        return self.reason not in (KEPT, NATIVE)


def source_texts(record: dict) -> list[str]:
    """The English texts of a record in order: captions, then each QA item's question and answers."""
    return list(record.get("captions", {}).get(SOURCE, [])) + _english_qa_texts(record)


def wanted_texts(record: dict, tgt: str, retranslate: bool = False) -> list[str]:
    """The English texts of `record` to translate into `tgt`: its captions unless it has captions in `tgt`, its
    QA items' questions and answers unless it has QA items in `tgt` (with `retranslate`, all of them)."""
    captions = record.get("captions", {})
    texts = list(captions.get(SOURCE, [])) if retranslate or not captions.get(tgt) else []
    if retranslate or not any(item.get("lang") == tgt for item in record.get("qa", [])):
        texts += _english_qa_texts(record)
    return texts


def _english_qa_texts(record: dict) -> list[str]:
    return [text for item in record.get("qa", []) if item.get("lang") == SOURCE
            for text in (item["question"], *item["answers"])]


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


def apply_verdicts(record: dict, verdicts: Verdicts, retranslate: bool = False) -> tuple[dict, list[Event]]:
    """A copy of `record` with the kept translations added where the target language lacks captions (or QA);
    its native ones are kept and reported as NATIVE events, unless `retranslate` replaces them by the
    translations of its English ones (native text without English beside it is always kept).

    A caption is added when kept; a QA item only when its question and every answer are.
    """
    captions = dict(record.get("captions", {}))
    qa = list(record.get("qa", []))
    english_captions = captions.get(SOURCE, [])
    english_qa = [item for item in qa if item.get("lang") == SOURCE]
    replaced = []  # languages whose native captions gave way to translations
    events = []
    for tgt, judged in verdicts.items():
        if captions.get(tgt) and not (retranslate and english_captions):
            events += [Event(tgt, "caption", text, None, NATIVE) for text in captions[tgt]]
        elif english_captions:
            replaced.append(tgt)
            captions.pop(tgt, None)
            kept = []
            for caption in english_captions:
                out, reason = judged[caption]
                events.append(Event(tgt, "caption", caption, out, reason))
                if reason == KEPT:
                    kept.append(out)
            if kept:
                captions[tgt] = kept
        natives = [item for item in qa if item.get("lang") == tgt]
        if natives and not (retranslate and english_qa):
            events += [Event(tgt, "qa", item["question"], None, NATIVE) for item in natives]
            continue
        qa = [item for item in qa if item.get("lang") != tgt]
        for item in english_qa:
            texts = (item["question"], *item["answers"])
            reason = next((judged[t][1] for t in texts if judged[t][1] != KEPT), KEPT)
            events.append(Event(tgt, "qa", item["question"], judged[item["question"]][0], reason))
            if reason == KEPT:
                answers = [judged[t][0] for t in item["answers"]]
                qa.append({**{k: v for k, v in item.items() if k != QA_CONFIDENCE}, "lang": tgt,
                           "question": judged[item["question"]][0], "answers": answers})
    return {**_without_identified(record, replaced), "captions": captions, "qa": qa}, events


def _without_identified(record: dict, langs: list[str]) -> dict:
    """`record` without the language-id confidences of captions in `langs` (they were replaced)."""
    identified = record.get(LID_KEY, {}).get("captions", {})
    if not any(lang in identified for lang in langs):
        return record
    lid = {**record[LID_KEY], "captions": {k: v for k, v in identified.items() if k not in langs}}
    if not lid["captions"]:
        del lid["captions"]
    rest = {k: v for k, v in record.items() if k != LID_KEY}
    return {**rest, LID_KEY: lid} if lid else rest


def summary_table(stats: Counter) -> list[dict]:
    """Per target language: native items kept as they were, then translated items (total) kept and dropped by
    reason, from "lang/reason" stats keys."""
    rows: dict[str, Counter] = {}
    for key, n in stats.items():
        lang, _, reason = key.partition("/")
        if reason:
            rows.setdefault(lang, Counter())[reason] += n
    table = []
    for lang, reasons in sorted(rows.items()):
        native = reasons.pop(NATIVE, 0)
        table.append({"lang": lang, NATIVE: native, "total": sum(reasons.values()), **dict(sorted(reasons.items()))})
    return table
