"""Raw tar samples -> json records and decoded images, for readers that take every sample in order
(evaluation suites, baselines, the demo's parts); the training stream's per-sample logic is in examples.py."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

from PIL import Image

from data_prep.images import BadImage, decode_image
from data_prep.manifest import IMAGE_MEMBERS
from data_prep.tar_samples import shard_samples


@dataclass
class Decoded:
    key: str
    image: Image.Image
    record: dict


def image_member(sample: dict) -> str | None:
    """The image member of a raw sample (its extension), or None."""
    return next((e for e in IMAGE_MEMBERS if e in sample), None)


def parse_record(sample: dict) -> tuple[dict | None, str | None]:
    """A raw sample's json record, or None and why not (missing_json, bad_json)."""
    if "json" not in sample:
        return None, "missing_json"
    try:
        record = json.loads(sample["json"])
    except (ValueError, RecursionError):  # ValueError includes UnicodeDecodeError; deep nesting recurses
        return None, "bad_json"
    return (record, None) if isinstance(record, dict) else (None, "bad_json")


def decode_sample(sample: dict) -> tuple[Decoded | None, str]:
    """Raw tar sample -> (image + record, "") or (None, why not: a BAD_REASONS name)."""
    ext = image_member(sample)
    record, reason = parse_record(sample)
    if ext is None or reason is not None:
        return None, "no_image" if ext is None else reason
    try:
        image = decode_image(sample[ext], name=f"{sample['__key__']} in {sample.get('__url__')}")
    except BadImage as err:  # skipped and counted by the caller
        return None, err.reason
    return Decoded(sample["__key__"], image, record), ""


def read_samples(urls: list[str], stats: dict | None = None) -> Iterator[Decoded]:
    """Every decodable sample of `urls` in order (evaluation). What is skipped is counted in stats['bad'] and
    named in stats['skipped'] ("key in shard (reason)", or the shard and the tar error)."""
    stats = stats if stats is not None else {}
    stats.setdefault("bad", 0)
    named = stats.setdefault("skipped", [])

    def skip(reason: str, detail: str) -> None:
        stats["bad"] += 1
        named.append(f"{detail} ({reason})")

    for url in urls:
        for sample in shard_samples(url, skip):
            decoded, reason = decode_sample(sample)
            if decoded is None:
                skip(reason, f"{sample['__key__']} in {url}")
                continue
            yield decoded


def read_records(urls: list[str], limit: int = 0) -> list[dict]:
    """The json records of `urls` without decoding any image (for baselines and corpora)."""
    records: list[dict] = []
    for sample in (sample for url in urls for sample in shard_samples(url, _ignore)):
        record, _ = parse_record(sample)
        if record is not None:
            records.append(record)
        if limit and len(records) == limit:
            break
    return records


def _ignore(_reason: str, _detail: str) -> None:
    """Baselines and corpora take what is readable; the readers that train or score count what is not."""
