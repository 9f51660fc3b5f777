"""Export -> from_pretrained gives the same model; the CLI captions with a release and evaluates it."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from data_prep.synthetic import generate_scenes, render
from eval.spread import compute_spread
from vlm.cli import main
from vlm.data.shards import resolve_shards
from vlm.data.stream import fixed_batches
from vlm.data.templates import caption_prompt, vqa_prompt
from vlm.model.vlm import VisionLLM
from vlm.objective.objective import Objective
from vlm.release import from_pretrained
from vlm.release.card import model_card
from vlm.train.checkpoint import load_trained_objective
from vlm.train.trainer import train


def _lm_logits(model: VisionLLM, batch) -> torch.Tensor:
    """The LM's logits over [visual prefix; prompt + target] (decoder logits for a seq2seq LM)."""
    prefix = model.visual(batch.images, batch.prompt_ids, batch.prompt_mask).visual_tokens
    embeds = torch.cat([prefix, model.llm.embed(batch.input_ids)], dim=1)
    mask = torch.cat([batch.attention_mask.new_ones(prefix.shape[:2]), batch.attention_mask], dim=1)
    labels = {"labels": batch.labels} if model.llm.is_seq2seq else {}
    return model.llm.model(inputs_embeds=embeds, attention_mask=mask, **labels).logits


@pytest.mark.parametrize(("kind", "bridge"), [("causal", "qformer"), ("seq2seq", "qformer"), ("causal", "moe")])
def test_release_round_trip_gives_identical_outputs(tiny_parts, tmp_path, kind, bridge):
    """The default release keeps the LoRA adapter apart: the same weights, so the same logits bit for bit;
    `--merge-lora` folds it into the LM's weights: equal within float rounding, the same generations."""
    run = tmp_path / "run"
    train(tiny_parts.config(run, "train.max_steps=3", "train.lr=3e-3", f"bridge.type={bridge}", kind=kind))
    assert main(["export", str(run), "--out", str(tmp_path / "release")]) == 0
    assert main(["export", str(run), "--out", str(tmp_path / "merged"), "--merge-lora"]) == 0
    trained_objective = load_trained_objective(run).eval()
    trained = trained_objective.model
    released, merged = from_pretrained(tmp_path / "release"), from_pretrained(tmp_path / "merged")
    files = {p.name for p in (tmp_path / "release").iterdir()}
    assert {"config.json", "model.safetensors", "vision", "llm", "tokenizer", "README.md"} <= files
    assert any("lora_" in k for k in load_file(str(tmp_path / "release" / "model.safetensors")))
    assert not any("lora" in k for k in load_file(str(tmp_path / "release" / "llm" / "model.safetensors")))
    assert not any("lora" in k for k in merged.state_dict())  # LoRA merged into the LLM weights
    assert "adapter kept" in (tmp_path / "release" / "README.md").read_text()
    assert "LoRA r=4 merged" in (tmp_path / "merged" / "README.md").read_text()

    cfg = trained.cfg
    collator = trained.collator()
    batch = fixed_batches(resolve_shards(cfg.data.val, "val"), cfg.data, trained.vision.preprocess, collator,
                          batch_size=6, max_batches=1, seed=0)[0]
    with torch.no_grad():
        logits = _lm_logits(trained, batch)
        assert torch.equal(_lm_logits(released, batch), logits)
        assert (_lm_logits(merged, batch) - logits).abs().max() < 1e-5
        terms = {}
        for name, model in (("trained", trained), ("released", released), ("merged", merged)):
            objective = Objective(model).eval()  # a release holds the network: the temperatures are training's
            temperatures = {k: v for k, v in trained_objective.state_dict().items() if not k.startswith("model.")}
            assert objective.load_state_dict(temperatures, strict=False).unexpected_keys == []
            torch.manual_seed(0)  # ITM draws its hard negatives at random
            terms[name] = objective(batch)
    a, b, c = terms["trained"], terms["released"], terms["merged"]
    expected = {"qformer": {"loss", "lm", "contrastive", "itc", "itm", "itg"}, "moe": {"loss", "lm", "contrastive"}}
    assert set(a) == set(b) == set(c) == expected[bridge]
    for name in a:
        assert torch.equal(a[name], b[name]), name
        assert a[name].item() == pytest.approx(c[name].item(), rel=1e-5, abs=1e-6)
    assert torch.allclose(trained.encode_image(batch.images), merged.encode_image(batch.images), atol=1e-5)
    texts = ["a small red circle on the left", "左边有一个小的红色圆形"]
    assert torch.allclose(trained.encode_text(texts), merged.encode_text(texts), atol=1e-5)
    prompts = [caption_prompt("de"), vqa_prompt("how many shapes are there?", "en")] * 3
    generations = trained.generate(batch.images, prompts, max_new_tokens=6)
    assert released.generate(batch.images, prompts, max_new_tokens=6) == generations
    assert merged.generate(batch.images, prompts, max_new_tokens=6) == generations


