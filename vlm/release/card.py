"""The model card (README.md) of a release: its parts, training data, languages and per-language scores."""

from __future__ import annotations

from vlm.config import Config
from vlm.data.shards import manifest_language_counts
from vlm.model.bridge import bridge_class


def _training_data(cfg: Config) -> list[str]:
    """The model card's training-data lines: tasks, language sampling, and the samples per language that
    the shards' manifests count (when the data is on this machine)."""
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
        f"- bridge: {bridge_class(cfg.bridge.type).describe(cfg.bridge)}",
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
        lines += ["Load with `vlm.release.from_pretrained(path)`; caption with `vlm caption PATH IMAGE --lang xx`."
                  + (" A delta release: the image encoder and the LM load from the ids above first (LoRA not "
                     "merged)." if delta else ""), ""]
    if results:
        lines += ["## Scores per language", "",
                  "| lang | i2t R@1 | t2i R@1 | CIDEr | fidelity | VQA acc | VQA majority | alignment en→x |",
                  "|---|---|---|---|---|---|---|---|"]
        for lang in results.get("languages", []):
            row = results["per_language"].get(lang, {})
            ret, cap, vqa = row.get("retrieval", {}), row.get("captioning", {}), row.get("vqa", {})
            cells = [ret.get("i2t_r1"), ret.get("t2i_r1"), cap.get("cider"), cap.get("fidelity"), vqa.get("overall"),
                     vqa.get("majority_overall"), row.get("alignment", {}).get("llm_en_to_x")]
            lines.append(f"| {lang} | " + " | ".join("—" if c is None else f"{c:.1f}" for c in cells) + " |")
        lines += ["", f"Evaluated on {results.get('n_images', '?')} held-out images. Fidelity: % of captions in the "
                      "requested language. Alignment: % of English captions whose LLM embedding is nearest to their "
                      "own translation (MEXA-style; chance 100/n)."]
        lines += _spread(results.get("spread", {}))
    return "\n".join(lines) + "\n"


def _spread(spread: dict) -> list[str]:
    """The eval's spread (results["spread"]): per metric the best and worst language, worst/best, the worst script."""
    if not spread.get("metrics"):
        return []
    lines = ["", "## Spread across languages and scripts", "",
             "| metric | best | worst | worst/best | worst script (mean of its languages) |", "|---|---|---|---|---|"]
    for row in spread["metrics"].values():
        langs, scripts = row["languages"], row.get("scripts")
        ratio = "—" if langs["worst_over_best"] is None else f"{langs['worst_over_best']:.2f}"
        worst_script = f"{scripts['worst']} {scripts['worst_value']:.1f}" if scripts else "—"
        lines.append(f"| {row['label']} | {langs['best']} {langs['best_value']:.1f} | {langs['worst']} "
                     f"{langs['worst_value']:.1f} | {ratio} | {worst_script} |")
    return lines
