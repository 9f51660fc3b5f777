"""Readers for the formats users already have (img2dataset, COCO, LLaVA, JSONL), for `vlm prep shards`.

Each format module has `check(inputs, images, ...) -> Source`: it validates the inputs up front (raising one
clear one-line FileNotFoundError or ValueError naming the file) and returns a Source whose `samples`
generator yields one `Sample` per usable image, counting every skipped one in `stats` by reason.

Every image is decoded in full here, by the decoder training uses (data_prep.images), so what prep keeps,
training can read: skipped/empty_image (0 bytes), skipped/bad_image (corrupt or truncated: PIL's `verify`
passes a cut-off JPEG), skipped/decompression_bomb (over PIL's pixel limit, from the header alone: never
decoded), skipped/unsupported_image (not JPEG, PNG or WebP). The bytes pass through unchanged; images that
training converts to RGB are counted as converted/<kind> (cmyk, 16bit, grayscale, palette, alpha). A record
with a text that cannot be written as UTF-8 (a lone surrogate from a "\\ud800" escape) is skipped/bad_text.

Every record has the same shape, whatever the format:

    {"captions": {"und": ["...", ...]},                      # {} when the source has none (LLaVA)
     "qa": [{"lang": "und", "question": "...", "answers": ["..."]}, ...],
     "source": {"format": "...", ...}}                        # provenance: file, id, url, line, ...

A text whose language the source does not state is under UNDETERMINED ("und"); data_prep.sources.language_tags
gives it one (`vlm prep shards --lang`) before it is written.
"""

from __future__ import annotations

import json
import logging
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from itertools import islice
from pathlib import Path
from typing import TypeVar

from data_prep.images import CORRUPT, BadImage, inspect_image

log = logging.getLogger(__name__)

_EXTENSION_OF_FORMAT = {"JPEG": "jpg", "PNG": "png", "WEBP": "webp"}  # what the training stream decodes
_PROBED_IMAGES = 20  # an images folder is called wrong when none of the first this many images is in it

T = TypeVar("T")
UNDETERMINED = "und"  # ISO 639-2 for "undetermined": the language of the text is --lang's to decide


@dataclass
class Sample:
    id: str  # the source's own id (COCO image id, LLaVA id, img2dataset key...); the driver makes it tar-safe
    image: bytes  # passed through unchanged
    record: dict
    ext: str = ""  # jpg | png | webp, from the image bytes themselves (not the file name); set by `usable`


@dataclass
class Source:
    """Validated inputs, ready to stream. `samples` is a generator: nothing is read before iterating it."""

    samples: Iterator[Sample]
    stats: Counter  # "skipped/<reason>" -> count, filled while `samples` runs
    info: dict = field(default_factory=dict)  # format-specific provenance for the manifest's "source"


class Skip(Exception):
    """A sample that cannot be used; counted as stats["skipped/<reason>"]."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(reason, detail)
        self.reason, self.detail = reason, detail


def usable(items: Iterable[tuple[str, T]], make: Callable[[T], Sample], stats: Counter) -> Iterator[Sample]:
    """make(item) for each (where, item), its image checked (`checked_image`) and its record's texts too; a
    Skip is counted and logged (debug) with `where` (file:line, key), a conversion counted."""
    for where, item in items:
        try:
            sample = make(item)
            sample.ext, converted = checked_image(sample.image, where)
            check_texts(sample.record)
        except Skip as skip:
            stats[f"skipped/{skip.reason}"] += 1
            log.debug("%s: skipped/%s %s", where, skip.reason, skip.detail)
            continue
        if converted:
            stats[f"converted/{converted}"] += 1
        yield sample


def checked_image(data: bytes, where: str = "") -> tuple[str, str | None]:
    """(extension, the kind of conversion training applies or None) of image bytes that decode in full;
    Skip(empty_image | bad_image | decompression_bomb | unsupported_image) otherwise."""
    try:
        fmt, converted = inspect_image(data, where)
    except BadImage as err:
        raise Skip("bad_image" if err.reason == CORRUPT else err.reason, str(err)) from None
    if fmt not in _EXTENSION_OF_FORMAT:
        raise Skip("unsupported_image", f"{fmt} is not one of {', '.join(_EXTENSION_OF_FORMAT)}")
    return _EXTENSION_OF_FORMAT[fmt], converted


def check_texts(record: dict) -> None:
    """Skip(bad_text) when the record cannot be written as UTF-8 JSON (the shard writer would fail on it)."""
    try:
        json.dumps(record, ensure_ascii=False).encode("utf-8")
    except UnicodeEncodeError as err:
        raise Skip("bad_text", str(err)) from None


def read_image_file(path: Path) -> bytes:
    """The bytes of an image file, or Skip(missing_image | unreadable_image)."""
    try:
        return path.read_bytes()
    except (FileNotFoundError, IsADirectoryError):
        raise Skip("missing_image", str(path)) from None
    except OSError as err:
        raise Skip("unreadable_image", f"{path}: {err}") from None


def texts(value: object) -> list[str]:
    """A caption field (a string or a list of strings) as stripped non-empty strings; Skip(bad_record) otherwise."""
    if value is None:
        return []
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list) or not all(isinstance(text, str) for text in items):
        raise Skip("bad_record", f"expected a string or a list of strings, got {value!r:.80}")
    return [text.strip() for text in items if text.strip()]


def images_root(images: str, default: Path) -> Path:
    """--images when given (it must be a folder), else `default` (the annotation file's folder)."""
    if not images:
        return default
    root = Path(images)
    if not root.is_dir():
        raise FileNotFoundError(f"--images {images}: no such folder")
    return root


def require_some_images(paths: Iterable[Path], what: str) -> None:
    """Fail early when the images folder is plainly wrong: none of the first few referenced images exists."""
    probed = list(islice(paths, _PROBED_IMAGES))
    if probed and not any(path.is_file() for path in probed):
        raise FileNotFoundError(f"{what}: none of the first {len(probed)} images exists (e.g. {probed[0]}); "
                                f"pass the folder they are relative to with --images")


def existing_file(name: str) -> Path:
    path = Path(name)
    if not path.is_file():
        raise FileNotFoundError(f"{name}: no such file")
    return path
