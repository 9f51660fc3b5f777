"""The training stream: endless, seeded batches for one rank (shards split by rank and worker, or resampled;
shuffled before decoding), resumable from a `StreamPosition`, and the fixed held-out batches of validation.

Every rank reads an endless stream (epochs of freshly shuffled shards, or shards drawn with replacement when
`data.resampled`), so ranks never run out of data at different times (no DDP hang on uneven shards) and a
run is measured in optimizer steps. The stream is deterministic for a seed: a resumed run skips the samples
it already consumed (cheaply, before decoding) and sees exactly the batches an uninterrupted run would have
seen.
"""

from __future__ import annotations

import itertools
import os
import random
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field

import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from data_prep.tar_samples import shard_samples
from vlm.config import DataConfig
from vlm.data.bad_samples import BadSamples
from vlm.data.batch import Batch, StreamTelemetry
from vlm.data.collate import Collator, Example
from vlm.data.examples import (
    MATCH_POOL,
    ExampleMaker,
    sample_rng,
    warn_template_fallbacks,
)
from vlm.data.language_sampling import language_sampler
from vlm.data.length_grouping import group_by_length
from vlm.data.records import parse_record
from vlm.data.shards import stream_shards
from vlm.data.templates import load_templates

# A worker whose shards give no sample at all this many epochs in a row stops with an error, not a hang.
MAX_EMPTY_EPOCHS = 10


def worker_info() -> tuple[int, int, int, int]:
    """(rank, world_size, worker, num_workers), as webdataset's `pytorch_worker_info` finds them: the
    environment variables RANK/WORLD_SIZE and WORKER/NUM_WORKERS when set (tests, custom launchers), else
    torch.distributed and the DataLoader's worker info."""
    rank, world, worker, workers = 0, 1, 0, 1
    if "RANK" in os.environ and "WORLD_SIZE" in os.environ:
        rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    elif torch.distributed.is_available() and torch.distributed.is_initialized():
        rank, world = torch.distributed.get_rank(), torch.distributed.get_world_size()
    if "WORKER" in os.environ and "NUM_WORKERS" in os.environ:
        worker, workers = int(os.environ["WORKER"]), int(os.environ["NUM_WORKERS"])
    else:
        info = get_worker_info()
        if info is not None:
            worker, workers = info.id, info.num_workers
    return rank, world, worker, workers


def _env_workers() -> bool:
    return "WORKER" in os.environ and "NUM_WORKERS" in os.environ


@dataclass
class StreamPosition:
    """How far each worker role of one rank has read; saved in checkpoints to resume the exact stream.

    `consumed` counts raw samples from the start of pass `start_epoch`. A run resumed with the same ranks and
    workers continues every role exactly (`StreamPosition` per rank, as saved). One resumed with another number of
    ranks or workers cannot: the shards are partitioned differently. It then starts a fresh pass on every role
    (`next_pass`): the pass after the furthest any saved role had reached, seeded like any other pass, so the
    resumed run is still deterministic; what the interrupted pass had not yet read is skipped, nothing is read
    twice in a pass. With `data.group_by_length`, a role's `consumed` is where its current window starts and
    `window_batches` how many of that window's batches were handed out: a resumed role rereads the window, regroups
    it identically and hands out the rest."""

    batches: int = 0  # batches handed to the trainer on this rank
    consumed: dict[int, int] = field(default_factory=dict)  # role -> raw samples read (incl. bad ones)
    epochs: dict[int, int] = field(default_factory=dict)  # role -> the pass it is in
    start_epoch: int = 0
    # role -> batches of its current length-grouping window already handed out (`consumed` is the window's start)
    window_batches: dict[int, int] = field(default_factory=dict)

    def advance(self, telemetry: StreamTelemetry) -> None:
        """Account for one batch handed to the trainer."""
        self.batches += 1
        self.consumed[telemetry.role] = telemetry.consumed
        self.epochs[telemetry.role] = telemetry.epoch
        self.window_batches[telemetry.role] = telemetry.window_batches

    def to_dict(self) -> dict:
        return {"batches": self.batches, "consumed": {str(k): v for k, v in self.consumed.items()},
                "epochs": {str(k): v for k, v in self.epochs.items()}, "start_epoch": self.start_epoch,
                "window_batches": {str(k): v for k, v in self.window_batches.items()}}

    @classmethod
    def from_dict(cls, data: dict) -> StreamPosition:
        return cls(batches=int(data["batches"]), consumed={int(k): int(v) for k, v in data["consumed"].items()},
                   epochs={int(k): int(v) for k, v in data.get("epochs", {}).items()},
                   start_epoch=int(data.get("start_epoch", 0)),
                   window_batches={int(k): int(v) for k, v in data.get("window_batches", {}).items()})

    @classmethod
    def next_pass(cls, saved: list[StreamPosition]) -> StreamPosition:
        """Where every role of a resumed run with another rank/worker layout starts (see the class docstring)."""
        reached = [epoch for position in saved for epoch in position.epochs.values()]
        return cls(start_epoch=max(reached, default=max((p.start_epoch for p in saved), default=0)) + 1)


