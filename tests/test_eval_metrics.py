"""Metric values computed by hand for eval.retrieval, eval.captioning, eval.vqa; eval.report output."""

import json
import math

import pytest
import torch
from PIL import Image

from data_prep.language_id import fidelity_method
from eval.captioning import bleu, cider_d, language_fidelity, majority_caption, tokenize_for_metric
from eval.report import _series, write_report
from eval.retrieval import chance_recall, recall_at_k
from eval.runner import language_means
from eval.spread import compute_spread
from eval.vqa import (
    accuracy_by_type,
    exact_match,
    majority_baseline,
    normalize_answer,
    relaxed_match,
    vqa_accuracy,
    vqav2_score,
    yes_no,
)

# ---------------------------------------------------------------- retrieval


def test_recall_3x3_known_ranks():
    sim = torch.tensor(
        [
            [0.9, 0.1, 0.2],  # image 0: own text first
            [0.3, 0.2, 0.8],  # image 1: own text (0.2) third
            [0.1, 0.7, 0.5],  # image 2: own text (0.5) second
        ]
    )
    # t2i columns: text 0 -> image 0 rank 1; text 1 (0.2 vs 0.7) rank 2; text 2 (0.5 vs 0.8) rank 2.
    r = recall_at_k(sim, torch.tensor([0, 1, 2]), ks=(1, 2, 3))
    assert r == pytest.approx(
        {"i2t_r1": 100 / 3, "i2t_r2": 200 / 3, "i2t_r3": 100.0, "t2i_r1": 100 / 3, "t2i_r2": 100.0, "t2i_r3": 100.0}
    )


def test_recall_3x6_several_texts_per_image():
    sim = torch.tensor(
        [
            [0.1, 0.9, 0.5, 0.2, 0.3, 0.0],  # image 0: best own text 0.9 -> rank 1
            [0.8, 0.1, 0.2, 0.7, 0.6, 0.0],  # image 1: best own text 0.7, one negative above -> rank 2
            [0.9, 0.8, 0.7, 0.6, 0.1, 0.2],  # image 2: best own text 0.2, four negatives above -> rank 5
        ]
    )
    # t2i ranks per text: 3, 1, 3, 1, 3, 1.
    r = recall_at_k(sim, torch.tensor([0, 0, 1, 1, 2, 2]), ks=(1, 2, 5))
    assert r == pytest.approx(
        {"i2t_r1": 100 / 3, "i2t_r2": 200 / 3, "i2t_r5": 100.0, "t2i_r1": 50.0, "t2i_r2": 50.0, "t2i_r5": 100.0}
    )


def _clip_benchmark_recall(scores_t2i: torch.Tensor, positive_pairs: torch.Tensor, k: int) -> float:
    """CLIP_benchmark's formula (clip_benchmark/metrics/zeroshot_retrieval.py): per query, the share of its
    positives within the top k, binarised (> 0) and averaged. scores (queries, candidates)."""
    topk = scores_t2i.topk(k, dim=1).indices
    topk_onehot = torch.nn.functional.one_hot(topk, num_classes=scores_t2i.shape[1]).sum(dim=1)  # (queries, n)
    true_positives = (topk_onehot * positive_pairs).sum(dim=1)
    return 100.0 * (true_positives / positive_pairs.sum(dim=1) > 0).float().mean().item()


@pytest.mark.parametrize("captions_per_image", [1, 2, 5])
def test_recall_equals_clip_benchmark_formula_on_random_scores(captions_per_image):
    """Hit-based R@k as CLIP_benchmark defines it; its "image_retrieval_recall" is our t2i and its
    "text_retrieval_recall" our i2t. Random float scores have no ties, where the two would differ."""
    torch.manual_seed(captions_per_image)
    n_images = 40
    owners = torch.arange(n_images).repeat_interleave(captions_per_image)
    sim = torch.randn(n_images, len(owners))
    sim += 1.5 * (owners[None, :] == torch.arange(n_images)[:, None])  # some signal, so recalls are not ~k/n
    positive = (owners[None, :] == torch.arange(n_images)[:, None]).long()  # (images, texts)
    ours = recall_at_k(sim, owners, ks=(1, 5, 10))
    for k in (1, 5, 10):
        assert ours[f"t2i_r{k}"] == pytest.approx(_clip_benchmark_recall(sim.t(), positive.t(), k))
        assert ours[f"i2t_r{k}"] == pytest.approx(_clip_benchmark_recall(sim, positive, k))


