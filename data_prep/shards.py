"""Webdataset shards: writing them, and the synthetic data of the demo (English scenes, then the translation job)."""

from __future__ import annotations

import gc
import io
import json
import logging
import os
import shutil
import tempfile
import time
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from pathlib import Path

import webdataset as wds
from PIL import Image
from tqdm import tqdm

from data_prep.filters import FilterConfig
from data_prep.languages import validate_languages
from data_prep.manifest import MANIFEST, SplitCounter, write_manifest
from data_prep.synthetic import Scene, english_caption, english_qa, generate_scenes, render
from data_prep.translate import PhraseTableTranslator, Translator
from data_prep.translate_job import STATE, translate_dataset

log = logging.getLogger(__name__)

PNG_COMPRESS_LEVEL = 1  # faster than the default 6, and on these noisy images even ~10% smaller
_SPLIT_IDS = {"train": 0, "val": 1}  # separate seed streams, so val scenes are not a prefix of train's


def _encoded(sample: dict) -> dict:
    # Encode JSON ourselves: webdataset's default escapes every non-ASCII character (6 bytes each).
    if "json" in sample and not isinstance(sample["json"], bytes):
        return {**sample, "json": json.dumps(sample["json"], ensure_ascii=False).encode("utf-8")}
    return sample


def publish_shards(tmp: Path, out_dir: Path, prefix: str) -> list[Path]:
    """Move the finished {prefix}-*.tar shards from tmp into out_dir, replacing any older set."""
    for stale in out_dir.glob(f"{prefix}-[0-9]*.tar"):
        stale.unlink()
    shards = []
    for path in sorted(tmp.glob(f"{prefix}-[0-9]*.tar")):
        os.replace(path, out_dir / path.name)
        shards.append(out_dir / path.name)
    return shards


def tar_mtime() -> int:
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
        with wds.ShardWriter(pattern, maxcount=maxcount, verbose=0, mtime=tar_mtime()) as writer:
            for sample in samples:
                writer.write(_encoded(sample))
                count += 1
        if not count:  # ShardWriter opens its first shard eagerly: drop that empty one
            for empty in Path(tmp).glob("*.tar"):
                empty.unlink()
        return publish_shards(Path(tmp), out_dir, prefix)


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


def _counted(samples: Iterable[dict], counter: SplitCounter, prefix: str, shard_size: int) -> Iterator[dict]:
    """Count samples per shard and language as they pass to write_shards (whose shards hold shard_size each)."""
    for index, sample in enumerate(samples):
        counter.add(f"{prefix}-{index // shard_size:06d}.tar", sample["json"])
        yield sample


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
    translator: Translator | None = None,
    filters: FilterConfig | None = None,
) -> dict:
    """Generate synthetic train/val scenes as English shards, then translate them with the job every
    `vlm prep translate` runs (phrase-table backend by default); write and return out_dir/manifest.json.

    English is always included (it is the source). The folder is made afresh: an earlier set, its
    translation state and its logs are replaced.
    """
    start = time.perf_counter()
    for name, value, least in (("n_train", n_train, 0), ("n_val", n_val, 0), ("image_size", image_size, 16),
                               ("shard_size", shard_size, 1)):
        if value < least:
            raise ValueError(f"prepare_synthetic: {name} must be >= {least}, got {value}")
    languages = validate_languages(["en", *validate_languages(langs)])
    translator = translator or PhraseTableTranslator()
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / MANIFEST).unlink(missing_ok=True)
    for stale in (STATE, "rejected", ".english"):
        shutil.rmtree(out_dir / stale, ignore_errors=True)
    english_only = languages == ["en"]
    english_dir = out_dir if english_only else out_dir / ".english"
    splits: dict[str, SplitCounter] = {}
    with _gc_paused():
        for split, n in (("train", n_train), ("val", n_val)):
            split_seed = (seed, _SPLIT_IDS[split])
            scenes = generate_scenes(n, seed=split_seed)
            samples = _synthetic_samples(scenes, [_english_record(s) for s in scenes], image_size, split_seed)
            splits[split] = SplitCounter()
            samples = _counted(samples, splits[split], split, shard_size)
            write_shards(tqdm(samples, total=n, desc=split, disable=None), english_dir, split, shard_size)
            if not english_only:
                for stale in out_dir.glob(f"{split}-[0-9]*.tar"):
                    stale.unlink()
        extra = {"n_train": n_train, "n_val": n_val}
        if english_only:
            return write_manifest(out_dir, splits, languages=languages, **extra)
        write_manifest(english_dir, splits)
        manifest = translate_dataset([str(english_dir)], out_dir, languages, translator, filters,
                                     settings={"backend": translator.name}, extra=extra, progress=False)
    shutil.rmtree(english_dir)
    log.info("synthetic data: %d train + %d val scenes in %.1f s", n_train, n_val, time.perf_counter() - start)
    return manifest
