"""`vlm plan CONFIG [overrides] [--gpus N --gpu-mem GiB --global-batch G --strategies ... --device --json PATH]`:
parameters, memory per GPU for each strategy, FLOPs per sample and the micro-batch and grad_accum that fit, from a
meta-device trace of one training step (vlm/plan/)."""

from __future__ import annotations

import json
from pathlib import Path

from vlm.config import check_paths, load_config
from vlm.plan.target import Target


def run(args) -> int:
    target = Target(gpus=args.gpus, gpu_mem_gib=args.gpu_mem, device=args.device, global_batch=args.global_batch,
                    strategies=tuple(name.strip() for name in args.strategies.split(",") if name.strip()))
    target.check()
    cfg = load_config(args.config, args.overrides)
    check_paths(cfg)
    _read_model_configs(cfg)
    from vlm.plan.fertility import format_fertility, plan_fertility
    from vlm.plan.planner import make_plan, trace_model
    from vlm.plan.report import format_plan, plan_dict

    plan = make_plan(trace_model(cfg, target.device), target)
    fertility = plan_fertility(cfg)
    print(format_plan(plan, args.config))
    print("", *format_fertility(fertility), sep="\n")
    if args.json:
        numbers = {"config": str(args.config), "overrides": list(args.overrides), **plan_dict(plan),
                   "fertility": fertility}
        Path(args.json).write_text(json.dumps(numbers, indent=2) + "\n")
    return 0


def _read_model_configs(cfg) -> None:
    """The config.json files the meta build reads (hub ids: from the Hugging Face cache or the hub), read first so
    that one that is missing, or of the wrong kind or architecture, is named (as a ConfigError)."""
    from vlm.model import qformer_weights
    from vlm.model.llm import model_config

    model_config(cfg.llm)
    if cfg.bridge.type == "qformer" and cfg.bridge.init_from:
        qformer_weights.read_model_config(cfg.bridge.init_from)  # names the key when it fails
