"""One raw tar sample -> one training Example: its json, then a language (temperature sampling), a task and a
template of that language, decided before any image is decoded, then the image, or with `data.features` the
frozen encoder's tokens of it from the feature cache; unusable samples are skipped and counted."""

from __future__ import annotations

import hashlib
import logging
import random
from collections import deque
from collections.abc import Iterator
from dataclasses import dataclass

from data_prep.images import BadImage, decode_image
from vlm.config import DataConfig
from vlm.data.bad_samples import REJECTED, BadSamples
from vlm.data.collate import Example
from vlm.data.features import FeatureCache
from vlm.data.language_sampling import LanguageSampler
from vlm.data.records import image_member, parse_record
from vlm.data.shards import seeded_rng
from vlm.data.templates import (
    Templates,
    load_templates,
    match_templates,
    training_templates,
)

log = logging.getLogger(__name__)
# Caption matching draws its negatives from the captions of this many preceding raw samples of the same
# worker: a window of the stream itself, so a resumed run rebuilds it from the json of the samples it skips.
MATCH_POOL = 256


@dataclass
class Plan:
    """What a sample teaches, decided from its json alone (no image decoded)."""

    lang: str
    task: str
    prompt: str
    target: str
    caption: str  # a true caption in `lang` (the contrastive loss's text)


class ExampleMaker:
    """Turns raw tar samples into Examples: json -> language -> task -> template -> image. Skipped samples are
    counted in `bad` by reason, or in `rejected` when language sampling turned them away.

    Caption matching (`match`): half the examples show one of the sample's own captions in L (target: L's
    "yes"), half a caption in L of another of the last MATCH_POOL raw samples read (target: "no"), never one
    equal to an own caption. The pool is a function of the raw stream alone: `remember` is called for every
    raw sample, so a resumed stream rebuilds it from the json of the samples it skips."""

    def __init__(self, cfg: DataConfig, transform, templates: Templates | None = None,
                 sampler: LanguageSampler | None = None, bad: BadSamples | None = None):
        self.cfg, self.transform = cfg, transform
        self.templates = templates if templates is not None else load_templates(cfg.templates)
        self.sampler = sampler
        self.bad = bad if bad is not None else BadSamples()
        self.rejected = 0
        self.tasks = [(t, w) for t, w in zip(cfg.tasks, cfg.task_weights) if w > 0]
        keep = None if cfg.template_variants else 1  # the first template only: evaluation's prompt
        self.prompts = {(lang, task): training_templates(lang, task, self.templates)[:keep]
                        for lang in cfg.languages for task, _ in self.tasks}
        self.answers = {lang: match_templates(lang, self.templates)[1] for lang in cfg.languages}
        self.pool: deque | None = deque(maxlen=MATCH_POOL) if any(t == "match" for t, _ in self.tasks) else None
        self.features = FeatureCache(cfg.features) if cfg.features else None

    def captions(self, record: dict) -> dict[str, list[str]]:
        """The non-empty captions of `record` per language of data.languages (in that order)."""
        captions = record.get("captions")
        if not isinstance(captions, dict):
            return {}
        found = {}
        for lang in self.cfg.languages:
            texts = [t for t in _listed(captions.get(lang)) if _text(t)]
            if texts:
                found[lang] = texts
        return found

    def remember(self, key: str, record: dict | None) -> None:
        """Add a raw sample's captions to the matching pool (every raw sample passes here, used or not)."""
        if self.pool is not None and record is not None:
            captions = self.captions(record)
            if captions:
                self.pool.append((key, captions))

    def _negatives(self, key: str, lang: str, own: list[str]) -> Iterator[str]:
        own_set = set(own)
        return (c for k, captions in self.pool if k != key for c in captions.get(lang, ()) if c not in own_set)

    def plan(self, key: str, record: dict, rng: random.Random) -> Plan | str:
        """Language, task, prompt and target for one sample, or the reason it is skipped.

        A language with QA but no caption (LLaVA conversations) teaches VQA only, and the chosen answer
        stands in as the contrastive text."""
        available = self.captions(record)
        qa = qa_items(record)
        qa_langs = {q["lang"] for q in qa} if "vqa" in dict(self.tasks) else set()
        langs = [lang for lang in self.cfg.languages if lang in available or lang in qa_langs]
        if not langs:
            if malformed(record):
                return "bad_record"
            captions = record.get("captions")
            meant = isinstance(captions, dict) and any(lang in captions for lang in self.cfg.languages)
            return "empty_caption" if meant else "no_language"
        lang = self.sampler.choose(langs, rng) if self.sampler is not None else rng.choice(langs)
        if lang is None:
            return REJECTED
        questions = [q for q in qa if q.get("lang") == lang]
        options = []
        for task, weight in self.tasks:
            if task == "vqa" and not questions:
                continue
            if task != "vqa" and lang not in available:
                continue
            if task == "match" and next(self._negatives(key, lang, available[lang]), None) is None:
                continue
            options.append((task, weight))
        if not options:
            return "no_task"
        task = rng.choices([t for t, _ in options], weights=[w for _, w in options])[0]
        if lang not in available:  # QA only
            item = rng.choice(questions)
            template = rng.choice(self.prompts[(lang, task)])
            answer = item["answers"][0]
            return Plan(lang, task, template.format(question=item["question"]), answer, answer)
        caption = rng.choice(available[lang])
        if task == "caption":
            return Plan(lang, task, rng.choice(self.prompts[(lang, task)]), caption, caption)
        if task == "vqa":
            item = rng.choice(questions)
            template = rng.choice(self.prompts[(lang, task)])
            return Plan(lang, task, template.format(question=item["question"]), item["answers"][0], caption)
        template = rng.choice(self.prompts[(lang, task)])
        if rng.random() < 0.5:
            shown, answer = caption, self.answers[lang]["yes"]
        else:
            shown, answer = rng.choice(list(self._negatives(key, lang, available[lang]))), self.answers[lang]["no"]
        return Plan(lang, task, template.format(caption=shown), answer, caption)

    def _skip(self, reason: str, sample: dict) -> None:
        self.bad.add(reason, f"{sample.get('__key__')} in {sample.get('__url__')}")

    def __call__(self, sample: dict, rng: random.Random) -> Example | None:
        key = sample["__key__"]
        record, reason = parse_record(sample)
        try:
            ext = image_member(sample)
            if ext is None or reason is not None:
                return self._skip("no_image" if ext is None else reason, sample)
            plan = self.plan(key, record, rng)
            if plan == REJECTED:
                self.rejected += 1
                return None
            if isinstance(plan, str):
                return self._skip(plan, sample)
            if self.features is not None:  # the image is not decoded at all
                tokens = self.features.tokens(sample["__url__"], key)
                if tokens is None:
                    return self._skip("no_features", sample)
                return Example(None, plan.prompt, plan.target, plan.caption, plan.lang, plan.task, image_id(key),
                               image_tokens=tokens)
            try:
                image = decode_image(sample[ext], name=f"{key} in {sample.get('__url__')}")
            except BadImage as err:
                return self._skip(err.reason, sample)
            return Example(self.transform(image), plan.prompt, plan.target, plan.caption, plan.lang, plan.task,
                           image_id(key))
        finally:
            self.remember(key, record)


