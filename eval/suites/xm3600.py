"""Crossmodal-3600 (XM3600): 3,600 Open Images photos with human captions in 36 languages.

Download from https://google.github.io/crossmodal-3600/ (captions.zip, images.tgz) and lay out under root:

    captions.jsonl            one JSON object per line: {"image/key": "<16 hex>", "image/locale": "<code>",
                              "<lang>": {"caption": [...], "caption/tokenized": [...],
                              "caption/tokenized/lowercase": [...]}, ... one object per language}
    images/<image/key>.jpg    (or the images right beside captions.jsonl: images.tgz holds no folder, so
                              `tar -xzf images.tgz -C DIR` puts them there)

Only "caption" is read (the tokenized variants are ignored). Retrieval follows CLIP_benchmark's XM3600
protocol: each image's first caption.
"""

from __future__ import annotations

from pathlib import Path

from eval.suites import Benchmark, BenchmarkDataError, BenchmarkImage
from eval.suites._checks import check_images, check_root, field, locate_images, pick_languages, read_jsonl, texts

LANGUAGES = ("ar", "bn", "cs", "da", "de", "el", "en", "es", "fa", "fi", "fil", "fr", "he", "hi", "hr", "hu", "id",
             "it", "ja", "ko", "mi", "nl", "no", "pl", "pt", "quz", "ro", "ru", "sv", "sw", "te", "th", "tr", "uk",
             "vi", "zh")
IMAGE_LAYOUTS = ("images/{name}", "{name}")


def load_xm3600(root: Path, languages: list[str] | None = None) -> Benchmark:
    root = check_root(root, "XM3600")
    langs = pick_languages("XM3600", languages, LANGUAGES)
    path = root / "captions.jsonl"
    captions: dict[str, dict[str, list[str]]] = {}  # image/key -> language -> captions, in file order
    first_line: dict[str, int] = {}
    for number, record in read_jsonl(path):
        where = f"{path}: line {number}"
        key = field(record, "image/key", str, where)
        if key in first_line:
            raise BenchmarkDataError(f"{where}: image/key {key!r} already on line {first_line[key]}")
        first_line[key] = number
        captions[key] = {lang: texts(field(record, lang, dict, where), "caption", where, f"{lang}.caption")
                         for lang in langs}
    if not captions:
        raise BenchmarkDataError(f"{path}: no records")
    paths = locate_images(root, IMAGE_LAYOUTS, [f"{key}.jpg" for key in captions])
    check_images(paths)
    return Benchmark(
        name="xm3600",
        languages=langs,
        images=[BenchmarkImage(key, image, captions[key]) for key, image in zip(captions, paths, strict=True)],
        tasks=("retrieval", "captioning"),
        retrieval_captions="first",
        source=f"XM3600 captions.jsonl ({len(captions)} images, {len(langs)} languages)",
    )
