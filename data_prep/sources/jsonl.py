"""JSON lines: one object per line, our own minimal schema for users with their own data.

    {"image": "path relative to --images, else to the .jsonl file's folder (or absolute)",
     "captions": {"en": ["...", ...], "de": "..."}   or   "caption": "..." (language: --lang's),
     "qa": [{"question": "...", "answers": ["..."] or "...", "lang": "en" (default: --lang's)}],
     "id": "optional; else the key comes from the image path", ...any other fields}

Captions in any language are kept as given (codes checked against data_prep.languages; "und" leaves them to
--lang like "caption"). Record: captions, qa (with "lang"), source = {"format": "jsonl", "file", "line",
"image", ...the line's other fields}.

Skipped (the line number is in the debug log): bad_json (not JSON or not an object), no_image (no "image"
string), bad_record (captions/qa of the wrong shape), unknown_language, no_text (neither a caption nor a qa
item), missing_image, bad_image, unsupported_image. Blank lines are ignored.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from itertools import islice
from pathlib import Path

from data_prep.languages import get_language
from data_prep.sources import (
    UNDETERMINED,
    Sample,
    Skip,
    Source,
    existing_file,
    images_root,
    read_image_file,
    require_some_images,
    texts,
    usable,
)

_TEXT_FIELDS = ("image", "captions", "caption", "qa")
_PROBED_LINES = 100  # lines read up front to check the schema and the images folder


def check(inputs: list[str], images: str = "") -> Source:
    files = [(path, images_root(images, path.parent)) for path in map(existing_file, inputs)]
    for path, root in files:
        _check_head(path, root)
    stats: Counter = Counter()
    lines = ((f"{path}:{number}", (path, root, number, line)) for path, root in files
             for number, line in _lines(path))
    return Source(usable(lines, _sample, stats), stats)


def _lines(path: Path) -> Iterator[tuple[int, bytes]]:
    """(line number, bytes) of the non-blank lines; json.loads decodes them (bad UTF-8 is then bad_json)."""
    with path.open("rb") as lines:
        for number, line in enumerate(lines, 1):
            if line.strip():
                yield number, line


def _check_head(path: Path, root: Path) -> None:
    """The first line must be a JSON object (catches a .json list or a wrong file); the first images must exist."""
    head = list(islice(_lines(path), _PROBED_LINES))
    if not head:
        raise ValueError(f"{path}: empty file")
    number, first = head[0]
    try:
        obj = json.loads(first)
    except ValueError:
        obj = None
    if not isinstance(obj, dict):
        raise ValueError(f"{path}: line {number} is not a JSON object; expected one object per line "
                         f"(a .json list is --format llava or coco)")
    require_some_images((root / image for image in map(_image_field, head) if image), str(path))


def _image_field(line: tuple[int, bytes]) -> str:
    try:
        obj = json.loads(line[1])
    except ValueError:
        return ""
    return obj.get("image") if isinstance(obj, dict) and isinstance(obj.get("image"), str) else ""


def _captions(obj: dict) -> dict[str, list[str]]:
    given = obj.get("captions", {})
    if not isinstance(given, dict):
        raise Skip("bad_record", "captions is not an object")
    captions = {lang: texts(value) for lang, value in given.items()}
    if obj.get("caption") is not None:
        captions.setdefault(UNDETERMINED, []).extend(texts(obj["caption"]))
    return {lang: caps for lang, caps in captions.items() if caps}


def _qa(obj: dict) -> list[dict]:
    given = obj.get("qa", [])
    if not isinstance(given, list):
        raise Skip("bad_record", "qa is not a list")
    items = []
    for item in given:
        if not isinstance(item, dict) or not isinstance(item.get("question"), str):
            raise Skip("bad_record", f"qa item without a question: {item!r:.80}")
        question, answers = item["question"].strip(), texts(item.get("answers"))
        if not question or not answers:
            raise Skip("bad_record", "qa item with an empty question or no answer")
        lang = item.get("lang") or UNDETERMINED
        if not isinstance(lang, str):
            raise Skip("bad_record", f"qa item lang {lang!r:.40}")
        items.append({"lang": lang, "question": question, "answers": answers})
    return items


def _sample(item: tuple[Path, Path, int, bytes]) -> Sample:
    path, root, number, line = item
    try:
        obj = json.loads(line)
    except ValueError as err:
        raise Skip("bad_json", str(err)) from None
    if not isinstance(obj, dict):
        raise Skip("bad_json", "not a JSON object")
    image = obj.get("image")
    if not isinstance(image, str) or not image:
        raise Skip("no_image")
    captions, qa = _captions(obj), _qa(obj)
    if not captions and not qa:
        raise Skip("no_text")
    try:
        for lang in {*captions, *(entry["lang"] for entry in qa)} - {UNDETERMINED}:
            get_language(lang)
    except ValueError as err:
        raise Skip("unknown_language", str(err)) from None
    data = read_image_file(root / image)
    source_id = str(obj["id"]) if obj.get("id") is not None else str(Path(image).with_suffix(""))
    extra = {name: value for name, value in obj.items() if name not in _TEXT_FIELDS}
    source = {**extra, "format": "jsonl", "file": str(path), "line": number, "image": image}
    return Sample(source_id, data, {"captions": captions, "qa": qa, "source": source})
