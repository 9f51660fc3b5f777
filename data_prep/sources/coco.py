"""COCO captions: an annotations file or a Karpathy split file, plus the images folder.

Which of the two a file is, is read from its top-level keys:

- annotations (`captions_train2017.json`): {"images": [{id, file_name, ...}], "annotations": [{id, image_id,
  caption}]}; images are `<images>/<file_name>`. One sample per image with all its captions, key = image id.
  Record source: {"format": "coco", "image_id", "file_name", "url" (coco_url, when given)}.
- Karpathy split (`dataset_coco.json`, also `dataset_flickr30k.json`): {"dataset": ..., "images": [{filepath,
  filename, split, cocoid, sentences: [{raw, ...}]}]}; images are `<images>/<filepath>/<filename>` (no
  filepath in the Flickr files). Key = cocoid (so it matches the annotations file's), else the file name.
  Record source: {"format": "coco_karpathy", "image_id" (cocoid, when given), "file_name", "split"}.
  `karpathy_split` keeps only some splits, comma-separated, of "train", "val", "test", "restval". "train" also
  takes "restval": the 113,287-image training set of most papers (BLIP, LAVIS, open_clip's evaluations);
  "restval" alone selects the 30,504 images Karpathy moved there from COCO val2014.

`images` defaults to the json file's folder. Skipped: no_caption, missing_image, bad_image, unsupported_image,
bad_entry (an image entry without id/file name); unknown_image_id counts captions whose image_id is not in
"images" (captions, not samples).
Captions are under captions.und: their language is --lang's (a caption list may mix languages with --lang auto).
"""

from __future__ import annotations

import json
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import NamedTuple

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

KARPATHY_SPLITS = ("train", "restval", "val", "test")


class _Entry(NamedTuple):
    image: Path | None  # None: a malformed image entry (no id or file name)
    source: dict
    captions: list


def check(inputs: list[str], images: str = "", karpathy_split: str = "") -> Source:
    wanted = _karpathy_splits(karpathy_split)
    files = []
    for path in map(existing_file, inputs):
        data = _load(path)
        kind = _kind(path, data)
        if wanted and kind == "annotations":
            raise ValueError(f"{path}: --karpathy-split applies to Karpathy split files; this is a COCO "
                             f"annotations file")
        files.append((path, data, kind))
    entries: list[tuple[str, _Entry]] = []  # (where, entry)
    stats: Counter = Counter()
    for path, data, kind in files:
        root = images_root(images, path.parent)
        found = list(_annotation_entries(path, data, root, stats) if kind == "annotations"
                     else _karpathy_entries(path, data, root, wanted))
        require_some_images((entry.image for _, entry in found if entry.image is not None), str(path))
        entries += found
    info = {"kinds": sorted({kind for *_, kind in files})}
    if wanted:
        info["karpathy_split"] = sorted(wanted)
    return Source(usable(entries, _sample, stats), stats, info=info)


def _karpathy_splits(spec: str) -> set[str]:
    wanted = {name.strip() for name in spec.split(",") if name.strip()}
    unknown = wanted - set(KARPATHY_SPLITS)
    if unknown:
        raise ValueError(f"--karpathy-split {spec}: unknown split {', '.join(sorted(unknown))} "
                         f"(known: {', '.join(KARPATHY_SPLITS)})")
    return wanted | {"restval"} if "train" in wanted else wanted


def _load(path: Path) -> object:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except ValueError as err:
        raise ValueError(f"{path}: not valid JSON ({err})") from None


def _kind(path: Path, data: object) -> str:
    if isinstance(data, dict) and isinstance(data.get("images"), list):
        if isinstance(data.get("annotations"), list):
            return "annotations"
        first = data["images"][:1]
        if "dataset" in data or any(isinstance(image, dict) and "sentences" in image for image in first):
            return "karpathy"
    shape = f"keys {', '.join(sorted(data))}" if isinstance(data, dict) else f"a JSON {type(data).__name__}"
    raise ValueError(f"{path}: neither a COCO captions annotations file ({{images, annotations}}) nor a Karpathy "
                     f"split file ({{dataset, images[].sentences}}); got {shape}")


def _annotation_entries(path: Path, data: dict, root: Path, stats: Counter) -> Iterator[tuple[str, _Entry]]:
    ids = {image.get("id") for image in data["images"] if isinstance(image, dict)}
    captions: dict = defaultdict(list)
    for note in data["annotations"]:
        if not isinstance(note, dict) or note.get("image_id") not in ids:
            stats["skipped/unknown_image_id"] += 1
        elif isinstance(note.get("caption"), str):
            captions[note["image_id"]].append(note["caption"])
    for index, image in enumerate(data["images"]):
        if not (isinstance(image, dict) and "id" in image and isinstance(image.get("file_name"), str)):
            yield f"{path}:images[{index}]", _Entry(None, {}, [])
            continue
        source = {"format": "coco", "image_id": image["id"], "file_name": image["file_name"]}
        if image.get("coco_url"):
            source["url"] = image["coco_url"]
        yield f"{path}:image {image['id']}", _Entry(root / image["file_name"], source, captions[image["id"]])


def _karpathy_entries(path: Path, data: dict, root: Path, wanted: set[str]) -> Iterator[tuple[str, _Entry]]:
    for index, image in enumerate(data["images"]):
        if not (isinstance(image, dict) and isinstance(image.get("filename"), str)):
            yield f"{path}:images[{index}]", _Entry(None, {}, [])
            continue
        if wanted and image.get("split") not in wanted:
            continue
        file_name = str(Path(image.get("filepath") or "") / image["filename"])
        source = {"format": "coco_karpathy", "file_name": file_name, "split": image.get("split")}
        if "cocoid" in image:
            source["image_id"] = image["cocoid"]
        sentences = image.get("sentences") if isinstance(image.get("sentences"), list) else []
        raw = [sentence.get("raw") for sentence in sentences if isinstance(sentence, dict)]
        yield f"{path}:{file_name}", _Entry(root / file_name, source, [text for text in raw if isinstance(text, str)])


def _sample(entry: _Entry) -> Sample:
    if entry.image is None:
        raise Skip("bad_entry")
    captions = texts(entry.captions)
    if not captions:
        raise Skip("no_caption")
    data = read_image_file(entry.image)
    source_id = str(entry.source.get("image_id", Path(entry.source["file_name"]).stem))
    return Sample(source_id, data, {"captions": {UNDETERMINED: captions}, "qa": [], "source": entry.source})
