"""`vlm demo`: the whole pipeline on synthetic data, end to end, through the code a GPU run uses.

Stages: synthetic scenes -> phrase-table translation -> webdataset shards; the small "pretrained"
parts it cannot download (CLIP, tokenizer, LM); alignment training; per-language evaluation;
results.json + report; a release folder, reloaded and used to caption an image, and the same model exported
as transformers' Blip2ForConditionalGeneration, captioning through transformers alone.
"""

from __future__ import annotations

import shutil
import time
from pathlib import Path

from data_prep.shards import prepare_synthetic
from data_prep.translate import make_translator
from eval.report import write_results
from eval.runner import evaluate
from eval.suites.loading import load_suite
from vlm.cli.train import periodic_benchmark
from vlm.config import Config, ConfigError, check_paths, load_config
from vlm.data.records import read_samples
from vlm.data.shards import resolve_shards
from vlm.data.templates import caption_prompt
from vlm.model.vlm import VisionLLM
from vlm.parts import make_clip, make_language_model
from vlm.release import export_release, from_pretrained
from vlm.release.hf_blip2 import caption_with_transformers
from vlm.train.trainer import train

LOCAL_DIR = "local-dir:"


def run(args) -> int:
    run_demo(load_config(args.config, args.overrides))
    return 0


def _demo_paths(cfg: Config) -> tuple[Path, Path, Path, Path]:
    """Where the demo writes its data, CLIP, LM and tokenizer: the places the config reads them from."""
    if len(cfg.data.train) != 1 or cfg.data.val != cfg.data.train:
        raise ConfigError("demo: 'data.train' and 'data.val' must both name the one folder the demo writes")
    if cfg.vision.model_config_dir and not Path(cfg.vision.model_config_dir).is_dir():
        raise ConfigError(f"'vision.model_config_dir': folder not found: {cfg.vision.model_config_dir}")
    if not cfg.vision.name.startswith(LOCAL_DIR):
        raise ConfigError(f"demo: 'vision.name' must be '{LOCAL_DIR}FOLDER' (where the demo saves its CLIP)")
    if not cfg.llm.tokenizer:
        raise ConfigError("demo: 'llm.tokenizer' must name the folder where the demo saves its tokenizer")
    return Path(cfg.data.train[0]), Path(cfg.vision.name[len(LOCAL_DIR):]), Path(cfg.llm.name), Path(cfg.llm.tokenizer)


