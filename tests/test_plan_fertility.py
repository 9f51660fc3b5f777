"""`vlm plan`'s tokenizer fertility section, on the config's own captions."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from vlm.plan.fertility import caption_texts, plan_fertility

DEMO_CONFIG = Path(__file__).resolve().parent.parent / "configs" / "demo.yaml"
LANGUAGES = ["en", "de", "zh", "hi"]  # the tiny parts' (tests/conftest.py)


def test_parallel_captions_come_from_records_holding_every_language():
    full = {"captions": {"en": ["a red circle", "one red circle"], "de": ["ein roter Kreis"]}}
    partial = {"captions": {"en": ["a blue star"]}}
    texts, parallel = caption_texts([full] * 25 + [partial], ["en", "de"])
    assert parallel and texts == {"en": ["a red circle"] * 25, "de": ["ein roter Kreis"] * 25}
    texts, parallel = caption_texts([full, partial, partial], ["en", "de"])  # too few complete records
    assert parallel is False
    assert texts == {"en": ["a red circle", "one red circle", "a blue star", "a blue star"], "de": ["ein roter Kreis"]}


def test_plan_measures_the_llm_and_bridge_tokenizers(tiny_parts, tmp_path):
    fertility = plan_fertility(tiny_parts.config(tmp_path))
    llm = fertility["tokenizers"]["llm"]
    assert fertility["shards"] == "data.val" and llm["parallel"] is True
    assert list(llm["languages"]) == LANGUAGES and llm["languages"]["en"]["vs_reference"] == 1.0
    assert llm["languages"]["zh"]["tokens_per_word"] is None and llm["scripts"]["Han"]["languages"] == ["zh"]
    assert "bridge" not in fertility["tokenizers"]  # the demo's text branch reads the LLM's tokenizer


def test_plan_without_a_readable_tokenizer_says_why(tiny_parts, tmp_path):
    fertility = plan_fertility(tiny_parts.config(tmp_path, "llm.tokenizer=no-such-org/no-such-tokenizer"))
    assert "no tokenizer to measure with" in fertility["skipped"]


def test_the_plan_command_prints_and_saves_the_table(tiny_parts, tmp_path):
    out = tmp_path / "plan.json"
    proc = subprocess.run([sys.executable, "-m", "vlm.cli", "plan", str(DEMO_CONFIG), *tiny_parts.overrides(tmp_path),
                           "--json", str(out)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "Tokenizer fertility, the LLM's tokenizer on data.val" in proc.stdout
    assert "| zh | Han |" in proc.stdout
    saved = json.loads(out.read_text())["fertility"]["tokenizers"]["llm"]
    assert set(saved["languages"]) == set(LANGUAGES)
