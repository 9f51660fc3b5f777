"""eval.alignment: parallel pairs, the mutual-retrieval score on hand-made embeddings (aligned -> 100 %, unrelated ->
chance), the layer setting, and mean-pooled hidden states of causal and seq2seq LMs."""

from __future__ import annotations

import pytest
import torch

from eval.alignment import (
    evaluate_alignment,
    llm_embedder,
    mutual_retrieval,
    parallel_pairs,
    resolve_layer,
    score_pairs,
)
from vlm.config import ConfigError, EvalConfig, LLMConfig
from vlm.model.llm import LanguageModel

N = 256


def test_parallel_pairs_pair_by_position_skip_ragged_images_and_duplicates():
    records = [
        {"captions": {"en": ["a red circle", "two squares"], "de": ["ein roter Kreis", "zwei Quadrate"]}},
        {"captions": {"en": ["a blue star", "one dot"], "de": ["ein blauer Stern"]}},  # a filter dropped one
        {"captions": {"en": ["a red circle"], "de": ["ein roter Kreis"]}},  # seen: an ambiguous target
        {"captions": {"en": ["a green circle"], "de": ["ein roter Kreis"]}},  # a translation seen before
        {"captions": {"en": ["a cat"]}},
        {"captions": {"en": ["a dog", "a hat"], "de": ["ein Hund", "ein Hut"]}},
    ]
    assert parallel_pairs(records, "de", limit=10) == [("a red circle", "ein roter Kreis"),
                                                       ("two squares", "zwei Quadrate"), ("a dog", "ein Hund"),
                                                       ("a hat", "ein Hut")]
    assert parallel_pairs(records, "de", limit=3)[-1] == ("a dog", "ein Hund")
    assert parallel_pairs(records, "si", limit=10) == []


def test_identical_or_slightly_noisy_translations_score_100():
    torch.manual_seed(0)
    english = torch.randn(N, 64)
    assert mutual_retrieval(english, english.clone()) == (100.0, 100.0)
    assert mutual_retrieval(english, english + 0.05 * torch.randn(N, 64)) == (100.0, 100.0)


def test_shuffled_translations_score_chance():
    torch.manual_seed(0)
    english = torch.randn(N, 64)
    derangement = torch.roll(torch.arange(N), 1)  # every translation carries another caption's embedding
    assert mutual_retrieval(english, english[derangement]) == (0.0, 0.0)
    # Unrelated embeddings: hits at chance, 100/N = 0.39 % each way (averaged over draws).
    rates = [mutual_retrieval(english, torch.randn(N, 64)) for _ in range(40)]
    mean = sum(a + b for a, b in rates) / (2 * len(rates))
    assert mean == pytest.approx(100 / N, abs=0.3)


def test_a_tie_is_a_miss():
    assert mutual_retrieval(torch.ones(4, 8), torch.ones(4, 8)) == (0.0, 0.0)  # a collapsed embedding


def test_score_pairs_embeds_each_text_once_and_reports_chance():
    pairs = {"de": [(f"en {i}", f"de {i}") for i in range(8)],
             "si": [(f"en {i}", f"si {(i + 1) % 6}") for i in range(6)]}  # every translation the next caption's
    meaning = {f"en {i}": i for i in range(8)} | {f"de {i}": i for i in range(8)} | {f"si {i}": i for i in range(6)}
    table = torch.randn(8, 16, generator=torch.Generator().manual_seed(0))
    calls = []

    def embed(texts):
        calls.append(texts)
        return table[[meaning[t] for t in texts]]

    scores = score_pairs(pairs, {"toy": embed})
    assert len(calls) == 1 and len(calls[0]) == len(set(calls[0])) == 8 + 8 + 6
    assert scores["de"] == {"n": 8, "chance": 12.5, "toy_en_to_x": 100.0, "toy_x_to_en": 100.0}
    assert scores["si"]["toy_en_to_x"] == 0.0 and scores["si"]["chance"] == pytest.approx(100 / 6)


@pytest.mark.parametrize(("layer", "depth", "expected"), [(0, 4, 2), (0, 5, 3), (0, 1, 1), (-1, 4, 4), (-4, 4, 1),
                                                          (3, 4, 3)])
def test_layer_setting(layer, depth, expected):
    assert resolve_layer(layer, depth, "lm") == expected


@pytest.mark.parametrize("layer", [5, -5])
def test_a_layer_outside_the_lm_is_a_config_error(layer):
    with pytest.raises(ConfigError, match=r"'eval.alignment_layer' \(-?5\) is outside 'lm', which has 4 layer"):
        resolve_layer(layer, 4, "lm")


@pytest.mark.parametrize("kind", ["causal", "seq2seq"])
def test_llm_embedding_is_a_masked_mean_that_padding_does_not_change(tiny_parts, kind):
    lm_path = tiny_parts.lm if kind == "causal" else tiny_parts.seq2seq
    lm = LanguageModel(LLMConfig(name=str(lm_path), tokenizer=str(tiny_parts.tokenizer), kind=kind))
    lm.load_weights()
    lm.eval()
    embed = llm_embedder(lm, layer=1, max_length=48, batch_size=8)
    texts = ["a red circle", "two blue squares above a small green triangle on the left"]
    with torch.no_grad():
        together, alone = embed(texts), embed(texts[:1])
    assert together.shape == (2, lm.hidden_size)
    torch.testing.assert_close(together[0], alone[0], atol=1e-5, rtol=1e-5)  # right padding, masked out
    assert not torch.allclose(together[0], together[1])


def test_skipped_without_pairs_or_parallel_captions():
    cfg = EvalConfig(alignment_pairs=0)
    assert evaluate_alignment(None, [], ["de"], cfg, parallel=True) == ({"skipped": "eval.alignment_pairs is 0"}, {})
    records = [{"captions": {"en": ["a red circle"], "de": ["ein roter Kreis"]}}]
    summary, scores = evaluate_alignment(None, records, ["de"], EvalConfig(), parallel=False)
    assert summary == {"skipped": "the suite's captions are not translations of each other"} and scores == {}
    vqa_only = [{"captions": {}, "qa": [{"lang": "de", "question": "wie viele?", "answers": ["2"]}]}]
    assert evaluate_alignment(None, vqa_only, ["de"], EvalConfig(), parallel=True)[0] == {
        "skipped": "the suite has no captions"}
