"""webdataset pipeline: shard list -> split by rank -> split by worker -> shuffle -> decode -> example -> batch.

Every rank reads an endless stream (epochs of freshly shuffled shards), so ranks never run out of data
at different times and a run is measured in optimizer steps. The stream is deterministic for a seed:
a resumed run skips the samples it already consumed (cheaply, before decoding) and sees exactly the
batches an uninterrupted run would have seen.
"""

from __future__ import annotations

import glob
import hashlib
import io
import itertools
import json
import random
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import torch
import webdataset as wds
from PIL import Image
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from vlm.config import DataConfig
from vlm.data.collate import Collator, Example
from vlm.data.templates import caption_prompt, vqa_prompt

IMAGE_EXTENSIONS = ("jpg", "jpeg", "png", "webp")


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
            urls += [str(path / name) for name in json.loads(manifest.read_text())[split]]
            continue
        for url in wds.shardlists.expand_urls(item):
            matches = sorted(glob.glob(url)) if any(c in url for c in "*?[") else [url]
            if not matches:
                raise FileNotFoundError(f"data.{split}: no file matches {url}")
            urls += matches
    for url in urls:
        if "://" not in url and not Path(url).is_file():
            raise FileNotFoundError(f"data.{split}: shard not found: {url}")
    if not urls:
        raise FileNotFoundError(f"data.{split}: no shards given")
    return urls


# --- decoding ------------------------------------------------------------------------------------


@dataclass
class Decoded:
    key: str
    image: Image.Image
    record: dict


def decode_sample(sample: dict) -> Decoded | None:
    """Raw tar sample -> image + record, or None when the image or json is missing or corrupt."""
    ext = next((e for e in IMAGE_EXTENSIONS if e in sample), None)
    if ext is None or "json" not in sample:
        return None
    try:
        image = Image.open(io.BytesIO(sample[ext]))
        image = image.convert("RGB")
        record = json.loads(sample["json"])
    except Exception:  # noqa: BLE001 - any undecodable sample is skipped and counted
        return None
    if not isinstance(record, dict):
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


# --- examples ------------------------------------------------------------------------------------


def make_example(decoded: Decoded, cfg: DataConfig, transform, rng: random.Random) -> Example | None:
    """Pick a language and a task for this sample and build its prompt and target."""
    captions = decoded.record.get("captions", {})
    langs = [lang for lang in cfg.languages if captions.get(lang)]
    if not langs:
        return None
    lang = rng.choice(langs)
    questions = [q for q in decoded.record.get("qa", []) if q.get("lang") == lang and q.get("answers")]
    tasks = [(t, w) for t, w in zip(cfg.tasks, cfg.task_weights) if t != "vqa" or questions]
    if not tasks:
        return None
    task = rng.choices([t for t, _ in tasks], weights=[w for _, w in tasks])[0]
    caption = rng.choice(captions[lang])
    if task == "caption":
        prompt, target = caption_prompt(lang), caption
    else:
        item = rng.choice(questions)
        prompt, target = vqa_prompt(item["question"], lang), item["answers"][0]
    return Example(transform(decoded.image), prompt, target, caption, lang, task, image_id(decoded.key))


