"""`load_suite`: the benchmark an `eval` config section names, read and checked before any model is built."""

from __future__ import annotations

from pathlib import Path

from eval.suites import Benchmark, BenchmarkDataError
from eval.suites.coco import load_coco
from eval.suites.demo import load_demo, load_shards
from eval.suites.maxm import load_maxm
from eval.suites.multi30k import load_multi30k, load_xflickrco
from eval.suites.xgqa import load_xgqa
from eval.suites.xm3600 import load_xm3600
from eval.text_tokenizers import TOKENIZERS
from vlm.config import DataConfig, EvalConfig

LOADERS = {"demo": load_demo, "xm3600": load_xm3600, "xgqa": load_xgqa, "maxm": load_maxm,
           "multi30k": load_multi30k, "xflickrco": load_xflickrco, "coco": load_coco}
SPLIT_SUITES = ("xgqa", "coco")


def load_suite(cfg: EvalConfig, data: DataConfig) -> Benchmark:
    """eval.suite from eval.data_root in eval.languages, cut to eval.max_images. The demo suite without a
    data root reads the config's own data.val shards (baselines from data.train) in data.languages. The eval
    settings only this package knows (eval.caption_tokenizer) are checked here too."""
    if cfg.caption_tokenizer and cfg.caption_tokenizer not in TOKENIZERS:
        raise BenchmarkDataError(f"'eval.caption_tokenizer' is '{cfg.caption_tokenizer}'; choose one of: "
                                 f"{', '.join(TOKENIZERS)}")
    languages = list(cfg.languages) or None
    if cfg.suite == "demo" and not cfg.data_root:
        return load_shards(data.val, languages or data.languages, data.train or None, cfg.max_images)
    if not cfg.data_root:
        raise BenchmarkDataError(f"suite {cfg.suite!r} needs its data folder: pass --data-root DIR (eval.data_root)")
    root = Path(cfg.data_root).expanduser()
    if not root.exists():
        raise BenchmarkDataError(f"eval.data_root: folder not found: {root}")
    if cfg.split and cfg.suite not in SPLIT_SUITES:
        raise BenchmarkDataError(f"eval.split: suite {cfg.suite!r} has one split; only {', '.join(SPLIT_SUITES)} "
                                 f"take eval.split")
    if cfg.suite == "demo":
        return load_demo(root, languages, cfg.max_images)
    bench = LOADERS[cfg.suite](root, languages, **({"split": cfg.split} if cfg.split else {}))
    if cfg.max_images:
        bench.images = bench.images[: cfg.max_images]
    return bench
