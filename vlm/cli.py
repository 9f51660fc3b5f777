"""The `vlm` command: demo, prep, train, eval, export, caption, ask.

Config problems (unknown key, wrong type, impossible value, missing file) exit with code 2 and one
line naming the culprit, before any model is built.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import re
import sys
import warnings
from pathlib import Path

from data_prep.build_shards import FORMATS as SHARD_FORMATS
from data_prep.translate import BACKENDS
from vlm.config import SUITES, ConfigError, InputError, check_paths, load_config

EXPORT_FORMATS = ("native", "hf-blip2")
DEFAULT_DEMO_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "demo.yaml"


def _add_config_args(parser: argparse.ArgumentParser, required: bool = True) -> None:
    parser.add_argument("config", nargs=None if required else "?", help="YAML config file")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.lr=3e-4")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vlm", description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="command", required=True)

    demo = sub.add_parser("demo", help="synthetic data -> parts -> align -> eval -> release, end to end")
    demo.add_argument("config", nargs="?", default=str(DEFAULT_DEMO_CONFIG), help="default: configs/demo.yaml")
    demo.add_argument("overrides", nargs="*")

    prep = sub.add_parser("prep", help="write training shards: from your data, translated, or synthetic")
    prep_sub = prep.add_subparsers(dest="source", required=True)
    shards = prep_sub.add_parser("shards", help="webdataset shards from img2dataset, COCO, LLaVA or JSONL data")
    shards.add_argument("inputs", nargs="+", help="img2dataset folder/tars, a COCO or LLaVA json, or a JSONL file")
    shards.add_argument("--format", required=True, choices=SHARD_FORMATS)
    shards.add_argument("--out", required=True)
    shards.add_argument("--images", default="", help="the image folder (coco, llava; jsonl: paths relative to it)")
    shards.add_argument("--split", default="train", help="the split name of the shards (their file prefix)")
    shards.add_argument("--karpathy-split", default="",
                        help="coco Karpathy file: keep this split (train adds restval)")
    shards.add_argument("--shard-size", type=int, default=1000)
    tr = prep_sub.add_parser("translate", help="translate the English captions and QA of shards into more languages")
    tr.add_argument("inputs", nargs="+", help="a `vlm prep` folder (every split) or shard files, globs, brace "
                    "patterns; then optional overrides such as prep.filters.max_repeats=3")
    tr.add_argument("--out", required=True)
    tr.add_argument("--langs", help="target languages, e.g. de,fr,zh (default: the config's prep.translate.languages)")
    tr.add_argument("--backend", choices=BACKENDS, help="default: the config's prep.translate.backend (nllb)")
    tr.add_argument("--model", help="a hub id or local folder; ctranslate2: the converted model folder")
    tr.add_argument("--config", help="a YAML config whose prep section sets the backend and filter thresholds")
    tr.add_argument("--split", default="train", help="the split name of loose shard files (a folder keeps its own)")
    tr.add_argument("--batch-size", type=int, help="sentences per generate call")
    tr.set_defaults(overrides=[])  # filled by main() with `section.key=value` items given after the options
    ct2 = prep_sub.add_parser("ct2", help="convert an NLLB or M2M100 model for --backend ctranslate2")
    ct2.add_argument("model", help="a hub id or local folder of the transformers model")
    ct2.add_argument("--out", required=True)
    ct2.add_argument("--quantization", help="int8, int8_float16, float16, ... (default: as saved)")
    synth = prep_sub.add_parser("synthetic", help="synthetic scenes, translated by the phrase-table backend")
    synth.add_argument("--out", required=True)
    synth.add_argument("--n-train", type=int, default=20000)
    synth.add_argument("--n-val", type=int, default=300)
    synth.add_argument("--langs", default="en,de,fr,hi,si,zh,ar,ru")
    synth.add_argument("--image-size", type=int, default=64)
    synth.add_argument("--seed", type=int, default=0)

    train = sub.add_parser("train", help="align a vision encoder to an LLM")
    _add_config_args(train)
    train.add_argument("--resume", action="store_true", help="continue from train.output_dir's latest checkpoint")

    ev = sub.add_parser("eval", help="per-language retrieval, captioning and VQA on a benchmark suite")
    ev.add_argument("model", help="a release folder, a run folder or a checkpoint folder")
    ev.add_argument("overrides", nargs="*", help="e.g. eval.max_images=100 eval.num_beams=3")
    ev.add_argument("--suite", choices=SUITES, help="default: the config's eval.suite (demo: held-out vlm prep shards)")
    ev.add_argument("--data-root", help="the suite's downloaded files (README: Evaluation); demo default: data.val")
    ev.add_argument("--langs", help="comma-separated languages (default: all of the suite's)")
    ev.add_argument("--out", help="where results.json and report.md go (default: next to the model)")

    ex = sub.add_parser("export", help="write a release folder from a run or checkpoint")
    ex.add_argument("checkpoint", help="a run folder (uses its latest checkpoint), a checkpoint folder, or a "
                    "native release (to merge its adapter or convert it to hf-blip2)")
    ex.add_argument("--out", required=True)
    ex.add_argument("--results", help="results.json whose scores go into the model card")
    ex.add_argument("--delta", action="store_true", help="only the trained weights (bridge, heads, LoRA adapter) "
                    "and the base models' ids, instead of a self-contained folder")
    ex.add_argument("--merge-lora", action="store_true", help="fold the LoRA adapter into the LM's weights "
                    "(default: kept beside them in model.safetensors)")
    ex.add_argument("--format", choices=EXPORT_FORMATS, default="native",
                    help="native (VisionLLM.from_pretrained) or hf-blip2 (transformers' "
                         "Blip2ForConditionalGeneration + Blip2Processor; Q-Former bridges, LoRA merged)")
    ex.add_argument("--max-shard-size", default="5GB", help="split model.safetensors past this size (e.g. 2GB)")

    for name, text in (("caption", "caption images"), ("ask", "answer a question about images")):
        p = sub.add_parser(name, help=text)
        p.add_argument("model", help="a release folder")
        p.add_argument("images", nargs="+", help="image files, captioned/asked in one batch")
        if name == "ask":
            p.add_argument("question")
        p.add_argument("--lang", default="en", help="the language to answer in (default: en)")
        p.add_argument("--max-new-tokens", type=int, default=32)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args, extra = parser.parse_known_args(argv)
    # Overrides may come after options (`vlm eval RUN --out X eval.max_images=8`).
    if extra:
        if any(item.startswith("-") or "=" not in item for item in extra) or not hasattr(args, "overrides"):
            parser.error(f"unrecognized arguments: {' '.join(extra)}")
        args.overrides = list(args.overrides) + extra
    logging.basicConfig(level=logging.INFO if int(os.environ.get("RANK", "0")) == 0 else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s")
    for noisy in ("httpx", "root", "open_clip"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    # peft calls a transformers property that transformers 5 deprecates; nothing a user can act on.
    warnings.filterwarnings("ignore", message=".*is_gradient_checkpointing.*", category=FutureWarning)
    try:
        return COMMANDS[args.command](args)
    except (ConfigError, FileNotFoundError, FileExistsError) as err:
        print(f"vlm {args.command}: error: {err}", file=sys.stderr)
        return 2


def cmd_demo(args) -> int:
    from vlm.demo import run_demo

    cfg = load_config(args.config, args.overrides)
    run_demo(cfg)
    return 0


def cmd_prep(args) -> int:
    if args.source == "shards":
        return _prep_shards(args)
    if args.source == "translate":
        return _prep_translate(args)
    if args.source == "ct2":
        from data_prep.neural_mt import convert_to_ct2

        try:
            print(convert_to_ct2(args.model, Path(args.out), quantization=args.quantization))
        except ValueError as err:  # ctranslate2 missing
            raise ConfigError(str(err)) from None
        return 0
    from data_prep.languages import validate_languages
    from data_prep.shards import prepare_synthetic

    try:
        languages = validate_languages(args.langs)
    except ValueError as err:
        raise ConfigError(f"--langs: {err}") from None
    manifest = prepare_synthetic(Path(args.out), args.n_train, args.n_val, languages, seed=args.seed,
                                 image_size=args.image_size)
    print(json.dumps(manifest["counts"], indent=1, ensure_ascii=False))
    return 0


def _prep_shards(args) -> int:
    from data_prep.build_shards import build_shards

    try:
        manifest = build_shards(args.format, args.inputs, Path(args.out), images=args.images, split=args.split,
                                shard_size=args.shard_size, karpathy_split=args.karpathy_split)
    except ValueError as err:  # bad input files and arguments are found before any shard is written
        raise ConfigError(str(err)) from None
    print(json.dumps({"counts": manifest["counts"], "stats": manifest.get("stats", {})}, indent=1))
    return 0


def _prep_translate(args) -> int:
    from data_prep.languages import validate_languages
    from data_prep.translate import make_translator
    from data_prep.translate_job import check_settings, format_table, job_settings, plan_jobs, translate_dataset
    from vlm.train import distributed

    # Positional items that look like `section.key=value` are config overrides, the rest are inputs.
    overrides = [item for item in args.inputs if _OVERRIDE.fullmatch(item)] + args.overrides
    inputs = [item for item in args.inputs if item not in overrides]
    flags = {"languages": args.langs and f"[{args.langs}]", "backend": args.backend, "model": args.model,
             "batch_size": args.batch_size}
    overrides += [f"prep.translate.{key}={value}" for key, value in flags.items() if value is not None]
    cfg = load_config(args.config, overrides).prep
    if not [lang for lang in cfg.translate.languages if lang != "en"]:
        raise ConfigError("no target languages besides English: pass --langs or set prep.translate.languages")
    settings = {key: getattr(cfg.translate, key) for key in ("backend", "model", "family", "num_beams",
                                                             "max_input_tokens")}
    try:  # bad inputs and a resume with other settings fail here, before a model loads
        languages = validate_languages(cfg.translate.languages)
        plan_jobs(inputs, args.split)
        check_settings(Path(args.out), job_settings(settings, languages, cfg.filters))
    except ValueError as err:
        raise ConfigError(str(err)) from None
    distributed.init_distributed()
    try:
        translator = make_translator(cfg.translate, [lang for lang in languages if lang != "en"])
    except ValueError as err:  # a language the model has no token for, an unknown family
        raise ConfigError(str(err)) from None
    manifest = translate_dataset(inputs, Path(args.out), languages, translator, cfg.filters, split=args.split,
                                 chunk_size=cfg.translate.chunk_size, rank=distributed.rank(),
                                 world_size=distributed.world_size(), barrier=distributed.barrier,
                                 settings=settings)
    distributed.shutdown()
    if manifest is not None:
        translation = manifest["translation"]
        print(format_table(manifest["filters"]["per_language"]))
        print(f"{translation['texts_this_run']} texts translated at {translation['texts_per_second']} texts/s "
              f"over {translation['world_size']} rank(s); rejected translations: {Path(args.out) / 'rejected'}")
    return 0


_OVERRIDE = re.compile(r"[a-z_]+(\.[a-z_]+)+=.*", re.DOTALL)


def cmd_train(args) -> int:
    cfg = load_config(args.config, args.overrides)
    check_paths(cfg)
    from vlm.data.pipeline import resolve_shards
    from vlm.train.trainer import train

    resolve_shards(cfg.data.train, "train")  # missing shards fail here, before the model is built
    if cfg.data.val:
        resolve_shards(cfg.data.val, "val")
    from vlm.train import distributed

    result = train(cfg, resume=args.resume)
    if result.checkpoint is not None:
        print(f"checkpoint: {result.checkpoint}")
    distributed.shutdown()
    return 0


def _is_release(path: Path) -> bool:
    weights = ("model.safetensors", "model.safetensors.index.json")  # one file, or shards and their index
    return (path / "config.json").is_file() and any((path / name).is_file() for name in weights)


def _model_config_path(path: Path) -> Path:
    """config.json of a release folder, or of a run/checkpoint folder's checkpoint."""
    from vlm.release import resolve_checkpoint

    if _is_release(path):
        from vlm.model.vlm import release_model_config

        release_model_config(path)  # a transformers BLIP-2 export is refused here
        return path / "config.json"
    return resolve_checkpoint(path) / "config.json"


