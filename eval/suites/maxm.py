"""MaXM: test-only multilingual VQA on XM3600 images, questions and answers in 7 languages.

Download https://storage.googleapis.com/maxm/maxm_v1_release.zip (https://github.com/google-research-datasets/maxm)
and the XM3600 images (https://google.github.io/crossmodal-3600/, images.tgz). Layout under root:

    maxm_v1_<code>.json       code: en fr hi iw ro th zh (MaXM writes Hebrew as "iw")
    images/<image_id>.jpg     the XM3600 images (a link to an XM3600 images/ folder will do)

File schema (the release README): {"dataset", "version", "split", "annotations": [{"image_id", "image_url",
"qa_pairs": [{"question_id", "question", "answers", "processed_answers", "is_collection"}]}]}. The references
are "processed_answers", several valid answers per question (mBLIP and Centurio score exact match against
any of them). Hebrew is exposed as "he", the repo's code; "iw" is accepted as an alias when asking for it.
"""

from __future__ import annotations

from pathlib import Path

from eval.suites import Benchmark, BenchmarkDataError, BenchmarkImage
from eval.suites._checks import brace, check_images, check_root, field, pick_languages, read_json, text, texts

LANGUAGES = ("en", "fr", "he", "hi", "ro", "th", "zh")
FILE_CODES = {"he": "iw"}  # the repo's code -> MaXM's file code


def load_maxm(root: Path, languages: list[str] | None = None) -> Benchmark:
    root = check_root(root, "MaXM")
    langs = pick_languages("MaXM", languages, LANGUAGES, aliases={code: lang for lang, code in FILE_CODES.items()})
    codes = [FILE_CODES.get(lang, lang) for lang in langs]
    questions: dict[str, list[dict]] = {}
    for lang, code in zip(langs, codes, strict=True):
        path = root / f"maxm_v1_{code}.json"
        annotations = field(read_json(path), "annotations", list, str(path))
        if not annotations:
            raise BenchmarkDataError(f"{path}: field 'annotations' is an empty list")
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
    images = [BenchmarkImage(key, root / "images" / f"{key}.jpg", qa=questions[key]) for key in sorted(questions)]
    check_images(image.image for image in images)
    n_questions = sum(len(image.qa) for image in images)
    return Benchmark(
        name="maxm",
        languages=langs,
        images=images,
        tasks=("vqa",),
        answer_language=None,
        source=f"MaXM v1: maxm_v1_{brace(codes)}.json ({n_questions} questions on {len(images)} XM3600 images)",
    )
