"""Translate records and write them as webdataset shards: the synthetic path and the real-data path."""

from __future__ import annotations

import io
import json
import multiprocessing
import os
import tempfile
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from concurrent.futures import ProcessPoolExecutor
from contextlib import nullcontext
from dataclasses import dataclass
from itertools import islice
from pathlib import Path

import webdataset as wds
from PIL import Image
from tqdm import tqdm

from data_prep.filters import check_translation
from data_prep.languages import validate_languages
from data_prep.synthetic import Scene, english_caption, english_qa, generate_scenes, render
from data_prep.translate import Translator, make_translator

IMAGE_KEYS = ("jpg", "jpeg", "png", "webp")
PNG_COMPRESS_LEVEL = 1  # level 1 is ~2x faster than the default 6 and only a few % bigger on noisy images
_SPLIT_IDS = {"train": 0, "val": 1}
KEPT = "translated"  # stats key of kept items; dropped ones count under "dropped/<reason>"  # separate seed streams, so val scenes are not a prefix of train's


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


def translate_record(record: dict, translator: Translator, langs: Iterable[str], stats: Counter) -> dict:
    """One-record form of translate_records; adds its counts to stats."""
    (translated,), record_stats = translate_records([record], translator, langs)
    stats.update(record_stats)
    return translated


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


@dataclass(frozen=True)
class _SyntheticShard:
    """One shard's worth of work for a (possibly separate) process: render, encode, write."""

    path: Path
    scenes: list[Scene]
    records: list[dict]
    first: int  # index of scenes[0] in the split: the sample key and part of the image seed
    image_size: int
    seed: tuple[int, int]  # (seed, split id); image i is rendered with seed (*seed, i)
    mtime: int


def _write_synthetic_shard(shard: _SyntheticShard) -> int:
    with wds.TarWriter(str(shard.path), mtime=shard.mtime) as sink:
        for index, (scene, record) in enumerate(zip(shard.scenes, shard.records), start=shard.first):
            image = render(scene, shard.image_size, seed=(*shard.seed, index))
            sink.write(_encoded({"__key__": f"{index:07d}", "png": _png(image), "json": record}))
    return len(shard.scenes)


def _pool(workers: int) -> ProcessPoolExecutor | nullcontext:
    if workers <= 1:
        return nullcontext(None)
    # spawn, not fork: the caller may be a process with torch threads running, which fork can deadlock.
    return ProcessPoolExecutor(workers, mp_context=multiprocessing.get_context("spawn"))


def prepare_synthetic(
    out_dir: str | Path,
    n_train: int,
    n_val: int,
    langs: Iterable[str],
    seed: int = 0,
    image_size: int = 64,
    shard_size: int = 1000,
    translator: Translator | str = "phrase_table",
    workers: int | None = None,
) -> dict:
    """Generate, translate and shard synthetic train/val scenes; write and return out_dir/manifest.json.

    English is always included (it is the source). Shards are rendered and written by `workers`
    processes (default: one per CPU, at most one per shard); the output does not depend on it. The
    manifest is written last, so its presence marks a complete set.
    """
    start = time.perf_counter()
    languages = validate_languages(["en", *validate_languages(langs)])
    translator = _as_translator(translator)
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "manifest.json").unlink(missing_ok=True)
    n_shards = -(-max(n_train, n_val) // shard_size)
    workers = min(workers or os.cpu_count() or 1, n_shards)
    manifest: dict = {}
    stats: Counter = Counter()
    with _pool(workers) as pool:
        for split, n in (("train", n_train), ("val", n_val)):
            scenes = generate_scenes(n, seed=(seed, _SPLIT_IDS[split]))
            records, split_stats = translate_records([_english_record(s) for s in scenes], translator, languages)
            stats.update(split_stats)
            with tempfile.TemporaryDirectory(prefix=f".{split}-", dir=out_dir) as tmp:
                jobs = [
                    _SyntheticShard(
                        Path(tmp) / f"{split}-{k:06d}.tar",
                        scenes[first : first + shard_size],
                        records[first : first + shard_size],
                        first,
                        image_size,
                        (seed, _SPLIT_IDS[split]),
                        _mtime(),
                    )
                    for k, first in enumerate(range(0, n, shard_size))
                ]
                done = pool.map(_write_synthetic_shard, jobs) if pool else map(_write_synthetic_shard, jobs)
                for _ in tqdm(done, total=len(jobs), desc=f"{split} shards", disable=None):
                    pass
                manifest[split] = [path.name for path in _publish(Path(tmp), out_dir, split)]
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
    captions = meta.get("captions", {}).get("en") or (raw["txt"].decode("utf-8").strip() if "txt" in raw else "")
    captions = [captions] if isinstance(captions, str) else captions
    if not any(captions):
        stats["skipped/no_caption"] += 1
        return None
    record = {**meta, "captions": {**meta.get("captions", {}), "en": captions}, "qa": meta.get("qa", [])}
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
