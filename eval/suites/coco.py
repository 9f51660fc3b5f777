"""COCO captions, Karpathy split: the 5,000 test images (split="test") with their 5 English captions.

Download dataset_coco.json from Karpathy's caption_datasets.zip
(https://cs.stanford.edu/people/karpathy/deepimagesent/caption_datasets.zip; it unzips without a folder) and
the COCO 2014 images (http://images.cocodataset.org/zips/val2014.zip; train2014.zip too for split="train" or
"restval"). Layout under root:

    dataset_coco.json     {"images": [{"filepath", "filename", "imgid", "split", "sentids", "cocoid",
                          "sentences": [{"raw", "tokens", "imgid", "sentid"}]}], "dataset": "coco"}
                          (or annotations/dataset_coco.json, caption_datasets/dataset_coco.json)
    val2014/, train2014/  the images, at <filepath>/<filename> (or under images/: images/val2014/...)

Captions are the "raw" sentences (stripped); "tokens" are ignored. Keys are the COCO ids.
"""

from __future__ import annotations

from pathlib import Path

from eval.suites import Benchmark, BenchmarkDataError, BenchmarkImage
from eval.suites._checks import (
    check_images,
    check_root,
    field,
    find_layout,
    locate_images,
    pick_languages,
    place,
    read_json,
    text,
)

LANGUAGES = ("en",)
SPLITS = ("test", "val", "restval", "train")
ANNOTATION_LAYOUTS = ("{name}", "annotations/{name}", "caption_datasets/{name}")
IMAGE_LAYOUTS = ("{name}", "images/{name}")  # {name}: <filepath>/<filename>


def load_coco(root: Path, languages: list[str] | None = None, *, split: str = "test") -> Benchmark:
    root = check_root(root, "COCO Karpathy")
    if split not in SPLITS:
        raise BenchmarkDataError(f"COCO Karpathy has no split {split!r}; available: {' '.join(SPLITS)}")
    langs = pick_languages("COCO Karpathy", languages, LANGUAGES)
    path = place(root, find_layout(root, ANNOTATION_LAYOUTS, ["dataset_coco.json"], "annotation file"),
                 "dataset_coco.json")
    keys, captions, names = [], [], []
    for i, record in enumerate(field(read_json(path), "images", list, str(path))):
        where = f"{path}: images[{i}]"
        if field(record, "split", str, where) != split:
            continue
        key = str(field(record, "cocoid", int, where))
        where = f"{where} (cocoid {key})"
        sentences = field(record, "sentences", list, where)
        if not sentences:
            raise BenchmarkDataError(f"{where}: field 'sentences' is an empty list")
        keys.append(key)
        captions.append([text(sentence, "raw", where, f"sentences[{j}].raw") for j, sentence in enumerate(sentences)])
        names.append(f"{text(record, 'filepath', where)}/{text(record, 'filename', where)}")
    if not keys:
        raise BenchmarkDataError(f"{path}: no image has split {split!r}")
    paths = locate_images(root, IMAGE_LAYOUTS, names)
    check_images(paths)
    return Benchmark(
        name="coco",
        languages=langs,
        images=[BenchmarkImage(key, image, {"en": refs}) for key, image, refs in zip(keys, paths, captions, strict=True)],
        tasks=("retrieval", "captioning"),
        retrieval_captions="all",
        source=f"COCO Karpathy {path.relative_to(root)}, split {split!r} ({len(keys)} images)",
    )
