"""Multilingual data as it comes (issue 16): `vlm prep shards --lang xx|auto` tags each caption and QA item with
its language (lid.176 + script, undecided ones dropped and counted), `vlm prep translate` adds only the
languages a record lacks (`--retranslate` replaces), and `--tokenizer` puts a fertility table in the manifests."""

from __future__ import annotations

import io
import json
import os
import random
import subprocess
from collections import Counter
from pathlib import Path

import pytest
import webdataset as wds
from PIL import Image

from data_prep.build_shards import build_shards
from data_prep.language_id import identify
from data_prep.phrase_tables import TABLES
from data_prep.records import NATIVE, apply_verdicts, wanted_texts
from data_prep.sources.language_tags import LID_KEY, QA_CONFIDENCE, LanguageAssignment
from data_prep.synthetic import english_caption, english_qa, generate_scenes
from data_prep.translate import PhraseTableTranslator
from data_prep.translate_job import translate_dataset
from vlm.cli import main
from vlm.config import DataConfig
from vlm.data.examples import ExampleMaker
from vlm.data.records import read_samples
from vlm.data.shards import resolve_shards
from vlm.parts import train_tokenizer

from test_translate_job import Counting  # the translator that counts what it is sent

ROOT = Path(__file__).resolve().parent.parent
VLM = str(ROOT / ".venv" / "bin" / "vlm")
PHRASES = PhraseTableTranslator()
# Texts lid.176 cannot place, one per reason (what each one is, is asserted in the first test).
NO_LETTERS, LOW_CONFIDENCE = "12345 !!", "a small yellow circle on the left"
ESPERANTO, MIXED_SCRIPT = "Esperanto estas internacia lingvo", "Привет привет hello world and more"


def _png(i: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (i * 37 % 256, 90, 0)).save(buffer, format="PNG")
    return buffer.getvalue()


def _caption(scene, lang: str) -> str:
    return PHRASES.translate([english_caption(scene)], "en", lang)[0]


def _records(folder: Path, split: str = "train") -> dict[str, dict]:
    return {s["__key__"]: json.loads(s["json"]) for s in wds.WebDataset(resolve_shards([str(folder)], split),
                                                                       shardshuffle=False)}


def _manifest(folder: Path) -> dict:
    return json.loads((folder / "manifest.json").read_text())


# --- identification ----------------------------------------------------------------------------------------------


def test_identify_decides_or_says_why_not():
    german = identify("ein kleiner roter Kreis oben links")
    assert german.lang == "de" and german.confidence > 0.9 and german.reason == ""
    assert identify(_caption(generate_scenes(1, seed=0)[0], "si")).lang == "si"
    assert identify(NO_LETTERS) == (None, None, 0.0, "no_letters")
    low = identify(LOW_CONFIDENCE)
    assert (low.lang, low.guess, low.reason) == (None, "en", "low_confidence") and low.confidence < 0.5
    assert identify(LOW_CONFIDENCE, min_confidence=0.3).lang == "en"
    esperanto = identify(ESPERANTO)  # lid.176 knows it, the language table does not
    assert (esperanto.lang, esperanto.guess, esperanto.reason) == (None, "eo", "unknown_language")
    mixed = identify(MIXED_SCRIPT)  # lid.176 says Russian, most letters are Latin
    assert (mixed.lang, mixed.guess, mixed.reason) == (None, "ru", "script_mismatch")


# What data_prep/sources/language_tags.py and the README report: (right, wrong, undecided) per mille of the
# phrase-table grammar's captions of 500 scenes, at the default min_confidence.
DOCUMENTED = {"en": (974, 0, 26), "de": (1000, 0, 0), "fr": (912, 12, 76), "ru": (984, 16, 0),
              "hi": (896, 76, 28), "si": (1000, 0, 0), "zh": (1000, 0, 0), "ja": (1000, 0, 0),
              "ar": (1000, 0, 0), "sw": (508, 24, 468)}


def test_auto_tagging_accuracy_on_synthetic_captions_is_what_the_docs_say():
    scenes = generate_scenes(500, seed=3)
    english = [english_caption(scene) for scene in scenes]
    questions = [q["question"] for scene in scenes[:100] for q in english_qa(scene)]
    assert set(DOCUMENTED) == set(TABLES)
    for lang, (right, wrong, undecided) in DOCUMENTED.items():
        found = [identify(text).lang for text in PHRASES.translate(english, "en", lang)]
        measured = (sum(f == lang for f in found), sum(f not in (None, lang) for f in found), found.count(None))
        assert tuple(round(1000 * n / len(found)) for n in measured) == (right, wrong, undecided), lang
        if lang != "sw":  # questions are long enough: every one is right
            assert all(identify(q).lang == lang for q in PHRASES.translate(questions, "en", lang)), lang


