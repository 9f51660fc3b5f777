"""webdataset pipeline: shard list -> split by rank and worker (or resample) -> shuffle -> example -> batch.

Every rank reads an endless stream (epochs of freshly shuffled shards, or shards drawn with replacement when
`data.resampled`), so ranks never run out of data at different times (no DDP hang on uneven shards) and a
run is measured in optimizer steps. The stream is deterministic for a seed: a resumed run skips the samples
it already consumed (cheaply, before decoding) and sees exactly the batches an uninterrupted run would have
seen.

Per sample, before any image is decoded: its json is read, a language is drawn by temperature sampling
(`data.language_alpha`, see `LanguageSampler`), then a task (`data.tasks`) and a template of that language
(`vlm/data/templates.yaml` or `data.templates`). Samples that cannot be used are skipped and counted by
reason (`BadSamples`); the counts travel with each batch to the trainer's metrics.
"""

from __future__ import annotations

import hashlib
import io
import itertools
import json
import logging
import math
import os
import random
import time
from collections import Counter, deque
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from data_prep.manifest import IMAGE_MEMBERS, expand_pattern, language_counts, read_manifest
from vlm.config import DataConfig
from vlm.data.collate import Collator, Example
from vlm.data.templates import Templates, load_templates, match_templates, training_templates

log = logging.getLogger(__name__)
# Why a raw sample was skipped. tar_error: the tar iterator's exception (a truncated or corrupt tar: the rest
# of that shard is lost); no_language: no caption in any of data.languages; empty_caption: captions there,
# but all empty; no_task: none of data.tasks fits the sample's language (say, only vqa and no question).
BAD_REASONS = ("corrupt_image", "no_image", "missing_json", "bad_json", "tar_error", "no_language", "empty_caption",
               "no_task")
# Samples turned away by language sampling are not bad, and are counted apart.
REJECTED = "language_rejected"
# Caption matching draws its negatives from the captions of this many preceding raw samples of the same
# worker: a window of the stream itself, so a resumed run rebuilds it from the json of the samples it skips.
MATCH_POOL = 256
# A worker whose shards give no sample at all this many epochs in a row stops with an error, not a hang.
MAX_EMPTY_EPOCHS = 10
# --- shard lists ---------------------------------------------------------------------------------


def resolve_shards(spec: list[str], split: str) -> list[str]:
    """Expand a shard spec (files, globs, brace patterns, or a `vlm prep` folder with manifest.json)."""
    urls: list[str] = []
    for item in spec:
        path = Path(item)
        if path.is_dir():
            manifest = path / "manifest.json"
            if not manifest.is_file():
                raise FileNotFoundError(f"data.{split}: folder {item} has no manifest.json")
            listed = [str(path / name) for name in json.loads(manifest.read_text())[split]]
            if missing := [url for url in listed if not Path(url).is_file()]:
                raise FileNotFoundError(f"data.{split}: shard not found: {missing[0]}")
            urls += listed
            continue
        urls += expand_pattern(item, f"data.{split}: ")
    if not urls:
        raise FileNotFoundError(f"data.{split}: no shards given")
    return urls


def manifest_language_counts(spec: list[str], split: str) -> Counter | None:
    """Samples per language of `split` from the manifests of a shard spec (`counts[split]["languages"]`),
    or None when any item of the spec is not a folder whose manifest counts its languages."""
    manifests = []
    for item in spec:
        path = Path(item)
        if not path.is_dir():
            return None
        manifest = read_manifest(path)
        if not manifest.get("counts", {}).get(split, {}).get("languages"):
            return None
        manifests.append(manifest)
    return language_counts(manifests, split) if manifests else None


def worker_info() -> tuple[int, int, int, int]:
    """(rank, world_size, worker, num_workers), as webdataset's `pytorch_worker_info` finds them: the
    environment variables RANK/WORLD_SIZE and WORKER/NUM_WORKERS when set (tests, custom launchers), else
    torch.distributed and the DataLoader's worker info."""
    rank, world, worker, workers = 0, 1, 0, 1
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    elif torch.distributed.is_available() and torch.distributed.is_initialized():
        rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    if "WORKER" in os.environ and "NUM_WORKERS" in os.environ:
        worker, workers = int(os.environ["WORKER"]), int(os.environ["NUM_WORKERS"])
    else:
        info = get_worker_info()
        if info is not None:
            worker, workers = info.id, info.num_workers
    return rank, world, worker, workers


def _env_workers() -> bool:
    return "WORKER" in os.environ and "NUM_WORKERS" in os.environ


