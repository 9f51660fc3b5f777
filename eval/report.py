"""Markdown evaluation report with PNG plots: training curves and per-language scores vs. baselines.

Expected `results` (every section of a language is optional; percentages, CIDEr x100):
    {"languages": [...], "n_images": int,
     "per_language": {lang: {
        # retrieval: recall_at_k merged with chance_recall
        "retrieval": {"i2t_r{k}", "t2i_r{k}", "chance_i2t_r{k}", "chance_t2i_r{k}"},
        "captioning": {"cider", "bleu", "fidelity", "majority_cider",
                       "samples": [{"image", "reference", "hypothesis"}]},
        "vqa": {"overall", "majority_overall", "n", "by_type": {type: {"accuracy", "majority", "n"}}},
        "experts": [mean routing weight per expert],   # MoE bridges only
        "alignment": {"llm_en_to_x", "llm_x_to_en", "text_head_en_to_x", "text_head_x_to_en", "n", "chance"}}},
     "bridge": "qformer" | "moe" | "mlp",
     "spread": eval.spread's, "alignment": eval.alignment's summary, "fertility": {"llm", "bridge"} tables,
     "timings": {stage: seconds}}
Retrieval may also hold "ranked_by" and, after ITM re-ranking, "itm_i2t_r{k}", "itm_t2i_r{k}", "itm_rerank_k".
"""

import json
import math
import re
from pathlib import Path

from matplotlib.figure import (
    Figure,  # the OO API renders with Agg and touches no global backend
)

from data_prep.fertility import markdown as fertility_markdown

SMOOTHING = 0.6  # EMA weight, TensorBoard's default: enough to read a trend, raw points stay visible
_UNSMOOTHED = frozenset({"lr"})  # a schedule is exact; smoothing would only make it lag
_BOOKKEEPING = frozenset({"step", "time", "elapsed_s"})  # clocks, not training curves
_RECALL_KEY = re.compile(r"^(i2t|t2i)_r(\d+)$")
_MISSING = "—"
SKIPPED_NAMES_SHOWN = 20  # images named in the report's "Skipped images" line; results.json names them all


def _fmt(value: float | None, baseline: float | None = None) -> str:
    if value is None:
        return _MISSING
    return f"{value:.1f}" if baseline is None else f"{value:.1f} ({baseline:.1f})"


def _cell(text: object) -> str:
    # A caption with "|" or a newline would break the table row.
    return str(text).replace("|", "\\|").replace("\n", " ")


def _recall_columns(per_language: dict) -> list[tuple[str, int]]:
    found = set()
    for scores in per_language.values():
        for key in scores.get("retrieval", {}):
            if match := _RECALL_KEY.match(key):
                found.add((match[1], int(match[2])))
    return sorted(found)


def _scores_row(label: str, scores: dict, recall_cols: list[tuple[str, int]], has: dict[str, bool]) -> list[str]:
    ret, cap, vqa = scores.get("retrieval", {}), scores.get("captioning", {}), scores.get("vqa", {})
    row = [label] + [_fmt(ret.get(f"{d}_r{k}"), ret.get(f"chance_{d}_r{k}")) for d, k in recall_cols]
    if has["captioning"]:
        row += [_fmt(cap.get("cider"), cap.get("majority_cider")), _fmt(cap.get("bleu")), _fmt(cap.get("chrf")),
                _fmt(cap.get("fidelity"))]
    if has["vqa"]:
        n = vqa.get("n")
        row += [_fmt(vqa.get("overall"), vqa.get("majority_overall")), _fmt(vqa.get("exact")),
                str(n) if isinstance(n, int) else _MISSING]
    return row


def _scores_table(languages: list[str], per_language: dict, means: dict | None = None) -> list[str]:
    recall_cols = _recall_columns(per_language)
    has = {s: any(s in per_language.get(lang, {}) for lang in languages) for s in ("captioning", "vqa")}
    header = ["lang"] + [f"{d} R@{k}" for d, k in recall_cols]
    if has["captioning"]:
        header += ["CIDEr", "BLEU", "chrF", "fidelity"]
    if has["vqa"]:
        header += ["VQA acc", "VQA exact", "VQA n"]
    rows = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for lang in languages:
        rows.append("| " + " | ".join(_scores_row(lang, per_language.get(lang, {}), recall_cols, has)) + " |")
    if means and len(languages) > 1:
        cells = _scores_row("**mean**", means, recall_cols, has)
        rows.append("| " + " | ".join(cells) + " |")
    return rows


def _named(name: str, value: float) -> str:
    return f"{_cell(name)} {value:.1f}"


