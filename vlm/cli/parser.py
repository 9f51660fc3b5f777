"""The `vlm` command line: every subcommand's arguments (commands run from their own modules, see __init__)."""

from __future__ import annotations

import argparse
from pathlib import Path

from data_prep.build_shards import FORMATS as SHARD_FORMATS
from data_prep.translate import BACKENDS
from vlm.config import FEATURE_DTYPES, STRATEGIES, SUITES

EXPORT_FORMATS = ("native", "hf-blip2")
DEFAULT_DEMO_CONFIG = Path(__file__).resolve().parent.parent.parent / "configs" / "demo.yaml"


def _add_config_args(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("config", help="YAML config file")
    parser.add_argument("overrides", nargs="*", help="dotted overrides, e.g. train.lr=3e-4")


def build_parser(description: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vlm", description=description)
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
    shards.add_argument("--lang", default="en", help="the language of texts whose source does not name it: a code "
                        "such as de, or auto to identify each caption and QA item (fastText lid.176 + script; "
                        "undecided ones are dropped and counted) (default: en)")
    shards.add_argument("--tokenizer", help="a tokenizer (local folder or hub id) whose fertility per language goes "
                        "into the manifest, with a warning for any language costing over 3x English")
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
    tr.add_argument("--retranslate", action="store_true", help="replace captions and QA already in a target "
                    "language by translations (default: keep them and translate only what a language lacks)")
    tr.add_argument("--tokenizer", help="a tokenizer (local folder or hub id) whose fertility on the translated "
                    "captions goes into the manifest, with a warning for any language costing over 3x English")
    tr.set_defaults(overrides=[])  # filled by main() with `section.key=value` items given after the options
    ct2 = prep_sub.add_parser("ct2", help="convert an NLLB or M2M100 model for --backend ctranslate2")
    ct2.add_argument("model", help="a hub id or local folder of the transformers model")
    ct2.add_argument("--out", required=True)
    ct2.add_argument("--quantization", help="int8, int8_float16, float16, ... (default: as saved)")
    feats = prep_sub.add_parser("features", help="run the frozen image encoder once over the training shards and "
                                "store its tokens, which training reads with data.features=PATH")
    _add_config_args(feats)
    feats.add_argument("--out", help="the cache folder (default: data.features, else features/ beside the first "
                       "data.train shard)")
    feats.add_argument("--dtype", choices=FEATURE_DTYPES, default="bf16", help="storage dtype (default: bf16)")
    feats.add_argument("--batch-size", type=int, default=64, help="images per encoder forward (default: 64)")
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

    plan = sub.add_parser("plan", help="parameters, memory per GPU for each strategy, FLOPs and batch sizes")
    _add_config_args(plan)
    plan.add_argument("--gpus", type=int, default=8, help="GPUs to plan for (default: 8)")
    plan.add_argument("--gpu-mem", type=float, default=80.0, help="memory per GPU in GiB, as nvidia-smi counts it "
                      "(an 80 GB card has 80; default: 80)")
    plan.add_argument("--global-batch", type=int, help="global batch to reach with grad_accum (default: the "
                      "config's batch_size x grad_accum x --gpus)")
    plan.add_argument("--strategies", default=",".join(s for s in STRATEGIES if s != "auto"),
                      help="strategies to compare (default: all)")
    plan.add_argument("--device", default="cuda", help="cuda (default: llm.dtype and train.precision 'auto' mean "
                      "bf16) or cpu (fp32, host memory: what `vlm plan` checks itself against)")
    plan.add_argument("--json", help="also write the numbers to this JSON file")

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
                    help="native (vlm.release.from_pretrained) or hf-blip2 (transformers' "
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