def _load_model(path: Path, cfg):
    from vlm.model.vlm import VisionLLM
    from vlm.release import load_from_checkpoint

    if _is_release(path):
        return VisionLLM.from_pretrained(path)
    return load_from_checkpoint(path, cfg)


def cmd_eval(args) -> int:
    from eval.suites.loading import load_suite

    model_path = Path(args.model)
    if not model_path.exists():
        raise FileNotFoundError(f"model not found: {model_path}")
    flags = [f"eval.suite={args.suite}"] if args.suite else []
    flags += [f"eval.data_root={args.data_root}"] if args.data_root else []
    flags += [f"eval.languages=[{args.langs}]"] if args.langs else []
    cfg = load_config(_model_config_path(model_path), list(args.overrides) + flags)
    bench = load_suite(cfg.eval, cfg.data)  # the benchmark's files are checked before the model is built

    from eval.report import write_report
    from eval.runner import evaluate
    from vlm.train import distributed

    device = distributed.init_distributed()
    model = _load_model(model_path, cfg).to(device)
    results = evaluate(model, bench, cfg.eval)
    if results is not None:  # rank 0
        out = Path(args.out) if args.out else model_path / f"eval-{bench.name}"
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
        metrics = model_path / "metrics.jsonl"
        report = write_report(results, out, metrics if metrics.is_file() else None)
        print(f"results: {out / 'results.json'}\nreport: {report}")
    distributed.shutdown()
    return 0


