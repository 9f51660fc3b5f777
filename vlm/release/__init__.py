"""Release folders, apart from the model: the native layout (native.py), transformers' BLIP-2 class
(hf_blip2.py) and the model card (card.py)."""

from __future__ import annotations

import json
from pathlib import Path

from vlm.model.vlm import VisionLLM
from vlm.release.card import model_card
from vlm.release.native import from_pretrained, save_pretrained

__all__ = ["export_release", "from_pretrained", "save_pretrained"]


def export_release(model: VisionLLM, out_dir: str | Path, results: dict | None = None, delta: bool = False,
                   merge_lora: bool = False, form: str = "native", max_shard_size: int | str = "5GB") -> Path:
    """A self-contained release folder (the LoRA adapter kept beside the base weights, or merged into them),
    with `delta` only the trained weights and the base models' ids (native.save_pretrained), or with
    `form="hf-blip2"` transformers' Blip2ForConditionalGeneration layout (hf_blip2)."""
    results_file = {"results.json": json.dumps(results, indent=2, ensure_ascii=False) + "\n"} if results else {}
    if form == "hf-blip2":
        from vlm.release.hf_blip2 import export_hf_blip2, usage_section  # local: transformers' BLIP-2 classes

        card = model_card(model.cfg, results, merge_lora=True, usage=usage_section(model))
        return export_hf_blip2(model, out_dir, {"README.md": card, **results_file},
                               max_shard_size=max_shard_size)
    extra = {"README.md": model_card(model.cfg, results, delta, merge_lora), **results_file}
    return save_pretrained(model, out_dir, extra_files=extra, delta=delta, merge_lora=merge_lora,
                           max_shard_size=max_shard_size)
