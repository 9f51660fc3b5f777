"""img2dataset webdataset output: folders of 00000.tar, 00001.tar, ... (or tar files given one by one).

A sample is `<key>.jpg|png|webp` + optional `<key>.txt` (caption) + optional `<key>.json` (url, caption, key,
status, width, height, original_width, original_height, exif, sha256, extra columns). Shards are ragged
(failed downloads are absent) and their numbering may have gaps, so folders are globbed, never brace-expanded.

Record: captions.und (language: --lang's) = [the .txt caption, else the json "caption"], qa = [], source =
{"format": "img2dataset", "shard", "key", url, sha256, width, height, ... (the json's fields but caption, exif,
status, error_message)}.

Skipped: missing_image (no image member), bad_json, bad_text (a .txt that is not UTF-8), no_caption (no .txt,
empty .txt and json caption null or empty), the image checks of data_prep.sources, duplicate_key (a key read
before in the same shard); tar_error counts shards that could not be read to the end (a killed download
leaves a truncated tar): the samples before the damage are kept and the next shard is read; empty_shard
counts shards of 0 bytes or without a sample.
The `<shard>_stats.json` sidecars give the download's success rate (source.download in the manifest);
the `.parquet` sidecars repeat the json metadata and are not read.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

from data_prep.manifest import IMAGE_MEMBERS
from data_prep.sources import UNDETERMINED, Sample, Skip, Source, texts, usable
from data_prep.tar_samples import shard_samples

log = logging.getLogger(__name__)

_NOT_PROVENANCE = ("caption", "key", "exif", "status", "error_message")  # text, duplicates, bulk, always success
_DOWNLOAD_FIELDS = ("count", "successes")  # plus every "failed_to_*" field of the stats sidecars


def check(inputs: list[str], images: str = "") -> Source:
    if images:
        raise ValueError(f"--images {images}: img2dataset shards hold their images; drop --images")
    shards = _shard_paths(inputs)
    stats: Counter = Counter()
    return Source(_samples(shards, stats), stats, info={"shards_read": len(shards), **_download_summary(shards)})


def _shard_paths(inputs: list[str]) -> list[Path]:
    shards: list[Path] = []
    for name in inputs:
        path = Path(name)
        if path.is_dir():
            found = sorted(path.glob("*.tar"))
            if not found:
                raise FileNotFoundError(f"{name}: no .tar shards in this folder")
            shards += found
        elif path.is_file():
            shards.append(path)
        else:
            raise FileNotFoundError(f"{name}: no such file or folder")
    return list(dict.fromkeys(shards))  # a shard named twice is read once


def _download_summary(shards: list[Path]) -> dict:
    """Sums of the `<shard>_stats.json` sidecars (count, successes, failed_to_*), when there are any."""
    totals: Counter = Counter()
    sidecars = 0
    for shard in shards:
        sidecar = shard.with_name(f"{shard.stem}_stats.json")
        try:
            stats = json.loads(sidecar.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            continue  # sidecars are optional metadata: a missing or damaged one only narrows the summary
        if not isinstance(stats, dict):
            continue
        sidecars += 1
        totals.update({name: value for name, value in stats.items() if isinstance(value, int)
                       and (name in _DOWNLOAD_FIELDS or name.startswith("failed_to_"))})
    if not sidecars:
        return {}
    summary = {"stats_sidecars": sidecars, **dict(sorted(totals.items()))}
    if totals["count"]:
        summary["success_rate"] = round(totals["successes"] / totals["count"], 4)
    return {"download": summary}


def _samples(shards: list[Path], stats: Counter) -> Iterator[Sample]:
    for shard in shards:
        raw = ((f"{shard}:{sample['__key__']}", (shard, sample)) for sample in _read_shard(shard, stats))
        yield from usable(raw, _sample, stats)


def _read_shard(shard: Path, stats: Counter) -> Iterator[dict]:
    """The raw samples of one shard as training reads them (data_prep.tar_samples.shard_samples): up to the first
    damage (tar_error: the samples before it are kept), a key repeated in the shard dropped (duplicate_key),
    a shard with nothing in it counted (empty_shard)."""

    def skip(reason: str, detail: str) -> None:
        stats[f"skipped/{reason}"] += 1
        log.warning("%s: skipped/%s (%s)", shard, reason, detail)

    yield from shard_samples(str(shard), skip)


def _sample(item: tuple[Path, dict]) -> Sample:
    shard, raw = item
    member = next((name for name in IMAGE_MEMBERS if name in raw), None)
    if member is None:
        raise Skip("missing_image")
    try:
        meta = json.loads(raw["json"]) if "json" in raw else {}
    except ValueError as err:  # covers UnicodeDecodeError
        raise Skip("bad_json", str(err)) from None
    if not isinstance(meta, dict):
        raise Skip("bad_json", "not a JSON object")
    try:
        caption = texts(raw["txt"].decode("utf-8")) if "txt" in raw else []
    except UnicodeDecodeError as err:  # decoding with replacement would teach U+FFFD
        raise Skip("bad_text", f".txt caption: {err}") from None
    caption = caption or texts(meta.get("caption") if isinstance(meta.get("caption"), str) else None)
    if not caption:
        raise Skip("no_caption")
    provenance = {name: value for name, value in meta.items() if name not in _NOT_PROVENANCE}
    source = {"format": "img2dataset", "shard": str(shard), "key": raw["__key__"], **provenance}
    return Sample(raw["__key__"], raw[member], {"captions": {UNDETERMINED: caption}, "qa": [], "source": source})
