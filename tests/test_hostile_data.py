"""Hostile data (issue 15): every kind of broken, odd or malicious input, made with PIL in a tmp folder, through
`vlm prep shards` (each reader, the console script once) and the training stream: each is converted or skipped
and counted by its reason, good samples all come through, the run goes on and memory stays bounded; `vlm eval`
names the images it skipped."""

from __future__ import annotations

import io
import json
import logging
import os
import random
import struct
import subprocess
import sys
import tarfile
import zlib
from collections import Counter
from pathlib import Path

import pytest
import webdataset as wds
from PIL import Image

from data_prep.build_shards import build_shards
from data_prep.images import DRAFT_SIZE
from data_prep.manifest import SplitCounter, write_manifest
from eval.report import write_report
from eval.runner import skipped_images
from eval.suites import Benchmark, BenchmarkImage
from eval.suites.demo import load_shards
from vlm.config import DataConfig
from vlm.data.examples import image_id
from vlm.data.shards import resolve_shards
from vlm.data.stream import TrainStream

ROOT = Path(__file__).resolve().parents[1]
BIG_SIDE = 8192  # within PIL's pixel limit: kept, and decoded at 1/8 scale (a full RGB decode: 201 MB)


def _encode(image: Image.Image, fmt: str) -> bytes:
    out = io.BytesIO()
    image.save(out, format=fmt)
    return out.getvalue()


def _noise(fmt: str) -> bytes:
    rng = random.Random(0)
    return _encode(Image.frombytes("RGB", (64, 64), bytes(rng.randrange(256) for _ in range(64 * 64 * 3))), fmt)


def _png_claiming(width: int, height: int) -> bytes:
    """A tiny PNG whose header claims width x height (a decompression bomb: no decoder must get that far)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    pixels = zlib.compress(b"\0" * 64)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b"")


def _jpeg_claiming(jpeg: bytes, width: int, height: int) -> bytes:
    """A JPEG whose frame header (SOF0) claims width x height."""
    sof = jpeg.index(b"\xff\xc0")
    return jpeg[: sof + 5] + struct.pack(">HH", height, width) + jpeg[sof + 9:]


GOOD = [_encode(Image.new("RGB", (16, 12), (40 * i, 100, 200)), "JPEG") for i in range(3)]
TRUNCATED_JPEG = _noise("JPEG")[: len(_noise("JPEG")) // 2]  # PIL's verify() passes it; only a decode fails
TRUNCATED_PNG = _noise("PNG")[: len(_noise("PNG")) // 2]
BOMB = _png_claiming(100_000, 100_000)  # DecompressionBombError
NEAR_BOMB = _png_claiming(10_000, 10_000)  # 1-2x the limit: PIL only warns (DecompressionBombWarning)
HUGE = _jpeg_claiming(GOOD[0], 20_000, 20_000)  # 400 M pixels: a full RGB decode would take 1.2 GB
# Converted to RGB: name -> (bytes, size, an RGB pixel it must decode to, or None, what prep counts it as)
CONVERTED = {
    "cmyk": (_encode(Image.new("CMYK", (12, 10), (0, 0, 0, 0)), "JPEG"), (12, 10), (255, 255, 255), "cmyk"),
    "sixteen": (_encode(Image.new("I;16", (12, 10), 40000), "PNG"), (12, 10), (156, 156, 156), "16bit"),
    "grey": (_encode(Image.new("L", (12, 10), 77), "PNG"), (12, 10), (77, 77, 77), "grayscale"),
    "rgba": (_encode(Image.new("RGBA", (12, 10), (255, 0, 0, 0)), "PNG"), (12, 10), (255, 255, 255), "alpha"),
    "palette": (_encode(Image.new("RGB", (12, 10), (0, 0, 255)).convert("P"), "PNG"), (12, 10), (0, 0, 255), "palette"),
    "tiny": (_encode(Image.new("RGB", (1, 1), (9, 9, 9)), "PNG"), (1, 1), (9, 9, 9), None),
}


@pytest.fixture(scope="module")
def big_jpeg(tmp_path_factory) -> Path:
    path = tmp_path_factory.mktemp("big") / "big.jpg"
    Image.new("L", (BIG_SIDE, BIG_SIDE), 128).save(path, format="JPEG")
    return path


def _write(path: Path, data: bytes | str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data if isinstance(data, bytes) else data.encode())
    return path


def _tar(path: Path, samples: list[dict]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    with wds.TarWriter(str(path), encoder=False) as sink:
        for sample in samples:
            sink.write(sample)
    return path


def _cut_inside(path: Path, member: str) -> None:
    """Truncate a tar inside one member's data, as a killed copy leaves it."""
    with tarfile.open(path) as tar:
        cut = tar.getmember(member).offset_data + 10
    path.write_bytes(path.read_bytes()[:cut])


