"""eval.spread on a hand-made results dict: best, worst and worst/best per metric over languages and over scripts,
and the training-time figures vlm/cli/train.py logs from it."""

from __future__ import annotations

import pytest

from eval.spread import compute_spread
from vlm.cli.train import spread_curves

LANGUAGES = ["en", "de", "si", "zh"]  # Latin, Latin, Sinhala, Han
PER_LANGUAGE = {
    "en": {"retrieval": {"i2t_r1": 60.0, "t2i_r1": 50.0, "i2t_r5": 90.0, "chance_i2t_r1": 1.0, "n_images": 100},
           "captioning": {"cider": 80.0, "fidelity": 100.0, "tokenizer": "whitespace"}},
    "de": {"retrieval": {"i2t_r1": 40.0, "t2i_r1": 50.0, "i2t_r5": 80.0},
           "captioning": {"fidelity": 90.0}},
    "si": {"retrieval": {"i2t_r1": 15.0, "t2i_r1": 10.0},
           "captioning": {"cider": 0.0, "fidelity": 45.0}},
    "zh": {"retrieval": {"i2t_r1": 30.0}, "vqa": {"overall": 20.0}},
}


@pytest.fixture(scope="module")
def spread():
    return compute_spread(LANGUAGES, PER_LANGUAGE)


def test_scripts_come_from_the_language_table(spread):
    assert spread["scripts"] == {"en": "Latin", "de": "Latin", "si": "Sinhala", "zh": "Han"}


def test_metrics_need_two_languages_and_come_in_report_order(spread):
    # VQA: zh alone; chance and counts are not metrics; recalls sorted by direction then k.
    assert list(spread["metrics"]) == ["retrieval/i2t_r1", "retrieval/i2t_r5", "retrieval/t2i_r1", "captioning/cider",
                                       "captioning/fidelity"]
    assert spread["metrics"]["retrieval/i2t_r1"]["label"] == "i2t R@1"
    assert spread["metrics"]["captioning/fidelity"]["label"] == "caption language fidelity"


def test_best_worst_and_ratio_over_languages(spread):
    rows = spread["metrics"]
    assert rows["retrieval/i2t_r1"]["languages"] == {"best": "en", "best_value": 60.0, "worst": "si",
                                                     "worst_value": 15.0, "worst_over_best": 0.25, "n": 4}
    # A tie for best goes to the first language named.
    assert rows["retrieval/t2i_r1"]["languages"] == {"best": "en", "best_value": 50.0, "worst": "si",
                                                     "worst_value": 10.0, "worst_over_best": 0.2, "n": 3}
    assert rows["captioning/fidelity"]["languages"]["worst"] == "si"
    assert rows["captioning/fidelity"]["languages"]["worst_over_best"] == 0.45
    assert rows["captioning/cider"]["languages"]["worst_over_best"] == 0.0


def test_best_worst_and_ratio_over_scripts(spread):
    rows = spread["metrics"]
    # Latin is the mean of en and de: (60 + 40) / 2.
    assert rows["retrieval/i2t_r1"]["scripts"] == {"best": "Latin", "best_value": 50.0, "worst": "Sinhala",
                                                   "worst_value": 15.0, "worst_over_best": 0.3, "n": 3}
    assert rows["captioning/fidelity"]["scripts"]["best_value"] == 95.0
    assert rows["captioning/fidelity"]["scripts"]["worst_over_best"] == round(45 / 95, 4)
    assert "scripts" not in rows["retrieval/i2t_r5"]  # en and de: one script


def test_a_zero_best_has_no_ratio_and_unknown_codes_have_a_script():
    spread = compute_spread(["en", "xx"], {"en": {"vqa": {"overall": 0.0}}, "xx": {"vqa": {"overall": 0.0}}})
    assert spread["scripts"]["xx"] == "unknown"
    vqa = spread["metrics"]["vqa/overall"]["languages"]
    assert (vqa["best"], vqa["worst"]) == ("en", "xx")  # all equal: still two languages named
    assert vqa["worst_over_best"] is None
    assert spread["metrics"]["vqa/overall"]["scripts"]["worst_over_best"] is None


def test_alignment_scores_join_the_spread_without_english():
    per_language = {"en": {}, "de": {"alignment": {"llm_en_to_x": 90.0, "n": 256, "layer": 2}},
                    "si": {"alignment": {"llm_en_to_x": 30.0, "n": 200, "layer": 2}}}
    spread = compute_spread(["en", "de", "si"], per_language)
    assert list(spread["metrics"]) == ["alignment/llm_en_to_x"]
    assert spread["metrics"]["alignment/llm_en_to_x"]["languages"]["n"] == 2
    assert spread["metrics"]["alignment/llm_en_to_x"]["languages"]["worst_over_best"] == round(30 / 90, 4)


def test_the_training_benchmark_logs_spread_figures(spread):
    assert spread_curves(spread) == {"spread_retrieval_i2t_r1": 0.25, "spread_retrieval_t2i_r1": 0.2,
                                     "worst_captioning_fidelity": 45.0}  # no VQA spread: one language