def cmd_export(args) -> int:
    from vlm.release import export_release

    if args.delta and (args.merge_lora or args.format != "native"):
        raise ConfigError("--delta keeps the LoRA adapter apart in the native format: drop --merge-lora/--format")
    results = json.loads(Path(args.results).read_text()) if args.results else None
    source = Path(args.checkpoint)
    if args.format == "hf-blip2":  # what the model's config rules out fails before any weights load
        from vlm.hf_blip2 import check_config
        from vlm.model.vlm import release_model_config
        from vlm.release import resolve_checkpoint

        check_config(release_model_config(source) if _is_release(source)
                     else load_config(resolve_checkpoint(source) / "config.json"))
    model = _load_model(source, None)
    folder = export_release(model, args.out, results, delta=args.delta, merge_lora=args.merge_lora,
                            form=args.format, max_shard_size=args.max_shard_size)
    print(f"release: {folder}")
    return 0


def _generate(args) -> int:
    """`vlm caption` / `vlm ask`: one batch, prompts from the templates the model was trained with; one line
    per image ("path<TAB>output" when there are several)."""
    import torch
    from PIL import Image, UnidentifiedImageError

    from data_prep.languages import get_language
    from vlm.model.vlm import VisionLLM

    try:
        get_language(args.lang)
    except ValueError as err:
        raise ConfigError(f"--lang: {err}") from None
    pictures = []
    for path in args.images:  # every image is read before the model loads
        if not Path(path).is_file():
            raise FileNotFoundError(f"image not found: {path}")
        try:
            with Image.open(path) as image:
                pictures.append(image.convert("RGB"))
        except (UnidentifiedImageError, OSError) as err:
            raise InputError(f"{path}: not a readable image ({err})") from None
    model = VisionLLM.from_pretrained(args.model)
    batch = torch.stack([model.vision.preprocess(p) for p in pictures])
    questions = [args.question] * len(pictures) if args.command == "ask" else None
    outputs = model.generate(batch, questions, lang=args.lang, max_new_tokens=args.max_new_tokens)
    for path, text in zip(args.images, outputs):
        print(text if len(args.images) == 1 else f"{path}\t{text}")
    return 0


COMMANDS = {"demo": cmd_demo, "prep": cmd_prep, "train": cmd_train, "eval": cmd_eval, "export": cmd_export,
            "caption": _generate, "ask": _generate}

if __name__ == "__main__":
    sys.exit(main())