def _caption(text: str) -> bytes:
    return json.dumps({"captions": {"en": [text]}}).encode()


def _stats(manifest: dict) -> dict:
    return {reason: n for reason, n in manifest["stats"].items() if "/" in reason}


def _cfg(**kw) -> DataConfig:
    return DataConfig(**({"languages": ["en"], "tasks": ["caption"], "task_weights": [1.0], "num_workers": 0,
                          "shuffle_buffer": 1} | kw))


def _stream(urls: list[str], batch_size: int, **kw) -> TrainStream:
    def collate(examples: list) -> dict:
        return {"examples": examples}

    collate.lengths = lambda examples: [1] * len(examples)
    return TrainStream(urls, _cfg(**kw), lambda image: image, collate, batch_size, seed=0, rank=0, world_size=1)


def _check_converted(examples: list, keys: dict[str, str], big_key: str | None = None) -> None:
    """Every converted image came through as RGB of its own size and colour; the big JPEG at draft scale."""
    by_id = {example.image_id: example.image for example in examples}
    for name, (_, size, pixel, _) in CONVERTED.items():
        image = by_id[image_id(keys[name])]
        assert image.mode == "RGB" and image.size == size, name
        assert max(abs(a - b) for a, b in zip(image.getpixel((0, 0)), pixel)) <= 3, (name, image.getpixel((0, 0)))
    if big_key is not None:
        image = by_id[image_id(big_key)]
        assert image.mode == "RGB" and image.size == DRAFT_SIZE  # 8192 / 8, never decoded in full


# --- vlm prep shards -------------------------------------------------------------------------------------------


def test_jsonl_prep_through_the_console_script_then_training(tmp_path: Path, big_jpeg: Path) -> None:
    images = {f"good{i}.jpg": data for i, data in enumerate(GOOD)}
    images |= {"trunc.jpg": TRUNCATED_JPEG, "trunc.png": TRUNCATED_PNG, "empty.jpg": b"", "bomb.png": BOMB,
               "nearbomb.png": NEAR_BOMB, "huge.jpg": HUGE, "big.jpg": big_jpeg.read_bytes()}
    images |= {f"{name}.img": data for name, (data, *_) in CONVERTED.items()}  # the format follows the bytes
    for name, data in images.items():
        _write(tmp_path / "data" / "imgs" / name, data)
    lines = [json.dumps({"image": f"imgs/{name}", "caption": f"picture {name}"}) for name in images]
    lines += [
        json.dumps({"image": "imgs/good0.jpg"}),  # no caption
        json.dumps({"image": "imgs/good0.jpg", "caption": "\ud800"}),  # a lone surrogate: not writable as UTF-8
        b'{"image": "imgs/good0.jpg", "caption": "caf\xe9"}'.decode("latin-1"),  # not UTF-8 (written as latin-1)
        json.dumps({"image": "imgs/good0.jpg", "captions": ["not", "a", "dict"]}),  # wrong types
        json.dumps({"image": "imgs/good0.jpg", "caption": 5}),
        json.dumps({"image": 5, "caption": "x"}),
        json.dumps({"image": "imgs/good1.jpg", "id": "dup", "caption": "one"}),  # a duplicate id: renamed, kept
        json.dumps({"image": "imgs/good2.jpg", "id": "dup", "caption": "two"}),
    ]
    data = _write(tmp_path / "data" / "train.jsonl", "\n".join(lines).encode("latin-1", "surrogatepass") + b"\n")
    out = tmp_path / "out"
    run = subprocess.run([str(ROOT / ".venv" / "bin" / "vlm"), "prep", "shards", "--format", "jsonl", str(data),
                          "--out", str(out), "--shard-size", "5"], capture_output=True, text=True, cwd=ROOT,
                         env={**os.environ, "HF_HUB_OFFLINE": "1"})
    assert run.returncode == 0, run.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    assert _stats(manifest) == {
        "skipped/bad_image": 2, "skipped/empty_image": 1, "skipped/decompression_bomb": 3, "skipped/no_text": 1,
        "skipped/bad_text": 1, "skipped/bad_json": 1, "skipped/bad_record": 2, "skipped/no_image": 1,
        "converted/cmyk": 1, "converted/16bit": 1, "converted/grayscale": 2, "converted/alpha": 1,
        "converted/palette": 1, "converted/duplicate_key": 1}  # big.jpg is grey too
    kept = 3 + len(CONVERTED) + 1 + 2
    assert manifest["counts"]["train"]["samples"] == kept
    assert "skipped 12" in run.stderr and "decompression_bomb=3" in run.stderr  # the one-line summary

    batch = next(iter(_stream(resolve_shards([str(out)], "train"), kept, shuffle_buffer=100)))
    assert batch.telemetry.bad_samples == {}  # prep kept only what training reads
    keys = {name: f"imgs_{name}" for name in CONVERTED}
    _check_converted(batch.inputs["examples"], keys, big_key="imgs_big")
    assert len(batch.inputs["examples"]) == kept


