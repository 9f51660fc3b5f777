"""data_prep: languages, synthetic scenes, phrase-table translation, filters and shards."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import numpy as np
import pytest
import webdataset as wds
from PIL import Image

from data_prep.filters import FilterConfig, check_translation
from data_prep.languages import LANGUAGES, get_language, matches_language_script, script_of, validate_languages
from data_prep.phrase_grammar import EnglishParser, Meaning, Renderer
from data_prep.phrase_tables import TABLES
from data_prep.records import apply_verdicts, judge, source_texts
from data_prep.shards import prepare_synthetic, write_shards
from data_prep.synthetic import (
    COLOURS,
    POSITIONS,
    SHAPES,
    SIZES,
    Scene,
    SceneObject,
    english_caption,
    english_qa,
    generate_scenes,
    render,
)
from data_prep.translate import PhraseTableTranslator, TranslateConfig, make_translator

TEN = ["en", "de", "fr", "hi", "si", "zh", "ar", "ru", "sw", "ja"]


@pytest.fixture(scope="module")
def translator() -> PhraseTableTranslator:
    return PhraseTableTranslator()


@pytest.fixture(scope="module")
def scenes() -> list[Scene]:
    return generate_scenes(200, seed=7)


def _texts(scene: Scene) -> list[str]:
    return [english_caption(scene)] + [t for item in english_qa(scene) for t in (item["question"], *item["answers"])]


def _record(caption: str, qa: list[dict] | None = None) -> dict:
    return {"captions": {"en": [caption]}, "qa": qa or []}


def translate_records(records: list[dict], translator, langs: list[str]) -> tuple[list[dict], Counter]:
    """What the translation job does per shard, in memory: judge each distinct text once per language."""
    texts = list(dict.fromkeys(t for r in records for t in source_texts(r)))
    verdicts = {tgt: judge(texts, translator.translate(texts, "en", tgt), tgt, FilterConfig())
                for tgt in langs if tgt != "en"}
    out, stats = [], Counter()
    for record in records:
        new, events = apply_verdicts(record, verdicts)
        stats.update(e.stats_key() for e in events)
        out.append(new)
    return out, stats


# --- languages ---------------------------------------------------------------------------------


def test_language_table_lookup_and_validation():
    assert len(LANGUAGES) >= 40
    assert get_language("de").flores == "deu_Latn" and get_language("si").script == "Sinhala"
    assert get_language("zh").flores == "zho_Hans" and get_language("ja").script == "Japanese"
    with pytest.raises(ValueError, match=r"unknown language code 'xx' \(known: en, de"):
        get_language("xx")
    assert validate_languages(["en", "de", "en"]) == ["en", "de"]
    assert validate_languages("hi, si") == ["hi", "si"]
    with pytest.raises(ValueError, match="'klingon'"):
        validate_languages(["en", "klingon"])
    with pytest.raises(ValueError, match="no languages"):
        validate_languages([])


@pytest.mark.parametrize(
    "text, script",
    [
        ("A red circle, 2x!", "Latin"),
        ("बाईं ओर एक छोटा लाल वृत्त", "Devanagari"),
        ("වම් පැත්තේ කුඩා රතු රවුමක්", "Sinhala"),
        ("左边有一个小的红色圆形", "Han"),
        ("円は何色ですか？", "Japanese"),
        ("オレンジ", "Japanese"),
        ("где красная звезда?", "Cyrillic"),
        ("ما لون الدائرة؟", "Arabic"),
        ("빨간 원", "Hangul"),
        ("12 ?! --", None),
    ],
)
def test_script_of(text, script):
    assert script_of(text) == script


SCRIPT_SAMPLES = {
    "Latin": "Tiếng Việt", "Cyrillic": "українська", "Greek": "Ελληνικά", "Arabic": "اردو", "Hebrew": "עברית",
    "Devanagari": "मराठी", "Bengali": "বাংলা", "Tamil": "தமிழ்", "Telugu": "తెలుగు", "Kannada": "ಕನ್ನಡ",
    "Malayalam": "മലയാളം", "Sinhala": "සිංහල", "Thai": "ภาษาไทย", "Ethiopic": "አማርኛ", "Georgian": "ქართული",
    "Han": "中文", "Japanese": "日本語です", "Hangul": "한국어", "Armenian": "Հայերեն", "Gujarati": "ગુજરાતી",
    "Khmer": "ភាសាខ្មែរ", "Lao": "ພາສາລາວ", "Myanmar": "မြန်မာဘာသာ", "Oriya": "ଓଡ଼ିଆ", "Gurmukhi": "ਪੰਜਾਬੀ",
}


def test_every_table_script_is_detected():
    for language in LANGUAGES.values():
        assert matches_language_script(SCRIPT_SAMPLES[language.script], language.code), language


def test_matches_language_script():
    assert matches_language_script("赤", "ja") and matches_language_script("赤い円", "ja")
    assert matches_language_script("红色", "zh") and not matches_language_script("赤い円", "zh")
    assert matches_language_script("Kreis (3)", "de") and not matches_language_script("वृत्त", "de")
    assert not matches_language_script("circle", "hi")
    with pytest.raises(ValueError, match="'xx'"):
        matches_language_script("x", "xx")


# --- synthetic scenes --------------------------------------------------------------------------


def test_scenes_are_deterministic_and_well_formed():
    a, b, c = generate_scenes(2000, seed=3), generate_scenes(2000, seed=3), generate_scenes(2000, seed=4)
    assert a == b and a != c
    counts = Counter(len(scene.objects) for scene in a)
    assert set(counts) == {1, 2} and 0.36 < counts[1] / len(a) < 0.44
    for scene in a:
        assert len({obj.position for obj in scene.objects}) == len(scene.objects)
    used = {(o.shape, o.colour, o.size, o.position) for s in a for o in s.objects}
    assert {u[0] for u in used} == set(SHAPES) and {u[1] for u in used} == set(COLOURS)
    assert {u[2] for u in used} == set(SIZES) and {u[3] for u in used} == set(POSITIONS)
    assert all(Scene.from_dict(json.loads(json.dumps(s.to_dict()))) == s for s in a[:50])


def test_scene_object_rejects_unknown_values():
    with pytest.raises(ValueError, match=r"unknown colour 'pink' \(known: red"):
        SceneObject("circle", "pink", "small", "left")
    with pytest.raises(ValueError, match="unknown position 'middle'"):
        Scene.from_dict({"objects": [{"shape": "star", "colour": "red", "size": "big", "position": "middle"}]})


def test_render_is_deterministic_and_draws_the_scene():
    scene = Scene([SceneObject("circle", "red", "big", "centre"), SceneObject("square", "blue", "small", "left")])
    image = render(scene, seed=5)
    assert image.mode == "RGB" and image.size == (64, 64)
    assert image.tobytes() == render(scene, seed=5).tobytes()
    assert image.tobytes() != render(scene, seed=6).tobytes()
    pixels = np.asarray(image)
    assert tuple(pixels[32, 32]) == COLOURS["red"]  # centre jitter (2 px) < big radius (9-11 px)
    assert tuple(pixels[32, 16]) == COLOURS["blue"]
    corner = pixels[:6, :6].reshape(-1, 3)
    assert (corner[:, 0] == corner[:, 1]).all() and 180 < corner.mean() < 230  # light grey noise
    assert not (corner == corner[0]).all()
    big = np.asarray(render(scene, image_size=128, seed=5))
    assert big.shape == (128, 128, 3) and tuple(big[64, 64]) == COLOURS["red"]
    red_area = lambda px: (px == COLOURS["red"]).all(-1).sum()  # noqa: E731
    assert 3.5 < red_area(big) / red_area(pixels) < 4.5  # geometry scales with the image


def test_caption_and_qa_follow_the_scene():
    scene = Scene([SceneObject("circle", "red", "small", "right"), SceneObject("square", "blue", "big", "left")])
    assert english_caption(scene) == "a big blue square on the left and a small red circle on the right"
    assert english_qa(scene) == [
        {"type": "count", "question": "how many shapes are there?", "answers": ["two"]},
        {"type": "colour", "question": "what colour is the square?", "answers": ["blue"]},
        {"type": "colour", "question": "what colour is the circle?", "answers": ["red"]},
        {"type": "shape", "question": "what shape is the blue object?", "answers": ["square"]},
        {"type": "shape", "question": "what shape is the red object?", "answers": ["circle"]},
        {"type": "where", "question": "where is the blue square?", "answers": ["on the left"]},
        {"type": "where", "question": "where is the red circle?", "answers": ["on the right"]},
    ]
    # Same shape and colour twice: only the count question is unambiguous.
    twins = Scene([SceneObject("star", "red", "small", "top"), SceneObject("star", "red", "big", "bottom")])
    assert english_caption(twins) == "a small red star at the top and a big red star at the bottom"
    assert english_qa(twins) == [{"type": "count", "question": "how many shapes are there?", "answers": ["two"]}]


def test_qa_is_correct_for_random_scenes(scenes):
    order = list(POSITIONS)
    for scene in scenes:
        qa = english_qa(scene)
        by_type = Counter(item["type"] for item in qa)
        assert qa[0]["answers"] == [["one", "two"][len(scene.objects) - 1]]
        shapes = Counter(o.shape for o in scene.objects)
        colours = Counter(o.colour for o in scene.objects)
        assert by_type["colour"] == sum(n == 1 for n in shapes.values())
        assert by_type["shape"] == sum(n == 1 for n in colours.values())
        for item in qa:
            if item["type"] == "colour":
                (obj,) = [o for o in scene.objects if item["question"] == f"what colour is the {o.shape}?"]
                assert item["answers"] == [obj.colour]
            if item["type"] == "where":
                (obj,) = [o for o in scene.objects if item["question"] == f"where is the {o.colour} {o.shape}?"]
                assert item["answers"][0] == TABLES["en"]["positions"][obj.position]
        mentioned = sorted(scene.objects, key=lambda o: order.index(o.position))
        assert english_caption(scene).split(" and ")[0].startswith(f"a {mentioned[0].size} {mentioned[0].colour}")


# --- translation -------------------------------------------------------------------------------


def test_english_parser_reads_back_what_synthetic_writes(scenes):
    parser = EnglishParser(TABLES["en"])
    scene = scenes[0]
    meaning = parser.parse(english_caption(scene))
    order = list(POSITIONS)
    expected = [
        {"size": o.size, "colour": o.colour, "shape": o.shape, "pos": o.position}
        for o in sorted(scene.objects, key=lambda o: order.index(o.position))
    ]
    assert meaning == Meaning("caption", tuple(expected))
    english = Renderer(TABLES["en"])
    texts = [t for s in scenes for t in _texts(s)]
    assert [english.render(parser.parse(t)) for t in texts] == texts  # every text parses and round-trips
    assert parser.parse("Where is the red circle?") == Meaning("q_where", ({"colour": "red", "shape": "circle"},))
    assert parser.parse("two") == Meaning("a_count", ({"number": "two"},))


@pytest.mark.parametrize("lang", TEN)
def test_every_language_translates_every_text(lang, scenes, translator):
    texts = [t for scene in scenes for t in _texts(scene)]
    out = translator.translate(texts, "en", lang)
    assert None not in out and len(out) == len(texts)
    for src, dst in zip(texts, out):
        assert lang == "en" or check_translation(src, dst, lang) is None, (src, dst)  # English is never a target
        assert matches_language_script(dst, lang), dst
    captions = translator.translate([english_caption(s) for s in scenes], "en", lang)
    assert len(set(captions)) == len({english_caption(s) for s in scenes}) > 150  # not a constant
    if lang == "en":
        assert out == texts
    else:  # nothing passes through untranslated (single words may coincide: fr "triangle")
        assert not set(captions) & {english_caption(s) for s in scenes}
    if lang in ("zh", "ja"):
        assert not any(" " in t for t in out)


@pytest.mark.parametrize("lang", TEN)
def test_answers_use_the_caption_words(lang, scenes, translator):
    """Shape and position answers appear verbatim in the same scene's caption, in every language."""
    for scene in scenes[:60]:
        (caption,) = translator.translate([english_caption(scene)], "en", lang)
        for item in english_qa(scene):
            if item["type"] in ("shape", "where"):
                (answer,) = translator.translate(item["answers"], "en", lang)
                assert answer in caption, (answer, caption)


