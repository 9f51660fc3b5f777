"""The evaluator end to end on tiny parts: suites through `load_suite`, one encoder pass per image, skipped
images, decoding options and the KV cache, language means, the trainer's periodic benchmark, `vlm eval` on a
published-format suite, and a two-rank torchrun evaluation merged once."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from PIL import Image

from eval.report import write_results
from eval.runner import decoding_options, evaluate, language_means
from eval.suites import Benchmark, BenchmarkImage
from eval.suites.loading import load_suite
from vlm.cli import main
from vlm.cli.train import periodic_benchmark
from vlm.data.records import read_samples
from vlm.data.shards import resolve_shards
from vlm.model.vlm import VisionLLM
from vlm.train.metrics import read_metrics
from vlm.train.trainer import train

ROOT = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def model_and_cfg(tiny_parts, tmp_path_factory):
    cfg = tiny_parts.config(tmp_path_factory.mktemp("run"), "eval.max_images=10", "eval.languages=[en,zh]")
    torch.manual_seed(0)
    return VisionLLM(cfg).load_weights().eval(), cfg


def test_demo_suite_results_shape_means_and_protocol(model_and_cfg):
    model, cfg = model_and_cfg
    bench = load_suite(cfg.eval, cfg.data)
    assert bench.name == "demo" and bench.languages == ["en", "zh"] and len(bench.images) == 10
    assert bench.train_records  # the demo's train split gives the majority baselines
    results = evaluate(model, bench, cfg.eval, progress=False)
    assert results["suite"] == "demo" and results["n_images"] == 10 and results["skipped_images"] == 0
    assert results["decoding"]["caption"]["use_cache"] is True
    assert results["decoding"]["precision"] == "fp32"  # auto: bf16 autocast on GPUs only
    assert results["decoding"]["vqa"]["max_new_tokens"] == cfg.eval.vqa_max_new_tokens
    for lang in ("en", "zh"):
        scores = results["per_language"][lang]
        assert {"retrieval", "captioning", "vqa"} <= set(scores)
        assert scores["retrieval"]["protocol"] == "hit@k as CLIP_benchmark; captions: first"  # the suite's default
        assert scores["captioning"]["tokenizer"] == ("char" if lang == "zh" else "whitespace")
        assert {"cider", "bleu", "chrf", "fidelity", "majority_cider"} <= set(scores["captioning"])
        assert scores["vqa"]["n"] > 0 and "majority_overall" in scores["vqa"]
    for section, metric in (("retrieval", "i2t_r1"), ("captioning", "chrf"), ("vqa", "overall")):
        values = [results["per_language"][lang][section][metric] for lang in ("en", "zh")]
        assert results["mean"][section][metric] == pytest.approx(sum(values) / 2)
        assert results["mean"][section]["n_languages"] == 2
    json.dumps(results)  # results.json must be writable as is


def test_demo_results_and_report_carry_the_per_language_picture(model_and_cfg, tmp_path):
    """Spread, MEXA-style alignment (English the reference, left out) and tokenizer fertility, in results.json and
    report.md, on the demo suite whose captions are translations of each other."""
    model, cfg = model_and_cfg
    bench = load_suite(cfg.eval, cfg.data)
    results = evaluate(model, bench, cfg.eval, progress=False)
    write_results(results, tmp_path)
    results = json.loads((tmp_path / "results.json").read_text())

    i2t = {lang: results["per_language"][lang]["retrieval"]["i2t_r1"] for lang in ("en", "zh")}
    row = results["spread"]["metrics"]["retrieval/i2t_r1"]
    assert row["languages"]["best_value"] == max(i2t.values()) and row["languages"]["worst_value"] == min(i2t.values())
    assert row["scripts"]["n"] == 2 and {row["scripts"]["best"], row["scripts"]["worst"]} == {"Latin", "Han"}
    assert "captioning/fidelity" in results["spread"]["metrics"]

    assert results["alignment"]["layer"] == 1 and results["alignment"]["depth"] == 1  # the middle of one layer
    assert results["alignment"]["text_head"] == "itc" and results["alignment"]["skipped_languages"] == {}
    assert "alignment" not in results["per_language"]["en"]
    zh = results["per_language"]["zh"]["alignment"]
    pairs = {(c["en"][i], c["zh"][i]) for c in (im.captions for im in bench.images) for i in range(len(c["en"]))}
    assert 2 <= zh["n"] <= len(pairs) and zh["chance"] == pytest.approx(100 / zh["n"]) and zh["layer"] == 1
    for key in ("llm_en_to_x", "llm_x_to_en", "text_head_en_to_x", "text_head_x_to_en"):
        assert 0.0 <= zh[key] <= 100.0
    assert results["mean"]["alignment"]["n_languages"] == 1
    assert results["timings"]["alignment"] >= 0

    llm = results["fertility"]["llm"]
    assert llm["parallel"] is True and llm["reference"] == "en" and set(llm["languages"]) == {"en", "zh"}
    assert llm["languages"]["en"]["vs_reference"] == 1.0 and llm["languages"]["zh"]["script"] == "Han"
    assert results["fertility"]["bridge"] == llm  # this text branch reads the LLM's tokenizer

    report = (tmp_path / "report.md").read_text(encoding="utf-8")
    spread = results["spread"]["metrics"]["retrieval/i2t_r1"]["languages"]
    assert (f"| i2t R@1 | {spread['best']} {spread['best_value']:.1f} | {spread['worst']} {spread['worst_value']:.1f} |"
            in report)
    assert "## Cross-lingual alignment (MEXA-style)" in report and "layer 1 of 1" in report
    assert "| en | — | — | — | — | — |" in report
    assert f"| zh | {zh['llm_en_to_x']:.1f} | {zh['llm_x_to_en']:.1f} | {zh['text_head_en_to_x']:.1f} | " in report
    assert "## Tokenizer fertility on the suite's captions" in report and "| zh | Han |" in report
    assert "shares the LLM's tokenizer" in report
    assert "Caption language fidelity per language, lowest first: " in report


def test_suites_without_translated_captions_skip_alignment(model_and_cfg):
    model, cfg = model_and_cfg
    bench = load_suite(cfg.eval, cfg.data)
    bench.parallel_captions, bench.images = False, bench.images[:4]  # as XM3600 loads
    results = evaluate(model, bench, cfg.eval, progress=False)
    assert results["alignment"] == {"skipped": "the suite's captions are not translations of each other"}
    assert not any("alignment" in scores for scores in results["per_language"].values())
    assert results["fertility"]["llm"]["parallel"] is False


def test_language_means_skip_missing_sections_and_non_numbers():
    per_language = {"en": {"vqa": {"overall": 60.0, "answer_language": "en", "by_type": {}}},
                    "de": {"vqa": {"overall": 40.0}, "captioning": {"cider": 10.0}}}
    means = language_means(per_language)
    assert means["vqa"] == {"overall": 50.0, "n_languages": 2}
    assert means["captioning"] == {"cider": 10.0, "n_languages": 1}
    assert "retrieval" not in means


def _benchmark_from_files(tmp_path: Path, cfg, n: int, corrupt: int | None) -> Benchmark:
    """The demo's val images written as files (the way published suites come), one of them corrupt."""
    images = []
    for i, sample in enumerate(read_samples(resolve_shards(cfg.data.val, "val"))):
        if i == n:
            break
        path = tmp_path / f"{sample.key}.jpg"
        if i == corrupt:
            path.write_bytes(b"\xff\xd8 not a jpeg")
        else:
            sample.image.save(path)
        images.append(BenchmarkImage(sample.key, path, sample.record["captions"], sample.record["qa"]))
    return Benchmark("files", ["en"], images, ("retrieval", "captioning", "vqa"), retrieval_captions="all")


