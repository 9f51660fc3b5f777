"""`vlm prep shards` (data_prep.build_shards + data_prep.sources): each format, in its published schema, built
as a tiny fixture in a tmp dir, converted, and read back through webdataset and the training pipeline."""

from __future__ import annotations

import io
import json
import logging
import tarfile
from collections import Counter
from pathlib import Path

import pytest
import webdataset as wds
from PIL import Image

from data_prep.build_shards import KeyMaker, build_shards
from data_prep.manifest import record_languages
from vlm.data.records import read_samples
from vlm.data.shards import resolve_shards


def _image(colour: tuple[int, int, int], fmt: str = "JPEG") -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (8, 8), colour).save(buffer, format=fmt)
    return buffer.getvalue()


RED, GREEN, BLUE = _image((255, 0, 0)), _image((0, 255, 0)), _image((0, 0, 255), "PNG")
CORRUPT = b"\xff\xd8\xff\xe0 definitely not a jpeg"


def _write(path: Path, data: bytes | str | object) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    if isinstance(data, bytes):
        path.write_bytes(data)
    else:
        path.write_text(data if isinstance(data, str) else json.dumps(data), encoding="utf-8")
    return path


def _read_back(out_dir: Path, split: str = "train") -> list[tuple[str, str, str, dict]]:
    """(shard name, key, image extension, record) of every sample, in order."""
    rows = []
    for url in resolve_shards([str(out_dir)], split):
        for raw in wds.tariterators.tarfile_samples([{"url": url}]):
            ext, = (name for name in raw if not name.startswith("__") and name != "json")
            rows.append((Path(url).name, raw["__key__"], ext, json.loads(raw["json"])))
    return rows


def _check_layout(out_dir: Path, manifest: dict, shard_size: int, split: str = "train") -> list:
    """What every output must satisfy: even shards, dot-free unique keys, manifest counts equal to the tars."""
    rows = _read_back(out_dir, split)
    keys = [key for _, key, _, _ in rows]
    assert len(set(keys)) == len(keys) and not any("." in key or "/" in key for key in keys)
    per_shard = Counter(shard for shard, *_ in rows)
    sizes = [per_shard[name] for name in manifest[split]]
    assert sizes[:-1] == [shard_size] * (len(sizes) - 1) and 0 < sizes[-1] <= shard_size
    counts = manifest["counts"][split]
    assert counts["shards"] == dict(per_shard) and counts["samples"] == len(rows)
    assert counts["languages"] == dict(Counter(lang for *_, record in rows for lang in record_languages(record)))
    assert len(list(read_samples(resolve_shards([str(out_dir)], split)))) == len(rows)  # all decode in training
    assert json.loads((out_dir / "manifest.json").read_text()) == manifest
    return rows


def _skips(manifest: dict) -> dict:
    return {reason: n for reason, n in manifest["stats"].items() if reason.startswith("skipped/")}


# --- img2dataset ---------------------------------------------------------------------------------------------


def _img2dataset_shard(path: Path, samples: list[dict], stats: dict | None) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with wds.TarWriter(str(path), encoder=False) as writer:
        for sample in samples:
            writer.write(sample)
    if stats is not None:
        _write(path.with_name(f"{path.stem}_stats.json"), stats)
    _write(path.with_suffix(".parquet"), b"PAR1 not read")


def _meta(key: str, caption: str | None) -> bytes:
    return json.dumps({"url": f"http://x/{key}.jpg", "caption": caption, "key": key, "status": "success",
                       "error_message": None, "width": 8, "height": 8, "exif": "{}", "sha256": "ab"}).encode()


