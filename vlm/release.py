"""From a training run to a release folder: load a checkpoint into a model, export it, write its card."""

from __future__ import annotations

import json
from pathlib import Path

from vlm.config import Config, check_paths, config_from_dict
from vlm.model.vlm import VisionLLM
from vlm.train import checkpoint


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder, or a run folder whose `checkpoints/latest` is used."""
    path = Path(path)
    if (path / checkpoint.WEIGHTS).is_file():
        return path
    latest = checkpoint.latest_checkpoint(path)
    if latest is None:
        raise FileNotFoundError(f"{path}: neither a checkpoint nor a run folder with checkpoints/latest")
    return latest


def load_from_checkpoint(path: str | Path, cfg: Config | None = None) -> VisionLLM:
    """Build the model from the checkpoint's saved config (or `cfg`) and load its trainable weights."""
    folder = resolve_checkpoint(path)
    if cfg is None:
        cfg = config_from_dict(json.loads((folder / checkpoint.CONFIG).read_text()))
    check_paths(cfg)
    model = VisionLLM(cfg)
    weights, _ = checkpoint.load_checkpoint(folder)
    model.load_trainable_state_dict(weights)
    return model.eval()


def bridge_summary(cfg: Config) -> str:
    b = cfg.bridge
    if b.type == "qformer":
        text = ", text branch (ITC/ITM/ITG)" if b.text_branch else ""
        return f"BLIP-2 Q-Former, {b.num_queries} queries, {b.num_layers} layers, width {b.hidden_size}{text}"
    if b.type == "moe":
        routing = f"top-{b.top_k}" if b.top_k else "dense"
        return f"Parrot-style MoE projector, {b.num_experts} SwiGLU experts, {routing} routing by the prompt"
    return "MLP projector (LLaVA mlp2x_gelu)"


def _training_data(cfg: Config) -> list[str]:
    """The model card's training-data lines: tasks, language sampling, and the samples per language that
    the shards' manifests count (when the data is on this machine)."""
    from vlm.data.pipeline import manifest_language_counts

    d = cfg.data
    tasks = ", ".join(f"{t} ({w:g})" for t, w in zip(d.tasks, d.task_weights))
    lines = [f"- training data: {', '.join(d.train) or '—'}; tasks {tasks}; language sampling alpha "
             f"{d.language_alpha:g}; {cfg.train.max_steps} steps of {cfg.train.batch_size} per rank"]
    try:
        counts = manifest_language_counts(d.train, "train") if d.train else None
    except (OSError, ValueError):
        counts = None
    if counts:
        lines.append("- training samples per language: " + ", ".join(f"{lang} {counts.get(lang, 0):,}"
                                                                      for lang in d.languages))
    return lines


def _lora_summary(cfg: Config, delta: bool, merge_lora: bool) -> str:
    if not cfg.llm.lora_r:
        return ""
    if merge_lora and not delta:
        return f", LoRA r={cfg.llm.lora_r} merged"
    return f", LoRA r={cfg.llm.lora_r} adapter kept beside the base weights"


def model_card(cfg: Config, results: dict | None, delta: bool = False, merge_lora: bool = False,
               usage: list[str] | None = None) -> str:
    lines = [
        "# Multilingual vision-LLM",
        "",
        f"- image encoder: open_clip `{cfg.vision.name}` (frozen, block {cfg.vision.layer})",
        f"- bridge: {bridge_summary(cfg)}",
        f"- language model: `{cfg.llm.name}` ({cfg.llm.kind}; frozen"
        + _lora_summary(cfg, delta, merge_lora)
        + (", embeddings trained" if cfg.llm.train_embeddings else "") + ")",
        f"- languages: {', '.join(cfg.data.languages)}",
        *_training_data(cfg),
        "",
    ]
    if usage is not None:
        lines += usage
    else:
        lines += ["Load with `VisionLLM.from_pretrained(path)`; caption with `vlm caption PATH IMAGE --lang xx`."
                  + (" A delta release: the image encoder and the LM load from the ids above first (LoRA not "
                     "merged)." if delta else ""), ""]
    if results:
        lines += ["## Scores per language", "",
                  "| lang | i2t R@1 | t2i R@1 | CIDEr | VQA acc | VQA majority |", "|---|---|---|---|---|---|"]
        for lang in results.get("languages", []):
            row = results["per_language"].get(lang, {})
            ret, cap, vqa = row.get("retrieval", {}), row.get("captioning", {}), row.get("vqa", {})
            cells = [ret.get("i2t_r1"), ret.get("t2i_r1"), cap.get("cider"), vqa.get("overall"), vqa.get("majority_overall")]
            lines.append(f"| {lang} | " + " | ".join("—" if c is None else f"{c:.1f}" for c in cells) + " |")
        lines += ["", f"Evaluated on {results.get('n_images', '?')} held-out images."]
    return "\n".join(lines) + "\n"


def export_release(model: VisionLLM, out_dir: str | Path, results: dict | None = None, delta: bool = False,
                   merge_lora: bool = False, form: str = "native", max_shard_size: int | str = "5GB") -> Path:
    """A self-contained release folder (the LoRA adapter kept beside the base weights, or merged into them),
    with `delta` only the trained weights and the base models' ids (VisionLLM.save_pretrained), or with
    `form="hf-blip2"` transformers' Blip2ForConditionalGeneration layout (vlm.hf_blip2)."""
    results_file = {"results.json": json.dumps(results, indent=2, ensure_ascii=False) + "\n"} if results else {}
    if form == "hf-blip2":
        from vlm.hf_blip2 import export_hf_blip2, usage_section

        card = model_card(model.cfg, results, merge_lora=True, usage=usage_section(model))
        return export_hf_blip2(model, out_dir, {"README.md": card, **results_file},
                               max_shard_size=max_shard_size)
    extra = {"README.md": model_card(model.cfg, results, delta, merge_lora), **results_file}
    return model.save_pretrained(out_dir, extra_files=extra, delta=delta, merge_lora=merge_lora,
                                 max_shard_size=max_shard_size)
