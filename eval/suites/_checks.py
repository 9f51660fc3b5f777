"""Checks shared by the suite loaders. Every failure is a `BenchmarkDataError` of one line that names the
file (and the record and field where there is one), raised before any image is opened."""

from __future__ import annotations

import gzip
import json
import re
from collections.abc import Iterable, Iterator, Sequence
from pathlib import Path
from typing import Any

from eval.suites import BenchmarkDataError

_KIND_NAMES = {str: "a string", int: "an integer", list: "a list", dict: "an object"}


def check_root(root: Path, suite: str) -> Path:
    root = Path(root)
    if not root.is_dir():
        raise BenchmarkDataError(f"{suite}: data root {root} does not exist or is not a folder")
    return root


def pick_languages(suite: str, requested: Sequence[str] | None, available: Sequence[str],
                   aliases: dict[str, str] | None = None) -> list[str]:
    """The requested languages (all of `available` when none are given), aliases mapped, duplicates dropped."""
    if not requested:
        return list(available)
    picked = [(aliases or {}).get(lang, lang) for lang in requested]
    for lang in picked:
        if lang not in available:
            raise BenchmarkDataError(f"{suite} has no language {lang!r}; available: {' '.join(available)}")
    return list(dict.fromkeys(picked))


def require_file(path: Path) -> Path:
    if not path.is_file():
        raise BenchmarkDataError(f"{path}: annotation file not found")
    return path


def coco_folder(name: str) -> str:
    """The folder of the COCO 2014 release a file name belongs to: COCO_val2014_000000391895.jpg -> val2014."""
    match = re.match(r"COCO_([a-z]+\d{4})_", name)
    return match.group(1) if match else ""


def place(root: Path, layout: str, name: str) -> Path:
    """Where `layout`, a path template under root over a file's {name} (and {coco}, its COCO folder), puts it."""
    return root.joinpath(*layout.format(name=name, coco=coco_folder(name)).split("/"))


def find_layout(root: Path, layouts: Sequence[str], names: Sequence[str], what: str) -> str:
    """The first of `layouts` that holds any of `names`. A benchmark is read in one layout: its archives
    unpacked as shipped, or the folders its best-known consumers move the files to. When none holds any,
    one line names each place tried for the first name."""
    for name in names:
        for layout in layouts:
            if place(root, layout, name).is_file():
                return layout
    first, *others = (str(place(root, layout, names[0])) for layout in layouts)
    nor = f" (nor {', '.join(others)})" if others else ""
    rest = f"; nor any of the other {len(names) - 1} there" if len(names) > 1 else ""
    raise BenchmarkDataError(f"{first}: {what} not found{nor}{rest}")


def locate_images(root: Path, layouts: Sequence[str], names: Sequence[str]) -> list[Path]:
    """Every image's path in the first layout that holds any of them; the missing ones are left to
    `check_images` to count and name."""
    if not names:
        return []
    layout = find_layout(root, layouts, names, "image file")
    return [place(root, layout, name) for name in names]


def read_json(path: Path) -> Any:
    with open(require_file(path), encoding="utf-8") as f:
        try:
            return json.load(f)
        except json.JSONDecodeError as e:
            raise BenchmarkDataError(f"{path}: not valid JSON ({e})") from None


def read_jsonl(path: Path) -> Iterator[tuple[int, Any]]:
    """(line number, parsed object) for every non-blank line."""
    with open(require_file(path), encoding="utf-8") as f:
        for number, line in enumerate(f, start=1):
            if line.strip():
                try:
                    yield number, json.loads(line)
                except json.JSONDecodeError as e:
                    raise BenchmarkDataError(f"{path}: line {number}: not valid JSON ({e})") from None


def read_lines(path: Path) -> list[str]:
    """The lines of a text file, or of its `.gz` twin when only that exists. Split on newlines only, so a
    caption holding another Unicode line separator cannot shift the alignment with other files."""
    packed = path.with_name(path.name + ".gz")
    if path.is_file():
        text = path.read_text(encoding="utf-8")
    elif packed.is_file():
        text = gzip.decompress(packed.read_bytes()).decode("utf-8")
    else:
        raise BenchmarkDataError(f"{path}: annotation file not found (nor {packed.name})")
    lines = [line.rstrip("\r") for line in text.split("\n")]
    return lines[:-1] if lines and lines[-1] == "" else lines


def field(record: Any, name: str, kind: type, where: str, label: str | None = None) -> Any:
    """record[name], checked to be a `kind`; `label` names the field in errors when it is nested."""
    if not isinstance(record, dict):
        raise BenchmarkDataError(f"{where}: expected a JSON object, got {type(record).__name__}")
    label = label or name
    if name not in record:
        raise BenchmarkDataError(f"{where}: field {label!r} missing")
    value = record[name]
    if not isinstance(value, kind) or isinstance(value, bool):  # JSON true/false is no integer
        raise BenchmarkDataError(f"{where}: field {label!r} is not {_KIND_NAMES[kind]}")
    return value


def text(record: Any, name: str, where: str, label: str | None = None) -> str:
    """A non-empty string field, stripped of surrounding whitespace."""
    value = field(record, name, str, where, label).strip()
    if not value:
        raise BenchmarkDataError(f"{where}: field {label or name!r} is empty")
    return value


def texts(record: Any, name: str, where: str, label: str | None = None) -> list[str]:
    """A non-empty list of non-empty strings, each stripped of surrounding whitespace."""
    label = label or name
    values = field(record, name, list, where, label)
    if not values:
        raise BenchmarkDataError(f"{where}: field {label!r} is an empty list")
    for i, value in enumerate(values):
        if not isinstance(value, str) or not value.strip():
            raise BenchmarkDataError(f"{where}: field {label!r} item {i} is not a non-empty string")
    return [value.strip() for value in values]


def brace(codes: Sequence[str]) -> str:
    """Several codes as a shell-style alternative for `source` strings: "{en,de}"; one code as itself."""
    return codes[0] if len(codes) == 1 else "{" + ",".join(codes) + "}"


def check_images(paths: Iterable[Path]) -> None:
    paths = list(paths)
    missing = [path for path in paths if not path.is_file()]
    if missing:
        raise BenchmarkDataError(f"{missing[0]}: image file not found ({len(missing)} of {len(paths)} images missing)")
