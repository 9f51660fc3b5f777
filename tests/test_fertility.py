"""Tokenizer fertility (data_prep/fertility.py): counts per character, word and text, the cost against English on
parallel texts, the script summary and the warning past 3x."""

from __future__ import annotations

import pytest

from data_prep.fertility import counter, measure, warnings
from data_prep.phrase_tables import TABLES
from data_prep.synthetic import english_caption, generate_scenes
from data_prep.translate import PhraseTableTranslator
from vlm.parts import train_tokenizer


def _per_char(texts: list[str]) -> list[int]:
    return [len("".join(t.split())) for t in texts]


def test_counts_per_char_word_and_text_and_the_ratio_to_english():
    texts = {"en": ["a red circle", "two squares"], "de": ["ein roter kreis", "zwei quadrate"],
             "zh": ["红色的圆", "两个方块"]}
    table = measure(_per_char, texts, parallel=True)
    en, de, zh = (table["languages"][lang] for lang in ("en", "de", "zh"))
    assert (en["chars"], en["words"], en["tokens"], en["texts"]) == (20, 5, 20, 2)
    assert en["tokens_per_char"] == 1.0 and en["tokens_per_word"] == 4.0 and en["tokens_per_text"] == 10.0
    assert de["vs_reference"] == pytest.approx(25 / 20, abs=1e-3)
    assert zh["words"] is None and zh["tokens_per_word"] is None  # written without spaces: no words to count
    assert zh["script"] == "Han" and zh["vs_reference"] == pytest.approx(8 / 20, abs=1e-3)
    assert table["scripts"]["Latin"]["languages"] == ["en", "de"]
    assert table["scripts"]["Latin"]["max_vs_reference"] == pytest.approx(1.25)
    assert table["costly"] == [] and warnings(table, "llm tokenizer") == []


def test_a_language_over_three_times_english_is_warned_about():
    texts = {"en": ["a b c"], "si": ["ක ඛ ග ඝ ඞ ච ඡ ජ ඣ ඤ"]}
    table = measure(lambda batch: [len(t.split()) for t in batch], texts, parallel=True)
    assert table["languages"]["si"]["vs_reference"] == pytest.approx(10 / 3, abs=1e-3)
    assert table["costly"] == ["si"]
    (line,) = warnings(table, "llm tokenizer")
    assert line.startswith("llm tokenizer: 'si' costs 3.3x the tokens of 'en' on the same texts")


def test_without_english_there_is_no_ratio_and_empty_texts_are_left_out():
    table = measure(_per_char, {"de": ["", "  ", "hallo welt"], "fr": []}, parallel=False)
    assert list(table["languages"]) == ["de"]
    assert table["languages"]["de"]["texts"] == 1 and table["languages"]["de"]["vs_reference"] is None
    assert table["costly"] == []


def test_a_bpe_trained_on_english_costs_more_on_sinhala_than_on_german():
    """The real case: a byte-level BPE learned from English alone, measured on parallel captions."""
    scenes = generate_scenes(200, seed=0)
    english = [english_caption(scene) for scene in scenes]
    tokenizer = train_tokenizer(english * 3, 400)
    parallel = {"en": english, **{lang: PhraseTableTranslator().translate(english, "en", lang) for lang in ("de", "si")}}
    assert set(TABLES) >= {"de", "si"}
    table = measure(counter(tokenizer), parallel, parallel=True)
    en, de, si = (table["languages"][lang] for lang in ("en", "de", "si"))
    assert en["vs_reference"] == 1.0
    assert 1.0 < de["vs_reference"] < si["vs_reference"]
    assert si["vs_reference"] > 3.0 and "si" in table["costly"]  # bytes of a script the BPE never saw
    assert si["tokens_per_char"] > en["tokens_per_char"]
