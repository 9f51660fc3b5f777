"""Training samples that cannot be used: skipped, counted by reason, warned about at a bounded rate."""

from __future__ import annotations

import logging
import time
from collections import Counter
from collections.abc import Callable

from data_prep.tar_samples import tar_reason

log = logging.getLogger(__name__)
# no_features: training from a feature cache (data.features) that has no tokens for the sample.
# empty_image, decompression_bomb: see data_prep.images; bad_record: captions or qa of the wrong JSON types (and
# nothing usable left); duplicate_key: a key already read in the same shard; tar_error, missing_shard and
# empty_shard count shards (one that breaks off, cannot be opened, or holds no sample), not samples.
BAD_REASONS = ("corrupt_image", "empty_image", "decompression_bomb", "no_image", "missing_json", "bad_json",
               "bad_record", "duplicate_key", "tar_error", "missing_shard", "empty_shard", "no_language",
               "empty_caption", "no_task", "no_features")
# Samples turned away by language sampling are not bad, and are counted apart.
REJECTED = "language_rejected"


class BadSamples:
    """Counts skipped samples by reason (BAD_REASONS). Warns the first time a reason occurs, then at most
    once per `interval_s` seconds with the running counts. It never sleeps (webdataset's warn_and_continue
    sleeps 0.5 s per error, which stalls a loader on a bad shard). `add` is what
    data_prep.tar_samples.shard_samples reports to; `handler` serves as a tar iterator's exception handler (reason:
    `tar_reason`). `take()` gives the counts since the previous call (one batch's)."""

    def __init__(self, interval_s: float = 60.0, clock: Callable[[], float] = time.monotonic):
        self.interval_s, self.clock = interval_s, clock
        self.totals: Counter = Counter()
        self.pending: Counter = Counter()
        self.enabled = True  # off while a resumed stream skips samples it already counted
        self._last_warning: float | None = None

    def add(self, reason: str, detail: str = "") -> None:
        if not self.enabled:
            return
        self.totals[reason] += 1
        self.pending[reason] += 1
        now = self.clock()
        if self.totals[reason] == 1 or self._last_warning is None or now - self._last_warning >= self.interval_s:
            self._last_warning = now
            log.warning("skipping a bad training sample (%s%s); skipped so far: %s", reason,
                        f": {detail[:200]}" if detail else "", dict(sorted(self.totals.items())))

    def handler(self, exc: Exception) -> bool:
        self.add(tar_reason(exc), f"{type(exc).__name__}: {exc}")
        return True  # go on with the next shard

    def take(self) -> dict[str, int]:
        counts = dict(self.pending)
        self.pending.clear()
        return counts
