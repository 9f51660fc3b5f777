"""`vlm prep translate`: the resumable, rank-split translation job over shards, its filters and its CLI."""

from __future__ import annotations

import io
import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from collections import Counter
from pathlib import Path

import pytest
import webdataset as wds
from PIL import Image

from data_prep.filters import FilterConfig
from data_prep.records import judge
from data_prep.shards import write_shards
from data_prep.synthetic import english_caption, english_qa, generate_scenes
from data_prep.translate import PhraseTableTranslator
from data_prep.translate_job import STATE, Journal, plan_jobs, translate_dataset
from vlm.cli import main

ROOT = Path(__file__).resolve().parent.parent
N_SHARDS, PER_SHARD = 3, 12


def _png(i: int) -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), (i * 9 % 256, 0, 0)).save(buffer, format="PNG")
    return buffer.getvalue()


@pytest.fixture(scope="module")
def english(tmp_path_factory) -> Path:
    """English shards in the layout `vlm prep shards` writes, plus the samples a real set has: a caption the
    phrase tables cannot translate, an img2dataset-style .txt caption, no image, broken json, no English."""
    folder = tmp_path_factory.mktemp("english")
    samples = []
    for i, scene in enumerate(generate_scenes(N_SHARDS * PER_SHARD - 5, seed=11)):
        record = {"captions": {"en": [english_caption(scene)]}, "qa": [{"lang": "en", **q} for q in english_qa(scene)]}
        samples.append({"__key__": f"s{i:04d}", "png": _png(i), "json": record})
    samples += [
        {"__key__": "dog", "png": _png(1), "json": {"captions": {"en": ["a photo of a dog"]}, "url": "http://x/1"}},
        {"__key__": "txt", "png": _png(2), "txt": "a big red star at the top"},
        {"__key__": "noimage", "json": {"captions": {"en": ["a big red star at the top"]}}},
        {"__key__": "badjson", "png": _png(3), "json": b"{not json"},
        {"__key__": "french", "png": _png(4), "json": {"captions": {"fr": ["une étoile"]}}},
    ]
    write_shards(samples, folder, "train", maxcount=PER_SHARD)
    return folder


def _shards(folder: Path) -> list[str]:
    return [str(p) for p in sorted(folder.glob("train-*.tar"))]


def _read(folder: Path) -> dict[str, dict]:
    return {s["__key__"]: s for s in wds.WebDataset(_shards(folder), shardshuffle=False)}


def _distinct_texts(urls: list[str]) -> int:
    """Distinct English texts of these shards: what one run sends to the translator per target language
    (a text recurring in several shards is translated once)."""
    from data_prep.records import source_texts
    from data_prep.translate_job import _samples

    return len({t for url in urls for _, r in _samples(url, Counter()) for t in source_texts(r)})


class Counting(PhraseTableTranslator):
    def __init__(self) -> None:
        super().__init__()
        self.texts: Counter = Counter()

    def translate(self, texts, src, tgt):
        self.texts[tgt] += len(texts)
        return super().translate(texts, src, tgt)