# --- vlm prep shards --lang ----------------------------------------------------------------------------------------


MIXED = ("en", "de", "si", "hi", "zh")


def _mixed_img2dataset(folder: Path) -> Counter:
    """An img2dataset shard whose captions are English, German, Sinhala, Hindi or Chinese, one each (lid.176
    tags every one of these 20 right), plus three captions it cannot place; returns the captions per language."""
    folder.mkdir(parents=True)
    written: Counter = Counter()
    with wds.TarWriter(str(folder / "00000.tar"), encoder=False) as tar:
        for i, scene in enumerate(generate_scenes(20, seed=1)):
            lang = MIXED[i % len(MIXED)]
            meta = {"url": f"http://x/{i}.png", "caption": _caption(scene, lang), "key": f"{i:09d}"}
            tar.write({"__key__": f"{i:09d}", "png": _png(i), "json": json.dumps(meta).encode()})
            written[lang] += 1
        for i, text in enumerate((NO_LETTERS, LOW_CONFIDENCE, ESPERANTO), 100):
            tar.write({"__key__": f"{i:09d}", "png": _png(i), "txt": text.encode()})
    return written


def test_a_mixed_img2dataset_folder_through_the_console_script_then_translated(tmp_path):
    written = _mixed_img2dataset(tmp_path / "laion")
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    shards = subprocess.run([VLM, "prep", "shards", "--format", "img2dataset", str(tmp_path / "laion"),
                             "--out", str(tmp_path / "tagged"), "--lang", "auto", "--shard-size", "8"],
                            capture_output=True, text=True, cwd=tmp_path, env=env)
    assert shards.returncode == 0, shards.stderr
    manifest = _manifest(tmp_path / "tagged")
    assert manifest["counts"]["train"]["languages"] == dict(written) == {lang: 4 for lang in MIXED}
    assert manifest["counts"]["train"]["samples"] == 20
    assert manifest["stats"]["skipped/undecided_language"] == 3
    assignment = manifest["language_assignment"]
    assert assignment["mode"] == "auto" and assignment["decided"] == dict(written) and assignment["undecided"] == 3
    assert assignment["undecided_reasons"] == {"no_letters": 1, "low_confidence": 1, "unknown_language": 1}
    assert json.loads(shards.stdout)["language_assignment"] == assignment
    for record in _records(tmp_path / "tagged").values():
        (lang, captions), = record["captions"].items()
        assert record[LID_KEY]["captions"][lang][0] >= 0.5 and len(captions) == 1

    translate = subprocess.run([VLM, "prep", "translate", str(tmp_path / "tagged"), "--out", str(tmp_path / "mt"),
                                "--backend", "phrase-table", "--langs", "de,si,hi,zh"],
                               capture_output=True, text=True, cwd=tmp_path, env=env)
    assert translate.returncode == 0, translate.stderr
    mt = _manifest(tmp_path / "mt")
    # The English captions gain the four languages; native captions have no English to translate and pass through.
    assert mt["counts"]["train"]["languages"] == {"en": 4, "de": 8, "si": 8, "hi": 8, "zh": 8}
    assert mt["stats"]["untranslated/no_english"] == 16
    assert mt["translation"]["texts_this_run"] == 4 * 4
    rows = {row["lang"]: row for row in mt["filters"]["per_language"]}
    assert {lang: (row[NATIVE], row["total"], row["kept"]) for lang, row in rows.items()} == {
        lang: (4, 4, 4) for lang in ("de", "si", "hi", "zh")}
    assert "| lang | native | total | kept |" in translate.stdout
    before, after = _records(tmp_path / "tagged"), _records(tmp_path / "mt")
    for key, record in after.items():
        if "en" in before[key]["captions"]:
            assert set(record["captions"]) == set(MIXED)
        else:
            assert record["captions"] == before[key]["captions"] and record[LID_KEY] == before[key][LID_KEY]


def _coco(folder: Path, images: dict[int, list[str]]) -> Path:
    for image_id in images:
        (folder / f"{image_id}.png").parent.mkdir(parents=True, exist_ok=True)
        (folder / f"{image_id}.png").write_bytes(_png(image_id))
    notes = [{"id": 10 * image_id + j, "image_id": image_id, "caption": caption}
             for image_id, captions in images.items() for j, caption in enumerate(captions)]
    path = folder / "captions.json"
    path.write_text(json.dumps({"images": [{"id": i, "file_name": f"{i}.png"} for i in images],
                                "annotations": notes}), encoding="utf-8")
    return path


