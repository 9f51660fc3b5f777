"""Soak: a long run of the tiny config over shards with hostile samples in them, killed twice (SIGKILL) and
resumed, must end with exactly the weights of an uninterrupted run over the same shards without the hostile
samples. Bad samples are skipped before they touch any random stream, so they change nothing but the counts.

    python benchmarks/soak.py --steps 2000 --out /tmp/soak      # ~15 min on the 2-core CPU

Prints the bad-sample counts, where the kills landed and the largest weight difference (0.0 expected), and
exits 1 if the weights differ or a run failed. Every run goes through the `vlm train` console script.
"""

from __future__ import annotations

import argparse
import io
import json
import os
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "configs" / "demo.yaml"
VLM = Path(sys.executable).parent / "vlm"
LANGUAGES = ["en", "de", "zh", "hi"]


def _member(name: str, data: bytes) -> tuple[tarfile.TarInfo, io.BytesIO]:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    return info, io.BytesIO(data)


def hostile_samples(good: dict[str, bytes], ext: str, number: int) -> list[list[tuple[str, bytes]]]:
    """One hostile sample of a rotating kind, built from a good sample's members."""
    image, record = good[ext], good["json"]
    kinds = [
        [(ext, image[: len(image) // 2]), ("json", record)],  # truncated image
        [(ext, b""), ("json", record)],  # zero-byte image
        [(ext, image), ("json", b"\xff\xfe not utf-8 \xff")],  # caption json that is not UTF-8
        [(ext, image), ("json", json.dumps({"captions": 7, "qa": "none"}).encode())],  # json of wrong types
        [(ext, image)],  # no json at all
        [("json", record)],  # no image at all
    ]
    return kinds[number % len(kinds)]


def make_hostile_copy(shards: list[Path], out: Path, every: int) -> int:
    """The same shards with one hostile sample after every `every` good ones (counted across shards); returns how
    many were added."""
    out.mkdir(parents=True, exist_ok=True)
    added = seen = 0
    for shard in shards:
        with tarfile.open(shard) as src, tarfile.open(out / shard.name, "w") as dst:
            members = [m for m in src.getmembers() if m.isfile()]
            samples: dict[str, dict[str, bytes]] = {}
            for m in members:
                key, _, ext = m.name.partition(".")
                samples.setdefault(key, {})[ext] = src.extractfile(m).read()
            ext = next(e for e in next(iter(samples.values())) if e != "json")
            for key, parts in samples.items():
                for member_ext, data in parts.items():
                    dst.addfile(*_member(f"{key}.{member_ext}", data))
                seen += 1
                if seen % every == 0:
                    for member_ext, data in hostile_samples(parts, ext, added):
                        dst.addfile(*_member(f"hostile-{added:05d}.{member_ext}", data))
                    added += 1
    for extra in shards[0].parent.glob("*.json"):  # the manifest: languages and counts of the good samples
        (out / extra.name).write_bytes(extra.read_bytes())
    return added


def build_parts(root: Path) -> dict[str, Path]:
    from data_prep.shards import prepare_synthetic
    from vlm.config import DemoConfig
    from vlm.data.shards import resolve_shards
    from vlm.parts import make_clip, make_language_model

    data = root / "data"
    prepare_synthetic(data, n_train=192, n_val=0, langs=LANGUAGES, seed=0, image_size=32, shard_size=48)
    urls = resolve_shards([str(data)], "train")
    demo = DemoConfig(clip_model="tiny-test-vit", clip_batch_size=16, clip_steps=60, tokenizer_vocab_size=600,
                      lm_hidden_size=32, lm_layers=1, lm_heads=2, lm_batch_size=8, lm_steps=2)
    make_clip(urls, demo, str(ROOT / "configs" / "open_clip"), root / "clip")
    make_language_model(urls, LANGUAGES, demo, root / "lm", root / "tokenizer")
    return {"data": data, "clip": root / "clip", "lm": root / "lm", "tokenizer": root / "tokenizer"}


def overrides(parts: dict[str, Path], data: Path, out: Path, steps: int, save_every: int) -> list[str]:
    return [
        f"vision.name=local-dir:{parts['clip']}", f"vision.model_config_dir={ROOT / 'configs' / 'open_clip'}",
        f"llm.name={parts['lm']}", f"llm.tokenizer={parts['tokenizer']}", "llm.kind=causal",
        f"data.train=[{data}]", "data.val=[]", f"data.languages=[{','.join(LANGUAGES)}]",
        "data.image_size=32", "data.num_workers=0", "data.shuffle_buffer=1",
        "bridge.num_queries=4", "bridge.hidden_size=32", "bridge.num_heads=2", "bridge.num_layers=2",
        "bridge.cross_attention_freq=2", "bridge.itc_dim=16", "bridge.max_text_length=24", "bridge.expert_hidden=32",
        "llm.lora_r=4", "llm.max_length=48", "loss.contrastive_dim=16",
        f"train.output_dir={out}", "train.batch_size=8", f"train.max_steps={steps}", "train.warmup_steps=10",
        "train.log_every=10", "train.eval_every=0", "loss.lagging_boost=0", "train.benchmark_every=0",
        f"train.save_every={save_every}",
        "train.progress=false", "train.tensorboard=false",
    ]


def _env() -> dict:
    return {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}


def train(args: list[str], resume: bool = False) -> None:
    proc = subprocess.run([str(VLM), "train", str(DEMO), *args, *(["--resume"] if resume else [])],
                          capture_output=True, text=True, env=_env())
    if proc.returncode != 0:
        sys.exit(f"vlm train failed:\n{proc.stderr[-3000:]}")


def last_step(out: Path) -> int:
    metrics = out / "metrics.jsonl"
    if not metrics.exists():
        return 0
    rows = [json.loads(line) for line in metrics.read_text().splitlines() if line.strip()]
    return max((r["step"] for r in rows if r.get("kind") == "train"), default=0)


def train_and_kill(args: list[str], out: Path, kill_after: int, resume: bool) -> int:
    """Start `vlm train` and SIGKILL it once its log passes step `kill_after`; returns the step it had logged."""
    proc = subprocess.Popen([str(VLM), "train", str(DEMO), *args, *(["--resume"] if resume else [])],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=_env())
    while last_step(out) < kill_after:
        if proc.poll() is not None:
            sys.exit(f"vlm train ended before the kill:\n{proc.stderr.read()[-3000:]}")
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    return last_step(out)


def weights(run: Path) -> dict[str, torch.Tensor]:
    from vlm.train.checkpoint import load_trained_objective

    return {k: v.detach().clone() for k, v in load_trained_objective(run).state_dict().items()}


def bad_counts(run: Path) -> dict[str, int]:
    """The bad-sample counts of each stretch of the run (they restart at 0 after a resume), summed."""
    rows = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    totals: dict[str, int] = {}
    stretch: dict[str, int] = {}
    previous = 0
    for row in (r for r in rows if r.get("kind") == "train"):
        if row["step"] <= previous:  # a resumed stretch begins
            for k, v in stretch.items():
                totals[k] = totals.get(k, 0) + v
            stretch = {}
        previous = row["step"]
        stretch = {k: v for k, v in row.items() if k.startswith("bad/") and v} or stretch
    for k, v in stretch.items():
        totals[k] = totals.get(k, 0) + v
    return totals


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--hostile-every", type=int, default=19, help="one hostile sample after N good (19: 5%%)")
    parser.add_argument("--out", type=Path, default=Path("/tmp/vlm-soak"))
    args = parser.parse_args()
    os.environ.update(_env())
    root = args.out
    root.mkdir(parents=True, exist_ok=True)
    started = time.time()
    parts = build_parts(root / "parts")
    good = sorted(parts["data"].glob("train-*.tar"))
    hostile = root / "hostile"
    added = make_hostile_copy(good, hostile, args.hostile_every)
    save_every = max(args.steps // 8, 1)

    clean_out, soak_out = root / "clean", root / "soak"
    train(overrides(parts, good[0].parent, clean_out, args.steps, save_every))
    soak_args = overrides(parts, hostile, soak_out, args.steps, save_every)
    kills = [train_and_kill(soak_args, soak_out, args.steps * 3 // 8, resume=False)]
    kills.append(train_and_kill(soak_args, soak_out, args.steps * 11 // 16, resume=True))
    train(soak_args, resume=True)

    clean, soaked = weights(clean_out), weights(soak_out)
    diff = max((clean[k] - soaked[k]).abs().max().item() for k in clean)
    summary = {"steps": args.steps, "hostile_added": added,
               "hostile_share": round(added / (added + 192), 3), "killed_after_logged_steps": kills,
               "bad_samples_seen": bad_counts(soak_out), "same_keys": sorted(clean) == sorted(soaked),
               "max_weight_diff": diff, "minutes": round((time.time() - started) / 60, 1)}
    print(json.dumps(summary, indent=2))
    return 0 if diff == 0.0 and summary["same_keys"] else 1


if __name__ == "__main__":
    sys.exit(main())