def test_cli_caption_ask_and_eval_with_a_release(tiny_parts, tmp_path, capsys):
    run = tmp_path / "run"
    train(tiny_parts.config(run, "train.max_steps=2"))
    assert main(["export", str(run), "--out", str(tmp_path / "release")]) == 0
    image = tmp_path / "scene.png"
    render(generate_scenes(1, seed=5)[0], image_size=32, seed=5).save(image)
    capsys.readouterr()
    assert main(["caption", str(tmp_path / "release"), str(image), "--lang", "zh", "--max-new-tokens", "4"]) == 0
    caption = capsys.readouterr().out.strip()
    released = from_pretrained(tmp_path / "release")
    from PIL import Image

    pixels = released.vision.preprocess(Image.open(image).convert("RGB")).unsqueeze(0)
    assert caption == released.generate(pixels, [caption_prompt("zh")], max_new_tokens=4)[0]
    assert main(["ask", str(tmp_path / "release"), str(image), "how many shapes are there?"]) == 0
    assert main(["caption", str(tmp_path / "release"), str(tmp_path / "missing.png")]) == 2

    assert main(["eval", str(tmp_path / "release"), "--out", str(tmp_path / "eval"), "eval.max_images=8",
                 "data.languages=[en,zh]"]) == 0
    results = json.loads((tmp_path / "eval" / "results.json").read_text())
    assert results["languages"] == ["en", "zh"] and results["n_images"] == 8
    en = results["per_language"]["en"]
    assert {"retrieval", "captioning", "vqa"} <= set(en)
    assert en["retrieval"]["chance_t2i_r1"] == pytest.approx(100 / 8)
    assert Path(tmp_path / "eval" / "report.md").is_file()


def test_a_users_templates_travel_with_the_release(tiny_parts, tmp_path, capsys, monkeypatch):
    """Trained with its own templates file, a model's release carries it, and `vlm caption`/`vlm ask` prompt
    with it wherever the release is moved."""
    templates = tmp_path / "mine.yaml"
    templates.write_text('zh:\n  caption: ["用中文写一句图片说明："]\n  vqa: ["问：{question} 答："]\n')
    run = tmp_path / "run"
    train(tiny_parts.config(run, "train.max_steps=1", f"data.templates={templates}"))
    assert main(["export", str(run), "--out", str(tmp_path / "release")]) == 0
    templates.unlink()
    (tmp_path / "release").rename(tmp_path / "moved")
    assert json.loads((tmp_path / "moved" / "config.json").read_text())["data"]["templates"] == "templates.yaml"
    prompts = []
    monkeypatch.setattr(VisionLLM, "generate_from_tokens", lambda self, tokens, p, **kw: prompts.extend(p) or ["x"] * len(p))
    image = tmp_path / "scene.png"
    render(generate_scenes(1, seed=5)[0], image_size=32, seed=5).save(image)
    assert main(["caption", str(tmp_path / "moved"), str(image), "--lang", "zh"]) == 0
    assert main(["ask", str(tmp_path / "moved"), str(image), "几个形状？", "--lang", "zh"]) == 0
    assert main(["caption", str(tmp_path / "moved"), str(image), "--lang", "de"]) == 0  # not in the file
    assert prompts == ["用中文写一句图片说明：", "问：几个形状？ 答：", caption_prompt("de")]
    assert main(["caption", str(tmp_path / "moved"), str(image), "--lang", "xx"]) == 2
    assert "--lang: unknown language code 'xx'" in capsys.readouterr().err