def test_a_caption_list_in_two_languages_is_split_then_only_the_missing_language_translated(tmp_path):
    """A LAION-multi style image with English and German captions: both are kept, in their own languages;
    translation into de and zh keeps the German ones and translates the English ones into zh only."""
    scenes = generate_scenes(4, seed=1)
    en = [english_caption(scene) for scene in scenes]
    de = PHRASES.translate(en, "en", "de")
    zh = PHRASES.translate(en, "en", "zh")
    data = _coco(tmp_path / "coco", {1: [en[0], de[0], en[1]], 2: [zh[2]], 3: [en[3], NO_LETTERS]})
    manifest = build_shards("coco", [str(data)], tmp_path / "tagged", languages=LanguageAssignment("auto"),
                            progress=False)
    records = _records(tmp_path / "tagged")
    assert records["1"]["captions"] == {"en": [en[0], en[1]], "de": [de[0]]}
    assert [len(c) for c in records["1"][LID_KEY]["captions"].values()] == [2, 1]
    assert records["2"]["captions"] == {"zh": [zh[2]]}
    assert records["3"]["captions"] == {"en": [en[3]]}
    (undecided,) = records["3"][LID_KEY]["undecided"]
    assert undecided == {"caption": NO_LETTERS, "reason": "no_letters", "guess": None, "confidence": 0.0}
    assert manifest["counts"]["train"]["languages"] == {"en": 2, "de": 1, "zh": 1}
    assert manifest["language_assignment"]["decided"] == {"en": 3, "de": 1, "zh": 1}

    counting = Counting()
    mt = translate_dataset([str(tmp_path / "tagged")], tmp_path / "mt", ["de", "zh"], counting, progress=False)
    translated = _records(tmp_path / "mt")
    assert translated["1"]["captions"] == {"en": [en[0], en[1]], "de": [de[0]], "zh": [zh[0], zh[1]]}
    assert translated["1"][LID_KEY] == records["1"][LID_KEY]  # native captions keep their identification
    assert translated["3"]["captions"]["de"] == [de[3]]
    assert translated["2"] == {**records["2"], "qa": []}  # no English: passed through
    assert counting.texts == {"de": 1, "zh": 3}  # only what each language lacked was sent
    rows = {row["lang"]: row for row in mt["filters"]["per_language"]}
    assert (rows["de"][NATIVE], rows["de"]["kept"], rows["zh"][NATIVE], rows["zh"]["kept"]) == (1, 1, 1, 3)
    assert mt["translation"]["retranslate"] is False

    again = translate_dataset([str(tmp_path / "tagged")], tmp_path / "re", ["de", "zh"], Counting(), progress=False,
                              retranslate=True)
    replaced = _records(tmp_path / "re")
    assert replaced["1"]["captions"]["de"] == [de[0], PHRASES.translate([en[1]], "en", "de")[0]]
    assert "de" not in replaced["1"][LID_KEY]["captions"]  # the German confidences went with the German captions
    assert replaced["2"]["captions"]["zh"] == [zh[2]]  # nothing to translate from: kept
    assert {row["lang"]: row[NATIVE] for row in again["filters"]["per_language"]} == {"de": 0, "zh": 1}
    with pytest.raises(ValueError, match=r"other settings \(retranslate\)"):
        translate_dataset([str(tmp_path / "tagged")], tmp_path / "re", ["de", "zh"], Counting(), progress=False)


def _llava(folder: Path, conversations: dict[str, tuple[str, str]]) -> Path:
    entries = []
    for i, (key, (question, answer)) in enumerate(conversations.items()):
        (folder / f"{key}.png").parent.mkdir(parents=True, exist_ok=True)
        (folder / f"{key}.png").write_bytes(_png(i))
        entries.append({"id": key, "image": f"{key}.png", "conversations": [
            {"from": "human", "value": f"<image>\n{question}"}, {"from": "gpt", "value": answer}]})
    path = folder / "llava.json"
    path.write_text(json.dumps(entries, ensure_ascii=False), encoding="utf-8")
    return path


