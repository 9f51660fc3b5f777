"""`vlm eval MODEL --suite S --data-root D [--langs ...]`: per-language retrieval, captioning and VQA."""

from __future__ import annotations

from pathlib import Path

from vlm.config import load_config


def run(args) -> int:
    from eval.alignment import check_layer
    from eval.report import write_results
    from eval.runner import evaluate
    from eval.suites.loading import load_suite
    from vlm import distributed
    from vlm.cli.models import load_model, model_config_path, saved_config

    model_path = Path(args.model)
    if not model_path.exists():
        raise FileNotFoundError(f"model not found: {model_path}")
    flags = [f"eval.suite={args.suite}"] if args.suite else []
    flags += [f"eval.data_root={args.data_root}"] if args.data_root else []
    flags += [f"eval.languages=[{args.langs}]"] if args.langs else []
    cfg = load_config(model_config_path(model_path), list(args.overrides) + flags)
    bench = load_suite(cfg.eval, cfg.data)  # the benchmark's files are checked before the model is built
    check_layer(cfg.eval, saved_config(model_path).llm)  # a release's LM lies inside it

    device = distributed.init_distributed()
    model = load_model(model_path, cfg).to(device)
    results = evaluate(model, bench, cfg.eval)
    if results is not None:  # rank 0
        out = Path(args.out) if args.out else model_path / f"eval-{bench.name}"
        report = write_results(results, out, model_path / "metrics.jsonl")
        print(f"results: {out / 'results.json'}\nreport: {report}")
    distributed.shutdown()
    return 0
