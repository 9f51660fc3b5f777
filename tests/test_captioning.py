"""eval.cider against pycocoevalcap's Cider (a test dependency only), eval.text_tokenizers, and
eval.captioning's BLEU/chrF/caption_scores against sacrebleu."""

import random
import re
import sys
import unicodedata
from pathlib import Path

import pytest
import sacrebleu
from pycocoevalcap.cider.cider import Cider

from eval.captioning import bleu, caption_scores, chrf, cider_d, tokenize_for_metric
from eval.cider import corpus_cider_d
from eval.text_tokenizers import (
    TOKENIZERS,
    char_tokens,
    metric_tokenizer,
    normalize_for_metric,
    tokenize,
    whitespace_tokens,
)

TOL = 1e-6  # on pycocoevalcap's scale (0..10 per image)


def _pycoco(refs: dict[str, list[str]], hyps: dict[str, str]) -> tuple[float, dict[str, float]]:
    score, scores = Cider().compute_score({k: list(v) for k, v in refs.items()}, {k: [h] for k, h in hyps.items()})
    return float(score), {key: float(s) for key, s in zip(refs, scores)}  # in the iteration order of refs


def _max_diff(refs: dict[str, list[str]], hyps: dict[str, str]) -> float:
    ours, ours_per_id = corpus_cider_d(refs, hyps)
    theirs, theirs_per_id = _pycoco(refs, hyps)
    assert ours_per_id.keys() == theirs_per_id.keys()
    return max([abs(ours - theirs)] + [abs(ours_per_id[k] - theirs_per_id[k]) for k in refs])


# ---------------------------------------------------------------- CIDEr-D == pycocoevalcap


ENGLISH_REFS = {
    "dog": ["a dog runs on the grass", "a brown dog is running across a green field", "dog running"],
    "car": ["a red car parked on a street", "a red car on the side of the road"],
    "bikes": ["two people ride bikes down a street", "two cyclists on a road", "people riding bicycles"],
    "cat": ["a cat sleeps on a sofa", "a cat is sleeping on the couch next to a pillow"],
}
ENGLISH_HYPS = {
    "dog": "a dog runs on a green field",
    "car": "a red car on a street",
    "bikes": "a dog runs on the grass",  # wrong image, shares "a", "on"
    "cat": "a cat a cat a cat on a sofa",  # repeated n-grams exercise the clipping
}


def test_cider_equals_pycocoevalcap_on_english():
    refs = {k: [" ".join(whitespace_tokens(r)) for r in rs] for k, rs in ENGLISH_REFS.items()}
    hyps = {k: " ".join(whitespace_tokens(h)) for k, h in ENGLISH_HYPS.items()}
    assert _max_diff(refs, hyps) <= TOL
    assert 0 < corpus_cider_d(refs, hyps)[0]


@pytest.mark.parametrize("seed", range(6))
def test_cider_equals_pycocoevalcap_on_random_tokens(seed):
    """Several references per image of different lengths (1 to 16 tokens, so pycocoevalcap's bigram-count
    "length" and its Gaussian penalty vary), a small vocabulary (shared and repeated n-grams), an empty
    hypothesis and one-token sentences."""
    rng = random.Random(seed)
    vocab = [f"w{i}" for i in range(8)]

    def sentence(lo: int, hi: int) -> str:
        return " ".join(rng.choice(vocab) for _ in range(rng.randint(lo, hi)))

    refs = {f"img{i}": [sentence(1, 16) for _ in range(rng.randint(1, 5))] for i in range(12)}
    hyps = {key: sentence(0, 16) for key in refs}
    hyps["img0"] = ""
    hyps["img1"] = refs["img1"][0]  # an exact copy of one reference
    assert _max_diff(refs, hyps) <= TOL
    assert corpus_cider_d(refs, hyps)[1]["img0"] == 0.0


