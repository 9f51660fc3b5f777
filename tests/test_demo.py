"""A shortened `vlm demo`: the same command and code path, with a config that runs in seconds."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from PIL import Image

from vlm.cli import main
from vlm.release import from_pretrained

ROOT = Path(__file__).resolve().parent.parent


def test_short_demo_end_to_end(tmp_path, capsys):
    # The tiny test CLIP without ln_pre, as the demo's own is built: BLIP-2's vision layout, so the demo's
    # Blip2ForConditionalGeneration export runs too.
    architecture = json.loads((ROOT / "configs/open_clip/tiny-test-vit.json").read_text())
    architecture["vision_cfg"]["no_ln_pre"] = True
    (tmp_path / "open_clip").mkdir()
    (tmp_path / "open_clip" / "tiny-blip2-vit.json").write_text(json.dumps(architecture))
    overrides = [
        f"train.output_dir={tmp_path / 'run'}", f"data.train=[{tmp_path / 'data'}]", f"data.val=[{tmp_path / 'data'}]",
        f"vision.name=local-dir:{tmp_path / 'parts/clip'}", f"vision.model_config_dir={tmp_path / 'open_clip'}",
        f"llm.name={tmp_path / 'parts/lm'}", f"llm.tokenizer={tmp_path / 'parts/tokenizer'}",
        "data.languages=[en,hi,zh,ar]", "data.image_size=32", "data.num_workers=1",
        "demo.n_train=160", "demo.n_val=24", "demo.clip_model=tiny-blip2-vit", "demo.clip_steps=5",
        "demo.lm_steps=10", "demo.lm_hidden_size=32", "demo.lm_layers=1", "demo.lm_heads=2",
        "demo.tokenizer_vocab_size=600",
        "bridge.num_queries=4", "bridge.hidden_size=32", "bridge.num_heads=2", "loss.contrastive_dim=16",
        "train.batch_size=8", "train.max_steps=6", "train.eval_every=3", "train.log_every=2", "train.progress=false",
        "eval.max_new_tokens=6",
    ]
    assert main(["demo", str(ROOT / "configs" / "demo.yaml"), *overrides]) == 0
    out = capsys.readouterr().out
    assert "Sample captions" in out and "Total wall time" in out

    run = tmp_path / "run"
    results = json.loads((run / "results.json").read_text())
    assert results["languages"] == ["en", "hi", "zh", "ar"] and results["n_images"] == 24
    for lang in results["languages"]:
        row = results["per_language"][lang]
        assert 0 <= row["retrieval"]["i2t_r1"] <= 100 and row["retrieval"]["chance_i2t_r1"] == pytest.approx(100 / 24)
        assert row["vqa"]["n"] > 0 and "majority_overall" in row["vqa"]
        assert "cider" in row["captioning"] and "majority_cider" in row["captioning"]
    assert {"data", "clip", "lm", "align", "eval", "release", "total"} <= set(results["timings"])
    assert results["data"]["n_train"] == 160
    assert results["training"]["steps"] == 6
    assert results["release"]["matches_trained_model"] is True
    # transformers alone loads the Blip2ForConditionalGeneration export and captions as the trained model does
    assert results["release"]["hf_blip2"]["matches_trained_model"] is True
    assert (run / "release-hf-blip2" / "config.json").is_file()
    for name in ("report.md", "loss_curves.png", "per_language.png", "metrics.jsonl"):
        assert (run / name).is_file(), name
    Image.open(run / "per_language.png").verify()
    # the parts were saved in their libraries' formats where the config points
    assert (tmp_path / "parts/clip/open_clip_config.json").is_file()
    assert (tmp_path / "parts/lm/config.json").is_file() and (tmp_path / "parts/tokenizer/tokenizer.json").is_file()
    model = from_pretrained(run / "release")
    assert model.cfg.data.languages == ["en", "hi", "zh", "ar"]
