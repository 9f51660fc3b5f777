"""Two Flickr30k-based caption suites.

Multi30K Task 1 test 2016 (`load_multi30k`): 1,000 Flickr30k images, one English caption each with its German,
French and Czech translation. Clone https://github.com/multi30k/dataset as root and add the images:

    data/task1/image_splits/test_2016_flickr.txt    one image file name per line
    data/task1/raw/test_2016_flickr.<lang>[.gz]     lang: en de fr cs; line i describes image i (gzipped as
                                                    published, or unpacked)
    flickr30k-images/<file name>

xFlickr&CO from IGLUE (`load_xflickrco`): 1,000 Flickr30k and 1,000 COCO val2014 images, one caption each in
8 languages. Annotations from https://github.com/e-bug/iglue (datasets/xFlickrCO/annotations):

    annotations/<lang>/test.jsonl      one JSON object per line: {"sentences": [caption], "id": "<flickr id>"
                                       or <coco id>, "img_path": "<file name>"}
    flickr30k-images/<img_path>        Flickr30k images
    val2014/<img_path>                 COCO images (img_path "COCO_val2014_*.jpg")

Flickr30k images: request form at https://shannon.cs.illinois.edu/DenotationGraph/ (IGLUE links the Kaggle
mirror hsankesara/flickr-image-dataset); COCO: http://images.cocodataset.org/zips/val2014.zip. An image's key
is its file name without extension; xFlickr&CO images are sorted by key, Multi30K's keep the split file's order.
"""

from __future__ import annotations

from pathlib import Path

from eval.suites import Benchmark, BenchmarkDataError, BenchmarkImage
from eval.suites._checks import (
    brace,
    check_images,
    check_root,
    pick_languages,
    read_jsonl,
    read_lines,
    require_file,
    text,
    texts,
)

LANGUAGES = ("en", "de", "fr", "cs")
SPLIT = "test_2016_flickr"
XFLICKRCO_LANGUAGES = ("de", "en", "es", "id", "ja", "ru", "tr", "zh")
COCO_PREFIX = "COCO_val2014_"


def load_multi30k(root: Path, languages: list[str] | None = None) -> Benchmark:
    root = check_root(root, "Multi30K")
    langs = pick_languages("Multi30K", languages, LANGUAGES)
    split_path = require_file(root / "data" / "task1" / "image_splits" / f"{SPLIT}.txt")
    names = [name.strip() for name in read_lines(split_path)]
    if not names:
        raise BenchmarkDataError(f"{split_path}: no image names")
    seen: dict[str, int] = {}
    for number, name in enumerate(names, start=1):
        if not name:
            raise BenchmarkDataError(f"{split_path}: line {number}: empty image name")
        if name in seen:
            raise BenchmarkDataError(f"{split_path}: line {number}: image {name!r} already on line {seen[name]}")
        seen[name] = number
    captions: dict[str, list[str]] = {}
    for lang in langs:
        path = root / "data" / "task1" / "raw" / f"{SPLIT}.{lang}"
        lines = read_lines(path)
        if len(lines) != len(names):
            raise BenchmarkDataError(f"{path}: {len(lines)} lines, but {split_path.name} lists {len(names)} images")
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                raise BenchmarkDataError(f"{path}: line {number}: empty caption")
        captions[lang] = [line.strip() for line in lines]
    images = [BenchmarkImage(Path(name).stem, root / "flickr30k-images" / name,
                             {lang: [captions[lang][i]] for lang in langs}) for i, name in enumerate(names)]
    check_images(image.image for image in images)
    return Benchmark(
        name="multi30k",
        languages=langs,
        images=images,
        tasks=("retrieval", "captioning"),
        retrieval_captions="all",
        source=f"Multi30K task1 {SPLIT}: image_splits/{SPLIT}.txt, raw/{SPLIT}.{brace(langs)} "
               f"({len(images)} Flickr30k images)",
    )


def _xflickrco_image(root: Path, name: str) -> Path:
    return root / ("val2014" if name.startswith(COCO_PREFIX) else "flickr30k-images") / name


def load_xflickrco(root: Path, languages: list[str] | None = None) -> Benchmark:
    root = check_root(root, "xFlickr&CO")
    langs = pick_languages("xFlickr&CO", languages, XFLICKRCO_LANGUAGES)
    captions: dict[str, dict[str, list[str]]] = {}  # file name -> language -> captions
    for lang in langs:
        path = root / "annotations" / lang / "test.jsonl"
        lines: dict[str, int] = {}
        for number, record in read_jsonl(path):
            where = f"{path}: line {number}"
            name = text(record, "img_path", where)
            if name in lines:
                raise BenchmarkDataError(f"{where}: img_path {name!r} already on line {lines[name]}")
            lines[name] = number
            captions.setdefault(name, {})[lang] = texts(record, "sentences", where)
        if not lines:
            raise BenchmarkDataError(f"{path}: no records")
    images = [BenchmarkImage(Path(name).stem, _xflickrco_image(root, name), captions[name])
              for name in sorted(captions, key=lambda name: Path(name).stem)]
    check_images(image.image for image in images)
    n_coco = sum(name.startswith(COCO_PREFIX) for name in captions)
    return Benchmark(
        name="xflickrco",
        languages=langs,
        images=images,
        tasks=("retrieval", "captioning"),
        retrieval_captions="all",
        source=f"xFlickr&CO annotations/{brace(langs)}/test.jsonl "
               f"({len(images) - n_coco} Flickr30k + {n_coco} COCO images)",
    )
