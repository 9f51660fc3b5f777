"""Translate English records (captions + QA) into more languages, filtering and counting the results."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from tqdm import tqdm

from data_prep.filters import check_translation
from data_prep.languages import validate_languages
from data_prep.translate import Translator

KEPT = "translated"  # stats key of kept items; dropped ones count under "dropped/<reason>"


def _english_texts(record: dict) -> list[str]:
    texts = list(record["captions"].get("en", []))
    for item in record["qa"]:
        if item["lang"] == "en":
            texts += [item["question"], *item["answers"]]
    return texts


def _without(record: dict, targets: list[str]) -> dict:
    """A copy of the record without earlier translations into targets (re-translation replaces them)."""
    return {
        **record,
        "captions": {lang: caps for lang, caps in record["captions"].items() if lang not in targets},
        "qa": [item for item in record["qa"] if item["lang"] not in targets],
    }


def translate_records(
    records: list[dict], translator: Translator, langs: Iterable[str]
) -> tuple[list[dict], Counter]:
    """Add captions and QA in every language of langs, translating from English.

    All distinct English texts go to the translator in one call per target language. A caption whose
    translation fails a filter is dropped; a QA item is dropped when its question or any answer fails.
    Stats count kept items ("translated") and dropped ones by reason ("dropped/<reason>").
    """
    targets = [lang for lang in validate_languages(langs) if lang != "en"]
    texts = list(dict.fromkeys(text for record in records for text in _english_texts(record)))
    # Each distinct text is judged once: tgt -> text -> (translation, stats key).
    verdicts = {
        tgt: _judge(texts, translator.translate(texts, "en", tgt), translator, tgt)
        for tgt in tqdm(targets, desc="translate", disable=None)
    }
    qa_verdicts: dict[str, dict] = {tgt: {} for tgt in targets}  # per tgt: QA texts -> _judge_qa()
    out = []
    stats: Counter = Counter()
    for record in records:
        new = _without(record, targets)
        english_qa = [item for item in record["qa"] if item["lang"] == "en"]
        for tgt, judged in verdicts.items():
            captions = []
            for caption in record["captions"].get("en", []):
                dst, key = judged[caption]
                stats[key] += 1
                if key == KEPT:
                    captions.append(dst)
            if captions:
                new["captions"][tgt] = captions
            for item in english_qa:
                texts = (item["question"], *item["answers"])
                if texts not in qa_verdicts[tgt]:
                    qa_verdicts[tgt][texts] = _judge_qa(texts, judged)
                key, question, answers = qa_verdicts[tgt][texts]
                stats[key] += 1
                if key == KEPT:
                    new["qa"].append({**item, "lang": tgt, "question": question, "answers": list(answers)})
        out.append(new)
    return out, stats


def _judge_qa(texts: tuple[str, ...], judged: dict[str, tuple]) -> tuple[str, str, tuple[str, ...]]:
    """(stats key, question, answers): a QA item is kept only if its question and every answer are."""
    key = next((judged[text][1] for text in texts if judged[text][1] != KEPT), KEPT)
    return key, judged[texts[0]][0], tuple(judged[text][0] for text in texts[1:])


def _judge(texts: list[str], outputs: list[str | None], translator: Translator, tgt: str) -> dict[str, tuple]:
    if len(outputs) != len(texts):
        raise ValueError(f"translator {translator.name!r} returned {len(outputs)} outputs for {len(texts)} texts")
    judged = {}
    for src, dst in zip(texts, outputs):
        reason = "untranslatable" if dst is None else check_translation(src, dst, tgt)
        judged[src] = (dst, f"dropped/{reason}" if reason else KEPT)
    return judged
