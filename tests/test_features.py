"""The frozen-feature cache: `vlm prep features` writes, resumes and splits over ranks; training from it gives the
losses and weights of training from pixels; a cache of another encoder is refused; a sample without tokens is
skipped and counted."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import webdataset as wds
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from test_train import _corrupt_copy

import vlm.feature_prep
import vlm.model.vision
import vlm.train.trainer
from data_prep.images import decode_image
from vlm.cli import main
from vlm.data.examples import ExampleMaker, sample_rng
from vlm.data.features import IDENTITY, TokenWriter, feature_file
from vlm.data.records import read_samples
from vlm.data.shards import resolve_shards
from vlm.data.stream import fixed_batches
from vlm.feature_prep import plan_features, write_features
from vlm.model.vision import ImageEncoder
from vlm.model.vlm import VisionLLM
from vlm.objective.objective import Objective
from vlm.train.metrics import read_metrics
from vlm.train.trainer import train

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "configs" / "demo.yaml"


def _shards(tiny_parts) -> list[str]:
    return resolve_shards([str(tiny_parts.data)], "train") + resolve_shards([str(tiny_parts.data)], "val")


def _prep(tiny_parts, out: Path, *extra: str) -> int:
    return main(["prep", "features", str(DEMO), *tiny_parts.overrides(out.parent / "unused"), "--out", str(out),
                 *extra])


@pytest.fixture(scope="module")
def fp32_cache(tiny_parts, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("cache") / "features"
    assert _prep(tiny_parts, out, "--dtype", "fp32") == 0
    return out


def _encoder(tiny_parts, tmp_path, *extra) -> ImageEncoder:
    encoder = ImageEncoder(tiny_parts.config(tmp_path, *extra).vision)
    encoder.load_weights()
    return encoder


def test_prep_writes_one_file_per_shard_with_the_encoders_tokens(tiny_parts, fp32_cache, tmp_path):
    identity = json.loads((fp32_cache / IDENTITY).read_text())
    assert {k: identity[k] for k in ("name", "layer", "num_blocks", "image_size", "include_cls", "tokens", "dtype")} \
        == {"name": "local-dir", "layer": 1, "num_blocks": 2, "image_size": 32, "include_cls": True,
            "tokens": [17, 32], "dtype": "fp32"}
    assert identity["weights"].startswith("blake2b:") and identity["source"] == f"local-dir:{tiny_parts.clip}"
    encoder = _encoder(tiny_parts, tmp_path)
    for url in _shards(tiny_parts):
        samples = list(read_samples([url]))
        with safe_open(str(feature_file(fp32_cache, url)), framework="pt") as f:
            assert sorted(f.keys()) == sorted(s.key for s in samples)
            assert f.metadata()["samples"] == str(len(samples))
            first = f.get_tensor(samples[0].key)
        expected = encoder(encoder.preprocess(samples[0].image)[None])[0]
        assert first.dtype == torch.float32 and first.shape == (17, 32)
        torch.testing.assert_close(first, expected, rtol=1e-5, atol=1e-5)


def test_prep_resumes_and_redoes_a_removed_file(tiny_parts, tmp_path, monkeypatch, capsys):
    encoded = []
    encode = vlm.feature_prep._encode_shard
    monkeypatch.setattr(vlm.feature_prep, "_encode_shard", lambda job, *a: encoded.append(job.url) or encode(job, *a))
    out = tmp_path / "features"
    assert _prep(tiny_parts, out) == 0
    printed = capsys.readouterr().out
    urls = _shards(tiny_parts)
    assert encoded == urls and str(out) in printed and "per million images" in printed
    size = sum(p.stat().st_size for p in out.iterdir())
    assert "5 shards, 120 images" in printed and size > 120 * 17 * 32 * 2  # bf16 by default
    before = {url: feature_file(out, url).stat().st_mtime_ns for url in urls}
    encoded.clear()
    assert _prep(tiny_parts, out) == 0
    assert encoded == []  # every shard was done
    feature_file(out, urls[2]).unlink()
    assert _prep(tiny_parts, out) == 0
    assert encoded == [urls[2]]
    assert all(feature_file(out, u).stat().st_mtime_ns == before[u] for u in urls if u != urls[2])
    assert not [p.name for p in out.iterdir() if p.name.startswith(".")]  # no staging files left behind


def test_ranks_split_the_shards_and_rank0_sums_them(tiny_parts, tmp_path, monkeypatch):
    encoded = []
    encode = vlm.feature_prep._encode_shard
    monkeypatch.setattr(vlm.feature_prep, "_encode_shard", lambda job, *a: encoded.append(job.url) or encode(job, *a))
    cfg = tiny_parts.config(tmp_path / "run")
    out = tmp_path / "features"
    jobs, identity = plan_features(cfg, out, "bf16")
    encoder = _encoder(tiny_parts, tmp_path)
    # Rank 1 first, then rank 0: without a process group the barriers are no-ops, so rank 0 finds rank 1's work.
    assert write_features(jobs, encoder, identity, out, "bf16", rank=1, world_size=2, progress=False) is None
    assert encoded == [job.url for job in jobs[1::2]]
    encoded.clear()
    summary = write_features(jobs, encoder, identity, out, "bf16", rank=0, world_size=2, progress=False)
    assert encoded == [job.url for job in jobs[0::2]]
    assert summary["shards"] == 5 and summary["samples"] == 120 and summary["skipped"] == {}
    assert summary["bytes_per_million_images"] > 17 * 32 * 2 * 10**6


def test_bad_images_are_skipped_and_counted(tiny_parts, tmp_path, capsys):
    url = resolve_shards([str(tiny_parts.data)], "train")[0]
    shard = tmp_path / Path(url).name
    broken = _corrupt_copy(Path(url), shard)
    out = tmp_path / "features"
    assert main(["prep", "features", str(DEMO), *tiny_parts.overrides(tmp_path / "run"), f"data.train=[{shard}]",
                 "data.val=[]", "--out", str(out)]) == 0
    assert broken > 0 and f"1 shards, {24 - broken} images; skipped: corrupt_image {broken})" in capsys.readouterr().out
    with safe_open(str(feature_file(out, str(shard))), framework="pt") as f:
        assert len(f.keys()) == 24 - broken


def _loss(cfg) -> float:
    torch.manual_seed(0)
    objective = Objective(VisionLLM(cfg).load_weights()).eval()
    urls = resolve_shards(cfg.data.val, "val")
    batch = fixed_batches(urls, cfg.data, objective.model.vision.preprocess, objective.model.collator(), 8, 1, 0)[0]
    assert (batch.image_tokens is not None) == bool(cfg.data.features)
    with torch.no_grad():
        return float(objective(batch)["loss"])


@pytest.mark.parametrize("dtype, rel", [("fp32", 1e-5), ("bf16", 1e-2)])
def test_cached_tokens_give_the_loss_of_pixels(tiny_parts, fp32_cache, tmp_path, dtype, rel):
    cache = fp32_cache
    if dtype != "fp32":
        cache = tmp_path / "features"
        assert _prep(tiny_parts, cache, "--dtype", dtype) == 0
    pixels = _loss(tiny_parts.config(tmp_path))
    cached = _loss(tiny_parts.config(tmp_path, f"data.features={cache}"))
    assert cached == pytest.approx(pixels, rel=rel)
    if dtype != "fp32":
        assert cached != pixels  # the cache's rounding is really there


def test_training_from_the_cache_trains_the_same_weights(tiny_parts, fp32_cache, tmp_path, monkeypatch):
    decoded = []
    monkeypatch.setattr("vlm.data.examples.decode_image", lambda *a, **k: decoded.append(1) or decode_image(*a, **k))
    args = ["train.max_steps=3", "train.lr=3e-3"]
    pixels = train(tiny_parts.config(tmp_path / "pixels", *args))
    assert decoded
    decoded.clear()
    cached = train(tiny_parts.config(tmp_path / "cached", *args, f"data.features={fp32_cache}"))
    assert not decoded  # no image was decoded
    losses = {name: [r["loss"] for r in read_metrics(tmp_path / name / "metrics.jsonl") if r["kind"] == "train"]
              for name in ("pixels", "cached")}
    assert len(losses["cached"]) == 3 and losses["cached"] == pytest.approx(losses["pixels"], rel=1e-5)
    assert losses["cached"][-1] < losses["cached"][0]  # it did train
    trained = {n: p for n, p in pixels.objective.named_parameters() if p.requires_grad}
    for name, param in cached.objective.named_parameters():
        if param.requires_grad:
            torch.testing.assert_close(param, trained[name], rtol=1e-4, atol=1e-5, msg=name)


@pytest.mark.parametrize("override, culprit", [
    ("vision.layer=0", "layer is 1 there, 0 in this config (vision.layer)"),
    ("vision.include_cls=false", "include_cls is True there, False in this config (vision.include_cls)"),
    ("weights", "weights is 'blake2b:"),
])
def test_a_cache_of_another_encoder_is_refused_before_the_model_is_built(tiny_parts, fp32_cache, tmp_path, capsys,
                                                                          monkeypatch, override, culprit):
    def refuse(*args, **kwargs):
        raise AssertionError("the model was built")

    monkeypatch.setattr(vlm.train.trainer, "VisionLLM", refuse)
    if override == "weights":  # the same architecture with other weights, in another folder
        clip = tmp_path / "clip"
        shutil.copytree(tiny_parts.clip, clip)
        weights = load_file(clip / "open_clip_model.safetensors")
        weights["visual.proj"] = weights["visual.proj"] + 1
        save_file(weights, str(clip / "open_clip_model.safetensors"))
        override = f"vision.name=local-dir:{clip}"
    run = tmp_path / "run"
    assert main(["train", str(DEMO), *tiny_parts.overrides(run), f"data.features={fp32_cache}", override]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and culprit in err[0] and str(fp32_cache) in err[0], err
    assert not run.exists()  # nothing written
    # prep refuses to add to it as well, before the encoder is built
    monkeypatch.setattr(vlm.model.vision, "ImageEncoder", refuse)
    assert main(["prep", "features", str(DEMO), *tiny_parts.overrides(run), "--out", str(fp32_cache), override]) == 2
    assert culprit in capsys.readouterr().err


def test_the_console_script_refuses_a_stale_cache_in_one_line(tiny_parts, fp32_cache, tmp_path):
    vlm_script = Path(sys.executable).with_name("vlm")
    result = subprocess.run([str(vlm_script), "train", str(DEMO), *tiny_parts.overrides(tmp_path / "run"),
                             f"data.features={fp32_cache}", "vision.layer=0"], capture_output=True, text=True,
                            env={**os.environ, "HF_HUB_OFFLINE": "1"}, timeout=300)
    err = result.stderr.strip().splitlines()
    assert result.returncode == 2 and len(err) == 1, result.stderr
    assert err[0].startswith("vlm train: error: 'data.features':") and "vision.layer" in err[0]


def test_an_unfinished_cache_is_refused(tiny_parts, fp32_cache, tmp_path, capsys):
    partial = tmp_path / "features"
    shutil.copytree(fp32_cache, partial)
    url = resolve_shards([str(tiny_parts.data)], "train")[1]
    feature_file(partial, url).unlink()
    assert main(["train", str(DEMO), *tiny_parts.overrides(tmp_path / "run"), f"data.features={partial}"]) == 2
    assert f"lacks 1 of the 4 shards' tokens (first: {Path(url).name})" in capsys.readouterr().err


def test_a_sample_without_tokens_is_skipped_and_counted(tiny_parts, fp32_cache, tmp_path):
    cache = tmp_path / "features"
    shutil.copytree(fp32_cache, cache)
    url = resolve_shards([str(tiny_parts.data)], "train")[0]
    kept = load_file(feature_file(cache, url))
    missing = sorted(kept)[3]
    writer = TokenWriter(feature_file(cache, url), torch.float32)
    for key in sorted(kept):
        if key != missing:
            writer.add(key, kept[key])
    writer.close({"samples": str(len(kept) - 1)})
    cfg = tiny_parts.config(tmp_path, f"data.features={cache}")
    maker = ExampleMaker(cfg.data, transform=None)
    samples = list(wds.tariterators.tarfile_samples([{"url": url}]))
    examples = {s["__key__"]: maker(s, sample_rng(0, 0, s["__key__"])) for s in samples}
    assert maker.bad.totals == {"no_features": 1} and examples[missing] is None
    assert all(e.image is None and torch.equal(e.image_tokens, kept[key]) for key, e in examples.items()
               if key != missing)
