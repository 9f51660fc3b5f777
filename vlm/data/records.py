"""Raw tar samples -> json records and decoded images, for readers that take every sample in order
(evaluation suites, baselines, the demo's parts); the training stream's per-sample logic is in examples.py."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass

import webdataset as wds
from PIL import Image

from data_prep.manifest import IMAGE_MEMBERS
from vlm.data.images import BadImage, decode_image


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
    except ValueError:  # includes UnicodeDecodeError
        return None, "bad_json"
    return (record, None) if isinstance(record, dict) else (None, "bad_json")


def decode_sample(sample: dict) -> Decoded | None:
    """Raw tar sample -> image + record, or None when the image or json is missing or corrupt."""
    ext = image_member(sample)
    record, reason = parse_record(sample)
    if ext is None or reason is not None:
        return None
    try:
        image = decode_image(sample[ext])
    except BadImage:  # skipped and counted by the caller
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