class TrainStream(IterableDataset):
    """Endless batches for one rank. Each worker role reads its own shards (`stream_shards`). Worker `w`
    plays role `(w + position.batches) % num_roles`, so after a resume the DataLoader's round-robin over
    workers continues with the role whose batch was next.

    rank/world_size default to the environment (RANK/WORLD_SIZE, else torch.distributed). NUM_WORKERS, when set
    with WORKER, overrides data.num_workers, and WORKER gives the worker id outside a DataLoader worker
    (webdataset's convention), so tests and custom launchers can drive the split without a process group or
    DataLoader; inside one, the DataLoader's worker id is used (and its worker count must match).

    Each `Batch` carries the collated inputs and its worker's `StreamTelemetry`: the position it reached, the
    samples it skipped by reason since its previous batch, and those language sampling turned away.
    """

    def __init__(self, urls: list[str], cfg: DataConfig, transform, collator: Collator, batch_size: int,
                 seed: int, rank: int | None = None, world_size: int | None = None,
                 position: StreamPosition | None = None, language_counts: Mapping[str, int] | None = None):
        env_rank, env_world, _, env_workers = worker_info()
        self.rank = env_rank if rank is None else rank
        self.world_size = env_world if world_size is None else world_size
        self.num_roles = env_workers if _env_workers() else max(cfg.num_workers, 1)
        self.urls, self.cfg, self.transform, self.collator = urls, cfg, transform, collator
        self.batch_size, self.seed = batch_size, seed
        self.position = position or StreamPosition()
        if not urls:
            raise ValueError("data.train: no shards")
        stream_shards(urls, seed, 0, self.rank, self.world_size, 0, self.num_roles, cfg.resampled)  # too few?
        self.templates = load_templates(cfg.templates)
        warn_template_fallbacks(cfg, self.templates)
        self.sampler = language_sampler(cfg, language_counts)

    def shards(self, epoch: int, role: int) -> list[str]:
        return stream_shards(self.urls, self.seed, epoch, self.rank, self.world_size, role, self.num_roles,
                             self.cfg.resampled)

    def _epoch(self, epoch: int, role: int, skip: Callable[[str, str], None]) -> Iterator[tuple[int | str, dict]]:
        """(tag, raw sample) of one epoch's shards. The tag seeds the sample's choices: the epoch, and with
        resampling also which draw of the epoch it came from (a shard drawn twice teaches different things)."""
        for draw, url in enumerate(self.shards(epoch, role)):
            tag = f"{epoch}.{self.rank}.{role}.{draw}" if self.cfg.resampled else epoch
            for sample in shard_samples(url, skip):
                yield tag, sample

    def _raw_stream(self, role: int, skip: Callable[[str, str], None]) -> Iterator[tuple[int, int | str, dict]]:
        """(epoch, tag, raw sample), epoch after epoch from `position.start_epoch`, each shuffled through a buffer
        (before decoding: it holds bytes, not tensors)."""
        empty = 0
        for epoch in itertools.count(self.position.start_epoch):
            rng = random.Random(hash((self.seed, epoch, self.rank, role)))  # ints: hash() is not salted
            seen = False
            for tag, sample in wds.shuffle(self.cfg.shuffle_buffer, initial=self.cfg.shuffle_buffer, rng=rng)(
                    self._epoch(epoch, role, skip)):
                seen = True
                yield epoch, tag, sample
            empty = 0 if seen else empty + 1
            if empty == MAX_EMPTY_EPOCHS:
                raise RuntimeError(f"data.train: worker {role} of rank {self.rank} read no sample in "
                                   f"{MAX_EMPTY_EPOCHS} passes over its shards; are they empty or corrupt?")

    def __iter__(self) -> Iterator[Batch]:
        info = get_worker_info()
        if info is not None:  # inside a DataLoader worker, its id is authoritative
            if info.num_workers != self.num_roles:
                raise ValueError(f"the DataLoader has {info.num_workers} workers, the stream was built for "
                                 f"{self.num_roles} (data.num_workers, or NUM_WORKERS in the environment)")
            worker = info.id
        else:
            worker = int(os.environ["WORKER"]) if _env_workers() else 0
        role = (worker + self.position.batches) % self.num_roles
        bad = BadSamples()
        maker = ExampleMaker(self.cfg, self.transform, self.templates, self.sampler, bad)
        skip = consumed = window_start = self.position.consumed.get(role, 0)
        handed_out = self.position.window_batches.get(role, 0)  # of the window that starts at `skip`
        refill = skip - MATCH_POOL if maker.pool is not None else skip  # rebuild the matching pool
        bad.enabled = skip == 0
        window = self.batch_size * max(self.cfg.group_by_length, 1)
        examples: list[Example] = []
        rejected_reported = 0
        for index, (epoch, tag, sample) in enumerate(self._raw_stream(role, bad.add)):
            if index < skip:
                if index >= refill:
                    maker.remember(sample["__key__"], parse_record(sample)[0])
                continue
            bad.enabled = True
            consumed += 1
            example = maker(sample, sample_rng(self.seed, tag, sample["__key__"]))
            if example is None:
                continue
            examples.append(example)
            if len(examples) < window:
                continue
            # The window's skipped samples and rejections are reported with its first batch.
            skipped, rejected = bad.take(), maker.rejected - rejected_reported
            rejected_reported = maker.rejected
            batches = self._batches_of(examples, role, window_start)
            for number, chunk in enumerate(batches, start=1):
                if number <= handed_out:  # a resumed run: handed out before the checkpoint
                    continue
                last = number == len(batches)
                telemetry = StreamTelemetry(role, consumed if last else window_start, epoch,
                                            skipped if number == 1 else {}, rejected if number == 1 else 0,
                                            window_batches=0 if last else number)
                yield Batch(self.collator(chunk), telemetry)
            examples, window_start, handed_out = [], consumed, 0

    def _batches_of(self, examples: list[Example], role: int, window_start: int) -> list[list[Example]]:
        """One window's batches: as they came, or grouped by length (seeded by where the window starts, so a
        resumed run regroups it the same way)."""
        if not self.cfg.group_by_length:
            return [examples]
        rng = random.Random(hash((self.seed, self.rank, role, window_start)))  # ints: hash() is not salted
        return group_by_length(examples, self.collator.lengths(examples), self.batch_size, rng)