def test_qa_items_are_tagged_by_their_question_and_training_reads_the_records(tmp_path):
    scene = generate_scenes(1, seed=2)[0]
    qa = english_qa(scene)[0]
    question_de, answer_de = PHRASES.translate([qa["question"], qa["answers"][0]], "en", "de")
    data = _llava(tmp_path / "llava", {"en": (qa["question"], qa["answers"][0]), "de": (question_de, answer_de),
                                       "eo": (ESPERANTO + "?", "jes")})
    manifest = build_shards("llava", [str(data)], tmp_path / "tagged", languages=LanguageAssignment("auto"),
                            progress=False)
    records = _records(tmp_path / "tagged")
    assert set(records) == {"en", "de"} and manifest["stats"]["skipped/undecided_language"] == 1
    (item,) = records["de"]["qa"]
    assert item["lang"] == "de" and item["answers"] == [answer_de] and item[QA_CONFIDENCE] > 0.9
    assert manifest["counts"]["train"]["languages"] == {"en": 1, "de": 1}

    # Training and evaluation read the tagged records as before (lang_id and lang_confidence are ignored).
    cfg = DataConfig(languages=["en", "de"], tasks=["vqa"], task_weights=[1.0], num_workers=0, shuffle_buffer=1)
    maker = ExampleMaker(cfg, lambda image: image)
    samples = list(read_samples(resolve_shards([str(tmp_path / "tagged")], "train")))
    plans = {s.key: maker.plan(s.key, s.record, random.Random(0)) for s in samples}
    assert {key: (plan.lang, plan.target) for key, plan in plans.items()} == {
        "en": ("en", qa["answers"][0]), "de": ("de", answer_de)}

    mt = translate_dataset([str(tmp_path / "tagged")], tmp_path / "mt", ["de", "fr"], Counting(), progress=False)
    translated = _records(tmp_path / "mt")
    assert [q["lang"] for q in translated["de"]["qa"]] == ["de"]  # German QA kept; nothing in English to translate
    assert [q["lang"] for q in translated["en"]["qa"]] == ["en", "de", "fr"]
    assert all(QA_CONFIDENCE not in q for q in translated["en"]["qa"][1:])  # a translation was not identified
    assert {row["lang"]: (row[NATIVE], row["kept"]) for row in mt["filters"]["per_language"]} == {
        "de": (1, 1), "fr": (0, 1)}


def test_jsonl_keeps_declared_languages_and_a_fixed_lang_tags_the_rest(tmp_path):
    scene = generate_scenes(1, seed=4)[0]
    en, de = english_caption(scene), _caption(scene, "de")
    (tmp_path / "a.png").write_bytes(_png(1))
    lines = [{"image": "a.png", "captions": {"en": [en]}, "caption": [de, en],
              "qa": [{"question": "wie viele?", "answers": "zwei"}, {"question": "how many?", "answers": "two",
                                                                     "lang": "en"}]},
             {"image": "a.png", "id": "b", "captions": {"und": [de]}}]
    (tmp_path / "data.jsonl").write_text("\n".join(json.dumps(line) for line in lines), encoding="utf-8")
    manifest = build_shards("jsonl", [str(tmp_path / "data.jsonl")], tmp_path / "de",
                            languages=LanguageAssignment("de"), progress=False)
    records = _records(tmp_path / "de")
    assert records["a"]["captions"] == {"en": [en], "de": [de, en]}  # --lang de is taken at its word
    assert [q["lang"] for q in records["a"]["qa"]] == ["de", "en"] and LID_KEY not in records["a"]
    assert records["b"]["captions"] == {"de": [de]}
    assert manifest["language_assignment"] == {
        "mode": "fixed", "lang": "de", "decided": {"de": 4}, "declared": {"en": 2}, "undecided": 0,
        "undecided_reasons": {}}

    build_shards("jsonl", [str(tmp_path / "data.jsonl")], tmp_path / "auto", languages=LanguageAssignment("auto"),
                 progress=False)
    record = _records(tmp_path / "auto")["a"]
    assert record["captions"] == {"en": [en], "de": [de]}  # the repeated English caption is not added twice
    assert record[LID_KEY]["captions"] == {"de": [pytest.approx(identify(de).confidence)]}


