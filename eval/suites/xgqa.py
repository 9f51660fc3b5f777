"""xGQA: GQA test-dev questions translated into 7 languages, answered in English.

Questions from https://github.com/adapter-hub/xGQA (data/zero_shot, data/few_shot) or the same files in
IGLUE (https://github.com/e-bug/iglue, datasets/xGQA/annotations); images from GQA
(https://cs.stanford.edu/people/dorarad/gqa/download.html, images.zip). Layout under root (IGLUE's):

    annotations/few_shot/<lang>/test.json                          split="test" (default): IGLUE's test set
                                                                   (9,666 questions; IGLUE, mBLIP, Centurio)
    annotations/zero_shot/testdev_balanced_questions_<lang>.json   split="testdev": GQA test-dev balanced
    images/<imageId>.jpg

Each file is GQA's question format: {"<question id>": {"imageId", "question", "answer", "types":
{"structural", "semantic", "detailed"}, "fullAnswer", "semantic", ...}}. The question type is GQA's
structural type (verify, query, choose, logical, compare).
"""

from __future__ import annotations

from pathlib import Path

from eval.suites import Benchmark, BenchmarkDataError, BenchmarkImage
from eval.suites._checks import brace, check_images, check_root, field, pick_languages, read_json, text

LANGUAGES = ("bn", "de", "en", "id", "ko", "pt", "ru", "zh")
SPLITS = {
    "testdev": "annotations/zero_shot/testdev_balanced_questions_{lang}.json",
    "test": "annotations/few_shot/{lang}/test.json",
}


def _question_type(item: dict, where: str) -> str:
    if "types" not in item:
        return "all"
    types = field(item, "types", dict, where)
    return field(types, "structural", str, where, "types.structural") if "structural" in types else "all"


def load_xgqa(root: Path, languages: list[str] | None = None, *, split: str = "test") -> Benchmark:
    root = check_root(root, "xGQA")
    if split not in SPLITS:
        raise BenchmarkDataError(f"xGQA has no split {split!r}; available: {' '.join(SPLITS)}")
    langs = pick_languages("xGQA", languages, LANGUAGES)
    questions: dict[str, list[dict]] = {}
    for lang in langs:
        path = root / SPLITS[split].format(lang=lang)
        data = read_json(path)
        if not isinstance(data, dict) or not data:
            raise BenchmarkDataError(f"{path}: expected a non-empty JSON object of question id -> question")
        for question_id, item in data.items():
            where = f"{path}: question {question_id!r}"
            image_id = field(item, "imageId", str, where)
            questions.setdefault(image_id, []).append({
                "question_id": question_id,
                "lang": lang,
                "question": text(item, "question", where),
                "answers": [text(item, "answer", where)],
                "type": _question_type(item, where),
            })
    images = [BenchmarkImage(key, root / "images" / f"{key}.jpg", qa=questions[key]) for key in sorted(questions)]
    check_images(image.image for image in images)
    n_questions = sum(len(image.qa) for image in images)
    return Benchmark(
        name="xgqa",
        languages=langs,
        images=images,
        tasks=("vqa",),
        answer_language="en",
        source=f"xGQA {split}: {SPLITS[split].format(lang=brace(langs))} "
               f"({n_questions} questions on {len(images)} GQA images)",
    )