def test_img2dataset_prep_counts_every_hostile_sample_and_shard(tmp_path: Path) -> None:
    def sample(key: str, image: bytes, txt: bytes = b"a caption", ext: str = "jpg", meta: bytes = b"{}") -> dict:
        return {"__key__": key, ext: image, "txt": txt, "json": meta}

    folder = tmp_path / "laion"
    _tar(folder / "00000.tar", [
        sample("a0", GOOD[0]), sample("a1", GOOD[1]), sample("t", TRUNCATED_JPEG), sample("z", b""),
        sample("u", GOOD[2], txt=b"caf\xe9"), sample("j", GOOD[2], meta=b"[1, 2]"), sample("a1", GOOD[2]),
        sample("b", BOMB, ext="png"), sample("c", CONVERTED["cmyk"][0]), sample("a2", GOOD[2])])
    _tar(folder / "00001.tar", [sample(f"x{i}", GOOD[i]) for i in range(3)])
    _cut_inside(folder / "00001.tar", "x2.jpg")
    _write(folder / "00002.tar", b"")  # a killed writer's empty shard
    _tar(folder / "00003.tar", [])  # a valid tar without a sample
    manifest = build_shards("img2dataset", [str(folder)], tmp_path / "out", shard_size=4, progress=False)
    assert _stats(manifest) == {
        "skipped/bad_image": 1, "skipped/empty_image": 1, "skipped/bad_text": 1, "skipped/bad_json": 1,
        "skipped/duplicate_key": 1, "skipped/decompression_bomb": 1, "skipped/tar_error": 1,
        "skipped/empty_shard": 2, "converted/cmyk": 1}
    assert manifest["counts"]["train"]["samples"] == 6  # a0 a1 c a2 x0 x1


def test_coco_and_llava_prep_check_every_image(tmp_path: Path) -> None:
    for name, data in (("good.jpg", GOOD[0]), ("trunc.png", TRUNCATED_PNG), ("huge.jpg", HUGE),
                       ("empty.jpg", b""), ("rgba.png", CONVERTED["rgba"][0])):
        _write(tmp_path / "images" / name, data)
    names = ["good.jpg", "trunc.png", "huge.jpg", "empty.jpg", "rgba.png"]
    coco = _write(tmp_path / "captions.json", json.dumps({
        "images": [{"id": i, "file_name": name} for i, name in enumerate(names)],
        "annotations": [{"id": i, "image_id": i, "caption": f"caption {i}"} for i in range(len(names))]}))
    manifest = build_shards("coco", [str(coco)], tmp_path / "coco", images=str(tmp_path / "images"), progress=False)
    assert _stats(manifest) == {"skipped/bad_image": 1, "skipped/decompression_bomb": 1, "skipped/empty_image": 1,
                                "converted/alpha": 1}
    turns = [{"from": "human", "value": "<image>\nWhat is it?"}, {"from": "gpt", "value": "A thing."}]
    llava = _write(tmp_path / "llava.json", json.dumps([{"id": f"e{i}", "image": name, "conversations": turns}
                                                        for i, name in enumerate(names)]))
    manifest = build_shards("llava", [str(llava)], tmp_path / "llava", images=str(tmp_path / "images"), progress=False)
    assert _stats(manifest) == {"skipped/bad_image": 1, "skipped/decompression_bomb": 1, "skipped/empty_image": 1,
                                "converted/alpha": 1}
    assert manifest["counts"]["train"]["samples"] == 2


