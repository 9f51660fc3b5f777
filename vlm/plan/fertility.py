"""`vlm plan`'s tokenizer fertility: what each of data.languages costs the LLM's tokenizer (and the Q-Former text
branch's, when it has one of its own) on the config's own captions, read from data.val (else data.train)."""

from __future__ import annotations

from data_prep.fertility import counter, markdown, measure, warnings
from vlm.config import Config, ConfigError
from vlm.data.records import read_records
from vlm.data.shards import resolve_shards

MAX_RECORDS = 1000  # the first records of the shards: enough for two significant digits, read in seconds
MIN_PARALLEL = 20  # fewer records holding every language than this: compare all captions instead


def caption_texts(records: list[dict], languages: list[str]) -> tuple[dict[str, list[str]], bool]:
    """Captions per language, and whether they are parallel: from the records that hold every language (one
    caption each, translations of one another, as `vlm prep translate` writes them), else every caption."""
    complete = [r["captions"] for r in records if all(r.get("captions", {}).get(lang) for lang in languages)]
    if len(complete) >= min(MIN_PARALLEL, len(records)) and complete:
        return {lang: [captions[lang][0] for captions in complete] for lang in languages}, True
    texts: dict[str, list[str]] = {lang: [] for lang in languages}
    for record in records:
        for lang in languages:
            texts[lang] += record.get("captions", {}).get(lang, [])
    return texts, False


def plan_fertility(cfg: Config) -> dict:
    """{"shards": split read, "tokenizers": {"llm": table, "bridge": table}} (data_prep.fertility tables), or
    {"skipped": why} when there is no caption or no tokenizer to read."""
    split, spec = ("val", cfg.data.val) if cfg.data.val else ("train", cfg.data.train)
    try:
        records = read_records(resolve_shards(spec, split), limit=MAX_RECORDS)
    except (FileNotFoundError, ValueError) as err:
        return {"skipped": f"no captions to measure ({err})"}
    texts, parallel = caption_texts(records, cfg.data.languages)
    if not any(texts.values()):
        return {"skipped": f"data.{split} holds no caption in {', '.join(cfg.data.languages)}"}
    from vlm.model.llm import load_tokenizer
    from vlm.model.vlm import load_bridge_tokenizer

    try:
        tokenizer = load_tokenizer(cfg.llm)
        bridge = load_bridge_tokenizer(cfg, tokenizer) if cfg.bridge.type == "qformer" and cfg.bridge.text_branch \
            else tokenizer
    except ConfigError as err:  # e.g. a hub id while offline: the plan itself does not need the tokenizer
        return {"skipped": f"no tokenizer to measure with ({err})"}
    tables = {"llm": measure(counter(tokenizer), texts, parallel)}
    if bridge is not tokenizer:
        tables["bridge"] = measure(counter(bridge), texts, parallel)
    return {"shards": f"data.{split}", "records": len(records), "tokenizers": tables}


NAMES = {"llm": "the LLM's tokenizer", "bridge": "the Q-Former text branch's tokenizer"}


def format_fertility(fertility: dict) -> list[str]:
    if "skipped" in fertility:
        return [f"tokenizer fertility: not measured: {fertility['skipped']}"]
    lines = []
    for name, table in fertility["tokenizers"].items():
        what = f"{NAMES[name]} on {fertility['shards']} ({fertility['records']} records)"
        lines += [*markdown(table, what), ""]
        lines += [f"warning: {line}" for line in warnings(table, NAMES[name])]
    return lines
