"""`vlm prep shards`: webdataset shards from img2dataset, COCO, LLaVA or JSONL inputs.

Output (what the training stream and `vlm prep translate` read): `{split}-000000.tar, ...` of exactly
`shard_size` samples (the last may be shorter), members `<key>.jpg|png|webp` (the source's image bytes) and
`<key>.json` (the record: captions, qa, source), then `manifest.json` (data_prep.manifest), written last.

Keys come from the source's own ids: characters outside [A-Za-z0-9_-] become "_" (webdataset splits a
member name at its first dot), long ids are cut and suffixed with a hash (member names stay short), and a key
already used gets "_1", "_2", ... in input order, so a rerun on the same inputs gives the same keys (counted
as converted/duplicate_key in the manifest's stats, beside the sources' skipped/<reason> and converted/<kind>).

Every text gets its language from `languages` (--lang: one code, or auto: each text identified; see
data_prep.sources.language_tags), recorded in the manifest's language_assignment. With a tokenizer the
manifest also gets its fertility table over the captions written (not translations of each other).

All inputs are validated before anything is written. Shards are written into a temp folder inside `out_dir`
and moved in when all are done, replacing that split's older shards; other splits' shards and their manifest
entries are kept, so train and val can be built into one folder by two runs.
"""

from __future__ import annotations

import hashlib
import json
import logging
import re
import tempfile
import time
from contextlib import closing
from pathlib import Path

import webdataset as wds
from tqdm import tqdm

from data_prep.manifest import MANIFEST, CaptionSample, SplitCounter, TokenizerProbe, write_manifest
from data_prep.shards import publish_shards, tar_mtime
from data_prep.sources import Source, coco, img2dataset, jsonl, llava
from data_prep.sources.language_tags import SKIP_REASON, LanguageAssignment, LanguageTagger

log = logging.getLogger(__name__)

FORMATS = ("img2dataset", "coco", "llava", "jsonl")
KEY_MAX = 80  # characters; with its extension a member name stays under 100, past which tar adds a PAX header
_UNSAFE_KEY_CHARS = re.compile(r"[^A-Za-z0-9_-]")
_SPLIT_NAME = re.compile(r"[A-Za-z0-9_-]+")
_MANIFEST_KEYS = ("counts", "source", "stats", "seconds", "languages", "n_train", "n_val", "language_assignment",
                  "fertility")  # not split names


class KeyMaker:
    """Tar-safe keys, unique within a run, from source ids (deterministic for a given input order)."""

    def __init__(self) -> None:
        self._used: set[str] = set()
        self._last_suffix: dict[str, int] = {}
        self.renamed = 0  # keys that took a suffix (a repeated id, or ids that differ only in unsafe characters)

    def make(self, source_id: str) -> str:
        base = _UNSAFE_KEY_CHARS.sub("_", source_id) or "_"
        if len(base) > KEY_MAX:
            digest = hashlib.blake2b(source_id.encode(), digest_size=4).hexdigest()
            base = f"{base[:KEY_MAX - 9]}_{digest}"
        key = base
        self.renamed += key in self._used
        while key in self._used:
            self._last_suffix[base] = self._last_suffix.get(base, 0) + 1
            key = f"{base}_{self._last_suffix[base]}"
        self._used.add(key)
        return key


class EvenShardWriter:
    """Writes samples into folder/{prefix}-000000.tar, ... of exactly `size` samples each (the last may be
    shorter). webdataset's ShardWriter also rolls over at 3 GB, which would break the per-shard counts."""

    def __init__(self, folder: Path, prefix: str, size: int) -> None:
        self.folder, self.prefix, self.size = folder, prefix, size
        self.written = 0
        self._tar: wds.TarWriter | None = None
        self._mtime = tar_mtime()

    def write(self, key: str, ext: str, image: bytes, record: dict) -> str:
        """Write one sample; return the name of the shard it went to."""
        index, position = divmod(self.written, self.size)
        name = f"{self.prefix}-{index:06d}.tar"
        if position == 0:
            self.close()
            self._tar = wds.TarWriter(str(self.folder / name), encoder=False, mtime=self._mtime)
        # ensure_ascii=False: webdataset's default json encoding spends 6 bytes on every non-ASCII character
        self._tar.write({"__key__": key, ext: image, "json": json.dumps(record, ensure_ascii=False).encode()})
        self.written += 1
        return name

    def close(self) -> None:
        if self._tar is not None:
            self._tar.close()
            self._tar = None


