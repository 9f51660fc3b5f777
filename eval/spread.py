"""The per-language spread of an evaluation: for each metric, the best and the worst language and worst/best, and
the same over scripts, so every report says where the weakest language (and writing system) stands.

A script's score is the unweighted mean of its languages' scores (as `language_means` averages languages).
Every metric here is higher-is-better. Read from `results["per_language"]`; written to `results["spread"]`:

    {"scripts": {lang: script},
     "metrics": {"<section>/<metric>": {"label": "i2t R@1",
                                        "languages": {"best", "best_value", "worst", "worst_value",
                                                      "worst_over_best", "n"},
                                        "scripts": {... the same, over scripts}}}}

A metric appears once two languages have it; its "scripts" entry once two scripts do. worst_over_best is None
when the best score is 0.
"""

from __future__ import annotations

import re

from data_prep.fertility import language_script

_RECALL = re.compile(r"^(i2t|t2i)_r(\d+)$")
# (section, metric, label) beyond the retrieval recalls, in the order reports list them.
FIXED_METRICS = (
    ("captioning", "cider", "CIDEr"),
    ("captioning", "bleu", "BLEU"),
    ("captioning", "chrf", "chrF"),
    ("captioning", "fidelity", "caption language fidelity"),
    ("vqa", "overall", "VQA acc"),
    ("vqa", "exact", "VQA exact"),
    ("alignment", "llm_en_to_x", "alignment LLM en→x"),
    ("alignment", "llm_x_to_en", "alignment LLM x→en"),
    ("alignment", "text_head_en_to_x", "alignment text head en→x"),
    ("alignment", "text_head_x_to_en", "alignment text head x→en"),
)


def metrics_of(per_language: dict) -> list[tuple[str, str, str]]:
    """(section, metric, label) of every metric the results hold: recalls sorted by direction and k first."""
    recalls = sorted({(m[1], int(m[2])) for scores in per_language.values()
                      for key in scores.get("retrieval", {}) if (m := _RECALL.match(key))})
    found = [("retrieval", f"{d}_r{k}", f"{d} R@{k}") for d, k in recalls]
    return found + [(section, metric, label) for section, metric, label in FIXED_METRICS
                    if any(metric in scores.get(section, {}) for scores in per_language.values())]


def extremes(values: dict[str, float]) -> dict | None:
    """Best and worst of {name: value}, their ratio and count; None under two values. Ties go to the first named,
    and the worst is another name than the best even when all are equal."""
    if len(values) < 2:
        return None
    best = max(values, key=values.get)
    worst = min((name for name in values if name != best), key=values.get)
    ratio = None if values[best] == 0 else round(values[worst] / values[best], 4)
    return {"best": best, "best_value": values[best], "worst": worst, "worst_value": values[worst],
            "worst_over_best": ratio, "n": len(values)}


def script_means(values: dict[str, float], scripts: dict[str, str]) -> dict[str, float]:
    """{script: mean of its languages' values}."""
    grouped: dict[str, list[float]] = {}
    for lang, value in values.items():
        grouped.setdefault(scripts[lang], []).append(value)
    return {script: sum(v) / len(v) for script, v in grouped.items()}


def compute_spread(languages: list[str], per_language: dict) -> dict:
    scripts = {lang: language_script(lang) for lang in languages}
    metrics = {}
    for section, metric, label in metrics_of(per_language):
        values = {lang: float(per_language[lang][section][metric]) for lang in languages
                  if isinstance(per_language.get(lang, {}).get(section, {}).get(metric), (int, float))}
        by_language = extremes(values)
        if by_language is None:
            continue
        metrics[f"{section}/{metric}"] = {"label": label, "languages": by_language}
        if by_script := extremes(script_means(values, scripts)):
            metrics[f"{section}/{metric}"]["scripts"] = by_script
    return {"scripts": scripts, "metrics": metrics}