def make_train_loader(stream: TrainStream, num_workers: int, worker_init_fn=None) -> DataLoader:
    # Its own generator: drawing worker seeds must not advance the global RNG that dropout uses,
    # or a resumed run would drift from an uninterrupted one.
    return DataLoader(stream, batch_size=None, num_workers=num_workers, persistent_workers=False,
                      prefetch_factor=4 if num_workers else None, generator=torch.Generator().manual_seed(stream.seed),
                      worker_init_fn=worker_init_fn)


def fixed_batches(urls: list[str], cfg: DataConfig, transform, collator: Collator, batch_size: int,
                  max_batches: int, seed: int) -> list:
    """The same held-out batches every time (validation loss): samples in shard order, seeded choices, each
    sample's language drawn uniformly among its own (no language sampling). The collator's outputs (ModelInputs)."""
    maker = ExampleMaker(cfg, transform)
    examples: list[Example] = []
    for sample in (sample for url in urls for sample in shard_samples(url, maker.bad.add)):
        example = maker(sample, sample_rng(seed, 0, sample["__key__"]))
        if example is not None:
            examples.append(example)
        if len(examples) == batch_size * max_batches:
            break
    full = len(examples) // batch_size
    return [collator(examples[i * batch_size : (i + 1) * batch_size]) for i in range(full)]