def test_translate_dataset_adds_languages_and_reports_filters(english, tmp_path):
    translator = Counting()
    manifest = translate_dataset(_shards(english), tmp_path, ["en", "de", "zh"], translator, progress=False,
                                 settings={"backend": "phrase-table"})
    assert manifest["train"] == [f"train-00000{i}.tar" for i in range(N_SHARDS)]
    assert translator.texts == {"de": _distinct_texts(_shards(english)), "zh": _distinct_texts(_shards(english))}
    before, after = _read(english), _read(tmp_path)
    assert set(after) == set(before) - {"noimage", "badjson"}
    assert json.loads(after["french"]["json"])["captions"] == {"fr": ["une étoile"]}  # no English: passed through
    for key, sample in after.items():
        record = json.loads(sample["json"])
        assert sample.get("png") == before[key].get("png")  # images pass through byte for byte
        if key.startswith("s"):
            english_record = json.loads(before[key]["json"])
            assert record["captions"]["en"] == english_record["captions"]["en"]
            assert record["captions"]["de"] == translator.translate(record["captions"]["en"], "en", "de")
            assert Counter(q["lang"] for q in record["qa"]) == {lang: len(english_record["qa"]) for lang in
                                                               ("en", "de", "zh")}
    assert json.loads(after["txt"]["json"])["captions"]["zh"] == ["上边有一个大的红色星形"]
    dog = json.loads(after["dog"]["json"])
    assert dog["captions"] == {"en": ["a photo of a dog"]} and dog["url"] == "http://x/1"  # metadata is kept
    n = len(after) - 1  # with English
    assert manifest["counts"]["train"]["samples"] == n + 1
    assert manifest["counts"]["train"]["languages"] == {"en": n, "de": n - 1, "zh": n - 1, "fr": 1}
    assert manifest["stats"]["skipped/no_image"] == manifest["stats"]["skipped/bad_json"] == 1
    assert manifest["stats"]["untranslated/no_english"] == 1
    rows = {row["lang"]: row for row in manifest["filters"]["per_language"]}
    assert rows["de"]["untranslatable"] == 1 and rows["de"]["kept"] == rows["de"]["total"] - 1
    assert rows["de"]["native"] == rows["zh"]["native"] == 0 and set(rows) == {"de", "zh"}
    rejected = [json.loads(line) for p in sorted((tmp_path / "rejected").glob("*.jsonl"))
                for line in p.read_text().splitlines()]
    assert sorted((r["key"], r["lang"], r["reason"]) for r in rejected) == [("dog", "de", "untranslatable"),
                                                                           ("dog", "zh", "untranslatable")]
    assert manifest["translation"]["texts_this_run"] == 2 * _distinct_texts(_shards(english))
    assert manifest["translation"]["texts_per_second"] > 0
    assert json.loads((tmp_path / "manifest.json").read_text()) == manifest

    again = translate_dataset(_shards(english), tmp_path, ["en", "de", "zh"], Counting(), progress=False,
                              settings={"backend": "phrase-table"})  # everything done: nothing to translate
    assert again["translation"]["texts_this_run"] == 0 and again["counts"] == manifest["counts"]
    with pytest.raises(ValueError, match=r"started with other settings \(languages\)"):
        translate_dataset(_shards(english), tmp_path, ["de", "fr"], Counting(), progress=False,
                          settings={"backend": "phrase-table"})


_KILLABLE = textwrap.dedent("""
    import sys, time
    from data_prep.translate import PhraseTableTranslator
    from data_prep.translate_job import translate_dataset

    class Slow(PhraseTableTranslator):
        def translate(self, texts, src, tgt):
            time.sleep(0.1)
            return super().translate(texts, src, tgt)

    translate_dataset(sys.argv[1:-1], sys.argv[-1], ["de", "zh"], Slow(), chunk_size=8, progress=False,
                      settings={"backend": "phrase-table"})
""")