def test_recall_ties_count_against_the_model():
    # A collapsed model: every rank is the worst one, so only k >= n hits.
    r = recall_at_k(torch.ones(3, 3), torch.tensor([0, 1, 2]), ks=(1, 2, 3))
    assert r == pytest.approx({"i2t_r1": 0, "i2t_r2": 0, "i2t_r3": 100, "t2i_r1": 0, "t2i_r2": 0, "t2i_r3": 100})
    # A positive tied with one negative ranks 2; two tied positives of one image do not hurt each other.
    sim = torch.tensor([[0.5, 0.5, 0.1], [0.2, 0.3, 0.9]])
    r = recall_at_k(sim, torch.tensor([0, 0, 1]), ks=(1,))
    assert r["i2t_r1"] == pytest.approx(100.0)
    sim = torch.tensor([[0.5, 0.5], [0.1, 0.9]])
    r = recall_at_k(sim, torch.tensor([0, 1]), ks=(1, 2))
    assert (r["i2t_r1"], r["i2t_r2"]) == pytest.approx((50.0, 100.0))


@pytest.mark.parametrize(
    "sim, t2i, match",
    [
        (torch.zeros(2, 3), torch.tensor([0, 1]), "text_to_image must have shape"),
        (torch.zeros(2, 2), torch.tensor([0, 2]), "must lie in"),
        (torch.zeros(2, 2), torch.tensor([0, 0]), "image 1 has no text"),
        (torch.tensor([[0.0, math.nan], [0.0, 0.0]]), torch.tensor([0, 1]), "NaN"),
        (torch.zeros(4), torch.tensor([0, 1, 2, 3]), "must be 2-D"),
    ],
)
def test_recall_rejects_bad_input(sim, t2i, match):
    with pytest.raises(ValueError, match=match):
        recall_at_k(sim, t2i)


def test_chance_recall_closed_form_and_monte_carlo():
    expected = chance_recall(4, n_texts_per_image=2, ks=(1, 2, 3))
    # i2t: 1 - C(6,k)/C(8,k); t2i: k/4.
    assert expected == pytest.approx(
        {
            "chance_i2t_r1": 25.0,
            "chance_i2t_r2": 100 * (1 - 15 / 28),
            "chance_i2t_r3": 100 * (1 - 20 / 56),
            "chance_t2i_r1": 25.0,
            "chance_t2i_r2": 50.0,
            "chance_t2i_r3": 75.0,
        }
    )
    gen = torch.Generator().manual_seed(0)
    t2i = torch.tensor([0, 0, 1, 1, 2, 2, 3, 3])
    trials = [recall_at_k(torch.rand(4, 8, generator=gen), t2i, ks=(1, 2, 3)) for _ in range(1500)]
    for direction in ("i2t", "t2i"):
        for k in (1, 2, 3):
            estimate = sum(t[f"{direction}_r{k}"] for t in trials) / len(trials)
            assert estimate == pytest.approx(expected[f"chance_{direction}_r{k}"], abs=2.5)


def test_chance_recall_with_a_ragged_number_of_captions():
    counts = [1, 2, 3]  # XM3600 has 1 to 3+ captions per image and language
    expected = chance_recall(3, counts, ks=(1, 2))
    # T = 6 texts; i2t misses: C(6-m, k) / C(6, k) per image, averaged over the images
    miss_k1 = [(6 - m) / 6 for m in counts]
    miss_k2 = [(6 - m) * (5 - m) / 30 for m in counts]
    assert expected["chance_i2t_r1"] == pytest.approx(100 * (1 - sum(miss_k1) / 3))
    assert expected["chance_i2t_r2"] == pytest.approx(100 * (1 - sum(miss_k2) / 3))
    assert chance_recall(3, [2, 2, 2], ks=(1, 2)) == pytest.approx(chance_recall(3, 2, ks=(1, 2)))
    gen = torch.Generator().manual_seed(1)
    owners = torch.tensor([0, 1, 1, 2, 2, 2])
    trials = [recall_at_k(torch.rand(3, 6, generator=gen), owners, ks=(1, 2)) for _ in range(1500)]
    for k in (1, 2):
        estimate = sum(t[f"i2t_r{k}"] for t in trials) / len(trials)
        assert estimate == pytest.approx(expected[f"chance_i2t_r{k}"], abs=2.5)
    with pytest.raises(ValueError, match="one count >= 1 per image"):
        chance_recall(3, [1, 0, 2])


