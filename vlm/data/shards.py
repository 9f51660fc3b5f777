"""Shard lists: a data spec (files, globs, brace patterns, `vlm prep` folders) -> urls, the per-language counts
their manifests hold, and which shards each rank and worker reads in each pass."""

from __future__ import annotations

import hashlib
import json
import logging
import math
import random
from collections import Counter
from pathlib import Path

from data_prep.manifest import (
    expand_pattern,
    language_counts,
    read_manifest,
    shard_exists,
)

log = logging.getLogger(__name__)


def resolve_shards(spec: list[str], split: str) -> list[str]:
    """Expand a shard spec (files, globs, brace patterns, or a `vlm prep` folder with manifest.json).

    A shard the spec names but that is not there (deleted, not yet copied) stays in the list with a warning:
    readers count it (missing_shard) each time they come to it and go on. Raises FileNotFoundError when no
    shard at all is there."""
    urls: list[str] = []
    for item in spec:
        path = Path(item)
        if path.is_dir():
            manifest = path / "manifest.json"
            if not manifest.is_file():
                raise FileNotFoundError(f"data.{split}: folder {item} has no manifest.json")
            urls += [str(path / name) for name in json.loads(manifest.read_text())[split]]
            continue
        urls += expand_pattern(item, f"data.{split}: ", keep_missing=True)
    if not urls:
        raise FileNotFoundError(f"data.{split}: no shards given")
    missing = [url for url in urls if not shard_exists(url)]
    if len(missing) == len(urls):
        raise FileNotFoundError(f"data.{split}: shard not found: {missing[0]}")
    if missing:
        log.warning("data.%s: %d of %d shards not found (%s%s); reading the others, counting these as "
                    "missing_shard", split, len(missing), len(urls), missing[0], ", ..." if len(missing) > 1 else "")
    return urls


def manifest_language_counts(spec: list[str], split: str) -> Counter | None:
    """Samples per language of `split` from the manifests of a shard spec (`counts[split]["languages"]`),
    or None when any item of the spec is not a folder whose manifest counts its languages."""
    manifests = []
    for item in spec:
        path = Path(item)
        if not path.is_dir():
            return None
        manifest = read_manifest(path)
        if not manifest.get("counts", {}).get(split, {}).get("languages"):
            return None
        manifests.append(manifest)
    return language_counts(manifests, split) if manifests else None


def seeded_rng(*parts) -> random.Random:
    digest = hashlib.blake2b("/".join(map(str, parts)).encode(), digest_size=8).digest()
    return random.Random(int.from_bytes(digest, "little"))


def stream_shards(urls: list[str], seed: int, epoch: int, rank: int, world_size: int, role: int, num_roles: int,
                  resampled: bool = False) -> list[str]:
    """The shards worker role `role` of rank `rank` reads in `epoch`.

    Split (default): the epoch's shuffle of all shards (the same on every rank), sliced by rank, then by
    role, so ranks x roles partition the shards; needs at least world_size x num_roles shards.
    Resampled: as many shards as a role's share of a split, drawn with replacement from all of them, seeded
    by (seed, epoch, rank, role): deterministic and resumable, and any number of shards will do.
    """
    if resampled:
        rng = seeded_rng("shards", seed, epoch, rank, role)
        return rng.choices(urls, k=max(1, math.ceil(len(urls) / (world_size * num_roles))))
    if len(urls) < world_size * num_roles:
        raise ValueError(f"data.train has {len(urls)} shards for {world_size} ranks x {num_roles} workers; write "
                         f"more shards, lower data.num_workers or set data.resampled=true")
    shards = list(urls)
    random.Random(seed * 1000003 + epoch).shuffle(shards)
    return shards[rank::world_size][role::num_roles]