def test_known_translations(translator):
    scene = Scene([SceneObject("circle", "red", "small", "left"), SceneObject("star", "green", "big", "centre")])
    caption = english_caption(scene)
    expected = {
        "de": "ein kleiner roter Kreis links und ein großer grüner Stern in der Mitte",
        "fr": "un petit cercle rouge à gauche et une grande étoile verte au centre",
        "zh": "左边有一个小的红色圆形，中间有一个大的绿色星形",
        "ar": "دائرة صغيرة حمراء على اليسار ونجمة كبيرة خضراء في الوسط",
        "ja": "左側に小さい赤い円があり、中央に大きい緑の星があります",
    }
    for lang, text in expected.items():
        assert translator.translate([caption], "en", lang) == [text]
    questions = ["what colour is the star?", "where is the green star?", "what shape is the green object?"]
    assert translator.translate(questions, "en", "fr") == [
        "de quelle couleur est l'étoile ?", "où est l'étoile verte ?", "quelle est la forme de l'objet vert ?"]
    assert translator.translate(questions, "en", "ru") == ["какого цвета звезда?", "где зелёная звезда?",
                                                           "какой формы зелёный предмет?"]


def test_out_of_grammar_text_is_none_and_dropped(translator):
    bad = ["a dog on the left", "what colour is the sky?", "a small red circle on the left and", ""]
    assert translator.translate(bad, "en", "de") == [None] * 4
    good_qa = {"lang": "en", "type": "count", "question": "how many shapes are there?", "answers": ["one"]}
    bad_qa = {"lang": "en", "type": "colour", "question": "what colour is the circle?", "answers": ["teal"]}
    records = [_record("a big blue star at the top", [good_qa, bad_qa]), _record("a cat on a mat")]
    out, stats = translate_records(records, translator, ["en", "de", "hi"])
    assert stats == Counter({"de/kept": 2, "hi/kept": 2, "de/untranslatable": 2, "hi/untranslatable": 2})
    assert out[0]["captions"] == {"en": ["a big blue star at the top"], "de": ["ein großer blauer Stern oben"],
                                  "hi": ["ऊपर एक बड़ा नीला तारा"]}
    assert [(q["lang"], q["answers"]) for q in out[0]["qa"]] == [("en", ["one"]), ("en", ["teal"]),
                                                                  ("de", ["eins"]), ("hi", ["एक"])]
    assert out[1]["captions"] == {"en": ["a cat on a mat"]}
    assert records[0]["captions"] == {"en": ["a big blue star at the top"]}  # inputs are not modified
    out, stats = translate_records(records[1:], translator, ["sw"])
    assert out[0]["captions"] == {"en": ["a cat on a mat"]} and stats == Counter({"sw/untranslatable": 1})