# ---------------------------------------------------------------- captioning tokens


@pytest.mark.parametrize(
    "text, lang, tokens",
    [
        # Punctuation ("，", "。") goes; Latin runs and digits stay whole words.
        ("一只猫坐在iPhone旁边，2个。", "zh", ["一", "只", "猫", "坐", "在", "iphone", "旁", "边", "2", "个"]),
        # The Thai vowel sign ิ stays on its consonant ก.
        ("แมว กิน", "th", ["แ", "ม", "ว", "กิ", "น"]),
        ("एक कुत्ता गेंद के साथ खेल रहा है।", "hi", ["एक", "कुत्ता", "गेंद", "के", "साथ", "खेल", "रहा", "है"]),
        ("බල්ලෙක් පිට්ටනියේ දුවයි.", "si", ["බල්ලෙක්", "පිට්ටනියේ", "දුවයි"]),
        ("ශ්\u200dරී ලංකාව", "si", ["ශ්\u200dරී", "ලංකාව"]),  # the ZWJ of the conjunct stays
        ("A dog's  ball, RED!", "en", ["a", "dog", "s", "ball", "red"]),  # punctuation is a word break
    ],
)
def test_tokenize_for_metric(text, lang, tokens):
    assert tokenize_for_metric(text, lang) == tokens


# ---------------------------------------------------------------- CIDEr-D


def test_cider_d_hand_computed_two_images():
    # IDF = log(2) - log(df): "a" is in both images (idf 0), every other n-gram in one (idf log 2).
    # Image b matches exactly: unigram and bigram cosines are 1, 3/4-grams are absent -> 10 * 2/4 = 5.
    # Image a: unigram vectors (the: L, cat: L) vs (a: 0, cat: L) -> cosine 1/sqrt(2); bigrams share
    # nothing; equal lengths, so no penalty -> 10 * (1/sqrt(2)) / 4.
    refs = {"a": ["a cat"], "b": ["a dog"]}
    score, per_id = cider_d(refs, {"a": "the cat", "b": "a dog"}, "en")
    expected_a = 100 * 10 * (1 / math.sqrt(2)) / 4
    assert per_id == pytest.approx({"a": expected_a, "b": 500.0})
    assert score == pytest.approx((expected_a + 500.0) / 2)


def test_cider_d_prefers_the_right_caption():
    refs = {"1": ["a dog runs on the grass"], "2": ["a red car parked on a street"], "3": ["two people ride bikes"]}
    right = {"1": "a dog runs on grass", "2": "a red car on a street", "3": "two people ride bikes"}
    wrong = {"1": "a red car on a street", "2": "two people ride bikes", "3": "a dog runs on grass"}
    right_score, wrong_score = cider_d(refs, right, "en")[0], cider_d(refs, wrong, "en")[0]
    assert right_score > 10 * wrong_score  # "wrong" still shares "on" and "a" with its references


def test_cider_d_rejects_bad_input():
    with pytest.raises(ValueError, match="only in references"):
        cider_d({"1": ["a"], "2": ["b"]}, {"1": "a"}, "en")
    with pytest.raises(ValueError, match="at least 2 images"):
        cider_d({"1": ["a"]}, {"1": "a"}, "en")
    with pytest.raises(ValueError, match="non-empty list"):
        cider_d({"1": ["a"], "2": []}, {"1": "a", "2": "b"}, "en")


# ---------------------------------------------------------------- BLEU, fidelity, majority caption