@pytest.fixture()
def img2dataset_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "laion"
    _img2dataset_shard(folder / "00000.tar", [
        {"__key__": "000000000", "jpg": RED, "txt": b"a red square", "json": _meta("000000000", "a red square")},
        {"__key__": "000000001", "jpg": GREEN, "json": _meta("000000001", "caption from the json")},  # no .txt
        {"__key__": "000000002", "jpg": RED, "txt": b"  ", "json": _meta("000000002", None)},  # no caption
        {"__key__": "000000003", "jpg": GREEN, "txt": b"no json here"},  # no .json
        {"__key__": "000000005", "png": BLUE, "txt": b"a blue png", "json": _meta("000000005", "x")},
        {"__key__": "000000006", "jpg": CORRUPT, "txt": b"corrupt", "json": _meta("000000006", "corrupt")},
        {"__key__": "000000007", "txt": b"image lost", "json": _meta("000000007", "image lost")},
        {"__key__": "000000008", "jpg": RED, "txt": b"bad json", "json": b"{not json"},
    ], {"count": 10, "successes": 8, "failed_to_download": 2, "failed_to_resize": 0})
    good = [{"__key__": f"00001000{i}", "jpg": RED, "txt": f"shard one {i}".encode(), "json": _meta(f"{i}", None)}
            for i in range(4)]
    _img2dataset_shard(folder / "00001.tar", good, {"count": 5, "successes": 4, "failed_to_download": 1,
                                                    "failed_to_resize": 0})
    with tarfile.open(folder / "00001.tar") as tar:  # a killed download: cut inside the third image
        cut = tar.getmember("000010002.jpg").offset_data + 10
    _write(folder / "00001.tar", (folder / "00001.tar").read_bytes()[:cut])
    # 00002 is missing altogether (a gap in the numbering)
    _img2dataset_shard(folder / "00003.tar", [
        {"__key__": f"00003000{i}", "webp": _image((9, 9, 9), "WEBP"), "txt": f"shard three {i}".encode()}
        for i in range(3)], {"count": 3, "successes": 3, "failed_to_download": 0, "failed_to_resize": 0})
    return folder


