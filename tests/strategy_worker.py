"""Train through the real trainer on fixed global batches, each rank taking its own rows (run under torchrun, or
as one process): the same examples reach every strategy and world size, so their losses can be compared.

    python strategy_worker.py CONFIG GLOBAL_BATCH [overrides...]
"""

from __future__ import annotations

import os
import sys

import webdataset as wds

from vlm import distributed
from vlm.config import load_config
from vlm.data.batch import Batch, StreamTelemetry
from vlm.data.collate import Collator
from vlm.data.examples import ExampleMaker, sample_rng
from vlm.data.shards import resolve_shards
from vlm.model.llm import load_tokenizer
from vlm.model.vision import create_open_clip
from vlm.train.trainer import train


def rank_batches(cfg, global_batch: int, steps: int):
    """Step i's global batch is examples [i*G, (i+1)*G) of the training shards in order; rank r collates its rows."""
    _, transform = create_open_clip(cfg.vision, load_weights=False)
    tokenizer = load_tokenizer(cfg.llm)
    collator = Collator(tokenizer, cfg.llm.kind, cfg.llm.max_length, bridge_tokenizer=tokenizer,
                        bridge_max_length=cfg.bridge.max_text_length)
    maker = ExampleMaker(cfg.data, transform)
    examples = []
    for sample in wds.tariterators.tarfile_samples({"url": u} for u in resolve_shards(cfg.data.train, "train")):
        example = maker(sample, sample_rng(0, 0, sample["__key__"]))
        if example is not None:
            examples.append(example)
    share = global_batch // distributed.launch_world_size()
    rank = int(os.environ.get("RANK", 0))
    for step in range(steps * cfg.train.grad_accum):
        rows = examples[step * global_batch:(step + 1) * global_batch][rank * share:(rank + 1) * share]
        yield Batch(collator(rows), StreamTelemetry(role=0, consumed=(step + 1) * share, epoch=0))


def main() -> None:
    config, global_batch, *overrides = sys.argv[1:]
    cfg = load_config(config, overrides)
    train(cfg, batches=rank_batches(cfg, int(global_batch), cfg.train.max_steps))
    distributed.shutdown()


if __name__ == "__main__":
    main()