def test_a_killed_translation_resumes_without_redoing_or_duplicating_work(english, tmp_path):
    reference = tmp_path / "reference"
    translate_dataset(_shards(english), reference, ["de", "zh"], Counting(), chunk_size=8, progress=False,
                      settings={"backend": "phrase-table"})
    out = tmp_path / "out"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    proc = subprocess.Popen([sys.executable, "-c", _KILLABLE, *_shards(english), str(out)], env=env)
    done, work = out / STATE / "done", out / STATE / "work"
    deadline = time.time() + 120
    # Kill it (SIGKILL: no cleanup runs) once one shard is finished and the next is half translated.
    def open_journals() -> list[Path]:  # a finished shard's journals may outlive its done marker by a moment
        return [p for p in work.glob("*/*.jsonl") if not (done / f"{p.parent.name}.json").is_file()]

    while not (len(list(done.glob("*.json"))) == 1 and any(p.stat().st_size for p in open_journals())):
        assert proc.poll() is None and time.time() < deadline, "the job ended before it could be killed"
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    journaled = sum(len(Journal(p).done) for p in open_journals())
    assert journaled > 0 and not (out / "manifest.json").exists()

    resumed = Counting()
    manifest = translate_dataset(_shards(english), out, ["de", "zh"], resumed, chunk_size=8, progress=False,
                                 settings={"backend": "phrase-table"})
    # Nothing translated twice: the resumed run sends exactly what neither the finished shard nor the journals had.
    assert sum(resumed.texts.values()) == 2 * _distinct_texts(_shards(english)[1:]) - journaled
    assert manifest["translation"]["texts_this_run"] == sum(resumed.texts.values())
    expected = json.loads((reference / "manifest.json").read_text())
    assert manifest["counts"] == expected["counts"] and manifest["stats"] == expected["stats"]
    ours, theirs = _read(out), _read(reference)
    assert ours.keys() == theirs.keys()
    for key in ours:  # identical samples, no caption or QA item duplicated
        assert json.loads(ours[key]["json"]) == json.loads(theirs[key]["json"]), key
    assert not list(work.glob("*"))  # journals of finished shards are removed


def test_ranks_split_the_shards_and_rank0_merges(english, tmp_path):
    translators = {rank: Counting() for rank in (0, 1)}
    # Rank 1 first, then rank 0: without a process group the barriers are no-ops, so rank 0 finds rank 1's work.
    assert translate_dataset(_shards(english), tmp_path, ["de"], translators[1], rank=1, world_size=2,
                             progress=False) is None
    manifest = translate_dataset(_shards(english), tmp_path, ["de"], translators[0], rank=0, world_size=2,
                                 progress=False)
    done = {p.stem for p in (tmp_path / STATE / "done").glob("*.json")}
    assert done == {f"train-00000{i}" for i in range(N_SHARDS)}
    urls = _shards(english)
    assert translators[0].texts["de"] == _distinct_texts([urls[0], urls[2]])
    assert translators[1].texts["de"] == _distinct_texts([urls[1]])
    assert manifest["translation"]["world_size"] == 2
    assert manifest["counts"]["train"]["samples"] == len(_read(tmp_path))


def test_a_mixing_backend_gets_batches_of_several_languages(english, tmp_path):
    class Mixing(PhraseTableTranslator):
        mixes_languages = True
        calls: list[set[str]] = []

        def translate_mixed(self, texts, src, tgts):
            self.calls.append(set(tgts))
            return [self.translate([t], src, tgt)[0] for t, tgt in zip(texts, tgts)]

    mixed = translate_dataset(_shards(english), tmp_path / "mixed", ["de", "zh"], Mixing(), progress=False)
    plain = translate_dataset(_shards(english), tmp_path / "plain", ["de", "zh"], Counting(), progress=False)
    assert any(len(languages) == 2 for languages in Mixing.calls)
    assert mixed["counts"] == plain["counts"] and mixed["stats"] == plain["stats"]
    ours, theirs = _read(tmp_path / "mixed"), _read(tmp_path / "plain")
    assert all(json.loads(ours[k]["json"]) == json.loads(theirs[k]["json"]) for k in theirs)


def test_back_translation_chrf_drops_translations_that_do_not_come_back():
    texts = ["a big red star at the top", "a small blue circle on the left"]
    outputs = ["ein großer roter Stern oben", "ein kleiner blauer Kreis links"]
    back = {"ein großer roter Stern oben": "a big red star at the top",
            "ein kleiner blauer Kreis links": "the weather is nice today"}
    filters = FilterConfig(back_translation_chrf=50)
    calls = []

    def back_translate(outs):
        calls.append(list(outs))
        return [back[o] for o in outs]

    judged = judge(texts, outputs, "de", filters, back_translate)
    assert judged == {texts[0]: (outputs[0], "kept"), texts[1]: (outputs[1], "back_translation")}
    assert calls == [outputs]  # one batched call, only for translations the other filters kept
    assert judge(texts, outputs, "de", FilterConfig(), back_translate)[texts[1]][1] == "kept"