def test_bleu_values():
    refs = {"a": ["the cat sat on the mat", "a cat is on a mat"], "b": ["a dog runs in the park"]}
    # Perfect match, also when the matching reference is the second one and "b" has only one.
    assert bleu(refs, {"a": "The cat sat on the mat", "b": "a dog runs in the park"}, "en") == pytest.approx(100.0)
    assert bleu(refs, {"a": "a cat is on a mat", "b": "a dog runs in the park"}, "en") == pytest.approx(100.0)
    # Precisions 5/6, 3/5, 2/4, 1/3 and no brevity penalty.
    one = {"x": ["the cat sat on a mat"]}
    assert bleu(one, {"x": "the cat sat on the mat"}, "en") == pytest.approx(
        100 * (5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25, abs=1e-3
    )
    assert bleu({"x": ["两只狗在草地上跑"]}, {"x": "两只狗在草地上跑"}, "zh") == pytest.approx(100.0)


def test_language_fidelity():
    hyps = ["a dog on the grass", "एक कुत्ता घास पर है", "一只狗", "123 !"]
    assert language_fidelity(hyps, "hi") == pytest.approx(25.0)
    # lid.176 catches English where German was asked for (a script check alone would accept it)
    assert language_fidelity(hyps, "de") == pytest.approx(0.0)
    assert language_fidelity(["ein großer blauer Stern oben", "a big blue star at the top"], "de") == 50.0
    # Confident lid.176 separates Japanese from Chinese; a short all-Han text it is unsure of passes on script.
    assert language_fidelity(["赤い車", "红色的车"], "zh") == pytest.approx(50.0)
    assert language_fidelity(["一只狗"], "zh") == pytest.approx(100.0)
    assert language_fidelity(["赤い車", "a red car"], "ja") == pytest.approx(50.0)
    assert language_fidelity(["බල්ලෙක්", "dog"], "si") == pytest.approx(50.0)
    assert language_fidelity(["Hund"], "de") == pytest.approx(100.0)  # one word: lid.176 unsure, script decides
    assert fidelity_method("de") == "lid.176+script" and fidelity_method("fil") == "lid.176+script"
    assert fidelity_method("mi") == "script"  # Maori is not among lid.176's labels
    # A Hindi sentence lid.176 ranks as Marathi first still counts: Hindi is among its top guesses.
    assert language_fidelity(["नीचे एक छोटा लाल त्रिभुज"], "hi") == pytest.approx(100.0)
    with pytest.raises(ValueError, match="'xx'"):
        language_fidelity(["a"], "xx")


def test_majority_caption():
    assert majority_caption(["a dog", "a cat", " a  dog ", "a cat", "a dog"]) == "a dog"
    with pytest.raises(ValueError):
        majority_caption([])


# ---------------------------------------------------------------- VQA


@pytest.mark.parametrize(
    "text, lang, expected",
    [
        ("The Dog.", "en", "dog"),
        ("  Two   cats! ", "en", "2 cats"),
        ("Ein Hund.", "de", "ein hund"),  # no English article rule elsewhere
        ("猫。", "zh", "猫"),
        ("犬？", "ja", "犬"),  # full-width question mark
        ("हाँ।", "hi", "हाँ"),
        ("3.5", "en", "3.5"),
        ("नहीं", "hi", "नहीं"),  # vowel signs and anusvara are marks, not punctuation: they stay
        ("ไม่ใช่", "th", "ไม่ใช่"),
        ("ඔව්.", "si", "ඔව්"),
        ("Straße", "de", "strasse"),  # casefold
    ],
)
def test_normalize_answer(text, lang, expected):
    assert normalize_answer(text, lang) == expected


def test_vqa_soft_accuracy():
    ten = ["2", "two", "3", "3", "3", "3", "3", "3", "3", "3"]  # 2 of 10 humans said 2
    # Official VQAv2: leave each answer out in turn; 2 matches -> (2 x 1/3 + 8 x 2/3) / 10 = 60%.
    assert vqa_accuracy(["2"], [ten], "en") == pytest.approx(60.0)
    assert vqa_accuracy(["3"], [ten], "en") == pytest.approx(100.0)
    assert vqa_accuracy(["4"], [ten], "en") == pytest.approx(0.0)
    # Fewer than 10 answers are equally valid variants (MaXM): exact match against any, after normalisation.
    assert vqa_accuracy(["Yes.", "no"], [["yes"], ["yes"]], "en") == pytest.approx(50.0)
    assert vqa_accuracy(["Deux", "trois", ""], [["2", "deux"], ["2", "deux"], [""]], "fr") == pytest.approx(100 / 3)
    with pytest.raises(ValueError, match="2 predictions but 1"):
        vqa_accuracy(["a", "b"], [["a"]], "en")


def _vqav2_by_hand(prediction: str, answers: list[str]) -> float:
    """VQAv2's evaluator written out: every 9-answer subset, min(1, matches / 3), averaged."""
    subsets = [answers[:i] + answers[i + 1:] for i in range(len(answers))]
    return sum(min(1.0, sum(a == prediction for a in subset) / 3) for subset in subsets) / len(subsets)


@pytest.mark.parametrize("matches", range(0, 11))
def test_vqav2_score_is_the_leave_one_out_average(matches):
    answers = ["x"] * matches + [f"other{i}" for i in range(10 - matches)]
    assert vqav2_score("x", answers) == pytest.approx(_vqav2_by_hand("x", answers))
    assert vqav2_score("x", answers) == pytest.approx({0: 0, 1: 0.3, 2: 0.6, 3: 0.9}.get(matches, 1.0))


def test_yes_no_reads_whole_words_only():
    assert yes_no("yes, it is") == "yes" and yes_no("no, there is none") == "no"
    for answer in ("not sure", "none", "i know", "nobody", "yesterday", ""):
        assert yes_no(answer) is None, answer


def test_exact_and_relaxed_match():
    assert exact_match("red", ["blue", "red"]) and not exact_match("", ["", "red"])
    assert relaxed_match("red circle", ["red"], "de") and relaxed_match("a big red", ["red"], "de")
    assert not relaxed_match("reddish", ["red"], "de")  # word boundary
    assert relaxed_match("红色的", ["红色"], "zh")  # no spaces between words: no boundary to require
    assert not relaxed_match("", ["red", ""], "en") and not relaxed_match("anything", [""], "fr")
    assert relaxed_match("yes, there are two", ["yes"], "en")
    assert not relaxed_match("not really", ["no"], "en")  # substring "no" is not an answer
    assert relaxed_match("नहीं", ["नहीं"], "hi") and not relaxed_match("नह", ["नहीं"], "hi")


def test_accuracy_by_type_reports_exact_and_relaxed():
    result = accuracy_by_type(["Red circle", "", "2"], [{"type": "c", "answers": ["red"]},
                                                      {"type": "c", "answers": [""]},
                                                      {"type": "n", "answers": ["two"]}], "en")
    assert result["exact"] == pytest.approx(100 / 3)  # only "2" == "two" after normalisation
    assert result["relaxed"] == pytest.approx(200 / 3)  # "red circle" starts with "red"; "" never scores


TRAIN = [
    {"type": "color", "answers": ["red", "red", "blue"]},
    {"type": "color", "answers": ["Red."]},
    {"type": "count", "answers": ["two", "2", "3"]},
    {"type": "yes/no", "answers": ["yes"]},
]
EVAL = [
    {"type": "color", "answers": ["red"]},
    {"type": "color", "answers": ["blue"]},
    {"type": "count", "answers": ["2", "3"]},  # two valid variants: matching either one is correct
    {"type": "other", "answers": ["red", "red", "red"]},  # unseen type -> overall majority "red"
]


def test_majority_baseline():
    assert majority_baseline(TRAIN, EVAL, "en") == {
        "overall": pytest.approx(75.0),
        "exact": pytest.approx(75.0),  # red, (blue: no), 2 in [2, 3], red
        "relaxed": pytest.approx(75.0),
        "n": 4,
        "by_type": {
            "color": {"accuracy": pytest.approx(50.0), "n": 2},
            "count": {"accuracy": pytest.approx(100.0), "n": 1},
            "other": {"accuracy": pytest.approx(100.0), "n": 1},
        },
    }


def test_accuracy_by_type():
    result = accuracy_by_type(["red", "Blue", "3", "no"], EVAL, "en")
    assert result["overall"] == pytest.approx(75.0)
    assert result["by_type"]["color"] == {"accuracy": pytest.approx(100.0), "n": 2}
    assert result["by_type"]["other"] == {"accuracy": pytest.approx(0.0), "n": 1}
    with pytest.raises(ValueError, match=r"eval_items\[0\] lacks key 'type'"):
        accuracy_by_type(["x"], [{"answers": ["x"]}], "en")


# ---------------------------------------------------------------- report


def _fake_results() -> dict:
    retrieval = {"i2t_r1": 45.0, "i2t_r5": 70.0, "i2t_r10": 80.0, "t2i_r1": 40.0, "t2i_r5": 65.0, "t2i_r10": 75.5}
    retrieval |= {"chance_i2t_r1": 0.7, "chance_i2t_r5": 3.3, "chance_i2t_r10": 6.5}
    retrieval |= {"chance_t2i_r1": 0.3, "chance_t2i_r5": 1.7, "chance_t2i_r10": 3.3}
    return {
        "languages": ["en", "si", "de"],
        "n_images": 300,
        "per_language": {
            "en": {
                "retrieval": retrieval,
                "captioning": {
                    "cider": 61.2,
                    "bleu": 20.4,
                    "fidelity": 99.0,
                    "majority_cider": 3.1,
                    "samples": [{"image": "img_7", "reference": "a dog | a ball", "hypothesis": "a dog"}],
                },
                "vqa": {
                    "overall": 55.0,
                    "majority_overall": 30.0,
                    "n": 20,
                    "by_type": {"count": {"accuracy": 40.0, "majority": 25.0, "n": 8}},
                },
            },
            "si": {"captioning": {"cider": 20.0, "bleu": 5.0, "fidelity": 90.0, "majority_cider": 1.0}},
            "de": {"retrieval": {"i2t_r1": 30.0, "t2i_r1": 28.0, "chance_i2t_r1": 0.7, "chance_t2i_r1": 0.3}},
        },
        "timings": {"retrieval": 12.0, "captioning": 30.5},
    }


def test_write_report(tmp_path):
    metrics = tmp_path / "metrics.jsonl"
    lines = [json.dumps({"kind": "train", "step": s, "loss": 3 - s / 50, "lm": 2.5 - s / 60, "itc": 0.5, "lr": 1e-3})
             for s in range(0, 100, 10)]
    lines += [json.dumps({"kind": "eval", "step": 50, "val_loss": 2.2}), '{"kind": "train", "st']  # torn last line
    metrics.write_text("\n".join(lines), encoding="utf-8")

    results = _fake_results()
    results["mean"] = language_means(results["per_language"])
    report = write_report(results, tmp_path / "out", metrics)
    text = report.read_text(encoding="utf-8")
    assert report == tmp_path / "out" / "report.md"
    cider = [r["captioning"]["cider"] for r in results["per_language"].values() if "captioning" in r]
    assert f"| **mean** | {(45.0 + 30.0) / 2:.1f} " in text and f"| {sum(cider) / len(cider):.1f} " in text
    assert "| en | 45.0 (0.7) | 70.0 (3.3) | 80.0 (6.5) | 40.0 (0.3) | 65.0 (1.7) | 75.5 (3.3) | 61.2 (3.1) " in text
    assert "| si | — | — | — | — | — | — | 20.0 (1.0) | 5.0 | — | 90.0 | — | — | — |" in text
    assert "| de | 30.0 (0.7) | — | — | 28.0 (0.3) |" in text
    assert "| en | count | 40.0 (25.0) | 8 |" in text
    assert "| img_7 | a dog \\| a ball | a dog |" in text
    assert "| **total** | 42.5 |" in text
    assert "1 malformed line(s)" in text
    for png in ("loss_curves.png", "per_language.png"):
        assert f"]({png})" in text
        with Image.open(tmp_path / "out" / png) as image:
            image.verify()
            assert image.format == "PNG"


def test_write_report_without_metrics_or_sections(tmp_path):
    results = {"languages": ["en"], "per_language": {"en": {"captioning": {"cider": 10.0}}}}
    text = write_report(results, tmp_path).read_text(encoding="utf-8")
    assert "| en | 10.0 | — | — | — |" in text
    assert "**mean**" not in text  # one language: no mean row
    assert not (tmp_path / "loss_curves.png").exists()
    assert not (tmp_path / "per_language.png").exists()  # nothing to plot
    with pytest.raises(ValueError, match="metrics file not found"):
        write_report(results, tmp_path, tmp_path / "missing.jsonl")
    with pytest.raises(ValueError, match="'per_language'"):
        write_report({"languages": []}, tmp_path)


def test_report_shows_spread_alignment_and_fertility(tmp_path):
    results = _fake_results()
    per_language = results["per_language"]
    per_language["si"]["alignment"] = {"llm_en_to_x": 62.5, "llm_x_to_en": 50.0, "text_head_en_to_x": 25.0,
                                       "text_head_x_to_en": 12.5, "n": 8, "chance": 12.5, "layer": 2}
    per_language["de"]["alignment"] = {"llm_en_to_x": 87.5, "llm_x_to_en": 75.0, "text_head_en_to_x": 50.0,
                                       "text_head_x_to_en": 37.5, "n": 8, "chance": 12.5, "layer": 2}
    results["spread"] = compute_spread(results["languages"], per_language)
    results["alignment"] = {"reference": "en", "layer": 2, "depth": 4, "pairs": 256, "text_head": "itc",
                            "skipped_languages": {"hi": "1 parallel caption pair(s) with 'en'"}}
    fertility = {"reference": "en", "parallel": True, "warn_factor": 3.0, "costly": ["si"],
                 "languages": {"en": {"script": "Latin", "tokens_per_char": 0.25, "tokens_per_word": 1.2,
                                      "tokens_per_text": 10.0, "vs_reference": 1.0},
                               "si": {"script": "Sinhala", "tokens_per_char": 1.5, "tokens_per_word": 6.0,
                                      "tokens_per_text": 40.0, "vs_reference": 4.0}},
                 "scripts": {"Latin": {"languages": ["en"], "tokens_per_char": 0.25, "max_vs_reference": 1.0},
                             "Sinhala": {"languages": ["si"], "tokens_per_char": 1.5, "max_vs_reference": 4.0}}}
    results["fertility"] = {"llm": {"tokenizer": "my/lm", **fertility},
                            "bridge": {"tokenizer": "my/bert", **fertility, "costly": []}}
    results["timings"] = {"eval": 40.0, "alignment": 2.0, "total": 50.0}
    text = write_report(results, tmp_path).read_text(encoding="utf-8")

    # i2t R@1: en 45, de 30 (si has none); CIDEr: en 61.2, si 20.0 -> Latin vs Sinhala too.
    assert "| i2t R@1 | en 45.0 | de 30.0 | 0.67 | — | — | — |" in text
    assert "| CIDEr | en 61.2 | si 20.0 | 0.33 | Latin 61.2 | Sinhala 20.0 | 0.33 |" in text
    assert "| caption language fidelity | en 99.0 | si 90.0 | 0.91 |" in text
    assert "| alignment LLM en→x | de 87.5 | si 62.5 | 0.71 |" in text
    assert "Scripts: Latin: en, de; Sinhala: si" in text
    assert "Caption language fidelity per language, lowest first: si 90.0, en 99.0" in text
    assert "layer 2 of 4" in text and "the itc text embedding" in text
    assert ("| lang | LLM en→x | LLM x→en | text head en→x | text head x→en | n (chance) | i2t R@1 | t2i R@1 | "
            "CIDEr | fidelity | VQA acc |") in text
    assert "| en | — | — | — | — | — | 45.0 | 40.0 | 61.2 | 99.0 | 55.0 |" in text
    assert "| si | 62.5 | 50.0 | 25.0 | 12.5 | 8 (12.5) | — | — | 20.0 | 90.0 | — |" in text
    assert "Not scored: hi (1 parallel caption pair(s) with 'en')" in text
    assert "Tokenizer fertility, LLM tokenizer `my/lm`:" in text and "Q-Former text tokenizer `my/bert`" in text
    assert "| si | Sinhala | 1.500 | 6.00 | 40.0 | 4.00 ⚠ |" in text  # over 3x English: flagged
    assert "| si | Sinhala | 1.500 | 6.00 | 40.0 | 4.00 |" in text  # the bridge's table: not flagged
    assert "| total | 50.0 |" in text and "**total**" not in text  # a recorded total is not summed again


def test_report_says_why_alignment_was_skipped(tmp_path):
    results = _fake_results()
    results["alignment"] = {"skipped": "the suite's captions are not translations of each other"}
    text = write_report(results, tmp_path).read_text(encoding="utf-8")
    assert "## Cross-lingual alignment (MEXA-style)\n\nSkipped: the suite's captions are not translations" in text
    assert "## Spread across languages" not in text  # no spread in these results: nothing computed here


def test_per_language_validation_curves_share_one_panel_each():
    records = [{"kind": "train", "step": 10, "loss": 2.0, "lang/de": 0.5},
               {"kind": "eval", "step": 0, "val_lm": 1.5, "val_lm/en": 1.0, "val_lm/de": 2.0, "lang_weight/en": 1.0,
                "lang_weight/de": 1.0},
               {"kind": "eval", "step": 10, "val_lm": 1.2, "val_lm/en": 0.9, "val_lm/de": 1.5, "lang_weight/en": 0.8,
                "lang_weight/de": 1.3}]
    train, evals, by_language = _series(records)
    assert list(train) == ["loss"] and list(evals) == ["lm"]  # no panel of its own per language
    assert by_language["validation LM loss per language"] == {"en": ([0, 10], [1.0, 0.9]), "de": ([0, 10], [2.0, 1.5])}
    assert by_language["language weights (lagging)"]["de"] == ([0, 10], [1.0, 1.3])
