"""The one image decoder: bytes or a file -> an RGB PIL image, fully decoded (training shards, benchmark files and
`vlm caption` all go through it, so a corrupt image fails the same way everywhere)."""

from __future__ import annotations

import io
from pathlib import Path

from PIL import Image

from vlm.config import InputError


class BadImage(InputError):
    """An image that cannot be decoded; the message names it."""


def decode_image(source: bytes | str | Path, name: str = "") -> Image.Image:
    """RGB pixels of image bytes or an image file. PIL opens lazily, so `convert` forces the decode here and a
    truncated or corrupt image raises `BadImage` (naming `name` or the file) instead of failing later."""
    where = name or (str(source) if isinstance(source, (str, Path)) else "image bytes")
    if isinstance(source, (str, Path)) and not Path(source).is_file():
        raise FileNotFoundError(f"image not found: {source}")
    try:
        with Image.open(io.BytesIO(source) if isinstance(source, bytes) else source) as image:
            return image.convert("RGB")
    except Exception as err:  # noqa: BLE001 - PIL raises many types (OSError, SyntaxError, ...) for bad data
        raise BadImage(f"{where}: not a readable image ({type(err).__name__}: {err})") from None