def test_batched_cli_python_lang_api_and_broken_inputs(tiny_parts, tmp_path, capsys):
    """`vlm caption`/`vlm ask` take several images in one batch; `generate(..., lang=)` builds the prompts;
    an unreadable image or a truncated weights file fails in one line naming it, before any model work."""
    run = tmp_path / "run"
    train(tiny_parts.config(run, "train.max_steps=1"))
    release = tmp_path / "release"
    assert main(["export", str(run), "--out", str(release)]) == 0
    card = (release / "README.md").read_text()
    assert "- training data: " in card and "tasks caption (0.4), vqa (0.6)" in card
    assert "- training samples per language: en " in card  # from the shards' manifest
    paths = []
    for seed in (5, 6):
        paths.append(tmp_path / f"scene{seed}.png")
        render(generate_scenes(1, seed=seed)[0], image_size=32, seed=seed).save(paths[-1])
    capsys.readouterr()
    assert main(["caption", str(release), *map(str, paths), "--lang", "hi", "--max-new-tokens", "4"]) == 0
    lines = capsys.readouterr().out.strip().split("\n")
    model = from_pretrained(release)
    from PIL import Image

    pixels = torch.stack([model.vision.preprocess(Image.open(p).convert("RGB")) for p in paths])
    captions = model.generate(pixels, lang="hi", max_new_tokens=4)
    assert captions == model.generate(pixels, [caption_prompt("hi")] * 2, max_new_tokens=4)
    assert lines == [f"{p}\t{c}" for p, c in zip(paths, captions)]
    assert main(["ask", str(release), *map(str, paths), "how many shapes are there?", "--lang", "de",
                 "--max-new-tokens", "3"]) == 0
    answers = model.generate(pixels, ["how many shapes are there?"] * 2, lang="de", max_new_tokens=3)
    assert capsys.readouterr().out.strip().split("\n") == [f"{p}\t{a}" for p, a in zip(paths, answers)]
    assert answers == model.generate(pixels, [vqa_prompt("how many shapes are there?", "de")] * 2, max_new_tokens=3)
    with pytest.raises(ValueError, match="unknown language code 'xx'"):
        model.generate(pixels, lang="xx")

    broken = tmp_path / "broken.png"
    broken.write_bytes(b"not an image")
    assert main(["caption", str(release), str(paths[0]), str(broken)]) == 2
    err = capsys.readouterr().err
    assert f"{broken}: not a readable image" in err and err.count("\n") == 1
    weights = release / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[: weights.stat().st_size // 2])  # an interrupted download
    assert main(["caption", str(release), str(paths[0])]) == 2
    err = capsys.readouterr().err
    assert f"{weights}: not a readable safetensors file" in err and err.count("\n") == 1
    # A damaged checkpoint: export stops in one line too.
    checkpoint = next((run / "checkpoints").glob("step-*"))
    (checkpoint / ".metadata").write_bytes(b"\x00" * 12)
    assert main(["export", str(run), "--out", str(tmp_path / "again")]) == 2
    err = capsys.readouterr().err
    assert f"{checkpoint / '.metadata'}: unreadable" in err and err.count("\n") == 1
    assert not (tmp_path / "again").exists()


@pytest.mark.parametrize("embeddings", [False, True])
def test_delta_release_holds_only_trained_weights_and_loads_the_base_parts(tiny_parts, tmp_path, embeddings):
    run = tmp_path / "run"  # the delta: bridge, heads, LoRA adapter (and the tied embedding table when trained)
    train(tiny_parts.config(run, "train.max_steps=2", "train.lr=3e-3", f"llm.train_embeddings={str(embeddings).lower()}"))
    # Sharded past a tiny limit, as a multi-GB bridge would be past the default 5GB.
    assert main(["export", str(run), "--out", str(tmp_path / "delta"), "--delta", "--max-shard-size", "40KB"]) == 0
    assert (tmp_path / "delta" / "model.safetensors.index.json").is_file()
    files = {p.name for p in (tmp_path / "delta").iterdir()}
    assert {"config.json", "model.safetensors.index.json", "delta.json", "README.md"} <= files
    assert not files & {"vision", "llm", "tokenizer"}  # the base parts stay where training found them
    shards = sorted((tmp_path / "delta").glob("model-*.safetensors"))
    assert len(shards) > 1
    keys = [k for shard in shards for k in load_file(str(shard))]
    base = [k for k in keys if k.startswith(("vision.", "llm."))]
    assert base and all("lora_" in k or (embeddings and "embed" in k) for k in base)  # only what trained
    trained_objective = load_trained_objective(run).eval()
    trained, released = trained_objective.model, from_pretrained(tmp_path / "delta")
    assert any("lora" in k for k in released.state_dict())  # the adapter is kept, not merged
    batch = fixed_batches(resolve_shards(trained.cfg.data.val, "val"), trained.cfg.data, trained.vision.preprocess,
                          trained.collator(), batch_size=4, max_batches=1, seed=0)[0]
    with torch.no_grad():
        torch.manual_seed(0)
        a = trained_objective(batch)
        torch.manual_seed(0)
        objective = Objective(released).eval()  # with training's temperatures: a release holds the network
        temperatures = {k: v for k, v in trained_objective.state_dict().items() if not k.startswith("model.")}
        objective.load_state_dict(temperatures, strict=False)
        b = objective(batch)
    assert all(torch.equal(a[name], b[name]) for name in a)  # the same weights, the same graph
    prompts = [caption_prompt("zh")] * 4
    assert trained.generate(batch.images, prompts, max_new_tokens=5) == \
        released.generate(batch.images, prompts, max_new_tokens=5)
    assert "A delta release" in (tmp_path / "delta" / "README.md").read_text()
    # a sharded release (an index, no model.safetensors) is a release to `vlm eval` too
    assert main(["eval", str(tmp_path / "delta"), "--out", str(tmp_path / "eval"), "eval.max_images=4",
                 "data.languages=[en]"]) == 0
    assert json.loads((tmp_path / "eval" / "results.json").read_text())["n_images"] == 4


def test_model_card_shows_fidelity_alignment_and_the_spread(tiny_parts, tmp_path):
    """The card renders what results.json holds (the `vlm` package reads it; `eval` computed it)."""
    per_language = {
        "en": {"retrieval": {"i2t_r1": 50.0, "t2i_r1": 40.0}, "captioning": {"cider": 60.0, "fidelity": 98.0}},
        "de": {"retrieval": {"i2t_r1": 45.0, "t2i_r1": 44.0}, "captioning": {"cider": 50.0, "fidelity": 96.0},
               "alignment": {"llm_en_to_x": 91.0, "n": 256}},
        "si": {"retrieval": {"i2t_r1": 10.0, "t2i_r1": 8.0}, "captioning": {"cider": 12.0, "fidelity": 41.0},
               "alignment": {"llm_en_to_x": 23.5, "n": 256}},
    }
    results = {"languages": ["en", "de", "si"], "per_language": per_language, "n_images": 300,
               "spread": compute_spread(["en", "de", "si"], per_language)}
    card = model_card(tiny_parts.config(tmp_path), results)
    assert "| lang | i2t R@1 | t2i R@1 | CIDEr | fidelity | VQA acc | VQA majority | alignment en→x |" in card
    assert "| en | 50.0 | 40.0 | 60.0 | 98.0 | — | — | — |" in card  # English is the alignment's reference
    assert "| si | 10.0 | 8.0 | 12.0 | 41.0 | — | — | 23.5 |" in card
    assert "## Spread across languages and scripts" in card
    assert "| i2t R@1 | en 50.0 | si 10.0 | 0.20 | Sinhala 10.0 |" in card
    assert "| caption language fidelity | en 98.0 | si 41.0 | 0.42 | Sinhala 41.0 |" in card
    assert "| alignment LLM en→x | de 91.0 | si 23.5 | 0.26 | Sinhala 23.5 |" in card
    assert "Spread" not in model_card(tiny_parts.config(tmp_path), {**results, "spread": {}})
