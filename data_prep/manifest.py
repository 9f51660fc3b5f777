"""manifest.json: what a `vlm prep` folder holds. Written last, so its presence marks a complete set.

    {
      "train": ["train-000000.tar", ...],      # one shard list per split (what data.train reads)
      "val": [...],
      "counts": {"train": {"samples": 1200, "shards": {"train-000000.tar": 1000, ...},
                           "languages": {"en": 1200, "de": 1187, ...}}},
      "fertility": {"tokenizer": ..., ...},    # with --tokenizer: data_prep.fertility.measure of the captions
      ...                                      # the writer's own keys (source, stats, seconds, ...)
    }

`languages` counts the samples that hold at least one caption or QA item in each language: the
training stream's temperature sampling reads it.
"""

from __future__ import annotations

import glob
import json
import os
from collections import Counter
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import webdataset as wds

from data_prep.fertility import MAX_TEXTS, TokenCounter, measure

MANIFEST = "manifest.json"
IMAGE_MEMBERS = ("jpg", "jpeg", "png", "webp")  # the image extensions a shard sample may have


def record_languages(record: dict) -> set[str]:
    """The languages a record can teach: those with a non-empty caption list or a QA item."""
    captions = record.get("captions") if isinstance(record.get("captions"), dict) else {}
    langs = {lang for lang, texts in captions.items() if texts}
    qa = record.get("qa") if isinstance(record.get("qa"), list) else []
    return langs | {item["lang"] for item in qa if isinstance(item, dict) and item.get("lang")}


class SplitCounter:
    """Counts samples per shard and per language while a split is written."""

    def __init__(self) -> None:
        self.shards: dict[str, int] = {}
        self.languages: Counter = Counter()

    def add(self, shard: str, record: dict) -> None:
        self.shards[shard] = self.shards.get(shard, 0) + 1
        self.languages.update(record_languages(record))

    def merge(self, other: dict) -> None:
        """Add a `to_dict()` of another counter (another rank's or an earlier run's)."""
        for name, n in other["shards"].items():
            self.shards[name] = self.shards.get(name, 0) + n
        self.languages.update(other["languages"])

    def to_dict(self) -> dict:
        return {
            "samples": sum(self.shards.values()),
            "shards": dict(sorted(self.shards.items())),
            "languages": dict(sorted(self.languages.items())),
        }


@dataclass(frozen=True)
class TokenizerProbe:
    """The tokenizer `--tokenizer` names, for the manifest's fertility table."""

    name: str
    count: TokenCounter

    def table(self, captions: CaptionSample, parallel: bool) -> dict:
        return {"tokenizer": self.name, **measure(self.count, captions.texts, parallel)}


class CaptionSample:
    """The first `limit` captions of each language of the records added: what a fertility table measures."""

    def __init__(self, limit: int = MAX_TEXTS) -> None:
        self.limit = limit
        self.texts: dict[str, list[str]] = {}

    def add(self, record: dict, languages: Iterable[str] | None = None) -> None:
        """Take the record's captions (of `languages` only, when given) while their language has room."""
        for lang, captions in record.get("captions", {}).items():
            if languages is None or lang in languages:
                bucket = self.texts.setdefault(lang, [])
                bucket += captions[:self.limit - len(bucket)]

    def full(self, languages: Iterable[str]) -> bool:
        return all(len(self.texts.get(lang, ())) >= self.limit for lang in languages)


def write_manifest(out_dir: str | Path, splits: dict[str, SplitCounter | dict], **extra) -> dict:
    """Write out_dir/manifest.json atomically and return it. `splits` maps a split name to its counter
    (or a counter's `to_dict()`); shards are listed in name order."""
    counts = {name: c.to_dict() if isinstance(c, SplitCounter) else c for name, c in splits.items()}
    manifest: dict = {name: sorted(c["shards"]) for name, c in counts.items()}
    manifest["counts"] = counts
    manifest |= extra
    write_json(Path(out_dir) / MANIFEST, manifest)
    return manifest


def write_json(path: Path, data: dict) -> None:
    """Write JSON through a temp file and a rename: a reader never sees half of it."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, ensure_ascii=False, indent=1), encoding="utf-8")
    os.replace(tmp, path)


def expand_pattern(pattern: str, prefix: str, keep_missing: bool = False) -> list[str]:
    """The shards of a brace pattern and/or glob ("data/train-{000000..000099}.tar", "data/*.tar"), the
    shard-spec syntax of data.train and `vlm prep translate`; URLs pass through. A missing file raises
    FileNotFoundError with `prefix` in front ("data.train: ", "input "), or with `keep_missing` stays in the
    list (the caller decides); a glob that matches nothing always raises."""
    urls = []
    for url in wds.shardlists.expand_urls(pattern):
        matches = sorted(glob.glob(url)) if any(c in url for c in "*?[") else [url]
        missing = [m for m in matches if not shard_exists(m)]
        if not matches or (missing and not keep_missing):
            raise FileNotFoundError(f"{prefix}shard not found: {missing[0] if missing else url}")
        urls += matches
    return urls


def shard_exists(url: str) -> bool:
    """Whether a shard is there: a local file that exists, or any URL (only reading it can tell)."""
    return "://" in url or Path(url).is_file()


def read_manifest(folder: str | Path) -> dict:
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise FileNotFoundError(f"{folder}: no {MANIFEST} (not a `vlm prep` folder, or an unfinished one)")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(manifest, dict):
        raise ValueError(f"{path}: expected a JSON object")
    return manifest


def language_counts(manifests: Iterable[dict], split: str) -> Counter:
    """Samples per language of `split`, summed over manifests (those without counts add nothing)."""
    total: Counter = Counter()
    for manifest in manifests:
        total.update(manifest.get("counts", {}).get(split, {}).get("languages", {}))
    return total