def test_journal_ignores_a_torn_last_line(tmp_path):
    path = tmp_path / "de.jsonl"
    Journal(path).add(["a", "b"], ["x", None])
    with path.open("a") as f:
        f.write('{"src": "c", "ou')  # the kill came mid-write
    journal = Journal(path)
    assert journal.done == {"a": "x", "b": None}
    journal.add(["c"], ["z"])
    assert Journal(path).done == {"a": "x", "b": None, "c": "z"}


def test_plan_jobs_reads_folders_and_globs(english, tmp_path):
    jobs = plan_jobs([str(english / "train-00000[01].tar")])
    assert [(j.split, j.name) for j in jobs] == [("train", "train-000000.tar"), ("train", "train-000001.tar")]
    with pytest.raises(FileNotFoundError, match="input shard not found: .*nothing-"):
        plan_jobs([str(tmp_path / "nothing-{0..1}.tar")])
    with pytest.raises(FileNotFoundError, match="no manifest.json"):
        plan_jobs([str(tmp_path)])


def test_cli_translates_and_fails_early_on_bad_input(english, tmp_path, capsys):
    out = tmp_path / "out"
    args = ["prep", "translate", *_shards(english), "--out", str(out), "--backend", "phrase-table"]
    assert main([*args, "--langs", "de,xx"]) == 2
    assert "unknown language code 'xx'" in capsys.readouterr().err
    assert main([*args]) == 2
    assert "no target languages besides English: pass --langs" in capsys.readouterr().err
    assert main([*args, "--langs", "en"]) == 2
    assert main(["prep", "translate", str(tmp_path / "missing.tar"), "--out", str(out), "--langs", "de",
                 "--backend", "phrase-table"]) == 2
    assert "input shard not found" in capsys.readouterr().err
    assert main([*args, "--langs", "de", "prep.filters.max_repeats=-1"]) == 2
    assert "'prep.filters.max_repeats' must be >= 0" in capsys.readouterr().err
    assert not out.exists()  # every error came before anything was written

    assert main([*args, "--langs", "de,zh", "prep.filters.language_id=false"]) == 0
    printed = capsys.readouterr().out
    assert "| de |" in printed and "texts/s" in printed
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["filters"]["config"]["language_id"] is False
    assert main([*args, "--langs", "de,fr"]) == 2  # a resume must keep its settings
    assert "started with other settings (filters, languages)" in capsys.readouterr().err


def test_torchrun_translation_matches_one_process(english, tmp_path):
    args = ["prep", "translate", *_shards(english), "--backend", "phrase-table", "--langs", "de,zh"]
    assert main([*args, "--out", str(tmp_path / "single")]) == 0
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
                           "-m", "vlm.cli", *args, "--out", str(tmp_path / "split")],
                          capture_output=True, text=True, cwd=tmp_path, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    single = json.loads((tmp_path / "single" / "manifest.json").read_text())
    split = json.loads((tmp_path / "split" / "manifest.json").read_text())
    assert split["translation"]["world_size"] == 2 and single["translation"]["world_size"] == 1
    assert split["counts"] == single["counts"] and split["stats"] == single["stats"]
    ranks = [json.loads((tmp_path / "split" / STATE / f"rank-{r}.json").read_text())["texts"] for r in (0, 1)]
    # Each rank translates the distinct texts of its own shards (texts shared by both are translated twice).
    assert ranks == [2 * _distinct_texts(_shards(english)[0::2]), 2 * _distinct_texts(_shards(english)[1::2])]
    one, two = _read(tmp_path / "single"), _read(tmp_path / "split")
    assert all(one[k]["json"] == two[k]["json"] for k in one) and one.keys() == two.keys()