def test_filter_failures_are_counted_by_reason():
    class Broken:
        name = "broken"

        def translate(self, texts, src, tgt):
            return {"hi": ["a big blue star", "", "तारा " * 6], "zh": ["左"] * 3}[tgt]

    records = [_record("a big blue star at the top"), _record("at the bottom"), _record("on the left")]
    out, stats = translate_records(records, Broken(), ["hi", "zh"])
    # One character is too short for the 26-character caption; the short ones have no lower bound.
    assert stats == Counter({"hi/wrong_script": 1, "hi/empty": 1, "hi/repetition": 1, "zh/length_ratio": 1,
                             "zh/kept": 2})
    assert [set(r["captions"]) for r in out] == [{"en"}, {"en", "zh"}, {"en", "zh"}]


def test_check_translation_reasons():
    src = "a big red star on the left"
    assert check_translation(src, "ein großer roter Stern links", "de") is None
    assert check_translation(src, None, "de") == "untranslatable"
    assert check_translation(src, "  ", "de") == "empty"
    assert check_translation(src, "A big red  star on the LEFT", "de") == "copy"
    assert check_translation("Paris", "Paris", "fr") is None  # short texts may stay as they are
    assert check_translation(src, "ein großer roter Stern links", "hi") == "wrong_script"
    assert check_translation("how many shapes?", "2", "de") == "wrong_script"
    assert check_translation("2", "2", "hi") is None  # no letters in, none out
    assert check_translation(src, "ein großer roter Stern links" * 4, "de") == "length_ratio"
    assert check_translation("red", "l" * 60, "de") == "length_ratio"  # a run-on even for a short source
    assert check_translation(src, "Stern", "de") == "length_ratio"
    assert check_translation("on the left", "左", "zh") is None  # short source: no lower bound
    assert check_translation(src, "左边大红星", "zh") is None  # 5/26: fine for zh, not for de
    assert check_translation(src, "星", "zh") == "length_ratio"
    assert check_translation("a a a a a", "ein ein ein ein ein", "de") == "repetition"
    assert check_translation("a a a a", "ein ein ein ein", "de") is None
    assert check_translation("a red star and a blue star", "ein roter Stern ein roter Stern ein roter Stern "
                             "ein roter Stern ein roter Stern", "de") == "repetition"  # a 3-gram loop
    assert check_translation("circle circle circle", "圆圆圆圆圆", "zh") == "repetition"
    assert check_translation(src, "a big red star at the left side", "de") == "language_id"  # English, not German
    assert check_translation(src, "a big red star at the left side", "de", FilterConfig(language_id=False)) is None
    off = FilterConfig(copy=False, script=False, max_repeats=0, length_ratio_tolerance=0, language_id=False)
    assert check_translation(src, "l", "hi", off) is None
    with pytest.raises(ValueError, match="'xx'"):
        check_translation(src, "x", "xx")


