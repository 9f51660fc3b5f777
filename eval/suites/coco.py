"""COCO captions, Karpathy split: the 5,000 test images (split="test") with their 5 English captions.

Download dataset_coco.json from Karpathy's caption_datasets.zip
(https://cs.stanford.edu/people/karpathy/deepimagesent/caption_datasets.zip) and the COCO 2014 images
(http://images.cocodataset.org/zips/val2014.zip; train2014.zip too for split="train" or "restval").
Layout under root:

    dataset_coco.json     {"images": [{"filepath", "filename", "imgid", "split", "sentids", "cocoid",
                          "sentences": [{"raw", "tokens", "imgid", "sentid"}]}], "dataset": "coco"}
    val2014/, train2014/  the images, at <filepath>/<filename>

Captions are the "raw" sentences (stripped); "tokens" are ignored. Keys are the COCO ids.
"""

from __future__ import annotations

from pathlib import Path

from eval.suites import Benchmark, BenchmarkDataError, BenchmarkImage
from eval.suites._checks import check_images, check_root, field, pick_languages, read_json, text

LANGUAGES = ("en",)
SPLITS = ("train", "restval", "val", "test")


def load_coco(root: Path, languages: list[str] | None = None, *, split: str = "test") -> Benchmark:
    root = check_root(root, "COCO Karpathy")
    if split not in SPLITS:
        raise BenchmarkDataError(f"COCO Karpathy has no split {split!r}; available: {' '.join(SPLITS)}")
    langs = pick_languages("COCO Karpathy", languages, LANGUAGES)
    path = root / "dataset_coco.json"
    images = []
    for i, record in enumerate(field(read_json(path), "images", list, str(path))):
        where = f"{path}: images[{i}]"
        if field(record, "split", str, where) != split:
            continue
        key = str(field(record, "cocoid", int, where))
        where = f"{where} (cocoid {key})"
        sentences = field(record, "sentences", list, where)
        if not sentences:
            raise BenchmarkDataError(f"{where}: field 'sentences' is an empty list")
        captions = [text(sentence, "raw", where, f"sentences[{j}].raw") for j, sentence in enumerate(sentences)]
        image = root / text(record, "filepath", where) / text(record, "filename", where)
        images.append(BenchmarkImage(key, image, {"en": captions}))
    if not images:
        raise BenchmarkDataError(f"{path}: no image has split {split!r}")
    check_images(image.image for image in images)
    return Benchmark(
        name="coco",
        languages=langs,
        images=images,
        tasks=("retrieval", "captioning"),
        retrieval_captions="all",
        source=f"COCO Karpathy dataset_coco.json, split {split!r} ({len(images)} images)",
    )
