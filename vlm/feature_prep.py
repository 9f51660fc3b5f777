"""`vlm prep features`: the frozen image encoder run once over every image of the training shards (data.train and
data.val), its tokens stored in a feature cache (vlm/data/features.py) that training reads instead of pixels.

Each image goes through the encoder's `preprocess` (the deterministic eval transform training uses too) and the
forward training would run (under train.precision's autocast). The unit of work is one shard -> one file; under
torchrun rank r takes shards r, r + world_size, ... as `vlm prep translate` does. A file appears whole or not at all,
so a rerun after a kill encodes only the shards without one. Images that do not decode are skipped and counted in
their shard's file; rank 0 sums the counts of every shard once all ranks are done.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from tqdm import tqdm

from data_prep.images import BadImage, decode_image
from data_prep.tar_samples import shard_samples
from vlm import precision
from vlm.config import Config, ConfigError
from vlm.data.features import (
    IDENTITY,
    STORAGE,
    TokenWriter,
    check_names,
    feature_file,
    format_bytes,
    mismatch,
    read_identity,
    shard_counts,
    token_bytes,
    write_identity,
)
from vlm.data.records import image_member
from vlm.data.shards import resolve_shards
from vlm.model.vision import ImageEncoder
from vlm.model.vision_identity import encoder_identity

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class FeatureJob:
    url: str
    path: Path  # the shard's file in the cache


def default_out(cfg: Config) -> Path:
    """data.features, else `features/` in the folder of the first training shard."""
    if cfg.data.features:
        return Path(cfg.data.features)
    return Path(resolve_shards(cfg.data.train, "train")[0]).parent / "features"


def plan_features(cfg: Config, out: Path, storage: str) -> tuple[list[FeatureJob], dict]:
    """The shards to encode and the config's encoder identity. Missing shards, two shards of one name, an encoder
    without fixed weights, and an `out` that holds another encoder's cache (or another dtype's) are refused here,
    before any model is built."""
    urls = resolve_shards(cfg.data.train, "train") + (resolve_shards(cfg.data.val, "val") if cfg.data.val else [])
    urls = list(dict.fromkeys(urls))  # train and val may name the same shards
    check_names(urls)
    identity = encoder_identity(cfg.vision)
    cached = read_identity(out)
    if cached is not None:
        if problem := mismatch(cached, identity):
            raise ConfigError(f"--out {out} holds the tokens of another encoder: {problem}; choose another --out "
                              "or remove that folder")
        if cached.get("dtype") != storage:
            raise ConfigError(f"--out {out} holds tokens stored in {cached.get('dtype')}, --dtype asks for "
                              f"{storage}; choose another --out or remove that folder")
    return [FeatureJob(url, feature_file(out, url)) for url in urls], identity


class ShardImages(IterableDataset):
    """(key, pixels, "") for each decodable image of one shard, (key, None, reason) for a bad sample. DataLoader
    workers split the shard: worker w takes samples w, w + workers, ... (each reads the tar; decoding is the cost)."""

    def __init__(self, url: str, transform: Callable):
        self.url, self.transform = url, transform

    def __iter__(self) -> Iterator[tuple[str, torch.Tensor | None, str]]:
        info = get_worker_info()
        worker, workers = (info.id, info.num_workers) if info is not None else (0, 1)
        damage: list[tuple[str, str]] = []  # (reason, detail) of the shard itself, and of repeated keys

        for index, sample in enumerate(shard_samples(self.url, lambda reason, detail: damage.append((reason, detail)))):
            if index % workers != worker:
                continue
            key, ext = sample["__key__"], image_member(sample)
            if ext is None:
                yield key, None, "no_image"
                continue
            try:
                yield key, self.transform(decode_image(sample[ext], name=f"{key} in {self.url}")), ""
            except BadImage as err:
                log.warning("%s", err)
                yield key, None, err.reason
        if worker == 0:  # every worker read the whole tar: one counts what was wrong with it
            for reason, detail in damage:
                log.warning("%s: %s", self.url, detail)
                yield "", None, reason


def _encode_shard(job: FeatureJob, encoder: ImageEncoder, storage: str, batch_size: int, num_workers: int,
                  precision_setting: str) -> int:
    """Write one shard's file; returns the images encoded."""
    device = next(encoder.parameters()).device
    writer = TokenWriter(job.path, STORAGE[storage])
    skipped: Counter = Counter()
    keys: list[str] = []
    pixels: list[torch.Tensor] = []

    def flush() -> None:
        with precision.autocast(precision_setting, device):
            tokens = encoder(torch.stack(pixels).to(device))
        for key, row in zip(keys, tokens):
            writer.add(key, row)
        keys.clear()
        pixels.clear()

    try:
        for key, image, reason in DataLoader(ShardImages(job.url, encoder.preprocess), batch_size=None,
                                             num_workers=num_workers):
            if reason or key in writer or key in keys:
                skipped[reason or "duplicate_key"] += 1
                continue
            keys.append(key)
            pixels.append(image)
            if len(keys) == batch_size:
                flush()
        if keys:
            flush()
        writer.close({"shard": Path(job.url).name, "samples": str(len(writer)), "skipped": json.dumps(skipped)})
    except BaseException:
        writer.discard()
        raise
    return len(writer)