def _seeded(*parts) -> random.Random:
    digest = hashlib.blake2b("/".join(map(str, parts)).encode(), digest_size=8).digest()
    return random.Random(int.from_bytes(digest, "little"))


def stream_shards(urls: list[str], seed: int, epoch: int, rank: int, world_size: int, role: int, num_roles: int,
                  resampled: bool = False) -> list[str]:
    """The shards worker role `role` of rank `rank` reads in `epoch`.

    Split (default): the epoch's shuffle of all shards (the same on every rank), sliced by rank, then by
    role, so ranks x roles partition the shards; needs at least world_size x num_roles shards.
    Resampled: as many shards as a role's share of a split, drawn with replacement from all of them, seeded
    by (seed, epoch, rank, role): deterministic and resumable, and any number of shards will do.
    """
    if resampled:
        rng = _seeded("shards", seed, epoch, rank, role)
        return rng.choices(urls, k=max(1, math.ceil(len(urls) / (world_size * num_roles))))
    if len(urls) < world_size * num_roles:
        raise ValueError(f"data.train has {len(urls)} shards for {world_size} ranks x {num_roles} workers; write "
                         f"more shards, lower data.num_workers or set data.resampled=true")
    shards = list(urls)
    random.Random(seed * 1000003 + epoch).shuffle(shards)
    return shards[rank::world_size][role::num_roles]


# --- decoding ------------------------------------------------------------------------------------


@dataclass
class Decoded:
    key: str
    image: Image.Image
    record: dict


def _image_ext(sample: dict) -> str | None:
    return next((e for e in IMAGE_MEMBERS if e in sample), None)


def parse_record(sample: dict) -> tuple[dict | None, str | None]:
    """A raw sample's json record, or None and why not (missing_json, bad_json)."""
    if "json" not in sample:
        return None, "missing_json"
    try:
        record = json.loads(sample["json"])
    except ValueError:  # includes UnicodeDecodeError
        return None, "bad_json"
    return (record, None) if isinstance(record, dict) else (None, "bad_json")


def open_image(data: bytes) -> Image.Image:
    """Decode image bytes to RGB; raises on a corrupt or truncated image (PIL loads lazily: convert decodes)."""
    return Image.open(io.BytesIO(data)).convert("RGB")


def decode_sample(sample: dict) -> Decoded | None:
    """Raw tar sample -> image + record, or None when the image or json is missing or corrupt."""
    ext = _image_ext(sample)
    record, reason = parse_record(sample)
    if ext is None or reason is not None:
        return None
    try:
        image = open_image(sample[ext])
    except Exception:  # noqa: BLE001 - any undecodable sample is skipped and counted
        return None
    return Decoded(sample["__key__"], image, record)


def read_samples(urls: list[str], stats: dict | None = None) -> Iterator[Decoded]:
    """Every decodable sample of `urls` in order (evaluation); bad ones are counted in stats['bad']."""
    stats = stats if stats is not None else {}
    stats.setdefault("bad", 0)

    def on_error(_exc: Exception) -> bool:
        stats["bad"] += 1
        return True

    for sample in wds.tariterators.tarfile_samples(({"url": u} for u in urls), handler=on_error):
        decoded = decode_sample(sample)
        if decoded is None:
            stats["bad"] += 1
            continue
        yield decoded


def read_records(urls: list[str], limit: int = 0) -> list[dict]:
    """The json records of `urls` without decoding any image (for baselines and corpora)."""
    records: list[dict] = []
    for sample in wds.tariterators.tarfile_samples(({"url": u} for u in urls), handler=wds.warn_and_continue):
        try:
            record = json.loads(sample["json"]) if "json" in sample else None
        except ValueError:
            continue
        if isinstance(record, dict):
            records.append(record)
        if limit and len(records) == limit:
            break
    return records


# --- bad samples ---------------------------------------------------------------------------------


