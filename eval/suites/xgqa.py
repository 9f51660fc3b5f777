"""xGQA: GQA test-dev questions translated into 7 languages, answered in English.

Questions from IGLUE (https://github.com/e-bug/iglue, datasets/xGQA/annotations) or from a clone of
https://github.com/adapter-hub/xGQA (the same files under data/ instead of annotations/); images from GQA
(https://cs.stanford.edu/people/dorarad/gqa/download.html, images.zip unzips to images/). Layout under root
(IGLUE's datasets/xGQA, or the adapter-hub clone):

    annotations/few_shot/<lang>/test.json                          split="test" (default): IGLUE's test set
                                                                   (9,666 questions on 300 images; IGLUE,
                                                                   mBLIP, Centurio)
    annotations/few_shot/<lang>/dev.json                           split="dev": its dev set (1,422 questions)
    annotations/zero_shot/testdev_balanced_questions_<lang>.json   split="testdev": GQA test-dev balanced
    images/<imageId>.jpg

Each file is GQA's question format: {"<question id>": {"imageId", "question", "answer", "types":
{"structural", "semantic", "detailed"}, "fullAnswer", "semantic", ...}}. The question type is GQA's
structural type (verify, query, choose, logical, compare).
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
)

LANGUAGES = ("bn", "de", "en", "id", "ko", "pt", "ru", "zh")
SPLITS = {  # {name}: a language
    "test": "few_shot/{name}/test.json",
    "dev": "few_shot/{name}/dev.json",
    "testdev": "zero_shot/testdev_balanced_questions_{name}.json",
}
FOLDERS = ("annotations", "data")  # IGLUE's, adapter-hub/xGQA's
IMAGE_LAYOUTS = ("images/{name}",)


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
    layout = find_layout(root, [f"{folder}/{SPLITS[split]}" for folder in FOLDERS], langs, "annotation file")
    questions: dict[str, list[dict]] = {}
    for lang in langs:
        path = place(root, layout, lang)
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
    keys = sorted(questions)
    paths = locate_images(root, IMAGE_LAYOUTS, [f"{key}.jpg" for key in keys])
    check_images(paths)
    n_questions = sum(len(qa) for qa in questions.values())
    return Benchmark(
        name="xgqa",
        languages=langs,
        images=[BenchmarkImage(key, path, qa=questions[key]) for key, path in zip(keys, paths, strict=True)],
        tasks=("vqa",),
        answer_language="en",
        source=f"xGQA {split}: {layout.format(name=brace(langs))} ({n_questions} questions on {len(keys)} GQA images)",
    )