def _ratio(value: float | None) -> str:
    return _MISSING if value is None else f"{value:.2f}"


def _spread_table(spread: dict) -> list[str]:
    """Per metric: best and worst language, worst/best, and the same over scripts (a script: its languages' mean)."""
    if not spread.get("metrics"):
        return []
    rows = ["| metric | best | worst | worst/best | best script | worst script | worst/best (scripts) |",
            "|---|---|---|---|---|---|---|"]
    for row in spread["metrics"].values():
        langs, scripts = row["languages"], row.get("scripts")
        cells = [_cell(row["label"]), _named(langs["best"], langs["best_value"]),
                 _named(langs["worst"], langs["worst_value"]), _ratio(langs["worst_over_best"])]
        cells += ([_named(scripts["best"], scripts["best_value"]), _named(scripts["worst"], scripts["worst_value"]),
                   _ratio(scripts["worst_over_best"])] if scripts else [_MISSING] * 3)
        rows.append("| " + " | ".join(cells) + " |")
    by_script: dict[str, list[str]] = {}
    for lang, script in spread["scripts"].items():
        by_script.setdefault(script, []).append(lang)
    rows += ["", "Scripts: " + "; ".join(f"{script}: {', '.join(langs)}" for script, langs in by_script.items())]
    return rows


def _fidelity_line(languages: list[str], per_language: dict) -> list[str]:
    """Caption language fidelity of every language, lowest first: the language a model most often answers in
    the wrong language comes first."""
    values = {lang: per_language[lang]["captioning"]["fidelity"] for lang in languages
              if "fidelity" in per_language.get(lang, {}).get("captioning", {})}
    if not values:
        return []
    return ["Caption language fidelity per language, lowest first: " +
            ", ".join(_named(lang, values[lang]) for lang in sorted(values, key=values.get))]


# (header, section, key) of the downstream scores shown beside the alignment.
_BESIDE_ALIGNMENT = (("i2t R@1", "retrieval", "i2t_r1"), ("t2i R@1", "retrieval", "t2i_r1"),
                     ("CIDEr", "captioning", "cider"), ("fidelity", "captioning", "fidelity"),
                     ("VQA acc", "vqa", "overall"))


def _alignment_section(languages: list[str], per_language: dict, alignment: dict) -> list[str]:
    if "skipped" in alignment:
        return [f"Skipped: {alignment['skipped']}."]
    lines = [f"Share (%) of parallel caption pairs whose {alignment['reference']} caption's embedding is nearest to "
             "its own translation among the language's n pairs (en→x), and back (x→en); chance is 100/n. LLM: the "
             f"mean hidden state of layer {alignment['layer']} of {alignment['depth']}; text head: the "
             f"{alignment['text_head']} text embedding retrieval ranks with. {alignment['reference']} is the "
             "reference (—).", ""]
    beside = [(h, s, k) for h, s, k in _BESIDE_ALIGNMENT if any(k in per_language.get(lang, {}).get(s, {})
                                                                for lang in languages)]
    header = ["lang", "LLM en→x", "LLM x→en", "text head en→x", "text head x→en", "n (chance)"]
    header += [h for h, _, _ in beside]
    lines += ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for lang in languages:
        scores = per_language.get(lang, {})
        a = scores.get("alignment", {})
        cells = [_fmt(a.get(key)) for key in ("llm_en_to_x", "llm_x_to_en", "text_head_en_to_x", "text_head_x_to_en")]
        cells.append(f"{a['n']} ({a['chance']:.1f})" if a else _MISSING)
        cells += [_fmt(scores.get(section, {}).get(key)) for _, section, key in beside]
        lines.append("| " + " | ".join([lang] + cells) + " |")
    if skipped := alignment.get("skipped_languages"):
        lines += ["", "Not scored: " + "; ".join(f"{lang} ({why})" for lang, why in skipped.items())]
    return lines


def _fertility_section(tables: dict) -> list[str]:
    lines = fertility_markdown(tables["llm"], f"LLM tokenizer `{tables['llm']['tokenizer']}`") + [""]
    if "bridge" in tables:
        if tables["bridge"] == tables["llm"]:
            lines += ["The Q-Former's text branch shares the LLM's tokenizer.", ""]
        else:
            lines += fertility_markdown(tables["bridge"], f"Q-Former text tokenizer `{tables['bridge']['tokenizer']}`")
            lines.append("")
    return lines