MULTILINGUAL = {
    "zh": (
        {
            "1": ["一只猫在睡觉。", "猫在沙发上睡觉", "一只橘猫躺在沙发上，睡得很香。"],
            "2": ["两只狗在草地上跑", "草地上有两只狗。"],
            "3": ["一个人骑自行车", "男人在路上骑车。"],
            "4": ["桌子上有一台iPhone和2个杯子。"],
        },
        {"1": "一只猫在沙发上。", "2": "狗在跑", "3": "一个人在骑车，", "4": "桌上有iPhone"},
    ),
    "hi": (
        {
            "1": ["एक बिल्ली सोफे पर सो रही है।", "सोफे पर सोती हुई बिल्ली"],
            "2": ["एक कुत्ता घास पर दौड़ रहा है।", "पार्क में कुत्ता", "घास पर भूरा कुत्ता"],
            "3": ["एक आदमी साइकिल चला रहा है", "सड़क पर साइकिल चलाता आदमी।"],
        },
        # "दौड़" and "सड़क" with the precomposed U+095C (a composition exclusion): NFC turns it into the
        # references' ड + nukta, so the words match.
        {"1": "बिल्ली सोफे पर सो रही है", "2": "एक कुत्ता घास पर दौ\u095c रहा है।", "3": "स\u095cक पर आदमी"},
    ),
    "th": (
        {
            "1": ["แมวนอนอยู่บนโซฟา", "แมวสีส้มนอนหลับ"],
            "2": ["สุนัขวิ่งในสวน", "หมาวิ่งบนหญ้า", "สุนัขสองตัววิ่งเล่น"],
            "3": ["ผู้ชายขี่จักรยาน", "คนขี่จักรยานบนถนน"],
        },
        {"1": "แมวนอนบนโซฟา", "2": "สุนัขวิ่งบนหญ้า", "3": "ไม่ใช่ผู้ชาย"},
    ),
}


@pytest.mark.parametrize("lang", sorted(MULTILINGUAL))
def test_cider_equals_pycocoevalcap_after_our_tokenizer(lang):
    references, hypotheses = MULTILINGUAL[lang]
    name = metric_tokenizer(lang)
    refs = {k: [" ".join(tokenize(r, name)) for r in rs] for k, rs in references.items()}
    hyps = {k: " ".join(tokenize(h, name)) for k, h in hypotheses.items()}
    theirs, theirs_per_id = _pycoco(refs, hyps)
    score, per_id = cider_d(references, hypotheses, lang)
    assert abs(score / 100 - theirs) <= TOL
    assert max(abs(per_id[k] / 100 - theirs_per_id[k]) for k in refs) <= TOL
    assert score > 0


def test_cider_takes_token_lists_or_strings():
    refs = {"a": [["a", "cat"], "a small cat"], "b": ["a dog"], "c": [("two", "birds")]}
    hyps = {"a": ["the", "cat"], "b": "a dog", "c": ""}
    as_strings = {k: [r if isinstance(r, str) else " ".join(r) for r in rs] for k, rs in refs.items()}
    hyp_strings = {k: h if isinstance(h, str) else " ".join(h) for k, h in hyps.items()}
    assert corpus_cider_d(refs, hyps) == corpus_cider_d(as_strings, hyp_strings)
    with pytest.raises(TypeError, match=r"references\['a'\]\[0\]"):
        corpus_cider_d({"a": [[1, 2]], "b": ["x"]}, {"a": "x", "b": "x"})
    with pytest.raises(ValueError, match=r"hypotheses\['a'\]: tokens must be non-empty and free of whitespace"):
        corpus_cider_d({"a": ["a dog runs"], "b": ["x"]}, {"a": ["a dog runs"], "b": "x"})  # pycocoevalcap's form


def test_cider_one_image_guard():
    # Why the guard: with one image idf = log(1) - log(1) = 0 for every n-gram, so pycocoevalcap reads 0
    # even for a perfect caption.
    assert _pycoco({"a": ["a dog runs"]}, {"a": "a dog runs"})[0] == 0.0
    with pytest.raises(ValueError, match="at least 2 images, got 1"):
        corpus_cider_d({"a": ["a dog runs"]}, {"a": "a dog runs"})
    with pytest.raises(ValueError, match="at least 2 images, got 1"):
        caption_scores({"a": ["a dog runs"]}, {"a": "a dog runs"}, "en")
    with pytest.raises(ValueError, match="non-empty list"):
        corpus_cider_d({"a": "a dog", "b": ["x"]}, {"a": "a dog", "b": "x"})  # a bare string is not a list


def test_no_runtime_module_imports_pycocoevalcap():
    root = Path(__file__).resolve().parents[1]
    importing = re.compile(r"^\s*(from|import)\s+pycocoevalcap", re.MULTILINE)
    offenders = [str(p.relative_to(root)) for package in ("vlm", "eval", "data_prep")
                 for p in (root / package).rglob("*.py") if importing.search(p.read_text(encoding="utf-8"))]
    assert offenders == []


# ---------------------------------------------------------------- tokenizer registry


