"""Two multilingual caption suites on Flickr30k (and more Flickr and COCO) photos.

Multi30K Task 1 (`load_multi30k`): one English caption per image with its German, French and Czech
translations. Clone https://github.com/multi30k/dataset as root (or unzip GitHub's dataset-master.zip there)
and add the images of the split you score:

    data/task1/image_splits/<split>.txt     one image file name per line (test_2017_mscoco: "<file>#<COCO
                                            caption id>")
    data/task1/raw/<split>.<lang>[.gz]      line i describes image i (gzipped as published, or unpacked)

Splits (eval.split), their languages, and where their photos come from and may sit under root:

    test_2016_flickr (default)  en de fr cs  1,000 Flickr30k photos: flickr30k-images/ (the official tarball),
                                             flickr30k_images/flickr30k_images/ or flickr30k_images/ (Kaggle's zip)
    val                         en de fr cs  1,014 Flickr30k photos, in the same folders
    test_2017_flickr            en de fr     1,000 new Flickr photos (test_2017-flickr-images.tar.gz, from the
                                             repo README's Google Drive): task1/ (as it unpacks), test_2017_flickr/
    test_2018_flickr            en de fr cs  1,071 new Flickr photos (test_2018-flickr-images.tar.gz, same Drive;
                                             it holds no folder): test_2018_flickr/
    test_2017_mscoco            en de fr     461 COCO photos, "Ambiguous COCO": translated_images/ (as WMT17's
                                             images_mscoco.task1.tar.gz unpacks), test_2017_mscoco/, or COCO's
                                             own train2014/ and val2014/

Every split also takes one folder holding the photos of all splits, images/ or data/task1/images/ (how
multimodal-translation recipes link them). There are no Czech references for 2017. The train split (29,000
images) is for training and not offered here.

xFlickr&CO from IGLUE (`load_xflickrco`): 1,000 Flickr30k and 1,000 COCO val2014 images, one caption each in
8 languages. Annotations from https://github.com/e-bug/iglue (datasets/xFlickrCO/annotations):

    annotations/<lang>/test.jsonl      one JSON object per line: {"sentences": [caption], "id": "<flickr id>"
                                       or <coco id>, "img_path": "<file name>"}
    flickr30k-images/<img_path>        Flickr30k images (or Kaggle's flickr30k_images/[flickr30k_images/], or
                                       images/)
    val2014/<img_path>                 COCO images, img_path "COCO_val2014_*.jpg" (or images/val2014/, images/)

Flickr30k images: request form at https://shannon.cs.illinois.edu/DenotationGraph/ (IGLUE links the Kaggle
mirror hsankesara/flickr-image-dataset); COCO: http://images.cocodataset.org/zips/val2014.zip. An image's key
is its file name without extension; xFlickr&CO images are sorted by key, Multi30K's keep the split file's order.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from eval.suites import Benchmark, BenchmarkDataError, BenchmarkImage
from eval.suites._checks import (
    brace,
    check_images,
    check_root,
    find_layout,
    locate_images,
    pick_languages,
    place,
    read_jsonl,
    read_lines,
    text,
    texts,
)

LANGUAGES = ("en", "de", "fr", "cs")
XFLICKRCO_LANGUAGES = ("de", "en", "es", "id", "ja", "ru", "tr", "zh")
COCO_PREFIX = "COCO_"
# Image layouts: path templates under root over a file's {name} and {coco} (its COCO 2014 folder).
FLICKR30K = ("flickr30k-images/{name}",  # the official tarball
             "flickr30k_images/flickr30k_images/{name}", "flickr30k_images/{name}")  # Kaggle's zip, or its inner folder
COCO_2014 = ("{coco}/{name}", "images/{coco}/{name}")  # train2014.zip, val2014.zip
ALL_IN_ONE = "images/{name}"  # one folder holding every image
MULTI30K_ALL_IN_ONE = (ALL_IN_ONE, "data/task1/images/{name}")
SPLIT_FILES = ("data/task1/image_splits/{name}.txt", "dataset-master/data/task1/image_splits/{name}.txt")


@dataclass(frozen=True)
class Split:
    languages: tuple[str, ...]  # those with references in the repo's data/task1/raw
    images: tuple[str, ...]  # image layouts, the archive's own first
    source: str  # where the photos come from, for `Benchmark.source`


SPLITS = {
    "test_2016_flickr": Split(LANGUAGES, (*FLICKR30K, *MULTI30K_ALL_IN_ONE), "Flickr30k"),
    "test_2017_flickr": Split(("en", "de", "fr"), ("task1/{name}", "test_2017_flickr/{name}", *MULTI30K_ALL_IN_ONE),
                              "Flickr"),
    "test_2018_flickr": Split(LANGUAGES, ("test_2018_flickr/{name}", *MULTI30K_ALL_IN_ONE), "Flickr"),
    "test_2017_mscoco": Split(("en", "de", "fr"), ("translated_images/{name}", "test_2017_mscoco/{name}", *COCO_2014,
                                                   *MULTI30K_ALL_IN_ONE), "COCO"),
    "val": Split(LANGUAGES, (*FLICKR30K, *MULTI30K_ALL_IN_ONE), "Flickr30k"),
}


def _image_names(split_path: Path) -> list[str]:
    """The split file's image file names, in order (test_2017_mscoco's "#<caption id>" dropped), each once."""
    names = [line.strip().split("#")[0] for line in read_lines(split_path)]
    if not names:
        raise BenchmarkDataError(f"{split_path}: no image names")
    seen: dict[str, int] = {}
    for number, name in enumerate(names, start=1):
        if not name:
            raise BenchmarkDataError(f"{split_path}: line {number}: empty image name")
        if name in seen:
            raise BenchmarkDataError(f"{split_path}: line {number}: image {name!r} already on line {seen[name]}")
        seen[name] = number
    return names


def _captions(path: Path, n_images: int, split_path: Path) -> list[str]:
    """One caption per line of `path` (or of its .gz), as many lines as the split file lists images."""
    lines = read_lines(path)
    if len(lines) != n_images:
        raise BenchmarkDataError(f"{path}: {len(lines)} lines, but {split_path.name} lists {n_images} images")
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            raise BenchmarkDataError(f"{path}: line {number}: empty caption")
    return [line.strip() for line in lines]


def load_multi30k(root: Path, languages: list[str] | None = None, *, split: str = "test_2016_flickr") -> Benchmark:
    root = check_root(root, "Multi30K")
    if split not in SPLITS:
        raise BenchmarkDataError(f"Multi30K has no split {split!r}; available: {' '.join(SPLITS)}")
    spec = SPLITS[split]
    langs = pick_languages(f"Multi30K {split}", languages, spec.languages)
    split_path = place(root, find_layout(root, SPLIT_FILES, [split], "annotation file"), split)
    names = _image_names(split_path)
    raw = split_path.parent.parent / "raw"
    captions = {lang: _captions(raw / f"{split}.{lang}", len(names), split_path) for lang in langs}
    paths = locate_images(root, spec.images, names)
    check_images(paths)
    return Benchmark(
        name="multi30k",
        languages=langs,
        images=[BenchmarkImage(Path(name).stem, path, {lang: [captions[lang][i]] for lang in langs})
                for i, (name, path) in enumerate(zip(names, paths, strict=True))],
        tasks=("retrieval", "captioning"),
        retrieval_captions="all",
        parallel_captions=True,
        source=f"Multi30K task1 {split}: image_splits/{split}.txt, raw/{split}.{brace(langs)} "
               f"({len(names)} {spec.source} images)",
    )


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
    names = sorted(captions, key=lambda name: Path(name).stem)
    coco = [name for name in names if name.startswith(COCO_PREFIX)]
    flickr = [name for name in names if not name.startswith(COCO_PREFIX)]
    # Flickr30k and COCO photos come from two downloads, each in its own layout.
    paths = dict(zip(flickr, locate_images(root, (*FLICKR30K, ALL_IN_ONE), flickr), strict=True))
    paths.update(zip(coco, locate_images(root, (*COCO_2014, ALL_IN_ONE), coco), strict=True))
    check_images(paths[name] for name in names)
    return Benchmark(
        name="xflickrco",
        languages=langs,
        images=[BenchmarkImage(Path(name).stem, paths[name], captions[name]) for name in names],
        tasks=("retrieval", "captioning"),
        retrieval_captions="all",
        source=f"xFlickr&CO annotations/{brace(langs)}/test.jsonl "
               f"({len(flickr)} Flickr30k + {len(coco)} COCO images)",
    )
