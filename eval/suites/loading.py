"""`load_suite`: the benchmark an `eval` config section names, read and checked before any model is built."""

from __future__ import annotations

from pathlib import Path

from eval.suites import Benchmark, BenchmarkDataError, coco, multi30k, xgqa
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
SPLITS = {"xgqa": tuple(xgqa.SPLITS), "multi30k": tuple(multi30k.SPLITS), "coco": coco.SPLITS}  # default first


def load_suite(cfg: EvalConfig, data: DataConfig) -> Benchmark:
    """eval.suite from eval.data_root in eval.languages, cut to eval.max_images. The demo suite without a
    data root reads the config's own data.val shards (baselines from data.train) in data.languages. The eval
    settings only this package knows (eval.caption_tokenizer) are checked here too."""
    if cfg.caption_tokenizer and cfg.caption_tokenizer not in TOKENIZERS:
        raise BenchmarkDataError(f"'eval.caption_tokenizer' is '{cfg.caption_tokenizer}'; choose one of: "
                                 f"{', '.join(TOKENIZERS)}")
    check_split(cfg.suite, cfg.split)
    languages = list(cfg.languages) or None
    if cfg.suite == "demo" and not cfg.data_root:
        return load_shards(data.val, languages or data.languages, data.train or None, cfg.max_images)
    if not cfg.data_root:
        raise BenchmarkDataError(f"suite {cfg.suite!r} needs its data folder: pass --data-root DIR (eval.data_root)")
    root = Path(cfg.data_root).expanduser()
    if not root.exists():
        raise BenchmarkDataError(f"eval.data_root: folder not found: {root}")
    if cfg.suite == "demo":
        return load_demo(root, languages, cfg.max_images)
    bench = LOADERS[cfg.suite](root, languages, **({"split": cfg.split} if cfg.split else {}))
    if cfg.max_images:
        bench.images = bench.images[: cfg.max_images]
    return bench


def check_split(suite: str, split: str) -> None:
    """eval.split names one of the suite's splits ("" takes its reference split); checked before any file is read."""
    if not split:
        return
    if suite not in SPLITS:
        raise BenchmarkDataError(f"eval.split: suite {suite!r} has one split; only {', '.join(SPLITS)} take eval.split")
    if split not in SPLITS[suite]:
        raise BenchmarkDataError(f"eval.split: suite {suite!r} has no split {split!r}; choose one of: "
                                 f"{', '.join(SPLITS[suite])}")