def test_registry_defaults_and_unknown_names():
    assert set(TOKENIZERS) == {"char", "whitespace"}
    assert {lang: metric_tokenizer(lang) for lang in ("zh", "ja", "th", "lo", "km", "my", "en", "hi", "ko", "ar")} == {
        "zh": "char", "ja": "char", "th": "char", "lo": "char", "km": "char", "my": "char",
        "en": "whitespace", "hi": "whitespace", "ko": "whitespace", "ar": "whitespace",
    }
    assert tokenize_for_metric("一只猫", "en", "char") == ["一", "只", "猫"]  # an override by name
    assert tokenize_for_metric("一只猫", "zh", "") == ["一", "只", "猫"]  # "" is the default, as in the config
    for call in (lambda: tokenize("x", "jieba"), lambda: tokenize_for_metric("x", "zh", "jieba"),
                 lambda: caption_scores({"a": ["x"], "b": ["y"]}, {"a": "x", "b": "y"}, "zh", "jieba")):
        with pytest.raises(ValueError, match=r"unknown metric tokenizer 'jieba' \(known: char, whitespace\)"):
            call()


@pytest.mark.parametrize(
    "composed, decomposed, lang",
    [
        ("Caf\u00e9", "Cafe\u0301", "fr"),
        # U+0958 QA is a composition exclusion: NFC decomposes it to KA + NUKTA
        ("\u0958\u093f\u0932\u093e", "\u0915\u093c\u093f\u0932\u093e", "hi"),
        ("\u304c", "\u304b\u3099", "ja"),  # GA, KA + combining dakuten
        ("\ud55c\uad6d", "\u1112\u1161\u11ab\u1100\u116e\u11a8", "ko"),  # conjoining jamo compose to syllables
        ("\u1edf", "o\u031b\u0309", "vi"),  # o with horn and hook above
    ],
)
def test_composed_and_decomposed_input_give_the_same_tokens(composed, decomposed, lang):
    assert composed != decomposed
    for name in TOKENIZERS:
        assert tokenize_for_metric(composed, lang, name) == tokenize_for_metric(decomposed, lang, name)


def test_combining_marks_and_joiners_survive():
    assert tokenize_for_metric("नहीं", "hi") == ["नहीं"]
    assert tokenize_for_metric("ไม่ใช่", "th") == ["ไ", "ม่", "ใ", "ช่"]  # tone marks ride on their consonants
    assert "".join(tokenize_for_metric("ไม่ใช่", "th")) == "ไม่ใช่"
    assert tokenize_for_metric("ශ්\u200dරී ලංකාව", "si") == ["ශ්\u200dරී", "ලංකාව"]  # virama + ZWJ
    assert tokenize_for_metric("می\u200cخواهم.", "fa") == ["می\u200cخواهم"]  # ZWNJ
    assert char_tokens("ශ්\u200dරී") == ["ශ්\u200dරී"]  # in char mode a virama/ZWJ glues the conjunct together
    assert char_tokens("ក្រុម") == ["ក្រុ", "ម"]  # Khmer coeng: the subscript consonant joins its cluster


def test_every_combining_mark_survives():
    marks = [chr(c) for c in range(sys.maxunicode + 1) if unicodedata.category(chr(c))[0] == "M"]
    for mark in marks:
        expected = unicodedata.normalize("NFC", unicodedata.normalize("NFC", "क" + mark).casefold())
        assert whitespace_tokens("क" + mark) == [expected], ascii(mark)
        assert "".join(char_tokens("क" + mark)) == expected, ascii(mark)


def test_every_punctuation_character_is_a_word_break():
    puncts = [chr(c) for c in range(sys.maxunicode + 1) if unicodedata.category(chr(c))[0] == "P"]
    assert {"。", "，", "、", "।", "॥", "？", "«", "»", "¿", "'", "-", "\u0e5a"} <= set(puncts)
    for p in puncts:
        assert whitespace_tokens(f"ab{p}cd") == ["ab", "cd"], ascii(p)
        assert char_tokens(f"猫{p}狗") == ["猫", "狗"], ascii(p)


@pytest.mark.parametrize(
    "text, lang, tokens",
    [
        ("一只猫，在睡觉。", "zh", ["一", "只", "猫", "在", "睡", "觉"]),
        ("“猫”！2024年的iPhone 15", "zh", ["猫", "2024", "年", "的", "iphone", "15"]),
        ("犬？「ネコ」", "ja", ["犬", "ネ", "コ"]),
        ("यह कुत्ता है। वह बिल्ली है॥", "hi", ["यह", "कुत्ता", "है", "वह", "बिल्ली", "है"]),
        ("«Un chat» ¿qué?", "fr", ["un", "chat", "qué"]),
        ("Straße, ΣΟΦΙΑ", "de", ["strasse", "σοφια"]),  # casefold, not lower()
        ("สุนัข\u200bวิ่ง", "th", ["สุ", "นั", "ข", "วิ่", "ง"]),  # a zero-width space is a break, like a space
    ],
)
def test_tokens(text, lang, tokens):
    assert tokenize_for_metric(text, lang) == tokens