def build_shards(fmt: str, inputs: list[str], out_dir: str | Path, images: str = "", split: str = "train",
                 shard_size: int = 1000, karpathy_split: str = "", progress: bool = True,
                 languages: LanguageAssignment = LanguageAssignment(), tokenizer: TokenizerProbe | None = None) -> dict:
    """Convert `inputs` of format `fmt` into out_dir/{split}-*.tar + manifest.json; return the manifest.

    Bad inputs or arguments raise FileNotFoundError/ValueError before anything is written; bad samples are
    skipped and counted by reason (manifest "stats"). Raises ValueError, leaving out_dir as it was, when no
    sample at all is usable.
    """
    start = time.perf_counter()
    out_dir = Path(out_dir)
    _check_arguments(fmt, inputs, out_dir, split, shard_size, karpathy_split)
    source = _open_source(fmt, inputs, images, karpathy_split)
    out_dir.mkdir(parents=True, exist_ok=True)
    counter = SplitCounter()
    keys = KeyMaker()
    tagger, captions = LanguageTagger(languages), CaptionSample()
    with tempfile.TemporaryDirectory(prefix=f".{split}-", dir=out_dir) as tmp:
        with closing(EvenShardWriter(Path(tmp), split, shard_size)) as writer:
            bar = tqdm(source.samples, desc=f"{fmt} -> {split}", unit=" samples", disable=None if progress else True)
            for sample in bar:
                record = tagger.tag(sample.record)
                if record is None:
                    source.stats[f"skipped/{SKIP_REASON}"] += 1
                    continue
                shard = writer.write(keys.make(sample.id), sample.ext, sample.image, record)
                counter.add(shard, record)
                if tokenizer is not None:
                    captions.add(record)
        if keys.renamed:
            source.stats["converted/duplicate_key"] = keys.renamed
        stats = dict(sorted(source.stats.items()))
        if not counter.shards:
            raise ValueError(f"{fmt} {' '.join(inputs)}: no usable sample ({_summary(stats) or 'inputs are empty'})")
        kept = _other_splits(out_dir, split)
        (out_dir / MANIFEST).unlink(missing_ok=True)  # from here until the new one, the folder is incomplete
        publish_shards(Path(tmp), out_dir, split)
    _log_skips(fmt, counter.to_dict()["samples"], stats)
    source_info = {"format": fmt, "inputs": [str(name) for name in inputs], "images": images or None, **source.info}
    extra = {"fertility": tokenizer.table(captions, parallel=False)} if tokenizer is not None else {}
    return write_manifest(out_dir, {**kept, split: counter}, source=source_info, stats=stats,
                          language_assignment=tagger.summary(), **extra, seconds=round(time.perf_counter() - start, 2))


def _check_arguments(fmt: str, inputs: list[str], out_dir: Path, split: str, shard_size: int,
                     karpathy_split: str) -> None:
    if fmt not in FORMATS:
        raise ValueError(f"unknown format {fmt!r} (known: {', '.join(FORMATS)})")
    if not inputs:
        raise ValueError(f"{fmt}: no input given")
    if not _SPLIT_NAME.fullmatch(split) or split in _MANIFEST_KEYS:
        raise ValueError(f"--split {split!r}: use letters, digits, '_' or '-' (and not {', '.join(_MANIFEST_KEYS)})")
    if shard_size < 1:
        raise ValueError(f"--shard-size must be >= 1, got {shard_size}")
    if karpathy_split and fmt != "coco":
        raise ValueError(f"--karpathy-split applies to --format coco, not {fmt}")
    for name in inputs:
        if Path(name).resolve() == out_dir.resolve():
            raise ValueError(f"--out {out_dir} is also an input; write the shards to another folder")


def _open_source(fmt: str, inputs: list[str], images: str, karpathy_split: str) -> Source:
    if fmt == "coco":
        return coco.check(inputs, images, karpathy_split)
    return {"img2dataset": img2dataset.check, "llava": llava.check, "jsonl": jsonl.check}[fmt](inputs, images)


def _other_splits(out_dir: Path, split: str) -> dict[str, dict]:
    """Counts of the other splits of an earlier manifest in out_dir, when all their shards are still there."""
    try:
        manifest = json.loads((out_dir / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return {}
    counts = manifest.get("counts") if isinstance(manifest, dict) else None
    if not isinstance(counts, dict):
        return {}
    return {name: entry for name, entry in counts.items() if name != split and isinstance(entry, dict)
            and all((out_dir / shard).is_file() for shard in entry.get("shards", {}))}


def _summary(stats: dict) -> str:
    return ", ".join(f"{reason}={count}" for reason, count in stats.items())


def _log_skips(fmt: str, written: int, stats: dict) -> None:
    skipped = sum(count for reason, count in stats.items() if reason.startswith("skipped/"))
    if skipped:
        rate = 100 * skipped / (skipped + written)
        log.warning("%s: kept %d samples, skipped %d (%.1f%%): %s", fmt, written, skipped, rate, _summary(stats))
    else:
        log.info("%s: kept %d samples, skipped none", fmt, written)
