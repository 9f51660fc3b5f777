"""`vlm train CONFIG [overrides] [--resume]`: one process, or every rank of torchrun (`-m vlm.cli train`)."""

from __future__ import annotations

import sys
from pathlib import Path

from vlm.config import Config, check_paths, load_config

# Language means logged after each periodic benchmark (all of them stay in that step's results.json).
BENCHMARK_CURVES = frozenset({"i2t_r1", "t2i_r1", "cider", "chrf", "fidelity", "overall", "exact", "llm_en_to_x",
                              "text_head_en_to_x"})
# The spread logged beside them (results["spread"]): worst/best language of these metrics ...
SPREAD_CURVES = ("retrieval/i2t_r1", "retrieval/t2i_r1", "vqa/overall")
WORST_CURVES = ("captioning/fidelity",)  # ... and the worst language's value of these


def run(args) -> int:
    cfg = load_config(args.config, args.overrides)
    check_paths(cfg)
    # Imported after the config is read, so that a config mistake answers without loading torch.
    from vlm import distributed
    from vlm.data.shards import resolve_shards
    from vlm.model.preflight import check_model
    from vlm.train.lost_ranks import LostRank
    from vlm.train.strategies import resolve_strategy
    from vlm.train.trainer import NonFiniteTraining, train

    resolve_strategy(cfg.train.strategy)  # e.g. fsdp2 without torchrun fails here
    resolve_shards(cfg.data.train, "train")  # no shard at all fails here, before the model is built
    if cfg.data.val:
        resolve_shards(cfg.data.val, "val")
    check_model(cfg)  # the parts' configs, kind, architecture, LoRA targets, encoder layer, tokenizer, tag weights
    try:
        result = train(cfg, resume=args.resume,
                       benchmark=periodic_benchmark(cfg) if cfg.train.benchmark_every else None)
    except (NonFiniteTraining, LostRank) as err:  # not an input mistake (exit 2), and no traceback to read either
        print(f"vlm train: stopped: {err}", file=sys.stderr)
        return 1
    if result.checkpoint is not None:
        print(f"checkpoint: {result.checkpoint}")
    distributed.shutdown()
    return 0


def periodic_benchmark(cfg: Config):
    """The trainer's `train.benchmark_every` callback: the `eval` section's suite (its files read and checked
    now, before the model is built), scored on the current weights and split over the ranks like `vlm eval`;
    results.json and the report under output_dir/eval/step-N, the language means and the spread figures returned
    for the metrics log. eval.alignment_layer is checked against the LM's depth now too."""
    from eval.alignment import check_layer
    from eval.report import write_results
    from eval.runner import evaluate
    from eval.suites.loading import load_suite

    bench = load_suite(cfg.eval, cfg.data)
    check_layer(cfg.eval, cfg.llm)

    def run_benchmark(model, step: int) -> dict[str, float] | None:
        results = evaluate(model, bench, cfg.eval, progress=False)
        if results is None:  # not rank 0
            return None
        write_results(results, Path(cfg.train.output_dir) / "eval" / f"step-{step}")
        return {**{f"{section}_{name}": value for section, scores in results["mean"].items()
                   for name, value in scores.items() if name in BENCHMARK_CURVES},
                **spread_curves(results["spread"])}

    return run_benchmark


def spread_curves(spread: dict) -> dict[str, float]:
    """{"spread_<section>_<metric>": worst/best language} for SPREAD_CURVES and {"worst_<section>_<metric>": the
    worst language's value} for WORST_CURVES, where the results have them."""
    rows = spread["metrics"]
    curves = {f"spread_{key.replace('/', '_')}": rows[key]["languages"]["worst_over_best"]
              for key in SPREAD_CURVES if key in rows and rows[key]["languages"]["worst_over_best"] is not None}
    curves.update({f"worst_{key.replace('/', '_')}": rows[key]["languages"]["worst_value"]
                   for key in WORST_CURVES if key in rows})
    return curves