class BadSamples:
    """Counts skipped samples by reason (BAD_REASONS). Warns the first time a reason occurs, then at most
    once per `interval_s` seconds with the running counts. It never sleeps (webdataset's warn_and_continue
    sleeps 0.5 s per error, which stalls a loader on a bad shard). `handler` is the tar iterator's
    exception handler (reason tar_error). `take()` gives the counts since the previous call (one batch's)."""

    def __init__(self, interval_s: float = 60.0, clock: Callable[[], float] = time.monotonic):
        self.interval_s, self.clock = interval_s, clock
        self.totals: Counter = Counter()
        self.pending: Counter = Counter()
        self.enabled = True  # off while a resumed stream skips samples it already counted
        self._last_warning: float | None = None

    def add(self, reason: str, detail: str = "") -> None:
        if not self.enabled:
            return
        self.totals[reason] += 1
        self.pending[reason] += 1
        now = self.clock()
        if self.totals[reason] == 1 or self._last_warning is None or now - self._last_warning >= self.interval_s:
            self._last_warning = now
            log.warning("skipping a bad training sample (%s%s); skipped so far: %s", reason,
                        f": {detail[:200]}" if detail else "", dict(sorted(self.totals.items())))

    def handler(self, exc: Exception) -> bool:
        self.add("tar_error", f"{type(exc).__name__}: {exc}")
        return True  # go on with the next shard

    def take(self) -> dict[str, int]:
        counts = dict(self.pending)
        self.pending.clear()
        return counts


# --- languages -----------------------------------------------------------------------------------


class LanguageSampler:
    """Temperature sampling of the language a sample teaches, towards the target mix q_L ∝ n_L^alpha, where
    n_L counts the samples holding language L (alpha 1: the data's natural mix; 0: uniform).

    With p_L = n_L / sum n and weights w_L = q_L / p_L, a sample whose available languages are A is kept with
    probability min(1, sum_{L in A} w_L / max_L w_L) and then teaches L in A with probability ∝ w_L. Samples
    holding one language each (mBLIP-style data) are thus kept in proportion to w_L and reach q exactly;
    samples holding every language are always kept and teach L ∝ q_L. Without counts (`counts=None`) every
    sample is taken to hold every language: a uniform choice among a sample's languages, nothing rejected.
    """

    def __init__(self, languages: list[str], counts: Mapping[str, int] | None, alpha: float):
        n = {lang: (1 if counts is None else int(counts.get(lang, 0))) for lang in languages}
        present = {lang: c for lang, c in n.items() if c > 0}
        if not present:
            raise ValueError(f"data.languages {', '.join(languages)}: the manifest counts no training samples in "
                             f"any of them")
        total = sum(present.values())
        powered = {lang: c**alpha for lang, c in present.items()}
        norm = sum(powered.values())
        self.natural = {lang: present.get(lang, 0) / total for lang in languages}
        self.target = {lang: powered.get(lang, 0.0) / norm for lang in languages}
        self.weights = {lang: self.target[lang] / self.natural[lang] for lang in present}
        self.max_weight = max(self.weights.values())
        self.missing = [lang for lang in languages if lang not in present]

    @property
    def single_language_acceptance(self) -> float:
        """The share of samples kept when every sample holds one language: sum_L p_L w_L / max w = 1 / max w."""
        return 1.0 / self.max_weight

    def choose(self, available: list[str], rng: random.Random) -> str | None:
        """The language this sample teaches, or None when it is rejected."""
        weights = [self.weights.get(lang, 0.0) for lang in available]
        total = sum(weights)
        if total <= 0:
            return None
        keep = total / self.max_weight
        if keep < 1.0 and rng.random() >= keep:
            return None
        if min(weights) == max(weights):  # the same draw as a plain uniform choice
            return rng.choice(available)
        return rng.choices(available, weights=weights)[0]


# --- examples ------------------------------------------------------------------------------------


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

    def captions(self, record: dict) -> dict[str, list[str]]:
        """The non-empty captions of `record` per language of data.languages (in that order)."""
        captions = record.get("captions")
        if not isinstance(captions, dict):
            return {}
        found = {}
        for lang in self.cfg.languages:
            texts = captions.get(lang)
            texts = [texts] if isinstance(texts, str) else texts if isinstance(texts, list) else []
            texts = [t for t in texts if isinstance(t, str) and t.strip()]
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
        qa = record.get("qa") if isinstance(record.get("qa"), list) else []
        qa = [q for q in qa if isinstance(q, dict) and q.get("question") and q.get("answers")]
        qa_langs = {q.get("lang") for q in qa} if "vqa" in dict(self.tasks) else set()
        langs = [lang for lang in self.cfg.languages if lang in available or lang in qa_langs]
        if not langs:
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
            answer = str(item["answers"][0])
            return Plan(lang, task, template.format(question=item["question"]), answer, answer)
        caption = rng.choice(available[lang])
        if task == "caption":
            return Plan(lang, task, rng.choice(self.prompts[(lang, task)]), caption, caption)
        if task == "vqa":
            item = rng.choice(questions)
            template = rng.choice(self.prompts[(lang, task)])
            return Plan(lang, task, template.format(question=item["question"]), str(item["answers"][0]), caption)
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
            ext = _image_ext(sample)
            if ext is None or reason is not None:
                return self._skip("no_image" if ext is None else reason, sample)
            plan = self.plan(key, record, rng)
            if plan == REJECTED:
                self.rejected += 1
                return None
            if isinstance(plan, str):
                return self._skip(plan, sample)
            try:
                image = open_image(sample[ext])
            except Exception:  # noqa: BLE001 - any undecodable image is skipped and counted
                return self._skip("corrupt_image", sample)
            return Example(self.transform(image), plan.prompt, plan.target, plan.caption, plan.lang, plan.task,
                           image_id(key))
        finally:
            self.remember(key, record)


