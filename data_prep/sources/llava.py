"""LLaVA conversation json (haotian-liu/LLaVA docs/Finetune_Custom_Data.md) plus the images folder.

The file is a list of {"id", "image" (path relative to the images folder), "conversations": [{"from": "human",
"value": "<image>\\n..."}, {"from": "gpt", "value": "..."}, ...]}. Each human turn and the gpt turn after it
become one qa item: question = the human turn without the `<image>` placeholder (and the whitespace around it),
answers = [the gpt turn]. Entries sharing an image are fine: each gets its own key from its id.

Record: captions = {} (LLaVA has none), qa = [{"lang": "und" (--lang's), "question", "answers": [answer]}, ...],
source = {"format": "llava", "id", "image"}. `images` defaults to the json file's folder.

Skipped: bad_entry (not an object), text_only (no "image"), multi_image (a list of images), bad_conversation
(turns that do not alternate human/gpt starting with human, an odd number of turns, an empty or non-text
turn), missing_image, bad_image, unsupported_image.
"""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

from data_prep.sources import (
    UNDETERMINED,
    Sample,
    Skip,
    Source,
    existing_file,
    images_root,
    read_image_file,
    require_some_images,
    usable,
)

_PLACEHOLDER = re.compile(r"\s*<image>\s*")
_ROLES = ("human", "gpt")


def check(inputs: list[str], images: str = "") -> Source:
    entries: list[tuple[str, tuple[Path, dict]]] = []  # (where, (images root, entry))
    for path in map(existing_file, inputs):
        data = _load(path)
        root = images_root(images, path.parent)
        named = (entry.get("image") for entry in data if isinstance(entry, dict))
        require_some_images((root / image for image in named if isinstance(image, str)), str(path))
        entries += [(f"{path}:[{index}]", (root, entry)) for index, entry in enumerate(data)]
    stats: Counter = Counter()
    return Source(usable(entries, _sample, stats), stats)


def _load(path: Path) -> list:
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None
    if not isinstance(data, list):
        shape = f"an object with keys {', '.join(sorted(data))}" if isinstance(data, dict) else type(data).__name__
        raise ValueError(f"{path}: expected a JSON list of LLaVA entries ({{id, image, conversations}}), got {shape}")
    return data


def qa_items(conversations: object) -> list[dict]:
    """The (human, gpt) turn pairs of a conversation as qa items; Skip(bad_conversation) if malformed."""
    turns = conversations if isinstance(conversations, list) else []
    if not turns or len(turns) % 2:
        raise Skip("bad_conversation", f"{len(turns)} turns")
    items = []
    for index in range(0, len(turns), 2):
        pair = turns[index:index + 2]
        if not all(isinstance(turn, dict) and isinstance(turn.get("value"), str) for turn in pair):
            raise Skip("bad_conversation", f"turn {index}: not a {{from, value}} object")
        roles = tuple(turn.get("from") for turn in pair)
        if roles != _ROLES:
            raise Skip("bad_conversation", f"turns {index}-{index + 1}: {roles}, expected {_ROLES}")
        question = _PLACEHOLDER.sub(" ", pair[0]["value"]).strip()
        answer = pair[1]["value"].strip()
        if not question or not answer:
            raise Skip("bad_conversation", f"turns {index}-{index + 1}: empty question or answer")
        items.append({"lang": UNDETERMINED, "question": question, "answers": [answer]})
    return items


def _sample(item: tuple[Path, object]) -> Sample:
    root, entry = item
    if not isinstance(entry, dict):
        raise Skip("bad_entry")
    image = entry.get("image")
    if not image:
        raise Skip("text_only")
    if not isinstance(image, str):
        raise Skip("multi_image")
    qa = qa_items(entry.get("conversations"))
    data = read_image_file(root / image)
    source_id = str(entry["id"]) if entry.get("id") is not None else str(Path(image).with_suffix(""))
    source = {"format": "llava", "id": entry.get("id"), "image": image}
    return Sample(source_id, data, {"captions": {}, "qa": qa, "source": source})