def test_normalisation_is_nfc_not_nfkc():
    # Full-width Latin and digits are not folded to ASCII (that would be NFKC); they are still one word.
    assert normalize_for_metric("ｉＰｈｏｎｅ") == "ｉｐｈｏｎｅ"
    assert char_tokens("用ｉＰｈｏｎｅ２台") == ["用", "ｉｐｈｏｎｅ２", "台"]


# ---------------------------------------------------------------- BLEU, chrF, caption_scores


def _streams(refs: dict[str, list[str]]) -> list[list[str | None]]:
    n = max(map(len, refs.values()))
    return [[rs[i] if i < len(rs) else None for rs in refs.values()] for i in range(n)]


CLEAN_EN_REFS = {  # lower-case, no punctuation: our tokens are the text itself
    "a": ["the cat sat on the mat", "a cat is on a mat"],
    "b": ["a dog runs in the park"],
    "c": ["two birds on a wire", "birds sitting on a power line", "two small birds"],
}
CLEAN_EN_HYPS = {"a": "a cat sat on the mat", "b": "the dog runs in a park", "c": "two birds sitting on a line"}


def test_chrf_and_bleu_equal_sacrebleu_where_tokenisation_cannot_matter():
    hyps, streams = list(CLEAN_EN_HYPS.values()), _streams(CLEAN_EN_REFS)
    assert chrf(CLEAN_EN_REFS, CLEAN_EN_HYPS, "en") == pytest.approx(sacrebleu.corpus_chrf(hyps, streams).score)
    assert bleu(CLEAN_EN_REFS, CLEAN_EN_HYPS, "en") == pytest.approx(sacrebleu.corpus_bleu(hyps, streams).score)
    # Han text without punctuation: our char tokens are sacrebleu's "zh" tokens, and chrF ignores spaces.
    refs = {"1": ["一只猫在沙发上睡觉", "猫在睡觉"], "2": ["两只狗在草地上跑"], "3": ["一个人骑自行车"]}
    hyp = {"1": "一只猫在睡觉", "2": "狗在草地上跑", "3": "一个男人骑车"}
    hyps, streams = list(hyp.values()), _streams(refs)
    assert chrf(refs, hyp, "zh") == pytest.approx(sacrebleu.corpus_chrf(hyps, streams).score)
    assert bleu(refs, hyp, "zh") == pytest.approx(sacrebleu.corpus_bleu(hyps, streams, tokenize="zh").score)
    assert 0 < chrf(refs, hyp, "zh") < 100


def test_scores_ignore_case_punctuation_and_normal_form():
    refs = {"1": ["A brown dog runs in the park."], "2": ["Un café noir."], "3": ["यह सड़क है।"]}
    hyps = {"1": "a brown dog runs in the park", "2": "UN CAFE\u0301 NOIR", "3": "यह स\u095cक है"}
    scores = caption_scores(refs, hyps, "en")
    assert scores["bleu"] == pytest.approx(100.0) and scores["chrf"] == pytest.approx(100.0)
    perfect = caption_scores(refs, {k: v[0] for k, v in refs.items()}, "en")
    assert scores["cider"] == pytest.approx(perfect["cider"])


def test_caption_scores_records_the_tokenizer():
    references, hypotheses = MULTILINGUAL["zh"]
    scores = caption_scores(references, hypotheses, "zh")
    assert set(scores) == {"cider", "bleu", "chrf", "tokenizer", "n_images"}
    assert scores["tokenizer"] == "char" and scores["n_images"] == 4
    assert scores["cider"] == pytest.approx(cider_d(references, hypotheses, "zh")[0])
    assert scores["bleu"] == pytest.approx(bleu(references, hypotheses, "zh"))
    assert scores["chrf"] == pytest.approx(chrf(references, hypotheses, "zh"))
    assert all(0 < scores[k] < 100 for k in ("bleu", "chrf")) and scores["cider"] > 0
    # Forced whitespace on Chinese: each unpunctuated clause is one token, and the name says so.
    forced = caption_scores(references, hypotheses, "zh", tokenizer="whitespace")
    assert forced["tokenizer"] == "whitespace" and forced["cider"] < scores["cider"]
    assert caption_scores(CLEAN_EN_REFS, CLEAN_EN_HYPS, "en")["tokenizer"] == "whitespace"
    assert caption_scores(CLEAN_EN_REFS, CLEAN_EN_HYPS, "en", "")["tokenizer"] == "whitespace"