# --- the training stream, on shards no prep checked ------------------------------------------------------------


PLANTED = {"corrupt_image": 2, "empty_image": 1, "decompression_bomb": 3, "empty_caption": 1, "bad_json": 2,
           "bad_record": 3, "duplicate_key": 1}


def _hostile_shard(path: Path, big: bytes) -> tuple[Path, int]:
    """One shard: every sample-level hostile case first, then the good ones (a duplicate key among them), then a
    sample the tar is cut inside. Returns the shard and how many good samples it has."""
    bad = [
        {"__key__": "trunc-jpg", "jpg": TRUNCATED_JPEG, "json": _caption("x")},
        {"__key__": "trunc-png", "png": TRUNCATED_PNG, "json": _caption("x")},
        {"__key__": "empty", "jpg": b"", "json": _caption("x")},
        {"__key__": "bomb", "png": BOMB, "json": _caption("x")},
        {"__key__": "nearbomb", "png": NEAR_BOMB, "json": _caption("x")},
        {"__key__": "huge", "jpg": HUGE, "json": _caption("x")},
        {"__key__": "nocaption", "jpg": GOOD[0], "json": b'{"captions": {"en": [" "]}}'},
        {"__key__": "latin1", "jpg": GOOD[0], "json": b'{"captions": {"en": ["caf\xe9"]}}'},
        {"__key__": "deep", "jpg": GOOD[0], "json": b"[" * 100_000},
        {"__key__": "surrogate", "jpg": GOOD[0], "json": b'{"captions": {"en": ["\\ud800"]}}'},
        {"__key__": "types1", "jpg": GOOD[0], "json": b'{"captions": "a string", "qa": 5}'},
        {"__key__": "types2", "jpg": GOOD[0], "json": json.dumps(
            {"captions": {"en": 5}, "qa": [{"question": 1, "answers": {"a": 1}, "lang": ["en"]}]}).encode()},
    ]
    good = [{"__key__": f"g{i}", "jpg": data, "json": _caption(f"good {i}")} for i, data in enumerate(GOOD)]
    good += [{"__key__": name, "png" if data[:4] == b"\x89PNG" else "jpg": data, "json": _caption(name)}
             for name, (data, *_) in CONVERTED.items()]
    good.append({"__key__": "big", "jpg": big, "json": _caption("big")})
    duplicate = {"__key__": "g0", "jpg": GOOD[1], "json": _caption("another g0")}
    tail = {"__key__": "cut", "jpg": _noise("JPEG"), "json": _caption("cut")}
    _tar(path, bad + good[:3] + [duplicate] + good[3:] + [tail])
    _cut_inside(path, "cut.jpg")
    return path, len(good)


def test_training_stream_skips_and_counts_each_planted_sample(tmp_path: Path, big_jpeg: Path) -> None:
    shard, n_good = _hostile_shard(tmp_path / "hostile.tar", big_jpeg.read_bytes())
    batches = iter(_stream([str(shard)], n_good))
    first, second = next(batches), next(batches)  # a batch per pass: the stream goes on past everything
    # Exactly what was planted, each under its reason; the cut is met as the last good sample is read whole.
    assert first.telemetry.bad_samples == second.telemetry.bad_samples == PLANTED | {"tar_error": 1}
    examples = first.inputs["examples"]
    assert len(examples) == n_good and len({e.image_id for e in examples}) == n_good
    _check_converted(examples, {name: name for name in CONVERTED}, big_key="big")