def _vqa_type_table(languages: list[str], per_language: dict) -> list[str]:
    rows = ["| lang | type | accuracy (majority) | n |", "|---|---|---|---|"]
    for lang in languages:
        for qtype, s in per_language.get(lang, {}).get("vqa", {}).get("by_type", {}).items():
            score = _fmt(s.get("accuracy"), s.get("majority"))
            rows.append(f"| {lang} | {_cell(qtype)} | {score} | {s.get('n', _MISSING)} |")
    return rows if len(rows) > 2 else []


def _itm_table(languages: list[str], per_language: dict) -> list[str]:
    ks = sorted({int(m[2]) for scores in per_language.values() for key in scores.get("retrieval", {})
                 if (m := re.match(r"^itm_(i2t|t2i)_r(\d+)$", key))})
    if not ks:
        return []
    header = ["lang"] + [f"{d} R@{k} ITC → ITM" for d in ("i2t", "t2i") for k in ks]
    rows = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for lang in languages:
        ret = per_language.get(lang, {}).get("retrieval", {})
        cells = [f"{_fmt(ret.get(f'{d}_r{k}'))} → {_fmt(ret.get(f'itm_{d}_r{k}'))}" for d in ("i2t", "t2i") for k in ks]
        rows.append("| " + " | ".join([lang] + cells) + " |")
    return rows


def _expert_table(languages: list[str], usage: dict[str, list[float]]) -> list[str]:
    """Mean routing weight (%) per expert and language."""
    n = max((len(v) for v in usage.values()), default=0)
    if not n:
        return []
    rows = ["| lang | " + " | ".join(f"e{i}" for i in range(n)) + " |", "|" + "---|" * (n + 1)]
    for lang in languages:
        if lang in usage:
            rows.append(f"| {lang} | " + " | ".join(f"{100 * w:.1f}" for w in usage[lang]) + " |")
    return rows


def _last_routing(records: list[dict]) -> dict[str, list[float]]:
    rows = [r for r in records if r.get("kind") == "routing"]
    return {k: v for k, v in rows[-1].items() if isinstance(v, list)} if rows else {}


def _samples(languages: list[str], per_language: dict) -> list[str]:
    lines: list[str] = []
    for lang in languages:
        samples = per_language.get(lang, {}).get("captioning", {}).get("samples", [])
        if samples:
            lines += [f"### {lang}", "", "| image | reference | hypothesis |", "|---|---|---|"]
            for s in samples:
                cells = (_cell(s.get(field, "")) for field in ("image", "reference", "hypothesis"))
                lines.append("| " + " | ".join(cells) + " |")
            lines.append("")
    return lines


def _read_metrics(path: Path) -> tuple[list[dict], int]:
    """Records with a numeric step, and how many lines were skipped (a killed run leaves a torn line)."""
    if not path.is_file():
        raise ValueError(f"metrics file not found: {path}")
    records, skipped = [], 0
    for line in path.read_text(encoding="utf-8").splitlines():
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            skipped += 1
            continue
        if isinstance(record, dict) and _is_number(record.get("step")):
            records.append(record)
        else:
            skipped += 1
    return records, skipped


def _is_number(value: object) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


# Eval keys "<prefix><lang>" drawn as one panel with a line per language.
_PER_LANGUAGE_PANELS = {"val_lm/": "validation LM loss per language", "lang_weight/": "language weights (lagging)"}


def _series(records: list[dict]) -> tuple[dict, dict, dict]:
    """{term: (steps, values)} for train lines, for eval "val_<term>" keys under <term>, and {panel: {lang: (steps,
    values)}} for the per-language eval keys (_PER_LANGUAGE_PANELS)."""
    train: dict[str, tuple[list, list]] = {}
    evals: dict[str, tuple[list, list]] = {}
    per_language: dict[str, dict[str, tuple[list, list]]] = {}
    for r in records:
        if r.get("kind") == "train":
            # Per-language/task shares and per-reason skip counts ("lang/de", "bad/tar_error") stay in
            # metrics.jsonl and TensorBoard: one panel each would bury the loss curves.
            items = [(train, k, v) for k, v in r.items() if k not in _BOOKKEEPING and "/" not in k]
        elif r.get("kind") == "eval":
            items = [(evals, k.removeprefix("val_"), v) for k, v in r.items()
                     if k.startswith("val_") and "/" not in k]
            items += [(per_language.setdefault(panel, {}), k.removeprefix(prefix), v) for k, v in r.items()
                      for prefix, panel in _PER_LANGUAGE_PANELS.items() if k.startswith(prefix)]
        else:
            continue
        for target, term, value in items:
            if _is_number(value):
                steps, values = target.setdefault(term, ([], []))
                steps.append(r["step"])
                values.append(value)
    return train, evals, per_language


