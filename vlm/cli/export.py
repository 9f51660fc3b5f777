"""`vlm export CHECKPOINT --out DIR`: a release folder from a run, a checkpoint or a native release."""

from __future__ import annotations

import json
from pathlib import Path

from vlm.config import ConfigError


def run(args) -> int:
    from vlm.cli.models import load_model, saved_config
    from vlm.release import export_release

    if args.delta and (args.merge_lora or args.format != "native"):
        raise ConfigError("--delta keeps the LoRA adapter apart in the native format: drop --merge-lora/--format")
    results = json.loads(Path(args.results).read_text()) if args.results else None
    source = Path(args.checkpoint)
    if args.format == "hf-blip2":  # what the model's config rules out fails before any weights load
        from vlm.release.hf_blip2 import check_config

        check_config(saved_config(source))
    model = load_model(source)
    folder = export_release(model, args.out, results, delta=args.delta, merge_lora=args.merge_lora,
                            form=args.format, max_shard_size=args.max_shard_size)
    print(f"release: {folder}")
    return 0