def image_id(key: str) -> int:
    """A stable 62-bit id of a sample key: equal ids mark the same image (ITC/ITM positives)."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little") >> 2


def _sample_rng(seed: int, epoch: int | str, key: str) -> random.Random:
    # Choices depend only on (seed, epoch, key), so skipping samples on resume needs no RNG replay.
    return _seeded(seed, epoch, key)


def language_sampler(cfg: DataConfig, counts: Mapping[str, int] | None = None) -> LanguageSampler:
    """The training stream's language sampler: counts from the manifests of data.train unless given."""
    if counts is None:
        counts = manifest_language_counts(cfg.train, "train")
        if counts is None:
            log.warning("data.train has no per-language sample counts (manifest.json counts.train.languages); "
                        "language sampling assumes every sample holds every language (data.language_alpha "
                        "has no effect)")
    sampler = LanguageSampler(cfg.languages, counts, cfg.language_alpha)
    if sampler.missing:
        log.warning("data.languages %s: no training samples in the manifest counts", ", ".join(sampler.missing))
    if counts is not None:
        log.info("language sampling (alpha %s): natural mix %s, target mix %s; single-language samples "
                 "would be kept at %.0f%%", cfg.language_alpha, _mix(sampler.natural), _mix(sampler.target),
                 100 * sampler.single_language_acceptance)
    return sampler


def _mix(shares: dict[str, float]) -> str:
    return " ".join(f"{lang} {share:.2f}" for lang, share in shares.items())


def _warn_template_fallbacks(cfg: DataConfig, templates: Templates) -> None:
    for task in cfg.tasks:
        missing = [lang for lang in cfg.languages if not templates.get(lang, task)]
        if missing:
            log.warning("templates %s: no '%s' templates for %s; using an English instruction naming the "
                        "language", templates.source, task, ", ".join(missing))


# --- training stream -----------------------------------------------------------------------------


@dataclass
class StreamPosition:
    """How far each worker role has read; saved in checkpoints to resume the exact stream."""

    batches: int = 0  # batches handed to the trainer on this rank
    consumed: dict[int, int] = field(default_factory=dict)  # role -> raw samples read (incl. bad ones)


