"""The raw samples of a webdataset shard, up to any damage: what training, evaluation and `vlm prep shards` (its
img2dataset reader) all read shards with, so each leaves out the same samples for the same reasons."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from pathlib import Path

import webdataset as wds


def shard_samples(url: str, skip: Callable[[str, str], None]) -> Iterator[dict]:
    """The raw samples of one shard, up to any damage. `skip(reason, detail)` hears of what is left out: a key
    already read in this shard (duplicate_key: it would pose as the same image in the contrastive losses), the
    shard breaking off or missing (tar_error, missing_shard), a shard of 0 bytes or with no sample (empty_shard).
    The keys kept are those of one shard, so memory stays bounded."""
    if url_size(url) == 0:
        skip("empty_shard", url)
        return
    keys: set[str] = set()
    failed = False

    def handler(exc: Exception) -> bool:
        nonlocal failed
        reason = tar_reason(exc)
        if reason == "duplicate_key" or not failed:  # a break is reported again as it unwinds: count it once
            skip(reason, f"{type(exc).__name__}: {exc}")
        failed = failed or reason != "duplicate_key"
        return True  # go on; webdataset's warn_and_continue would sleep 0.5 s first

    for sample in wds.tariterators.tarfile_samples([{"url": url}], handler=handler):
        if sample["__key__"] in keys:
            skip("duplicate_key", f"{sample['__key__']} in {url}")
            continue
        keys.add(sample["__key__"])
        yield sample
    if not keys and not failed:
        skip("empty_shard", url)


def url_size(url: str) -> int | None:
    """The size of a local shard file, or None for a URL or a missing file (the tar reader reports those)."""
    path = Path(url)
    return path.stat().st_size if "://" not in url and path.is_file() else None


def tar_reason(exc: Exception) -> str:
    """The reason a tar reader's exception counts under: a shard that is not there, a file name twice in a row
    (webdataset's grouping refuses the second one), or a shard that breaks off."""
    if isinstance(exc, FileNotFoundError):
        return "missing_shard"
    return "duplicate_key" if isinstance(exc, ValueError) and "duplicate file name" in str(exc) else "tar_error"