def run_demo(cfg: Config, progress: bool = True) -> dict:
    start = time.time()
    timings: dict[str, float] = {}
    data_dir, clip_dir, lm_dir, tokenizer_dir = _demo_paths(cfg)
    out_dir = Path(cfg.train.output_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    demo = cfg.demo

    def stage(name: str, began: float) -> None:
        timings[name] = round(time.time() - began, 1)
        print(f"[demo] {name}: {timings[name]} s", flush=True)

    t = time.time()
    manifest = prepare_synthetic(data_dir, demo.n_train, demo.n_val, cfg.data.languages, seed=demo.seed,
                                 image_size=cfg.data.image_size, translator=make_translator(cfg.prep.translate),
                                 filters=cfg.prep.filters)
    stage("data", t)
    train_urls, val_urls = resolve_shards(cfg.data.train, "train"), resolve_shards(cfg.data.val, "val")

    t = time.time()
    parts = make_clip(train_urls, demo, cfg.vision.model_config_dir, clip_dir)
    stage("clip", t)
    t = time.time()
    parts.update(make_language_model(train_urls, cfg.data.languages, demo, lm_dir, tokenizer_dir))
    stage("lm", t)

    check_paths(cfg)  # the parts now exist where the config points
    for previous in ("checkpoints", "tensorboard"):  # the demo starts over: its last run is replaced
        shutil.rmtree(out_dir / previous, ignore_errors=True)
    t = time.time()
    result = train(cfg, benchmark=periodic_benchmark(cfg) if cfg.train.benchmark_every else None)
    stage("align", t)

    t = time.time()
    results = evaluate(result.model, load_suite(cfg.eval, cfg.data), cfg.eval, progress=progress)
    stage("eval", t)

    t = time.time()
    release_dir = export_release(result.model, out_dir / "release", results)
    reloaded = from_pretrained(release_dir)
    picture = _first_val_image(val_urls)
    image = reloaded.vision.preprocess(picture).unsqueeze(0)
    lang = cfg.data.languages[-1]
    reloaded_caption = reloaded.generate(image, [caption_prompt(lang)], max_new_tokens=cfg.eval.max_new_tokens)[0]
    trained_caption = result.model.generate(image, [caption_prompt(lang)], max_new_tokens=cfg.eval.max_new_tokens)[0]
    hf_blip2 = _hf_blip2_release(result.model, out_dir, results, picture, caption_prompt(lang), trained_caption,
                                 cfg.eval.max_new_tokens)
    stage("release", t)

    timings["total"] = round(time.time() - start, 1)
    results["timings"] = timings
    results["data"] = {k: manifest[k] for k in ("n_train", "n_val", "stats") if k in manifest}
    results["parts"] = parts
    results["training"] = {"steps": result.steps, "seconds": round(result.seconds, 1), **result.last_metrics}
    results["release"] = {"path": str(release_dir), "caption_lang": lang, "caption": reloaded_caption,
                          "matches_trained_model": reloaded_caption == trained_caption, "hf_blip2": hf_blip2}
    report = write_results(results, out_dir, out_dir / "metrics.jsonl")
    results["report"] = str(report)
    _print_summary(results, out_dir)
    return results


def _hf_blip2_release(model: VisionLLM, out_dir: Path, results: dict, image, prompt: str, trained_caption: str,
                      max_new_tokens: int) -> dict:
    """The same model as transformers' Blip2ForConditionalGeneration, captioning through transformers alone;
    a config whose parts that class cannot hold (an MoE bridge, a tower with ln_pre) says why instead."""
    try:
        folder = export_release(model, out_dir / "release-hf-blip2", results, form="hf-blip2")
    except ConfigError as err:
        return {"skipped": str(err)}
    caption = caption_with_transformers(folder, [image], prompt, max_new_tokens=max_new_tokens)[0]
    return {"path": str(folder), "caption": caption, "matches_trained_model": caption == trained_caption}


def _first_val_image(urls: list[str]):
    return next(iter(read_samples(urls))).image


def _print_summary(results: dict, out_dir: Path) -> None:
    print("\nSample captions (held-out scenes):")
    for lang in results["languages"]:
        samples = results["per_language"][lang].get("captioning", {}).get("samples", [])
        for s in samples[:2]:
            print(f"  [{lang}] {s['hypothesis']}    (reference: {s['reference']})")
    print("\n lang | i2t R@1 | t2i R@1 | chance | CIDEr | VQA  | VQA majority")
    for lang in results["languages"]:
        row = results["per_language"][lang]
        r, c, v = row.get("retrieval", {}), row.get("captioning", {}), row.get("vqa", {})
        print(f"  {lang:3} | {r.get('i2t_r1', 0):7.1f} | {r.get('t2i_r1', 0):7.1f} | {r.get('chance_t2i_r1', 0):6.2f} |"
              f" {c.get('cider', 0):5.1f} | {v.get('overall', 0):4.1f} | {v.get('majority_overall', 0):4.1f}")
    rel = results["release"]
    print(f"\nRelease: {rel['path']} (reloaded caption [{rel['caption_lang']}]: {rel['caption']})")
    hf = rel["hf_blip2"]
    if "skipped" in hf:
        print(f"No Blip2ForConditionalGeneration export: {hf['skipped']}")
    else:
        print(f"Blip2ForConditionalGeneration: {hf['path']} (transformers' caption: {hf['caption']}; "
              f"{'the same' if hf['matches_trained_model'] else 'NOT the same'} as the trained model's)")
    print(f"Results: {out_dir / 'results.json'}   Report: {results['report']}")
    print(f"Total wall time: {results['timings']['total']:.1f} s")
