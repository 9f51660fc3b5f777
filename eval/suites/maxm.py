"""MaXM: test-only multilingual VQA on XM3600 images, questions and answers in 7 languages.

Download https://storage.googleapis.com/maxm/maxm_v1_release.zip (https://github.com/google-research-datasets/maxm)
and the XM3600 images (https://google.github.io/crossmodal-3600/, images.tgz). The zip holds one folder,
maxm_v1_release/, with the json files (mBLIP reads them from there). Layout under root:

    maxm_v1_release/maxm_v1_<code>.json   as unzipped (or maxm_v1_<code>.json directly under root: `unzip -j`);
                                          code: en fr hi iw ro th zh (MaXM writes Hebrew as "iw")
    images/<image_id>.jpg                 the XM3600 images: images/ (a link to XM3600's images/ will do),
                                          maxm_v1_release/images/, or XM3600's own folder linked in whole as
                                          xm3600/ (CLIP_benchmark's name) or Crossmodal3600/ (mBLIP's)

File schema (the release README): {"dataset", "version", "split", "annotations": [{"image_id", "image_url",
"qa_pairs": [{"question_id", "question", "answers", "processed_answers", "is_collection"}]}]}. The references
are "processed_answers", several valid answers per question (mBLIP and Centurio score exact match against
any of them). Hebrew is exposed as "he", the repo's code; "iw" is accepted as an alias when asking for it.
"""

from __future__ import annotations

from pathlib import Path

from eval.suites import Benchmark, BenchmarkDataError, BenchmarkImage
from eval.suites._checks import (
    brace,
    check_images,
    check_root,
    field,
    find_layout,
    locate_images,
    pick_languages,
    place,
    read_json,
    text,
    texts,
)

LANGUAGES = ("en", "fr", "he", "hi", "ro", "th", "zh")
FILE_CODES = {"he": "iw"}  # the repo's code -> MaXM's file code
ANNOTATION_LAYOUTS = ("maxm_v1_{name}.json", "maxm_v1_release/maxm_v1_{name}.json")  # {name}: a file code
IMAGE_LAYOUTS = ("images/{name}", "maxm_v1_release/images/{name}", "xm3600/images/{name}",
                 "Crossmodal3600/images/{name}")


def _questions(path: Path, lang: str) -> dict[str, list[dict]]:
    """image_id -> the file's questions on it, in file order."""
    annotations = field(read_json(path), "annotations", list, str(path))
    if not annotations:
        raise BenchmarkDataError(f"{path}: field 'annotations' is an empty list")
    questions: dict[str, list[dict]] = {}
    for i, annotation in enumerate(annotations):
        where = f"{path}: annotation {i}"
        image_id = text(annotation, "image_id", where)
        for j, pair in enumerate(field(annotation, "qa_pairs", list, where)):
            pair_where = f"{where} (image {image_id!r}): qa_pairs[{j}]"
            questions.setdefault(image_id, []).append({
                "question_id": text(pair, "question_id", pair_where),
                "lang": lang,
                "question": text(pair, "question", pair_where),
                "answers": texts(pair, "processed_answers", pair_where),
                "type": "all",
            })
    return questions


def load_maxm(root: Path, languages: list[str] | None = None) -> Benchmark:
    root = check_root(root, "MaXM")
    langs = pick_languages("MaXM", languages, LANGUAGES, aliases={code: lang for lang, code in FILE_CODES.items()})
    codes = [FILE_CODES.get(lang, lang) for lang in langs]
    layout = find_layout(root, ANNOTATION_LAYOUTS, codes, "annotation file")
    questions: dict[str, list[dict]] = {}
    for lang, code in zip(langs, codes, strict=True):
        for image_id, qa in _questions(place(root, layout, code), lang).items():
            questions.setdefault(image_id, []).extend(qa)
    keys = sorted(questions)
    paths = locate_images(root, IMAGE_LAYOUTS, [f"{key}.jpg" for key in keys])
    check_images(paths)
    n_questions = sum(len(qa) for qa in questions.values())
    return Benchmark(
        name="maxm",
        languages=langs,
        images=[BenchmarkImage(key, path, qa=questions[key]) for key, path in zip(keys, paths, strict=True)],
        tasks=("vqa",),
        answer_language=None,
        source=f"MaXM v1: {layout.format(name=brace(codes))} ({n_questions} questions on {len(keys)} XM3600 images)",
    )
