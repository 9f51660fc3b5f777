"""Train and evaluate each bridge on the demo's data and parts with the same budget, and print a per-language
comparison table (markdown) for benchmarks/RESULTS.md.

Needs a finished `vlm demo` (its data and parts under runs/demo/). Every run is `configs/demo.yaml` with only
the bridge keys of its variant (and the output folder) changed, trained and evaluated by the same functions
`vlm train` and `vlm eval` call. `--reuse` takes a variant's results.json from an earlier run of this script
instead of training it again. Run from the repository root:

    python benchmarks/compare_bridges.py [--bridges qformer moe moe-parrot mlp] [--out runs/bridges] [--reuse]
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from eval.report import write_results
from eval.runner import evaluate
from eval.suites.loading import load_suite
from vlm.config import check_paths, load_config
from vlm.train.trainer import train

ROOT = Path(__file__).resolve().parent.parent
VARIANTS = {
    "qformer": ["bridge.type=qformer"],
    "moe": ["bridge.type=moe"],
    "moe-parrot": ["bridge.type=moe", "bridge.moe_init=parrot"],  # Parrot's 0.1 * V residual, random experts
    "mlp": ["bridge.type=mlp"],
}
COLUMNS = (("i2t R@1", "retrieval", "i2t_r1"), ("t2i R@1", "retrieval", "t2i_r1"), ("CIDEr", "captioning", "cider"),
           ("VQA", "vqa", "overall"))


def run_bridge(variant: str, out: Path, overrides: list[str], reuse: bool) -> dict:
    run_dir = out / variant
    if reuse and (run_dir / "results.json").is_file():
        return json.loads((run_dir / "results.json").read_text())
    shutil.rmtree(run_dir, ignore_errors=True)  # this script's own output: always a fresh run
    cfg = load_config(ROOT / "configs" / "demo.yaml",
                      [*VARIANTS[variant], f"train.output_dir={run_dir}", "train.progress=false", *overrides])
    check_paths(cfg)
    start = time.time()
    result = train(cfg)
    train_seconds = time.time() - start
    results = evaluate(result.model, load_suite(cfg.eval, cfg.data), cfg.eval, progress=False)
    results["training"] = {"steps": result.steps, "seconds": round(train_seconds, 1),
                           "trainable_params": sum(p.numel() for p in result.model.parameters() if p.requires_grad)}
    write_results(results, run_dir, run_dir / "metrics.jsonl")
    return results


def table(all_results: dict[str, dict]) -> list[str]:
    bridges = list(all_results)
    languages = next(iter(all_results.values()))["languages"]
    header = ["lang"] + [f"{name} {bridge}" for name, _, _ in COLUMNS for bridge in bridges]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for lang in languages + ["mean"]:
        cells = [lang]
        for _, section, key in COLUMNS:
            for bridge in bridges:
                per = all_results[bridge]["per_language"]
                values = [per[lg].get(section, {}).get(key) for lg in (languages if lang == "mean" else [lang])]
                values = [v for v in values if v is not None]
                cells.append(f"{sum(values) / len(values):.1f}" if values else "—")
        lines.append("| " + " | ".join(f"**{c}**" if lang == "mean" else c for c in cells) + " |")
    lines += ["", "| bridge | trainable params | train seconds | steps | retrieval ranked by |", "|---|---|---|---|---|"]
    for bridge, results in all_results.items():
        t = results["training"]
        ranked = next(iter(results["per_language"].values())).get("retrieval", {}).get("ranked_by", "—")
        lines.append(f"| {bridge} | {t['trainable_params']:,} | {t['seconds']} | {t['steps']} | {ranked} |")
    return lines


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--bridges", nargs="+", default=list(VARIANTS), choices=list(VARIANTS))
    parser.add_argument("--out", default="runs/bridges")
    parser.add_argument("--reuse", action="store_true", help="reuse a variant's results.json when present")
    parser.add_argument("overrides", nargs="*", help="dotted overrides applied to every bridge")
    args = parser.parse_args()
    all_results = {bridge: run_bridge(bridge, Path(args.out), args.overrides, args.reuse) for bridge in args.bridges}
    lines = table(all_results)
    (Path(args.out) / "comparison.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