def test_undecodable_images_are_skipped_counted_and_leave_every_gallery(model_and_cfg, tmp_path):
    model, cfg = model_and_cfg
    bench = _benchmark_from_files(tmp_path, cfg, n=7, corrupt=2)
    workers, cfg.eval.num_workers = cfg.eval.num_workers, 1  # file images go through a DataLoader worker
    try:
        results = evaluate(model, bench, cfg.eval, progress=False)
    finally:
        cfg.eval.num_workers = workers
    assert results["n_images"] == 6 and results["skipped_images"] == 1
    en = results["per_language"]["en"]
    assert en["retrieval"]["n_images"] == 6
    assert en["retrieval"]["n_texts"] == sum(len(im.captions["en"]) for i, im in enumerate(bench.images) if i != 2)
    assert en["retrieval"]["protocol"].endswith("captions: all")
    assert en["captioning"]["n_images"] == 6
    assert bench.images[2].key not in {s["image"] for s in en["captioning"]["samples"]}
    assert en["vqa"]["n"] == sum(1 for i, im in enumerate(bench.images) if i != 2 for q in im.qa if q["lang"] == "en")


def test_generation_uses_the_kv_cache_and_config_decoding(model_and_cfg):
    model, cfg = model_and_cfg
    lengths = []  # positions the first decoder layer processes at each step
    first_layer = next(m for name, m in model.llm.model.named_modules() if name.endswith("layers.0"))
    hook = first_layer.register_forward_pre_hook(
        lambda _m, args, kwargs: lengths.append((args[0] if args else kwargs["hidden_states"]).shape[1]),
        with_kwargs=True)
    tokens = model.vision(torch.randn(2, 3, 32, 32))
    try:
        cached = model.generate_from_tokens(tokens, ["Caption in English:"] * 2, **decoding_options(cfg.eval, vqa=False))
    finally:
        hook.remove()
    # The first step reads [visual prefix; prompt]; every later step feeds one new token against the cache.
    assert lengths[0] > 1 and lengths[1:] and set(lengths[1:]) == {1}
    uncached = model.generate_from_tokens(tokens, ["Caption in English:"] * 2,
                                          **{**decoding_options(cfg.eval, vqa=False), "use_cache": False})
    assert cached == uncached
    cfg.eval.num_beams, cfg.eval.length_penalty = 3, -1.0
    try:
        options = decoding_options(cfg.eval, vqa=True)
        assert options == {"max_new_tokens": cfg.eval.vqa_max_new_tokens, "num_beams": 3, "do_sample": False,
                           "use_cache": True, "length_penalty": -1.0}
        beams = model.generate_from_tokens(tokens, ["Question: how many? Answer:"] * 2, **options)
    finally:
        cfg.eval.num_beams, cfg.eval.length_penalty = 1, 1.0
    assert len(beams) == 2 and all(isinstance(b, str) for b in beams)