def image_id(key: str) -> int:
    """A stable 62-bit id of a sample key: equal ids mark the same image (ITC/ITM positives)."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "little") >> 2


def _sample_rng(seed: int, epoch: int, key: str) -> random.Random:
    # Choices depend only on (seed, epoch, key), so skipping samples on resume needs no RNG replay.
    digest = hashlib.blake2b(f"{seed}/{epoch}/{key}".encode(), digest_size=8).digest()
    return random.Random(int.from_bytes(digest, "little"))


# --- training stream -----------------------------------------------------------------------------


@dataclass
class StreamPosition:
    """How far each worker role has read; saved in checkpoints to resume the exact stream."""

    batches: int = 0  # batches handed to the trainer on this rank
    consumed: dict[int, int] = field(default_factory=dict)  # role -> raw samples read (incl. bad ones)


class TrainStream(IterableDataset):
    """Endless batches for one rank. Each worker role reads its own slice of the rank's shards. Worker `w`
    plays role `(w + position.batches) % num_roles`, so after a resume the DataLoader's round-robin over
    workers continues with the role whose batch was next."""

    def __init__(self, urls: list[str], cfg: DataConfig, transform, collator: Collator, batch_size: int,
                 seed: int, rank: int, world_size: int, position: StreamPosition | None = None):
        self.num_roles = max(cfg.num_workers, 1)
        if len(urls) < world_size * self.num_roles:
            raise ValueError(f"data.train has {len(urls)} shards for {world_size} ranks x {self.num_roles} "
                             f"workers; write more shards or lower data.num_workers")
        self.urls, self.cfg, self.transform, self.collator = urls, cfg, transform, collator
        self.batch_size, self.seed, self.rank, self.world_size = batch_size, seed, rank, world_size
        self.position = position or StreamPosition()

    def _raw_stream(self, role: int, stats: dict) -> Iterator[tuple[int, dict]]:
        def on_error(_exc: Exception) -> bool:
            stats["bad"] += 1
            return True

        for epoch in itertools.count():
            shards = list(self.urls)
            random.Random(self.seed * 1000003 + epoch).shuffle(shards)  # same order on every rank
            mine = shards[self.rank :: self.world_size][role :: self.num_roles]
            samples = wds.tariterators.tarfile_samples(({"url": u} for u in mine), handler=on_error)
            rng = random.Random(hash((self.seed, epoch, self.rank, role)))
            for sample in wds.shuffle(self.cfg.shuffle_buffer, initial=self.cfg.shuffle_buffer, rng=rng)(samples):
                yield epoch, sample

    def __iter__(self) -> Iterator[dict]:
        info = get_worker_info()
        worker = info.id if info is not None else 0
        role = (worker + self.position.batches) % self.num_roles
        stats = {"bad": 0}
        consumed = self.position.consumed.get(role, 0)
        stream = itertools.islice(self._raw_stream(role, stats), consumed, None)
        examples: list[Example] = []
        bad_reported = 0
        for epoch, sample in stream:
            consumed += 1
            decoded = decode_sample(sample)
            example = None
            if decoded is not None:
                example = make_example(decoded, self.cfg, self.transform, _sample_rng(self.seed, epoch, decoded.key))
            if example is None:
                stats["bad"] += 1
                continue
            examples.append(example)
            if len(examples) == self.batch_size:
                batch = self.collator(examples)
                batch["stream_role"], batch["stream_consumed"] = role, consumed
                batch["bad_samples"], bad_reported = stats["bad"] - bad_reported, stats["bad"]
                yield batch
                examples = []


def make_train_loader(stream: TrainStream, num_workers: int) -> DataLoader:
    # Its own generator: drawing worker seeds must not advance the global RNG that dropout uses,
    # or a resumed run would drift from an uninterrupted one.
    return DataLoader(stream, batch_size=None, num_workers=num_workers, persistent_workers=False,
                      prefetch_factor=4 if num_workers else None, generator=torch.Generator().manual_seed(stream.seed))


def fixed_batches(urls: list[str], cfg: DataConfig, transform, collator: Collator, batch_size: int,
                  max_batches: int, seed: int) -> list[dict]:
    """The same held-out batches every time (validation loss): samples in shard order, seeded choices."""
    examples: list[Example] = []
    for decoded in read_samples(urls):
        example = make_example(decoded, cfg, transform, _sample_rng(seed, 0, decoded.key))
        if example is not None:
            examples.append(example)
        if len(examples) == batch_size * max_batches:
            break
    full = len(examples) // batch_size
    return [collator(examples[i * batch_size : (i + 1) * batch_size]) for i in range(full)]
