"""Which language each text a reader found is in: `vlm prep shards --lang xx` (every text in one language) or
`--lang auto` (each caption and each QA item identified on its own).

Readers put a text whose language their source does not state under data_prep.sources.UNDETERMINED ("und"):
img2dataset and COCO captions, LLaVA turns, a JSONL "caption" and JSONL QA items without "lang".
`LanguageTagger.tag` resolves them; a language the source states (JSONL "captions": {"de": [...]}) is kept.

With --lang auto, data_prep.language_id.identify judges each caption, and each QA item by its question alone
(answers are often one word, which lid.176 cannot place: "two" reads as Persian). A decided caption joins
captions[lang], its confidence in the record's lang_id.captions[lang] (same order; null for a caption the
source declared); a decided QA item gets "lang_confidence". An undecided text (no letters, confidence under
min_confidence, a language the table lacks, a script that is not the guessed language's) leaves captions/qa,
so training never teaches it under a wrong language, and is listed in lang_id.undecided with the reason and
lid.176's guess; a sample left without any caption or QA item is skipped/undecided_language.

Measured on the phrase-table grammar's captions (500 synthetic scenes, min_confidence 0.5), the share tagged
right / wrong / undecided: de, si, zh, ja, ar 100 / 0 / 0 %; en 97.4 / 0 / 2.6 %; ru 98.4 / 1.6 (as uk) / 0 %;
fr 91.2 / 1.2 (as es) / 7.6 %; hi 89.6 / 7.6 (as mr) / 2.8 %; sw 50.8 / 2.4 / 46.8 %. Their questions: 100 %
right in every language but sw (6.8 % right, 87 % undecided). Close neighbours sharing a script are the
residual error: name the language with --lang xx when a set is known to be in one. Why 0.5: lid.176 scores
short captions low ("a small yellow circle on the left": 0.39); at 0.6 English loses 11 % of its captions to
undecided, at 0.4 French and Hindi get more wrong (3.0 % and 8.4 %).
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from data_prep.language_id import LID_MIN_CONFIDENCE, Identification, identify
from data_prep.languages import get_language
from data_prep.sources import UNDETERMINED

AUTO = "auto"
LID_KEY = "lang_id"  # the record's key for how --lang auto decided (training ignores it)
QA_CONFIDENCE = "lang_confidence"  # a QA item's key for the same
SKIP_REASON = "undecided_language"


@dataclass(frozen=True)
class LanguageAssignment:
    """--lang: a code of data_prep.languages for every undetermined text, or AUTO to identify each one."""

    lang: str = "en"
    min_confidence: float = LID_MIN_CONFIDENCE  # lid.176 scores below this leave a text undecided

    def __post_init__(self) -> None:
        if self.lang != AUTO:
            try:
                get_language(self.lang)
            except ValueError as err:
                raise ValueError(f"--lang {self.lang}: {err}, or '{AUTO}'") from None

    @property
    def auto(self) -> bool:
        return self.lang == AUTO


class LanguageTagger:
    """Resolves UNDETERMINED in records and counts the decisions for the manifest's language_assignment."""

    def __init__(self, cfg: LanguageAssignment) -> None:
        self.cfg = cfg
        self.decided: Counter = Counter()  # lang -> texts (captions and QA items) --lang gave that language
        self.declared: Counter = Counter()  # lang -> texts whose language the source stated
        self.undecided: Counter = Counter()  # reason -> texts left undecided

    def _identify(self, text: str) -> Identification:
        if self.cfg.auto:
            found = identify(text, self.cfg.min_confidence)
        else:
            found = Identification(self.cfg.lang, None, 1.0, "")
        if found.lang is None:
            self.undecided[found.reason] += 1
        else:
            self.decided[found.lang] += 1
        return found

    def tag(self, record: dict) -> dict | None:
        """A copy of `record` with every UNDETERMINED caption and QA item given a language (or, undecided, moved
        to lang_id.undecided); None when it holds no caption or QA item any more."""
        declared = {lang: texts for lang, texts in record["captions"].items() if lang != UNDETERMINED}
        self.declared.update({lang: len(texts) for lang, texts in declared.items()})
        captions = {lang: list(texts) for lang, texts in declared.items()}
        confidences: dict[str, float] = {}
        undecided = []
        for text in record["captions"].get(UNDETERMINED, []):
            found = self._identify(text)
            if found.lang is None:
                undecided.append({"caption": text, **_why(found)})
            elif text not in declared.get(found.lang, ()):  # a JSONL "caption" repeating one of its "captions"
                captions.setdefault(found.lang, []).append(text)
                confidences[text] = found.confidence
        qa = []
        for item in record["qa"]:
            if item["lang"] != UNDETERMINED:
                self.declared[item["lang"]] += 1
                qa.append(item)
                continue
            found = self._identify(item["question"])
            if found.lang is None:
                undecided.append({"qa": {k: v for k, v in item.items() if k != "lang"}, **_why(found)})
            else:
                qa.append({**item, "lang": found.lang, **({QA_CONFIDENCE: found.confidence} if self.cfg.auto else {})})
        if not any(captions.values()) and not qa:
            return None
        tagged = {**record, "captions": captions, "qa": qa}
        if self.cfg.auto and (lid := _lid_record(captions, confidences, undecided)):
            tagged[LID_KEY] = lid
        return tagged

    def summary(self) -> dict:
        """The manifest's language_assignment: how languages were given, and how many texts got each."""
        summary = {"mode": "auto" if self.cfg.auto else "fixed", "lang": None if self.cfg.auto else self.cfg.lang,
                   "decided": dict(sorted(self.decided.items())), "declared": dict(sorted(self.declared.items())),
                   "undecided": sum(self.undecided.values()), "undecided_reasons": dict(sorted(self.undecided.items()))}
        if self.cfg.auto:
            summary |= {"method": "lid.176+script", "min_confidence": self.cfg.min_confidence,
                        "undecided_texts": f"dropped from captions/qa, listed in each record's {LID_KEY}.undecided; "
                                           f"a sample left without text is skipped/{SKIP_REASON}"}
        return summary


def _why(found: Identification) -> dict:
    return {"reason": found.reason, "guess": found.guess, "confidence": found.confidence}


def _lid_record(captions: dict[str, list[str]], confidences: dict[str, float], undecided: list[dict]) -> dict:
    """lang_id: per language holding an identified caption, the confidence of each of its captions, then the
    undecided texts."""
    lid: dict = {}
    identified = {lang: [confidences.get(text) for text in texts] for lang, texts in captions.items()
                  if any(text in confidences for text in texts)}
    if identified:
        lid["captions"] = identified
    if undecided:
        lid["undecided"] = undecided
    return lid
