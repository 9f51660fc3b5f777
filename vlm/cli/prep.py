"""`vlm prep shards | translate | features | ct2 | synthetic`: training shards from your data, translated, or
synthetic, and the frozen encoder's tokens of them."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

from vlm.config import ConfigError, check_paths, fetch_error, first_line, load_config

_OVERRIDE = re.compile(r"[a-z_]+(\.[a-z_]+)+=.*", re.DOTALL)


def run(args) -> int:
    if args.source == "shards":
        return _prep_shards(args)
    if args.source == "translate":
        return _prep_translate(args)
    if args.source == "features":
        return _prep_features(args)
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


def _tokenizer_probe(name: str | None):
    """--tokenizer, loaded before any data is read (a name that cannot load fails in one line), or None."""
    if not name:
        return None
    from transformers import AutoTokenizer

    from data_prep.fertility import counter
    from data_prep.manifest import TokenizerProbe

    path = Path(name).expanduser()
    if (path.is_absolute() or name.startswith(".")) and not path.exists():  # a path, not a hub id
        raise ConfigError(f"'--tokenizer': path not found: {name}")
    try:
        tokenizer = AutoTokenizer.from_pretrained(name)
    except OSError as err:
        raise fetch_error("--tokenizer", name, err) from None
    except ValueError as err:  # a folder without tokenizer files
        raise ConfigError(f"'--tokenizer' ({name}): no tokenizer transformers can load ({first_line(err)})") from None
    return TokenizerProbe(name, counter(tokenizer))


def _warn_fertility(manifest: dict) -> None:
    from data_prep.fertility import warnings

    if "fertility" in manifest:
        for line in warnings(manifest["fertility"], f"--tokenizer {manifest['fertility']['tokenizer']}"):
            print(f"warning: {line}", file=sys.stderr)


def _prep_shards(args) -> int:
    from data_prep.build_shards import build_shards
    from data_prep.sources.language_tags import LanguageAssignment

    try:
        languages = LanguageAssignment(args.lang)
    except ValueError as err:
        raise ConfigError(str(err)) from None
    tokenizer = _tokenizer_probe(args.tokenizer)
    try:
        manifest = build_shards(args.format, args.inputs, Path(args.out), images=args.images, split=args.split,
                                shard_size=args.shard_size, karpathy_split=args.karpathy_split, languages=languages,
                                tokenizer=tokenizer)
    except ValueError as err:  # bad input files and arguments are found before any shard is written
        raise ConfigError(str(err)) from None
    print(json.dumps({key: manifest[key] for key in ("counts", "stats", "language_assignment")}, indent=1,
                     ensure_ascii=False))
    _warn_fertility(manifest)
    return 0


def _prep_translate(args) -> int:
    from data_prep.languages import validate_languages
    from data_prep.translate import make_translator
    from data_prep.translate_job import check_settings, format_table, job_settings, plan_jobs, translate_dataset
    from vlm import distributed

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
        check_settings(Path(args.out), job_settings(settings, languages, cfg.filters, args.retranslate))
    except ValueError as err:
        raise ConfigError(str(err)) from None
    tokenizer = _tokenizer_probe(args.tokenizer)
    distributed.init_distributed()
    try:
        translator = make_translator(cfg.translate, [lang for lang in languages if lang != "en"])
    except ValueError as err:  # a language the model has no token for, an unknown family
        raise ConfigError(str(err)) from None
    manifest = translate_dataset(inputs, Path(args.out), languages, translator, cfg.filters, split=args.split,
                                 chunk_size=cfg.translate.chunk_size, rank=distributed.rank(),
                                 world_size=distributed.world_size(), barrier=distributed.barrier,
                                 settings=settings, retranslate=args.retranslate, tokenizer=tokenizer)
    distributed.shutdown()
    if manifest is not None:
        translation = manifest["translation"]
        print(format_table(manifest["filters"]["per_language"]))
        print(f"{translation['texts_this_run']} texts translated at {translation['texts_per_second']} texts/s "
              f"over {translation['world_size']} rank(s); rejected translations: {Path(args.out) / 'rejected'}")
        _warn_fertility(manifest)
    return 0


def _prep_features(args) -> int:
    from vlm import distributed
    from vlm.feature_prep import default_out, format_summary, plan_features, write_features
    from vlm.model.vision import ImageEncoder

    if args.batch_size < 1:
        raise ConfigError(f"--batch-size must be >= 1, got {args.batch_size}")
    cfg = load_config(args.config, args.overrides)
    check_paths(cfg)
    out = Path(args.out) if args.out else default_out(cfg)
    jobs, identity = plan_features(cfg, out, args.dtype)  # refusals come before the encoder is built
    device = distributed.init_distributed()
    try:
        encoder = ImageEncoder(cfg.vision)
    except ValueError as err:  # vision.layer outside the encoder's blocks
        raise ConfigError(str(err)) from None
    encoder.load_weights()
    summary = write_features(jobs, encoder.to(device), identity, out, args.dtype, batch_size=args.batch_size,
                             num_workers=cfg.data.num_workers, precision_setting=cfg.train.precision,
                             rank=distributed.rank(), world_size=distributed.world_size(),
                             barrier=distributed.barrier)
    distributed.shutdown()
    if summary is not None:
        print(format_summary(summary))
    return 0
