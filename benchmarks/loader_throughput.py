"""Training-stream throughput: samples/s the loader delivers (read, shuffle, decode, transform, pick a task and
language, tokenize, collate) against the samples/s training consumes.

Two data sets, built in a temp folder with the code `vlm prep` runs:
- demo: the demo's synthetic scenes (64 px PNG, 8 languages, phrase-table translations), at the demo's
  image size and tasks: the loader of `vlm demo`; also read through a feature cache (`vlm prep features`, bf16,
  of the demo-sized CLIP of benchmarks/train_step.py), which reads tokens instead of decoding images;
- photo: 256 px JPEGs (img2dataset's default size and format) transformed to 224 px, a GPU recipe's loader.
Each is read through `TrainStream` + `make_train_loader` (what the trainer uses) with 0, 1 and 2 workers.
In the same run, benchmarks/train_step.py times the demo config's training step (forward, backward, AdamW
on a fixed batch), from pixels and from cached tokens: the samples/s training consumes. Run from the
repository root:

    python benchmarks/loader_throughput.py [--batches 30] [--out benchmarks/loader_throughput.json]
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import tempfile
import time
from pathlib import Path

import numpy as np
import open_clip
import torch
from PIL import Image

from data_prep.shards import prepare_synthetic, write_shards
from vlm.config import load_config
from vlm.data.collate import Collator
from vlm.data.shards import resolve_shards
from vlm.data.stream import TrainStream, make_train_loader
from vlm.feature_prep import plan_features, write_features
from vlm.model.vision import ImageEncoder
from vlm.parts import train_tokenizer

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "configs" / "demo.yaml"
CACHED = "demo through the feature cache (bf16 tokens)"
sys.path.insert(0, str(ROOT / "benchmarks"))
from train_step import make_parts, time_variant  # noqa: E402 - the sibling benchmark's demo-sized parts


def photo_shards(folder: Path, n: int) -> list[str]:
    """n 256x256 JPEGs (smooth noise, ~25 KB each at quality 95) with an English caption and a QA item."""
    rng = np.random.default_rng(0)

    def samples():
        for i in range(n):
            pixels = rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)
            image = Image.fromarray(pixels).resize((256, 256), Image.BILINEAR)
            buffer = io.BytesIO()
            image.save(buffer, format="JPEG", quality=95)
            record = {"captions": {"en": [f"a photo of object number {i} on a table"]},
                      "qa": [{"lang": "en", "question": "what is on the table?", "answers": [f"object {i}"]}]}
            yield {"__key__": f"{i:09d}", "jpg": buffer.getvalue(), "json": record}

    return [str(path) for path in write_shards(samples(), folder, "train", maxcount=max(n // 8, 1))]


def measure(urls: list[str], overrides: list[str], transform, collator: Collator, workers: int, batches: int) -> dict:
    cfg = load_config(DEMO, [*overrides, f"data.num_workers={workers}"])
    stream = TrainStream(urls, cfg.data, transform, collator, cfg.train.batch_size, seed=0, rank=0, world_size=1)
    loader = iter(make_train_loader(stream, workers))
    for _ in range(3):  # worker start-up and the shuffle buffer's first fill are not counted
        next(loader)
    start = time.perf_counter()
    samples = sum(len(next(loader).inputs) for _ in range(batches))
    seconds = time.perf_counter() - start
    return {"workers": workers, "samples_per_s": round(samples / seconds, 1), "batch_size": cfg.train.batch_size}


def write_cache(overrides: list[str], out: Path) -> None:
    """`vlm prep features` of the config's data.train, in bf16."""
    cfg = load_config(DEMO, [*overrides, "data.val=[]"])
    jobs, identity = plan_features(cfg, out, "bf16")
    encoder = ImageEncoder(cfg.vision)
    encoder.load_weights()
    write_features(jobs, encoder, identity, out, "bf16", progress=False)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--batches", type=int, default=30)
    parser.add_argument("--out", default=str(ROOT / "benchmarks" / "loader_throughput.json"))
    args = parser.parse_args()
    tokenizer = train_tokenizer(["Caption in English: a small red circle on the left", "中文描述：左边有一个小的红色圆形",
                                 "हिंदी में विवरण: बाईं ओर एक छोटा लाल वृत्त", "Question: how many shapes? Answer: two"] * 50,
                                1024)
    collator = Collator(tokenizer, "causal", 64, bridge_tokenizer=tokenizer, bridge_max_length=32)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        demo_cfg = load_config(DEMO)
        prepare_synthetic(Path(tmp) / "demo", 2000, 10, demo_cfg.data.languages, image_size=demo_cfg.data.image_size,
                          shard_size=250)
        parts = make_parts(Path(tmp))
        demo_data = [f"data.train=[{Path(tmp) / 'demo'}]", f"vision.name=local-dir:{parts['clip']}"]
        write_cache(demo_data, Path(tmp) / "features")
        sets = {
            "demo (64 px PNG, 8 languages)": (resolve_shards([str(Path(tmp) / "demo")], "train"),
                                              [f"data.train=[{Path(tmp) / 'demo'}]"],
                                              open_clip.image_transform(demo_cfg.data.image_size, is_train=False)),
            CACHED: (resolve_shards([str(Path(tmp) / "demo")], "train"),
                     [*demo_data, f"data.features={Path(tmp) / 'features'}"], None),
            "photo (256 px JPEG -> 224 px)": (photo_shards(Path(tmp) / "photo", 2000),
                                              [f"data.train=[{Path(tmp) / 'photo' / 'train-*.tar'}]", "data.languages=[en]",
                                               "data.image_size=224"],
                                              open_clip.image_transform(224, is_train=False)),
        }
        for name, (urls, overrides, transform) in sets.items():
            for workers in (0, 1, 2):
                row = {"data": name, **measure(urls, overrides, transform, collator, workers, args.batches)}
                rows.append(row)
                print(json.dumps(row), flush=True)
        training = time_variant(parts, [], steps=15, bf16=False)["samples_per_s"]
        cached = time_variant(parts, [], steps=15, bf16=False, cached=True)["samples_per_s"]
    info = {"torch": torch.__version__, "threads": torch.get_num_threads(), "cuda": torch.cuda.is_available()}
    Path(args.out).write_text(json.dumps({"machine": info, "demo_training_samples_per_s": training,
                                          "demo_training_from_cache_samples_per_s": cached, "rows": rows},
                                         indent=2) + "\n")
    print(f"\ndemo training step consumes {training} samples/s from pixels, {cached} from cached tokens")
    print("| data | workers | loader samples/s | x demo training (from the cache: x training from the cache) |")
    print("|---|---|---|---|")
    for row in rows:
        consumed = cached if row["data"] == CACHED else training
        print(f"| {row['data']} | {row['workers']} | {row['samples_per_s']} | {row['samples_per_s'] / consumed:.1f} |")


if __name__ == "__main__":
    main()