class TrainStream(IterableDataset):
    """Endless batches for one rank. Each worker role reads its own shards (`stream_shards`). Worker `w`
    plays role `(w + position.batches) % num_roles`, so after a resume the DataLoader's round-robin over
    workers continues with the role whose batch was next.

    rank/world_size default to the environment (RANK/WORLD_SIZE, else torch.distributed). NUM_WORKERS, when set
    with WORKER, overrides data.num_workers, and WORKER gives the worker id outside a DataLoader worker
    (webdataset's convention), so tests and custom launchers can drive the split without a process group or
    DataLoader; inside one, the DataLoader's worker id is used (and its worker count must match).

    Each batch carries `stream_role`/`stream_consumed` (the position), `bad_samples` ({reason: samples skipped
    since the previous batch of this worker}) and `language_rejected` (samples language sampling turned away).
    """

    def __init__(self, urls: list[str], cfg: DataConfig, transform, collator: Collator, batch_size: int,
                 seed: int, rank: int | None = None, world_size: int | None = None,
                 position: StreamPosition | None = None, language_counts: Mapping[str, int] | None = None):
        env_rank, env_world, _, env_workers = worker_info()
        self.rank = env_rank if rank is None else rank
        self.world_size = env_world if world_size is None else world_size
        self.num_roles = env_workers if _env_workers() else max(cfg.num_workers, 1)
        self.urls, self.cfg, self.transform, self.collator = urls, cfg, transform, collator
        self.batch_size, self.seed = batch_size, seed
        self.position = position or StreamPosition()
        if not urls:
            raise ValueError("data.train: no shards")
        stream_shards(urls, seed, 0, self.rank, self.world_size, 0, self.num_roles, cfg.resampled)  # too few?
        self.templates = load_templates(cfg.templates)
        _warn_template_fallbacks(cfg, self.templates)
        self.sampler = language_sampler(cfg, language_counts)

    def shards(self, epoch: int, role: int) -> list[str]:
        return stream_shards(self.urls, self.seed, epoch, self.rank, self.world_size, role, self.num_roles,
                             self.cfg.resampled)

    def _epoch(self, epoch: int, role: int, handler: Callable[[Exception], bool]) -> Iterator[tuple[int | str, dict]]:
        """(tag, raw sample) of one epoch's shards. The tag seeds the sample's choices: the epoch, and with
        resampling also which draw of the epoch it came from (a shard drawn twice teaches different things)."""
        for draw, url in enumerate(self.shards(epoch, role)):
            tag = f"{epoch}.{self.rank}.{role}.{draw}" if self.cfg.resampled else epoch
            for sample in wds.tariterators.tarfile_samples([{"url": url}], handler=handler):
                yield tag, sample

    def _raw_stream(self, role: int, handler: Callable[[Exception], bool]) -> Iterator[tuple[int | str, dict]]:
        """Epoch after epoch, each shuffled through a buffer (before decoding: it holds bytes, not tensors)."""
        empty = 0
        for epoch in itertools.count():
            rng = random.Random(hash((self.seed, epoch, self.rank, role)))  # ints: hash() is not salted
            seen = False
            for item in wds.shuffle(self.cfg.shuffle_buffer, initial=self.cfg.shuffle_buffer, rng=rng)(
                    self._epoch(epoch, role, handler)):
                seen = True
                yield item
            empty = 0 if seen else empty + 1
            if empty == MAX_EMPTY_EPOCHS:
                raise RuntimeError(f"data.train: worker {role} of rank {self.rank} read no sample in "
                                   f"{MAX_EMPTY_EPOCHS} passes over its shards; are they empty or corrupt?")

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        if info is not None:  # inside a DataLoader worker, its id is authoritative
            if info.num_workers != self.num_roles:
                raise ValueError(f"the DataLoader has {info.num_workers} workers, the stream was built for "
                                 f"{self.num_roles} (data.num_workers, or NUM_WORKERS in the environment)")
            worker = info.id
        else:
            worker = int(os.environ["WORKER"]) if _env_workers() else 0
        role = (worker + self.position.batches) % self.num_roles
        bad = BadSamples()
        maker = ExampleMaker(self.cfg, self.transform, self.templates, self.sampler, bad)
        skip = consumed = self.position.consumed.get(role, 0)
        refill = skip - MATCH_POOL if maker.pool is not None else skip  # rebuild the matching pool
        bad.enabled = skip == 0
        examples: list[Example] = []
        rejected_reported = 0
        for index, (tag, sample) in enumerate(self._raw_stream(role, bad.handler)):
            if index < skip:
                if index >= refill:
                    maker.remember(sample["__key__"], parse_record(sample)[0])
                continue
            bad.enabled = True
            consumed += 1
            example = maker(sample, _sample_rng(self.seed, tag, sample["__key__"]))
            if example is None:
                continue
            examples.append(example)
            if len(examples) == self.batch_size:
                batch = self.collator(examples)
                batch["stream_role"], batch["stream_consumed"] = role, consumed
                batch["bad_samples"] = bad.take()
                batch[REJECTED], rejected_reported = maker.rejected - rejected_reported, maker.rejected
                yield batch
                examples = []


def make_train_loader(stream: TrainStream, num_workers: int) -> DataLoader:
    # Its own generator: drawing worker seeds must not advance the global RNG that dropout uses,
    # or a resumed run would drift from an uninterrupted one.
    return DataLoader(stream, batch_size=None, num_workers=num_workers, persistent_workers=False,
                      prefetch_factor=4 if num_workers else None, generator=torch.Generator().manual_seed(stream.seed))


def fixed_batches(urls: list[str], cfg: DataConfig, transform, collator: Collator, batch_size: int,
                  max_batches: int, seed: int) -> list[dict]:
    """The same held-out batches every time (validation loss): samples in shard order, seeded choices, each
    sample's language drawn uniformly among its own (no language sampling)."""
    maker = ExampleMaker(cfg, transform)
    examples: list[Example] = []
    for sample in wds.tariterators.tarfile_samples(({"url": u} for u in urls), handler=maker.bad.handler):
        example = maker(sample, _sample_rng(seed, 0, sample["__key__"]))
        if example is not None:
            examples.append(example)
        if len(examples) == batch_size * max_batches:
            break
    full = len(examples) // batch_size
    return [collator(examples[i * batch_size : (i + 1) * batch_size]) for i in range(full)]