def test_unknown_backend_and_languages(translator, tmp_path):
    with pytest.raises(ValueError, match=r"'prep.translate.backend' is 'x'; choose one of: nllb, m2m100"):
        make_translator(TranslateConfig(backend="x"))
    assert make_translator(TranslateConfig(backend="phrase-table")).name == "phrase-table"
    with pytest.raises(ValueError, match=r"no table for 'es' \(known: en, de"):
        translator.translate(["two"], "en", "es")
    with pytest.raises(ValueError, match="English only"):
        translator.translate(["zwei"], "de", "en")
    with pytest.raises(ValueError, match="'xx'"):
        prepare_synthetic(tmp_path, 5, 5, ["de", "xx"])
    with pytest.raises(ValueError, match="shard_size must be >= 1, got 0"):
        prepare_synthetic(tmp_path, 5, 5, ["de"], shard_size=0)
    assert not any(tmp_path.iterdir())  # failed before writing anything


# --- shards ------------------------------------------------------------------------------------


def _read(urls: list[Path]) -> list[dict]:
    return list(wds.WebDataset([str(u) for u in urls], shardshuffle=False).decode("pil"))


def test_prepare_synthetic_round_trip(tmp_path):
    langs = ["de", "zh", "si"]
    manifest = prepare_synthetic(tmp_path / "a", n_train=50, n_val=12, langs=langs, seed=1, shard_size=20)
    assert manifest["train"] == ["train-000000.tar", "train-000001.tar", "train-000002.tar"]
    assert manifest["val"] == ["val-000000.tar"]
    assert manifest["languages"] == ["en", "de", "zh", "si"] and manifest["n_train"] == 50
    assert json.loads((tmp_path / "a" / "manifest.json").read_text()) == manifest
    assert set(manifest["stats"]) == {f"{lang}/kept" for lang in langs}  # the phrase tables are exact
    assert manifest["counts"]["train"] == {
        "samples": 50, "shards": {"train-000000.tar": 20, "train-000001.tar": 20, "train-000002.tar": 10},
        "languages": {lang: 50 for lang in ["en", *langs]}}
    assert not (tmp_path / "a" / ".english").exists()  # the English staging set is gone
    train = _read([tmp_path / "a" / name for name in manifest["train"]])
    val = _read([tmp_path / "a" / name for name in manifest["val"]])
    assert len(train) == 50 and len(val) == 12
    assert [s["__key__"] for s in train] == [f"{i:07d}" for i in range(50)]
    n_items = 0
    for sample in train + val:
        assert isinstance(sample["png"], Image.Image) and sample["png"].size == (64, 64)
        record = sample["json"]
        scene = Scene.from_dict(record["scene"])
        assert record["captions"]["en"] == [english_caption(scene)]
        assert set(record["captions"]) == {"en", *langs}
        assert [q for q in record["qa"] if q["lang"] == "en"] == [{"lang": "en", **q} for q in english_qa(scene)]
        assert Counter(q["lang"] for q in record["qa"]) == {lang: len(english_qa(scene)) for lang in ["en", *langs]}
        n_items += len(langs) * (1 + len(english_qa(scene)))
    assert sum(manifest["stats"].values()) == n_items
    assert [s["json"]["scene"] for s in val] != [s["json"]["scene"] for s in train[:12]]  # its own seed stream

    # The same seed gives the same samples.
    again = prepare_synthetic(tmp_path / "b", 50, 12, langs, seed=1, shard_size=20)
    assert again["train"] == manifest["train"]
    train_b = _read([tmp_path / "b" / name for name in again["train"]])
    assert [s["json"] for s in train_b] == [s["json"] for s in train]
    assert [s["png"].tobytes() for s in train_b] == [s["png"].tobytes() for s in train]