def test_an_unknown_lang_fails_in_one_line_before_anything_is_written(tmp_path, capsys):
    _mixed_img2dataset(tmp_path / "laion")
    args = ["prep", "shards", "--format", "img2dataset", str(tmp_path / "laion"), "--out", str(tmp_path / "out")]
    assert main([*args, "--lang", "xx"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vlm prep: error: --lang xx: unknown language code 'xx'") and err.count("\n") == 1
    assert not (tmp_path / "out").exists()
    assert main([*args, "--lang", "si"]) == 0
    printed = json.loads(capsys.readouterr().out)
    assert printed["counts"]["train"]["languages"] == {"si": 23}
    assert printed["language_assignment"]["mode"] == "fixed"


# --- wanted texts and verdicts -------------------------------------------------------------------------------------


def test_only_what_a_target_language_lacks_is_wanted_and_retranslate_replaces():
    record = {"captions": {"en": ["a"], "de": ["ein"]}, "qa": [
        {"lang": "en", "question": "q?", "answers": ["x"]}, {"lang": "zh", "question": "问?", "answers": ["是"],
                                                            QA_CONFIDENCE: 0.9}],
              LID_KEY: {"captions": {"de": [0.99]}}}
    assert wanted_texts(record, "de") == ["q?", "x"]
    assert wanted_texts(record, "zh") == ["a"]
    assert wanted_texts(record, "fr") == wanted_texts(record, "de", retranslate=True) == ["a", "q?", "x"]
    verdicts = {tgt: {t: (f"{t}@{tgt}", "kept") for t in ("a", "q?", "x")} for tgt in ("de", "zh")}
    kept, events = apply_verdicts(record, verdicts)
    assert kept["captions"] == {"en": ["a"], "de": ["ein"], "zh": ["a@zh"]}
    assert [(q["lang"], q["question"]) for q in kept["qa"]] == [("en", "q?"), ("zh", "问?"), ("de", "q?@de")]
    assert kept[LID_KEY] == record[LID_KEY]
    assert Counter(e.stats_key() for e in events) == {"de/native": 1, "de/kept": 1, "zh/native": 1, "zh/kept": 1}
    assert not any(e.dropped for e in events)
    replaced, events = apply_verdicts(record, verdicts, retranslate=True)
    assert replaced["captions"] == {"en": ["a"], "de": ["a@de"], "zh": ["a@zh"]}
    assert [q["lang"] for q in replaced["qa"]] == ["en", "de", "zh"] and LID_KEY not in replaced
    assert Counter(e.reason for e in events) == {"kept": 4}


# --- fertility -------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tokenizer_dir(tmp_path_factory) -> Path:
    """A byte-level BPE learned from English and German captions: Sinhala costs it far more than 3x English."""
    english = [english_caption(scene) for scene in generate_scenes(200, seed=0)]
    folder = tmp_path_factory.mktemp("tokenizer")
    train_tokenizer(english * 3 + PHRASES.translate(english, "en", "de") * 3, 600).save_pretrained(folder)
    return folder


def test_tokenizer_fertility_goes_into_both_manifests_with_a_warning(tmp_path, tokenizer_dir, capsys):
    _mixed_img2dataset(tmp_path / "laion")
    assert main(["prep", "shards", "--format", "img2dataset", str(tmp_path / "laion"), "--out", str(tmp_path / "tagged"),
                 "--lang", "auto", "--tokenizer", str(tokenizer_dir)]) == 0
    fertility = _manifest(tmp_path / "tagged")["fertility"]
    assert fertility["tokenizer"] == str(tokenizer_dir) and fertility["parallel"] is False
    assert set(fertility["languages"]) == set(MIXED) and fertility["languages"]["si"]["texts"] == 4
    assert "si" in fertility["costly"] and "de" not in fertility["costly"]
    assert f"warning: --tokenizer {tokenizer_dir}: 'si' costs" in capsys.readouterr().err

    assert main(["prep", "translate", str(tmp_path / "tagged"), "--out", str(tmp_path / "mt"), "--backend",
                 "phrase-table", "--langs", "de,si", "--tokenizer", str(tokenizer_dir)]) == 0
    fertility = _manifest(tmp_path / "mt")["fertility"]
    assert fertility["parallel"] is True and set(fertility["languages"]) == {"en", "de", "si"}
    assert fertility["languages"]["si"]["texts"] == 8 and fertility["languages"]["en"]["texts"] == 4
    printed = capsys.readouterr()
    assert "| si |" in printed.out and "'si' costs" in printed.err and "on the same texts" in printed.err


def test_a_tokenizer_that_cannot_load_fails_in_one_line_before_any_data_is_read(tmp_path, capsys):
    _mixed_img2dataset(tmp_path / "laion")
    args = ["prep", "shards", "--format", "img2dataset", str(tmp_path / "laion"), "--out", str(tmp_path / "out")]
    assert main([*args, "--tokenizer", "some-org/some-tokenizer"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "'--tokenizer' (some-org/some-tokenizer)" in err and "HF_HUB_OFFLINE" in err
    assert main([*args, "--tokenizer", str(tmp_path / "no-such-folder")]) == 2
    assert "'--tokenizer': path not found" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()
    assert main(["prep", "translate", str(tmp_path / "laion" / "00000.tar"), "--out", str(tmp_path / "mt"),
                 "--backend", "phrase-table", "--langs", "de", "--tokenizer", "some-org/some-tokenizer"]) == 2
    assert "HF_HUB_OFFLINE" in capsys.readouterr().err and not (tmp_path / "mt").exists()