def test_img2dataset_ragged_shards_become_even_ones(img2dataset_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    manifest = build_shards("img2dataset", [str(img2dataset_folder)], out, shard_size=4, progress=False)
    rows = _check_layout(out, manifest, 4)
    assert [key for _, key, _, _ in rows] == ["000000000", "000000001", "000000003", "000000005",
                                              "000010000", "000010001", "000030000", "000030001", "000030002"]
    captions = {key: record["captions"] for _, key, _, record in rows}
    assert captions["000000000"] == {"en": ["a red square"]}
    assert captions["000000001"] == {"en": ["caption from the json"]}
    assert captions["000000003"] == {"en": ["no json here"]} and captions["000010001"] == {"en": ["shard one 1"]}
    assert [ext for *_, ext, _ in rows][3:5] == ["png", "jpg"] and rows[-1][2] == "webp"
    source = rows[0][3]["source"]
    assert source["url"] == "http://x/000000000.jpg" and source["key"] == "000000000" and source["sha256"] == "ab"
    assert "exif" not in source and "caption" not in source and source["shard"].endswith("00000.tar")
    assert manifest["train"] == ["train-000000.tar", "train-000001.tar", "train-000002.tar"]
    assert _skips(manifest) == {"skipped/bad_image": 1, "skipped/bad_json": 1, "skipped/missing_image": 1,
                                "skipped/no_caption": 1, "skipped/tar_error": 1}
    assert manifest["source"]["download"] == {"stats_sidecars": 3, "count": 18, "successes": 15,
                                              "failed_to_download": 3, "failed_to_resize": 0, "success_rate": 0.8333}
    assert manifest["source"]["shards_read"] == 3


def test_img2dataset_tar_list_and_rerun_replaces_the_split(img2dataset_folder: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    build_shards("img2dataset", [str(img2dataset_folder)], out, shard_size=2, progress=False)
    assert len(list(out.glob("train-*.tar"))) == 5
    manifest = build_shards("img2dataset", [str(img2dataset_folder / "00003.tar")], out, shard_size=2, progress=False)
    assert sorted(path.name for path in out.glob("train-*.tar")) == manifest["train"] == [
        "train-000000.tar", "train-000001.tar"]
    assert [key for _, key, _, _ in _check_layout(out, manifest, 2)] == ["000030000", "000030001", "000030002"]
    assert not list(out.glob(".train-*"))  # the temp folder is gone


# --- COCO ----------------------------------------------------------------------------------------------------


def test_coco_annotations_one_sample_per_image(tmp_path: Path) -> None:
    _write(tmp_path / "images" / "000000000001.jpg", RED)
    _write(tmp_path / "images" / "000000000002.jpg", BLUE)  # a PNG named .jpg: the extension follows the bytes
    _write(tmp_path / "images" / "000000000003.jpg", GREEN)
    annotations = _write(tmp_path / "annotations" / "captions_val2017.json", {
        "info": {}, "licenses": [],
        "images": [{"id": 1, "file_name": "000000000001.jpg", "coco_url": "http://coco/1.jpg"},
                   {"id": 2, "file_name": "000000000002.jpg"}, {"id": 3, "file_name": "000000000003.jpg"},
                   {"id": 4, "file_name": "000000000004.jpg"}],
        "annotations": [{"id": 10, "image_id": 1, "caption": "A red square. "},
                        {"id": 11, "image_id": 2, "caption": "Blue."},
                        {"id": 12, "image_id": 1, "caption": "Something red."},
                        {"id": 13, "image_id": 4, "caption": "Gone."},
                        {"id": 14, "image_id": 99, "caption": "Orphan."}]})
    out = tmp_path / "out"
    manifest = build_shards("coco", [str(annotations)], out, images=str(tmp_path / "images"), split="val",
                            shard_size=1, progress=False)
    rows = _check_layout(out, manifest, 1, split="val")
    assert [(key, ext, record["captions"]) for _, key, ext, record in rows] == [
        ("1", "jpg", {"en": ["A red square.", "Something red."]}), ("2", "png", {"en": ["Blue."]})]
    assert rows[0][3]["source"] == {"format": "coco", "image_id": 1, "file_name": "000000000001.jpg",
                                    "url": "http://coco/1.jpg"}
    assert manifest["val"] == ["val-000000.tar", "val-000001.tar"]
    assert _skips(manifest) == {"skipped/missing_image": 1, "skipped/no_caption": 1, "skipped/unknown_image_id": 1}


@pytest.fixture()
def karpathy_file(tmp_path: Path) -> Path:
    for name, data in (("COCO_val2014_000000000001.jpg", RED), ("COCO_val2014_000000000002.jpg", GREEN),
                       ("COCO_val2014_000000000003.jpg", RED), ("COCO_val2014_000000000004.jpg", GREEN)):
        _write(tmp_path / "coco" / "val2014" / name, data)
    images = [{"filepath": "val2014", "filename": f"COCO_val2014_00000000000{i}.jpg", "split": split, "cocoid": i,
               "imgid": i - 1, "sentids": [i], "sentences": [{"raw": f"Picture {i}.", "tokens": [], "imgid": i - 1}]}
              for i, split in ((1, "train"), (2, "restval"), (3, "val"), (4, "test"))]
    return _write(tmp_path / "coco" / "dataset_coco.json", {"dataset": "coco", "images": images})


@pytest.mark.parametrize(("wanted", "ids", "kept"), [
    ("", ["1", "2", "3", "4"], None), ("train", ["1", "2"], ["restval", "train"]),  # train takes restval along
    ("restval", ["2"], ["restval"]), ("val,test", ["3", "4"], ["test", "val"])])
def test_coco_karpathy_split_filter(karpathy_file: Path, tmp_path: Path, wanted: str, ids: list, kept: list) -> None:
    out = tmp_path / "out"
    manifest = build_shards("coco", [str(karpathy_file)], out, karpathy_split=wanted, shard_size=3, progress=False)
    rows = _check_layout(out, manifest, 3)
    assert [key for _, key, _, _ in rows] == ids
    assert rows[0][3]["captions"] == {"en": [f"Picture {ids[0]}."]}
    assert rows[0][3]["source"]["file_name"] == f"val2014/COCO_val2014_00000000000{ids[0]}.jpg"
    assert manifest["source"]["kinds"] == ["karpathy"] and manifest["source"].get("karpathy_split") == kept
    assert _skips(manifest) == {}


# --- LLaVA ---------------------------------------------------------------------------------------------------


def test_llava_conversations_become_qa(tmp_path: Path) -> None:
    _write(tmp_path / "images" / "coco" / "a.jpg", RED)
    turn = {"from": "human", "value": "<image>\nWhat colour is it?"}
    entries = [
        {"id": "GCC.train.0001", "image": "coco/a.jpg", "conversations": [
            turn, {"from": "gpt", "value": "Red."},
            {"from": "human", "value": "And the shape?"}, {"from": "gpt", "value": "A square."}]},
        {"id": "GCC_train_0001", "image": "coco/a.jpg", "conversations": [  # same image, colliding safe key
            {"from": "human", "value": "Describe it.\n<image>"}, {"from": "gpt", "value": "A red square."}]},
        {"id": "text-only", "conversations": [{"from": "human", "value": "Hi"}, {"from": "gpt", "value": "Hello"}]},
        {"id": "two-humans", "image": "coco/a.jpg", "conversations": [turn, turn]},
        {"id": "no-answer", "image": "coco/a.jpg", "conversations": [turn]},
        {"id": "lost", "image": "coco/missing.jpg", "conversations": [turn, {"from": "gpt", "value": "Red."}]},
    ]
    data = _write(tmp_path / "llava_v1_5_mix.json", entries)
    out = tmp_path / "out"
    manifest = build_shards("llava", [str(data)], out, images=str(tmp_path / "images"), shard_size=1, progress=False)
    rows = _check_layout(out, manifest, 1)
    assert [(key, record["captions"], record["qa"]) for _, key, _, record in rows] == [
        ("GCC_train_0001", {}, [
            {"lang": "en", "question": "What colour is it?", "answers": ["Red."]},
            {"lang": "en", "question": "And the shape?", "answers": ["A square."]}]),
        ("GCC_train_0001_1", {}, [{"lang": "en", "question": "Describe it.", "answers": ["A red square."]}])]
    assert rows[0][3]["source"] == {"format": "llava", "id": "GCC.train.0001", "image": "coco/a.jpg"}
    assert manifest["counts"]["train"]["languages"] == {"en": 2}
    assert _skips(manifest) == {"skipped/bad_conversation": 2, "skipped/missing_image": 1, "skipped/text_only": 1}


# --- JSONL ---------------------------------------------------------------------------------------------------


def test_jsonl_relative_paths_languages_and_bad_lines(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    _write(tmp_path / "data" / "imgs" / "a.png", BLUE)
    _write(tmp_path / "data" / "imgs" / "b.jpg", RED)
    lines = [
        {"image": "imgs/a.png", "caption": "a blue square", "url": "http://a"},
        {"image": "imgs/b.jpg", "id": "b.1", "captions": {"en": ["red"], "de": "rot"},
         "qa": [{"question": "Colour?", "answers": ["red"]}, {"lang": "zh", "question": "颜色?", "answers": "红"}]},
        "{not json",
        {"captions": {"en": ["no image field"]}},
        {"image": "imgs/none.jpg", "caption": "missing file"},
        {"image": "imgs/a.png", "captions": {"xx": ["?"]}},
        "",
        {"image": "imgs/a.png"},
        {"image": "imgs/a.png", "qa": [{"question": "Q?"}]},
    ]
    text = "\n".join(line if isinstance(line, str) else json.dumps(line, ensure_ascii=False) for line in lines)
    data = _write(tmp_path / "data" / "train.jsonl", text + "\n")
    out = tmp_path / "out"
    with caplog.at_level(logging.DEBUG, logger="data_prep.sources"):
        manifest = build_shards("jsonl", [str(data)], out, shard_size=5, progress=False)
    assert f"{data}:3: skipped/bad_json" in caplog.text and f"{data}:5: skipped/missing_image" in caplog.text
    rows = _check_layout(out, manifest, 5)
    assert [(key, ext) for _, key, ext, _ in rows] == [("imgs_a", "png"), ("b_1", "jpg")]
    assert rows[0][3]["captions"] == {"en": ["a blue square"]} and rows[0][3]["qa"] == []
    assert rows[0][3]["source"] == {"url": "http://a", "format": "jsonl", "file": str(data), "line": 1,
                                    "image": "imgs/a.png"}
    assert rows[1][3]["captions"] == {"en": ["red"], "de": ["rot"]}
    assert rows[1][3]["qa"] == [{"lang": "en", "question": "Colour?", "answers": ["red"]},
                                {"lang": "zh", "question": "颜色?", "answers": ["红"]}]
    assert '"颜色?"' in (out / "train-000000.tar").read_bytes().decode("utf-8", "replace")  # not \\u-escaped
    assert manifest["counts"]["train"]["languages"] == {"de": 1, "en": 2, "zh": 1}
    assert _skips(manifest) == {"skipped/bad_json": 1, "skipped/bad_record": 1, "skipped/missing_image": 1,
                                "skipped/no_image": 1, "skipped/no_text": 1, "skipped/unknown_language": 1}

    useless = _write(tmp_path / "data" / "useless.jsonl", '{"image": "imgs/a.png"}\n')
    with pytest.raises(ValueError, match="no usable sample.*skipped/no_text=1"):
        build_shards("jsonl", [str(useless)], out, shard_size=5, progress=False)
    assert _read_back(out) == rows  # the earlier set is untouched


# --- the driver ----------------------------------------------------------------------------------------------


def test_key_maker_is_safe_unique_and_deterministic() -> None:
    ids = ("a.b", "a_b", "a.b", "a_b_1", "", "x/y.z", "é" * 200, "ü" * 200)
    keys, again = KeyMaker(), KeyMaker()
    made = [keys.make(source_id) for source_id in ids]
    assert made[:6] == ["a_b", "a_b_1", "a_b_2", "a_b_1_1", "_", "x_y_z"]
    assert len(made[6]) == 80 and made[6].startswith("_" * 71) and made[6] != made[7]  # cut, told apart by a hash
    assert [again.make(source_id) for source_id in ids] == made


def test_splits_share_a_folder(karpathy_file: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    build_shards("coco", [str(karpathy_file)], out, karpathy_split="train", progress=False)
    manifest = build_shards("coco", [str(karpathy_file)], out, karpathy_split="val", split="val", progress=False)
    assert manifest["train"] == ["train-000000.tar"] and manifest["val"] == ["val-000000.tar"]
    assert manifest["counts"]["train"]["samples"] == 2 and manifest["counts"]["val"]["samples"] == 1
    assert len(resolve_shards([str(out)], "train")) == 1 and len(resolve_shards([str(out)], "val")) == 1


def _bad_inputs(tmp_path: Path) -> list[tuple[str, list[str], dict, type, str]]:
    """(format, inputs, options, error, what the message names)."""
    _write(tmp_path / "img.jpg", RED)
    coco_list = _write(tmp_path / "results.json", [{"image_id": 1, "caption": "x"}])
    llava_dict = _write(tmp_path / "llava.json", {"images": []})
    broken = _write(tmp_path / "broken.json", "{")
    annotations = _write(tmp_path / "captions_train2017.json", {"images": [], "annotations": []})
    jsonl_list = _write(tmp_path / "list.jsonl", '[{"image": "img.jpg"}]\n')
    wrong_images = _write(tmp_path / "far.jsonl", '{"image": "elsewhere/img.jpg", "caption": "x"}\n')
    (tmp_path / "empty").mkdir()
    missing = str(tmp_path / "nowhere.json")
    return [
        ("parquet", [missing], {}, ValueError, "parquet"),
        ("coco", [missing], {}, FileNotFoundError, "nowhere.json"),
        ("llava", [missing], {}, FileNotFoundError, "nowhere.json"),
        ("jsonl", [missing], {}, FileNotFoundError, "nowhere.json"),
        ("img2dataset", [missing], {}, FileNotFoundError, "nowhere.json"),
        ("img2dataset", [str(tmp_path / "empty")], {}, FileNotFoundError, "empty"),
        ("coco", [str(coco_list)], {}, ValueError, "results.json"),
        ("coco", [str(broken)], {}, ValueError, "broken.json"),
        ("llava", [str(llava_dict)], {}, ValueError, "llava.json"),
        ("jsonl", [str(jsonl_list)], {}, ValueError, "list.jsonl"),
        ("jsonl", [str(wrong_images)], {}, FileNotFoundError, "far.jsonl"),
        ("jsonl", [str(wrong_images)], {"images": str(tmp_path / "no-such-dir")}, FileNotFoundError, "no-such-dir"),
        ("llava", [str(llava_dict)], {"karpathy_split": "train"}, ValueError, "karpathy"),
        ("coco", [str(broken)], {"karpathy_split": "dev"}, ValueError, "dev"),
        ("coco", [str(annotations)], {"karpathy_split": "train"}, ValueError, "captions_train2017.json"),
        ("jsonl", [str(wrong_images)], {"split": "a.b"}, ValueError, "a.b"),
        ("jsonl", [str(wrong_images)], {"shard_size": 0}, ValueError, "shard-size"),
    ]


def test_bad_inputs_fail_before_writing(tmp_path: Path) -> None:
    for fmt, inputs, options, error, named in _bad_inputs(tmp_path):
        out = tmp_path / "out"
        with pytest.raises(error) as raised:
            build_shards(fmt, inputs, out, progress=False, **options)
        message = str(raised.value)
        assert named in message and "\n" not in message, (fmt, message)
        assert not out.exists(), (fmt, message)


def test_cli_prep_shards_as_the_readme_writes_it(karpathy_file: Path, tmp_path: Path, capsys) -> None:
    from vlm.cli import main

    out = tmp_path / "coco-en"
    assert main(["prep", "shards", "--format", "coco", str(karpathy_file), "--karpathy-split", "train",
                 "--images", str(karpathy_file.parent), "--out", str(out)]) == 0
    assert json.loads(capsys.readouterr().out)["counts"]["train"]["samples"] == 2  # train + restval
    assert main(["prep", "shards", "--format", "llava", str(karpathy_file), "--out", str(tmp_path / "x")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("vlm prep: error: ") and str(karpathy_file) in err and err.count("\n") == 1
