"""Webdataset shards: writing them, and the two preparation paths (synthetic scenes, existing shards)."""

from __future__ import annotations

import gc
import io
import json
import os
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from itertools import islice
from pathlib import Path

import webdataset as wds
from PIL import Image
from tqdm import tqdm

from data_prep.languages import validate_languages
from data_prep.records import translate_records
from data_prep.synthetic import Scene, english_caption, english_qa, generate_scenes, render
from data_prep.translate import Translator, make_translator

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")
PNG_COMPRESS_LEVEL = 1  # faster than the default 6, and on these noisy images even ~10% smaller
_SPLIT_IDS = {"train": 0, "val": 1}  # separate seed streams, so val scenes are not a prefix of train's


def _encoded(sample: dict) -> dict:
    # Encode JSON ourselves: webdataset's default escapes every non-ASCII character (6 bytes each).
    if "json" in sample and not isinstance(sample["json"], bytes):
        return {**sample, "json": json.dumps(sample["json"], ensure_ascii=False).encode("utf-8")}
    return sample


def _publish(tmp: Path, out_dir: Path, prefix: str) -> list[Path]:
    """Move the finished {prefix}-*.tar shards from tmp into out_dir, replacing any older set."""
    for stale in out_dir.glob(f"{prefix}-[0-9]*.tar"):
        stale.unlink()
    shards = []
    for path in sorted(tmp.glob(f"{prefix}-[0-9]*.tar")):
        os.replace(path, out_dir / path.name)
        shards.append(out_dir / path.name)
    return shards


def _mtime() -> int:
    """mtime for tar members. Whole seconds: webdataset's default float time.time() makes tarfile add a
    1 KiB PAX header to every member (twice the header bytes, a quarter of the write time)."""
    return int(time.time())


def write_shards(samples: Iterable[dict], out_dir: str | Path, prefix: str, maxcount: int) -> list[Path]:
    """Write samples to out_dir/{prefix}-000000.tar, ... and return the shard paths.

    Shards are written in a temp folder and moved in only when all are done (replacing an older
    {prefix}-*.tar set), so a crash never leaves a partial set that looks complete.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix=f".{prefix}-", dir=out_dir) as tmp:
        pattern = str(Path(tmp) / prefix).replace("%", "%%") + "-%06d.tar"
        count = 0
        with wds.ShardWriter(pattern, maxcount=maxcount, verbose=0, mtime=_mtime()) as writer:
            for sample in samples:
                writer.write(_encoded(sample))
                count += 1
        if not count:  # ShardWriter opens its first shard eagerly: drop that empty one
            for empty in Path(tmp).glob("*.tar"):
                empty.unlink()
        return _publish(Path(tmp), out_dir, prefix)


def _write_json_atomic(path: Path, data: dict) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(data, ensure_ascii=False, indent=1), encoding="utf-8")
    os.replace(tmp, path)


def _as_translator(translator: Translator | str) -> Translator:
    return make_translator(translator) if isinstance(translator, str) else translator


def _english_record(scene: Scene) -> dict:
    return {
        "scene": scene.to_dict(),
        "captions": {"en": [english_caption(scene)]},
        "qa": [{"lang": "en", **item} for item in english_qa(scene)],
    }


def _png(image: Image.Image) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG", compress_level=PNG_COMPRESS_LEVEL)
    return buffer.getvalue()


def _synthetic_samples(
    scenes: list[Scene], records: list[dict], image_size: int, split_seed: tuple[int, int]
) -> Iterator[dict]:
    for index, (scene, record) in enumerate(zip(scenes, records)):
        # Each image's seed is fixed by its index, so any sample can be re-rendered on its own.
        image = render(scene, image_size, seed=(*split_seed, index))
        yield {"__key__": f"{index:07d}", "png": _png(image), "json": record}


@contextmanager
def _gc_paused() -> Iterator[None]:
    """Pause the cyclic garbage collector: records are millions of small acyclic containers that it
    would rescan over and over (a third of the run time at 20k scenes). Nothing here makes cycles."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def prepare_synthetic(
    out_dir: str | Path,
    n_train: int,
    n_val: int,
    langs: Iterable[str],
    seed: int = 0,
    image_size: int = 64,
    shard_size: int = 1000,
    translator: Translator | str = "phrase_table",
) -> dict:
    """Generate, translate and shard synthetic train/val scenes; write and return out_dir/manifest.json.

    English is always included (it is the source). The manifest is written last, so its presence
    marks a complete set.
    """
    start = time.perf_counter()
    for name, value, least in (("n_train", n_train, 0), ("n_val", n_val, 0), ("image_size", image_size, 16),
                               ("shard_size", shard_size, 1)):
        if value < least:
            raise ValueError(f"prepare_synthetic: {name} must be >= {least}, got {value}")
    languages = validate_languages(["en", *validate_languages(langs)])
    translator = _as_translator(translator)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "manifest.json").unlink(missing_ok=True)
    manifest: dict = {}
    stats: Counter = Counter()
    with _gc_paused():
        for split, n in (("train", n_train), ("val", n_val)):
            split_seed = (seed, _SPLIT_IDS[split])
            scenes = generate_scenes(n, seed=split_seed)
            records, split_stats = translate_records([_english_record(s) for s in scenes], translator, languages)
            stats.update(split_stats)
            samples = _synthetic_samples(scenes, records, image_size, split_seed)
            shards = write_shards(tqdm(samples, total=n, desc=split, disable=None), out_dir, split, shard_size)
            manifest[split] = [path.name for path in shards]
    manifest |= {
        "languages": languages,
        "n_train": n_train,
        "n_val": n_val,
        "stats": dict(sorted(stats.items())),
        "seconds": round(time.perf_counter() - start, 2),
    }
    _write_json_atomic(out_dir / "manifest.json", manifest)
    return manifest