def test_shard_level_damage_is_counted_and_the_run_goes_on(tmp_path: Path, caplog) -> None:
    folder = tmp_path / "data"
    _tar(folder / "good.tar", [{"__key__": f"g{i}", "jpg": data, "json": _caption("x")} for i, data in enumerate(GOOD)])
    _write(folder / "zero.tar", b"")
    _tar(folder / "nothing.tar", [])
    counter = SplitCounter()
    for i in range(3):
        counter.add("good.tar", {"captions": {"en": ["x"]}})
    write_manifest(folder, {"train": {**counter.to_dict(), "shards": {"good.tar": 3, "zero.tar": 0,
                                                                      "nothing.tar": 0, "gone.tar": 0}}})
    with caplog.at_level(logging.WARNING, logger="vlm.data.shards"):
        urls = resolve_shards([str(folder)], "train")
    assert len(urls) == 4 and "1 of 4 shards not found" in caplog.text and "gone.tar" in caplog.text
    stream = _stream(urls, len(GOOD))
    batches = iter(stream)
    seen: Counter = Counter()
    per_pass = {"empty_shard": 2, "missing_shard": 1}
    for n in range(1, 4):  # batch n ends with the last good sample of pass n - 1
        seen.update(next(batches).telemetry.bad_samples)
        order = [Path(url).name for url in stream.shards(n - 1, 0)]
        before = order[: order.index("good.tar")]
        expected = Counter({reason: count * (n - 1) for reason, count in per_pass.items()})
        expected.update({"empty_shard": sum(name in ("zero.tar", "nothing.tar") for name in before),
                         "missing_shard": before.count("gone.tar")})
        assert seen == +expected, n

    (folder / "good.tar").unlink()
    for name in ("zero.tar", "nothing.tar"):
        (folder / name).unlink()
    with pytest.raises(FileNotFoundError, match="shard not found"):
        resolve_shards([str(folder)], "train")  # none at all is there: that fails before training starts


def test_a_large_jpeg_is_decoded_at_draft_scale_in_bounded_memory(big_jpeg: Path) -> None:
    code = ("import resource, sys\n"
            "from data_prep.images import decode_image\n"
            "data = open(sys.argv[1], 'rb').read()\n"
            "before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss\n"
            "image = decode_image(data)\n"
            "grown = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - before\n"
            "print(image.size[0], image.size[1], grown // 1024)\n")
    run = subprocess.run([sys.executable, "-c", code, str(big_jpeg)], capture_output=True, text=True, cwd=ROOT,
                         check=True)
    width, height, grown_mb = map(int, run.stdout.split())
    assert (width, height) == DRAFT_SIZE
    assert grown_mb < 40, grown_mb  # a full decode: 67 MB of grey, then 201 MB of RGB


# --- vlm eval names what it skipped ----------------------------------------------------------------------------


def test_eval_names_the_images_it_skipped(tmp_path: Path) -> None:
    folder = tmp_path / "val"
    samples = [{"__key__": f"v{i}", "jpg": data, "json": _caption(f"val {i}")} for i, data in enumerate(GOOD)]
    samples += [{"__key__": "v-trunc", "jpg": TRUNCATED_JPEG, "json": _caption("x")},
                {"__key__": "v-bomb", "png": BOMB, "json": _caption("x")},
                {"__key__": "v-types", "jpg": GOOD[0], "json": b'{"captions": "x"}'}]
    _tar(folder / "val-000000.tar", samples)
    write_manifest(folder, {"val": {"samples": len(samples), "shards": {"val-000000.tar": len(samples)},
                                    "languages": {"en": len(samples)}}})
    bench = load_shards([str(folder)], ["en"])
    assert len(bench.images) == 3
    assert [name.split(" ")[0] for name in bench.skipped] == ["v-trunc", "v-bomb", "v-types"]
    assert "(corrupt_image)" in bench.skipped[0] and "(decompression_bomb)" in bench.skipped[1]

    files = Benchmark("files", ["en"], [BenchmarkImage("f0", _write(tmp_path / "f0.jpg", GOOD[0])),
                                        BenchmarkImage("f1", _write(tmp_path / "f1.jpg", b""))], ("captioning",),
                      skipped=["loaded-out"])
    names = skipped_images(files, [1])
    assert names == ["loaded-out", f"f1 ({tmp_path / 'f1.jpg'})"]
    report = write_report({"languages": ["en"], "per_language": {"en": {}}, "n_images": 1,
                           "skipped_images": len(names), "skipped_image_names": names}, tmp_path / "report")
    text = report.read_text()
    assert "Images: 1 (2 undecodable, skipped)" in text and f"Skipped images: loaded-out, f1 ({tmp_path}" in text
