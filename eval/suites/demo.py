"""Held-out webdataset shards written by `vlm prep` (the demo's synthetic benchmark, or your own data in
that format): one `.json` record per image with {"captions": {lang: [...]}, "qa": [{lang, question,
answers, type}]}. `root` is a `vlm prep` folder (its manifest.json names the val and train shards) or a
shard spec (file, glob, brace pattern). The train shards, when the manifest has them, give the majority
baselines."""

from __future__ import annotations

from pathlib import Path

from eval.suites import Benchmark, BenchmarkDataError, BenchmarkImage
from vlm.data.records import read_records, read_samples
from vlm.data.shards import resolve_shards

TRAIN_RECORDS_FOR_BASELINES = 5000


def _languages_of(images: list[BenchmarkImage]) -> list[str]:
    found: dict[str, None] = {}
    for image in images:
        found.update(dict.fromkeys(image.captions))
        found.update(dict.fromkeys(q["lang"] for q in image.qa if "lang" in q))
    return list(found)


def load_shards(val_specs: list[str], languages: list[str] | None = None, train_specs: list[str] | None = None,
                max_images: int = 0) -> Benchmark:
    """The images of `val_specs` (decoded now: shards are read front to back, not by random access), with
    undecodable samples skipped, counted in `Benchmark.source` and named in `Benchmark.skipped`."""
    urls = resolve_shards(val_specs, "val")
    stats: dict = {}
    images = []
    for sample in read_samples(urls, stats):
        record = sample.record
        captions = record.get("captions", {})
        qa = record.get("qa", [])
        if not isinstance(captions, dict) or not isinstance(qa, list):
            stats["bad"] += 1
            stats["skipped"].append(f"{sample.key} (bad_record)")
            continue
        images.append(BenchmarkImage(sample.key, sample.image, captions, qa))
        if max_images and len(images) == max_images:
            break
    if not images:
        raise BenchmarkDataError(f"{urls[0]}: no decodable samples with a json record in {len(urls)} shard(s)")
    available = _languages_of(images)
    if languages:
        unknown = [lang for lang in languages if lang not in available]
        if unknown:
            raise BenchmarkDataError(f"{val_specs[0]}: language {unknown[0]!r} has no captions or questions; "
                                     f"available: {', '.join(available)}")
    train_records = read_records(resolve_shards(train_specs, "train"), TRAIN_RECORDS_FOR_BASELINES) if train_specs else []
    return Benchmark(
        name="demo",
        languages=list(languages or available),
        images=images,
        tasks=("retrieval", "captioning", "vqa"),
        retrieval_captions="first",
        parallel_captions=True,  # translated from English by `vlm prep translate`
        source=f"vlm prep shards: {len(urls)} val shard(s), {len(images)} images, {stats['bad']} undecodable skipped",
        train_records=train_records,
        skipped=stats["skipped"],
    )


def load_demo(root: Path, languages: list[str] | None = None, max_images: int = 0) -> Benchmark:
    """A `vlm prep` folder: its val split is evaluated and its train split gives the baselines."""
    has_train = (root / "manifest.json").is_file()
    return load_shards([str(root)], languages, [str(root)] if has_train else None, max_images)