def write_features(jobs: list[FeatureJob], encoder: ImageEncoder, identity: dict, out: Path, storage: str, *,
                   batch_size: int = 64, num_workers: int = 0, precision_setting: str = "auto", rank: int = 0,
                   world_size: int = 1, barrier: Callable[[], None] = lambda: None,
                   progress: bool = True) -> dict | None:
    """Encode this rank's share of `jobs` that have no file yet into `out`; on rank 0, once every rank is done, the
    summary of the whole cache (None on the other ranks)."""
    with torch.no_grad():
        size = identity["image_size"]
        size = tuple(size) if isinstance(size, (list, tuple)) else (size, size)
        shape = list(encoder(torch.zeros(1, 3, *size, device=next(encoder.parameters()).device)).shape[1:])
    full = {**identity, "layer": encoder.layer_index, "num_blocks": encoder.num_blocks, "tokens": shape,
            "dtype": storage, "source": encoder.cfg.name}
    out.mkdir(parents=True, exist_ok=True)
    if rank == 0:
        write_identity(out, full)
    barrier()  # no rank writes a shard's file before the identity it belongs to is there
    share = jobs[rank::world_size]
    mine = [job for job in share if not job.path.is_file()]
    if len(share) > len(mine):
        log.info("rank %d: %d shards already done, %d to go", rank, len(share) - len(mine), len(mine))
    start, encoded = time.perf_counter(), 0
    with tqdm(total=len(mine), unit="shard", desc="features", disable=None if progress and rank == 0 else True) as bar:
        for job in mine:
            encoded += _encode_shard(job, encoder, storage, batch_size, num_workers, precision_setting)
            bar.update(1)
    seconds = time.perf_counter() - start
    if mine:
        log.info("rank %d: %d images encoded in %.1f s (%.1f images/s)", rank, encoded, seconds,
                 encoded / max(seconds, 1e-9))
    barrier()
    return summarise(out, jobs, full) if rank == 0 else None


def summarise(out: Path, jobs: list[FeatureJob], identity: dict) -> dict:
    samples, skipped, size = 0, Counter(), (out / IDENTITY).stat().st_size
    for job in jobs:
        stored, bad = shard_counts(job.path)
        samples, size = samples + stored, size + job.path.stat().st_size
        skipped += bad
    per_image = size / samples if samples else token_bytes(identity["tokens"], identity["dtype"])
    return {"out": str(out), "shards": len(jobs), "samples": samples, "skipped": dict(sorted(skipped.items())),
            "tokens": identity["tokens"], "dtype": identity["dtype"], "bytes": size,
            "bytes_per_million_images": round(per_image * 1e6)}


def format_summary(summary: dict) -> str:
    n, d = summary["tokens"]
    skipped = ", ".join(f"{reason} {count}" for reason, count in summary["skipped"].items()) or "none"
    return (f"feature cache: {summary['out']} ({summary['shards']} shards, {summary['samples']} images; skipped: "
            f"{skipped})\nsize on disk: {format_bytes(summary['bytes'])}, "
            f"{format_bytes(summary['bytes_per_million_images'])} per million images "
            f"({n} x {d} tokens per image in {summary['dtype']})")