def _chunks(items: Iterable, size: int) -> Iterator[list]:
    iterator = iter(items)
    while chunk := list(islice(iterator, size)):
        yield chunk


def _read_sample(raw: dict, stats: Counter) -> tuple[str, str, bytes, dict] | None:
    """(key, image extension, image bytes, English record) of a raw shard sample; None (counted) if unusable."""
    image_key = next((key for key in IMAGE_KEYS if key in raw), None)
    if image_key is None:
        stats["skipped/no_image"] += 1
        return None
    try:
        meta = json.loads(raw["json"]) if "json" in raw else {}
    except (UnicodeDecodeError, json.JSONDecodeError):
        meta = None
    if not isinstance(meta, dict):
        stats["skipped/bad_json"] += 1
        return None
    given = meta.get("captions") if isinstance(meta.get("captions"), dict) else {}
    captions = given.get("en") or (raw["txt"].decode("utf-8", "replace") if "txt" in raw else "")
    captions = [captions] if isinstance(captions, str) else captions if isinstance(captions, list) else []
    captions = [c.strip() for c in captions if isinstance(c, str) and c.strip()]
    if not captions:
        stats["skipped/no_caption"] += 1
        return None
    record = {**meta, "captions": {**given, "en": captions}, "qa": meta.get("qa", [])}
    return raw["__key__"], image_key, raw[image_key], record


def translate_shards(
    in_urls: list[str],
    out_dir: str | Path,
    langs: Iterable[str],
    translator: Translator | str,
    prefix: str = "train",
    maxcount: int = 1000,
) -> dict:
    """Translate existing shards (image + json captions.en or img2dataset txt) into new shards.

    Images pass through as the original bytes. Records are translated maxcount at a time, so memory
    stays bounded and each translator call still sees a large batch.
    """
    start = time.perf_counter()
    languages = validate_languages(["en", *validate_languages(langs)])
    translator = _as_translator(translator)
    stats: Counter = Counter()

    def samples() -> Iterator[dict]:
        for chunk in _chunks(wds.WebDataset(in_urls, shardshuffle=False), maxcount):
            read = [sample for raw in chunk if (sample := _read_sample(raw, stats)) is not None]
            records, chunk_stats = translate_records([record for *_, record in read], translator, languages)
            stats.update(chunk_stats)
            stats["samples"] += len(read)
            for (key, image_key, image, _), record in zip(read, records):
                yield {"__key__": key, image_key: image, "json": record}

    shards = write_shards(tqdm(samples(), desc=prefix, disable=None), out_dir, prefix, maxcount)
    return {
        "shards": [path.name for path in shards],
        "languages": languages,
        "stats": dict(sorted(stats.items())),
        "seconds": round(time.perf_counter() - start, 2),
    }