def test_cli_with_tiny_nllb_m2m100_and_ctranslate2_models(english, tmp_path, capsys):
    """The neural backends through the command a user types, on tiny random models saved locally: every
    target-language text reaches the model, and the filters reject the random model's garbage by reason."""
    from mt_models import build_m2m100, build_nllb

    nllb, m2m100 = build_nllb(tmp_path / "nllb"), build_m2m100(tmp_path / "m2m100")
    shard = _shards(english)[:1]
    common = ["--langs", "de,zh", "prep.translate.device=cpu", "prep.translate.batch_size=16"]
    runs = {"nllb": ["--backend", "nllb", "--model", str(nllb)],
            "m2m100": ["--backend", "m2m100", "--model", str(m2m100)]}
    pytest.importorskip("ctranslate2", reason="ctranslate2 is not installed (pip install -e .[ct2])")
    assert main(["prep", "ct2", str(nllb), "--out", str(tmp_path / "ct2")]) == 0
    runs["ctranslate2"] = ["--backend", "ctranslate2", "--model", str(tmp_path / "ct2")]
    manifests = {}
    for name, flags in runs.items():
        assert main(["prep", "translate", *shard, "--out", str(tmp_path / name), *flags, *common]) == 0, name
        manifests[name] = json.loads((tmp_path / name / "manifest.json").read_text())
        rows = {row["lang"]: row for row in manifests[name]["filters"]["per_language"]}
        assert set(rows) == {"de", "zh"} and manifests[name]["translation"]["backend"] == name
        assert manifests[name]["translation"]["texts_this_run"] == 2 * _distinct_texts(shard)
        dropped = sum(n for row in rows.values() for reason, n in row.items()
                      if reason not in ("lang", "total", "kept"))
        assert dropped > 0.5 * sum(row["total"] for row in rows.values())  # random weights: mostly rejected
    capsys.readouterr()
    # CTranslate2 decodes the converted NLLB greedily, exactly like transformers.
    assert manifests["ctranslate2"]["stats"] == manifests["nllb"]["stats"]
    # A language the model has no token for stops the run before any weights load, in one line.
    assert main(["prep", "translate", *shard, "--out", str(tmp_path / "mi"), *runs["m2m100"], "--langs", "mi"]) == 2
    assert "M2M100 has no language code for 'mi' (Maori)" in capsys.readouterr().err


def test_from_jsonl_captions_to_translated_shards_through_the_cli(tmp_path, capsys):
    """The README's pipeline: `vlm prep shards` on a JSONL of images and English captions/QA, then
    `vlm prep translate` on its folder, whose splits and manifest the translation keeps."""
    lines = []
    for i, scene in enumerate(generate_scenes(6, seed=5)):
        (tmp_path / f"{i}.png").write_bytes(_png(i))
        qa = [{"question": q["question"], "answers": q["answers"]} for q in english_qa(scene)]
        lines.append(json.dumps({"image": f"{i}.png", "caption": english_caption(scene), "qa": qa}))
    (tmp_path / "data.jsonl").write_text("\n".join(lines) + "\n{broken\n")
    assert main(["prep", "shards", "--format", "jsonl", str(tmp_path / "data.jsonl"), "--out", str(tmp_path / "en"),
                 "--shard-size", "4"]) == 0
    assert main(["prep", "translate", str(tmp_path / "en"), "--out", str(tmp_path / "mt"), "--backend",
                 "phrase-table", "--langs", "hi,ar"]) == 0
    capsys.readouterr()
    manifest = json.loads((tmp_path / "mt" / "manifest.json").read_text())
    assert manifest["train"] == ["train-000000.tar", "train-000001.tar"]
    assert manifest["counts"]["train"]["languages"] == {"en": 6, "hi": 6, "ar": 6}
    records = [json.loads(s["json"]) for s in wds.WebDataset(
        [str(tmp_path / "mt" / name) for name in manifest["train"]], shardshuffle=False)]
    assert all(len([q for q in r["qa"] if q["lang"] == "hi"]) == len([q for q in r["qa"] if q["lang"] == "en"])
               for r in records)
    assert all(r["source"]["format"] == "jsonl" for r in records)