def test_trainer_runs_the_benchmark_periodically(tiny_parts, tmp_path):
    cfg = tiny_parts.config(tmp_path / "run", "train.max_steps=3", "train.benchmark_every=2", "eval.max_images=6",
                            "eval.languages=[en]")
    train(cfg, benchmark=periodic_benchmark(cfg))  # what `vlm train` composes
    for step in (2, 3):  # every 2 steps, and at the end
        results = json.loads((tmp_path / "run" / "eval" / f"step-{step}" / "results.json").read_text())
        assert results["n_images"] == 6 and results["languages"] == ["en"]
        assert (tmp_path / "run" / "eval" / f"step-{step}" / "report.md").is_file()
    rows = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if r["kind"] == "benchmark"]
    assert [r["step"] for r in rows] == [2, 3]
    assert {"retrieval_i2t_r1", "captioning_cider", "vqa_overall"} <= set(rows[0])
    assert "spread_retrieval_i2t_r1" not in rows[0]  # one language: no spread


def test_a_missing_benchmark_folder_fails_before_training(tiny_parts, tmp_path, capsys):
    code = main(["train", str(ROOT / "configs" / "demo.yaml"), *tiny_parts.overrides(tmp_path / "run"), "train.benchmark_every=2",
                 "eval.suite=xm3600", f"eval.data_root={tmp_path / 'nowhere'}"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "nowhere" in err[0]
    assert not (tmp_path / "run" / "checkpoints").exists()


def _xm3600_folder(tmp_path: Path) -> Path:
    """A tiny XM3600 in its published layout: captions.jsonl plus images/<key>.jpg."""
    root = tmp_path / "xm3600"
    (root / "images").mkdir(parents=True)
    captions = {"en": ["a red circle", "a red round shape"], "zh": ["一个红色的圆", "红圆"]}
    with open(root / "captions.jsonl", "w", encoding="utf-8") as f:
        for i in range(4):
            key = f"00{i}a1b2c3d4e5f6"
            Image.new("RGB", (40, 30), (60 * i, 80, 200 - 40 * i)).save(root / "images" / f"{key}.jpg")
            row = {"image/key": key}
            for lang, caps in captions.items():
                row[lang] = {"caption": caps, "caption/tokenized": caps, "caption/tokenized/lowercase": caps}
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    return root


def test_cli_eval_reads_a_published_suite_and_rejects_bad_input_before_the_model(tiny_parts, tmp_path, capsys):
    run = tmp_path / "run"
    train(tiny_parts.config(run, "train.max_steps=1"))
    root = _xm3600_folder(tmp_path)
    capsys.readouterr()
    assert main(["eval", str(run), "--suite", "xm3600", "--data-root", str(root), "--langs", "zh,en",
                 "eval.prompt_language=en"]) == 0
    results = json.loads((run / "eval-xm3600" / "results.json").read_text())
    assert results["suite"] == "xm3600" and results["languages"] == ["zh", "en"] and results["n_images"] == 4
    assert results["decoding"]["prompt_language"] == "en"
    zh = results["per_language"]["zh"]
    assert zh["retrieval"]["protocol"].endswith("captions: first") and zh["retrieval"]["n_texts"] == 4
    assert zh["captioning"]["tokenizer"] == "char" and "vqa" not in zh
    assert (run / "eval-xm3600" / "report.md").is_file() and (run / "eval-xm3600" / "per_language.png").is_file()

    for argv, culprit in (
        (["--suite", "xm3600", "--data-root", str(tmp_path / "none")], "none"),
        (["--suite", "xm3600", "--data-root", str(root), "--langs", "xx"], "xx"),
        (["--suite", "xm3600"], "--data-root"),
        (["--suite", "demo", "eval.caption_tokenizer=jieba"], "eval.caption_tokenizer"),
    ):
        capsys.readouterr()
        assert main(["eval", str(run), *argv]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and culprit in err[0], err


def test_torchrun_eval_splits_the_work_and_matches_one_process(tiny_parts, tmp_path):
    run = tmp_path / "run"
    train(tiny_parts.config(run, "train.max_steps=2"))
    common = ["eval", str(run), "--langs", "en,zh", "eval.max_images=11", "eval.batch_size=4", "eval.num_workers=0"]
    assert main([*common, "--out", str(tmp_path / "single")]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "vlm.cli", *common, "--out", str(tmp_path / "split")],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    single = json.loads((tmp_path / "single" / "results.json").read_text())
    split = json.loads((tmp_path / "split" / "results.json").read_text())
    assert split["world_size"] == 2 and single["world_size"] == 1
    assert split["n_images"] == single["n_images"] == 11
    for lang in ("en", "zh"):
        one, two = single["per_language"][lang], split["per_language"][lang]
        assert two["retrieval"]["n_texts"] == one["retrieval"]["n_texts"]
        for metric in ("i2t_r1", "t2i_r5", "t2i_r10"):
            assert math.isclose(two["retrieval"][metric], one["retrieval"][metric], abs_tol=100 / 11 + 1e-6)
        assert two["captioning"]["n_images"] == one["captioning"]["n_images"]
        assert two["vqa"]["n"] == one["vqa"]["n"]
        assert two["captioning"]["cider"] == pytest.approx(one["captioning"]["cider"], abs=5.0)


def test_bf16_autocast_evaluation_runs_and_is_recorded(model_and_cfg):
    """The GPU default (eval.precision auto -> bf16 autocast), forced here on the CPU."""
    model, cfg = model_and_cfg
    bench = load_suite(cfg.eval, cfg.data)
    bench.images = bench.images[:4]
    cfg.eval.precision = "bf16"
    try:
        results = evaluate(model, bench, cfg.eval, progress=False)
    finally:
        cfg.eval.precision = "auto"
    assert results["decoding"]["precision"] == "bf16 autocast"
    assert results["per_language"]["en"]["retrieval"]["n_images"] == 4
    assert all(isinstance(s["hypothesis"], str) for s in results["per_language"]["en"]["captioning"]["samples"])