def _ema(values: list[float]) -> list[float]:
    smoothed, s = [], values[0]
    for v in values:
        s = SMOOTHING * s + (1 - SMOOTHING) * v
        smoothed.append(s)
    return smoothed


def _plot_losses(train: dict, evals: dict, per_language: dict, path: Path) -> None:
    terms = list(train) + [t for t in evals if t not in train]
    panels = len(terms) + len(per_language)
    ncols = min(3, panels)
    nrows = math.ceil(panels / ncols)
    fig = Figure(figsize=(4.5 * ncols, 3.2 * nrows), layout="constrained")
    axes = fig.subplots(nrows, ncols, squeeze=False).ravel()
    for ax, (title, lines) in zip(axes[len(terms):], per_language.items()):
        for lang, (steps, values) in lines.items():
            ax.plot(steps, values, "o-", markersize=3, label=lang)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.legend(fontsize="x-small", ncols=2)
    for ax, term in zip(axes, terms):
        if term in train:
            steps, values = train[term]
            if term in _UNSMOOTHED:
                ax.plot(steps, values, color="tab:blue", label="train")
            else:
                ax.plot(steps, values, color="tab:blue", alpha=0.3, linewidth=1)
                ax.plot(steps, _ema(values), color="tab:blue", label="train (smoothed)")
        if term in evals:
            ax.plot(*evals[term], "o", color="tab:red", label="eval")
        ax.set_title(term)
        ax.set_xlabel("step")
        ax.legend(fontsize="small")
    for ax in axes[panels:]:
        ax.set_visible(False)
    fig.savefig(path, dpi=110)


# (label, section, score key, baseline key) for the per-language bar chart.
_BARS = (
    ("i2t R@1", "retrieval", "i2t_r1", "chance_i2t_r1"),
    ("t2i R@1", "retrieval", "t2i_r1", "chance_t2i_r1"),
    ("VQA accuracy", "vqa", "overall", "majority_overall"),
)


def _plot_per_language(languages: list[str], per_language: dict, path: Path) -> bool:
    """Grouped bars per language, each with a black tick at its chance/majority baseline.
    Returns False (and writes nothing) when no language has any of the plotted scores."""
    width = 0.8 / len(_BARS)
    fig = Figure(figsize=(max(6.0, 0.9 * len(languages) + 2), 4), layout="constrained")
    ax = fig.subplots()
    drawn = False
    for b, (label, section, key, base_key) in enumerate(_BARS):
        xs, heights, baselines = [], [], []
        for i, lang in enumerate(languages):
            scores = per_language.get(lang, {}).get(section, {})
            if key in scores:
                xs.append(i + (b - (len(_BARS) - 1) / 2) * width)
                heights.append(scores[key])
                baselines.append(scores.get(base_key, math.nan))
        if xs:
            drawn = True
            ax.bar(xs, heights, width, label=label)
            ax.plot(xs, baselines, "_", color="black", markersize=14, markeredgewidth=2)
    if not drawn:
        return False
    ax.plot([], [], "_", color="black", markersize=14, markeredgewidth=2, label="chance / majority")
    ax.set_xticks(range(len(languages)), languages)
    ax.set_ylabel("%")
    ax.set_ylim(0, 100)
    ax.legend(fontsize="small", ncols=2)
    fig.savefig(path, dpi=110)
    return True