def test_prepare_synthetic_in_english_only(tmp_path):
    manifest = prepare_synthetic(tmp_path, n_train=25, n_val=5, langs=["en"], shard_size=10)
    assert manifest["train"] == ["train-000000.tar", "train-000001.tar", "train-000002.tar"]
    assert manifest["counts"]["train"]["shards"]["train-000002.tar"] == 5
    assert manifest["counts"]["val"]["languages"] == {"en": 5}
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*manifest["train"], *manifest["val"], "manifest.json"])


def test_write_shards_replaces_an_older_set(tmp_path):
    samples = [{"__key__": f"{i:03d}", "txt": f"sample {i}", "json": {"i": i, "s": "ශ්‍රී"}} for i in range(7)]
    first = write_shards(samples, tmp_path, "x", maxcount=3)
    assert [p.name for p in first] == ["x-000000.tar", "x-000001.tar", "x-000002.tar"]
    second = write_shards(samples[:2], tmp_path, "x", maxcount=3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x-000000.tar"] == [p.name for p in second]
    back = list(wds.WebDataset([str(second[0])], shardshuffle=False).decode())
    assert [(s["txt"], s["json"]) for s in back] == [(f"sample {i}", {"i": i, "s": "ශ්‍රී"}) for i in range(2)]
    assert write_shards([], tmp_path, "x", maxcount=3) == [] and not list(tmp_path.iterdir())