def _text(value: object) -> bool:
    """A usable text: a non-blank string that encodes as UTF-8 (a lone surrogate from a "\\ud800" JSON escape
    does not, and would fail in the tokenizer)."""
    if not isinstance(value, str) or not value.strip():
        return False
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _listed(value: object) -> list:
    """A text field (a string or a list) as a list; anything else as none."""
    return [value] if isinstance(value, str) else value if isinstance(value, list) else []


def qa_items(record: dict) -> list[dict]:
    """The usable QA items of a record: a text question, a string lang, answers a text or a list whose first
    item is one (kept as a list); others are ignored."""
    items = []
    for item in _listed(record.get("qa")):
        if not isinstance(item, dict) or not _text(item.get("question")) or not isinstance(item.get("lang"), str):
            continue
        answers = _listed(item.get("answers"))
        if answers and _text(answers[0]):
            items.append({**item, "answers": answers})
    return items


def malformed(record: dict) -> bool:
    """Whether the record's captions or qa have the wrong JSON types (what a hand-made shard gets wrong)."""
    captions, qa = record.get("captions", {}), record.get("qa", [])
    if not isinstance(captions, dict) or not isinstance(qa, list):
        return True
    texts = [t for value in captions.values() for t in (value if isinstance(value, list) else [value])]
    return any(not isinstance(t, str) or (t.strip() and not _text(t)) for t in texts) or len(qa_items(record)) < len(qa)


def image_id(key: str) -> int:
    """A stable 62-bit id of a sample key: equal ids mark the same image (ITC/ITM positives)."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little") >> 2


def sample_rng(seed: int, epoch: int | str, key: str) -> random.Random:
    # Choices depend only on (seed, epoch, key), so skipping samples on resume needs no RNG replay.
    return seeded_rng(seed, epoch, key)


def warn_template_fallbacks(cfg: DataConfig, templates: Templates) -> None:
    for task in cfg.tasks:
        missing = [lang for lang in cfg.languages if not templates.get(lang, task)]
        if missing:
            log.warning("templates %s: no '%s' templates for %s; using an English instruction naming the "
                        "language", templates.source, task, ", ".join(missing))