def write_results(results: dict, out_dir: str | Path, metrics_path: Path | None = None) -> Path:
    """The one results writer: out_dir/results.json, then the report beside it (see `write_report`); returns the
    report's path. `vlm eval`, the trainer's periodic benchmark and the demo all write through it."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / "results.json").write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
    return write_report(results, out_dir, metrics_path if metrics_path is not None and metrics_path.is_file() else None)


def write_report(results: dict, out_dir: Path, metrics_path: Path | None = None) -> Path:
    """Write out_dir/report.md plus per_language.png and (given metrics_path) loss_curves.png;
    return the report path."""
    for key in ("languages", "per_language"):
        if key not in results:
            raise ValueError(f"results lacks key {key!r}")
    languages, per_language = results["languages"], results["per_language"]
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)

    lines = ["# Evaluation report", ""]
    if "suite" in results:
        lines.append(f"Suite: {results['suite']} ({results.get('source', '')})")
    lines.append(f"Languages: {', '.join(languages)}")
    if "bridge" in results:
        lines.append(f"Bridge: {results['bridge']}")
    protocols = {s.get("retrieval", {}).get("protocol") for s in per_language.values()} - {None}
    if protocols:
        lines.append("Retrieval protocol: " + "; ".join(sorted(protocols)))
    ranked_by = {s.get("retrieval", {}).get("ranked_by") for s in per_language.values()} - {None}
    if ranked_by:
        lines.append("Retrieval ranked by: " + ", ".join(sorted(ranked_by)) +
                     " (itc: the Q-Former's ITC, max over queries; contrastive: pooled visual tokens vs LLM "
                     "caption embeddings)")
    tokenizers = {lang: s["captioning"]["tokenizer"] for lang, s in per_language.items()
                  if "tokenizer" in s.get("captioning", {})}
    if tokenizers:
        by_name: dict[str, list[str]] = {}
        for lang, name in tokenizers.items():
            by_name.setdefault(name, []).append(lang)
        lines.append("Captioning tokenizer (references and outputs alike): " +
                     "; ".join(f"{name}: {', '.join(langs)}" for name, langs in by_name.items()))
    if "n_images" in results:
        skipped = results.get("skipped_images")
        lines.append(f"Images: {results['n_images']}" + (f" ({skipped} undecodable, skipped)" if skipped else ""))
        if names := results.get("skipped_image_names"):
            shown = ", ".join(_cell(name) for name in names[:SKIPPED_NAMES_SHOWN])
            left = len(names) - SKIPPED_NAMES_SHOWN
            more = f" and {left} more (all in results.json)" if left > 0 else ""
            lines.append(f"Skipped images: {shown}{more}")
    if decoding := results.get("decoding"):
        lines.append(f"Decoding: captions {decoding['caption']}, VQA {decoding['vqa']}, "
                     f"instructions in {decoding['prompt_language']}, {decoding.get('precision', 'fp32')}")
    lines += [
        "",
        "## Scores per language",
        "",
        "Percentages (CIDEr ×100; chrF 0–100). In parentheses: the baseline — chance for retrieval, the "
        "majority caption for CIDEr, the per-type majority answer for VQA. The mean is over languages, unweighted.",
        "",
        *_scores_table(languages, per_language, results.get("mean")),
        "",
    ]
    if _plot_per_language(languages, per_language, out_dir / "per_language.png"):
        lines += ["![scores per language](per_language.png)", ""]
    if spread_rows := _spread_table(results.get("spread", {})):
        lines += ["## Spread across languages and scripts", "",
                  "Best and worst language per metric and worst/best; per script, the mean of its languages.", "",
                  *spread_rows, ""]
    if fidelity := _fidelity_line(languages, per_language):
        lines += [*fidelity, ""]
    if alignment := results.get("alignment"):
        lines += ["## Cross-lingual alignment (MEXA-style)", "",
                  *_alignment_section(languages, per_language, alignment), ""]
    if tables := results.get("fertility"):
        lines += ["## Tokenizer fertility on the suite's captions", "", *_fertility_section(tables)]
    if type_rows := _vqa_type_table(languages, per_language):
        lines += ["### VQA by question type", "", *type_rows, ""]
    if itm_rows := _itm_table(languages, per_language):
        lines += ["### Retrieval re-ranked by ITM (BLIP-2 protocol: ITM logit + ITC score on the top-k)", "",
                  *itm_rows, ""]
    usage = {lang: s["experts"] for lang, s in per_language.items() if s.get("experts")}
    if expert_rows := _expert_table(languages, usage):
        lines += ["### MoE expert usage on the evaluation images (mean routing weight, %)", "", *expert_rows, ""]

    if metrics_path is not None:
        records, skipped = _read_metrics(Path(metrics_path))
        train, evals, by_language = _series(records)
        lines += ["## Training curves", ""]
        if train or evals:
            _plot_losses(train, evals, by_language, out_dir / "loss_curves.png")
            lines += ["![training curves](loss_curves.png)", ""]
        else:
            lines += [f"No train/eval records in `{metrics_path}`.", ""]
        if skipped:
            lines += [f"{skipped} malformed line(s) in the metrics file were skipped.", ""]
        if routing_rows := _expert_table(languages, _last_routing(records)):
            lines += ["### MoE expert usage in training (last logging window, mean routing weight, %)", "",
                      *routing_rows, ""]

    if sample_lines := _samples(languages, per_language):
        lines += ["## Sample captions", "", *sample_lines]

    if timings := results.get("timings"):
        lines += ["## Timings", "", "| stage | seconds |", "|---|---|"]
        lines += [f"| {_cell(stage)} | {seconds:.1f} |" for stage, seconds in timings.items()]
        if "total" not in timings:  # the demo records its own
            lines.append(f"| **total** | {sum(timings.values()):.1f} |")
        lines.append("")

    report = out_dir / "report.md"
    report.write_text("\n".join(lines), encoding="utf-8")
    return report
