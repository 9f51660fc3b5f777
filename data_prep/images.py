"""The one image decoder: bytes or a file -> an RGB PIL image, fully decoded (training shards, benchmark files,
`vlm caption` and `vlm prep shards`' check of every image all go through it, so a bad image fails the same way
everywhere, and prep keeps exactly the images training can decode).

Hostile images, and what happens to them (`BadImage.reason` names the skipped ones):

- zero bytes: `empty_image`; truncated or corrupt: `corrupt_image` (the decode runs to the end, so a cut-off
  JPEG, which PIL's `verify` passes, fails here).
- more pixels than PIL's `Image.MAX_IMAGE_PIXELS` (89.5 M by default, e.g. 20000x20000): `decompression_bomb`,
  from the header alone; PIL's DecompressionBombWarning (1-2x the limit) counts too, since it would decode them.
  The file's pixel count, not its byte size, is what a decode costs (libjpeg reads every block even when it
  scales), so a small file that claims a huge image is refused, not decoded.
- a large JPEG within the limit is decoded at 1/2, 1/4 or 1/8 scale (PIL's `draft`), never below DRAFT_SIZE:
  the encoder resizes to a few hundred pixels anyway, so an 8192x8192 photo takes 1024x1024x3 bytes, not 201 MB.
  Other formats have no scaled decode and are decoded in full (bounded by the limit above).
- CMYK, 16-bit, grayscale, palette and transparent images are converted to RGB (`to_rgb`).
"""

from __future__ import annotations

import io
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from PIL import Image

# JPEGs are decoded at the smallest DCT scale that keeps both sides at least this large.
DRAFT_SIZE = (1024, 1024)
EMPTY, CORRUPT, BOMB = "empty_image", "corrupt_image", "decompression_bomb"
_WHITE = (255, 255, 255, 255)


class BadImage(ValueError):
    """An image that cannot be decoded; the message names it, `reason` says why (EMPTY, CORRUPT or BOMB)."""

    def __init__(self, message: str, reason: str = CORRUPT):
        super().__init__(message)
        self.reason = reason


def decode_image(source: bytes | str | Path, name: str = "") -> Image.Image:
    """RGB pixels of image bytes or an image file. PIL opens lazily, so the conversion forces the decode here
    and a truncated or corrupt image raises `BadImage` (naming `name` or the file) instead of failing later."""
    with _opened(source, name) as image:
        return _decoded(image, source, name)


def inspect_image(data: bytes, name: str = "") -> tuple[str, str | None]:
    """(PIL format, what `conversion` calls it or None) of image bytes after decoding them in full as
    `decode_image` does; raises `BadImage` like it."""
    with _opened(data, name) as image:
        fmt, kind = image.format, conversion(image)
        _decoded(image, data, name)
    return fmt, kind


def conversion(image: Image.Image) -> str | None:
    """The kind of conversion `to_rgb` applies to an opened image, or None for plain RGB."""
    if image.mode in ("RGBA", "LA", "PA", "RGBa", "La") or "transparency" in image.info:
        return "alpha"
    if image.mode.startswith("I"):
        return "16bit"
    return {"RGB": None, "CMYK": "cmyk", "L": "grayscale", "1": "grayscale", "P": "palette"}.get(image.mode,
                                                                                               image.mode.lower())


def to_rgb(image: Image.Image) -> Image.Image:
    """RGB pixels of any mode. 16-bit grey is scaled to 8 bits (PIL's convert would clip it to white), and
    transparency is composited onto white, as img2dataset does (dropping alpha shows whatever colour the
    transparent pixels hold, often black); CMYK, grey and palette images go through PIL's convert."""
    if image.mode.startswith("I"):
        image = image.convert("I").point(lambda v: v / 256).convert("L")
    if conversion(image) == "alpha":
        return Image.alpha_composite(Image.new("RGBA", image.size, _WHITE), image.convert("RGBA")).convert("RGB")
    return image.convert("RGB")


def _where(source: bytes | str | Path, name: str) -> str:
    return name or (str(source) if isinstance(source, (str, Path)) else "image bytes")


@contextmanager
def _opened(source: bytes | str | Path, name: str) -> Iterator[Image.Image]:
    """The opened (not yet decoded) image, a JPEG drafted to DRAFT_SIZE; PIL's bomb check runs on its header."""
    where = _where(source, name)
    if isinstance(source, (str, Path)) and not Path(source).is_file():
        raise FileNotFoundError(f"image not found: {source}")
    if not (source if isinstance(source, bytes) else Path(source).stat().st_size):
        raise BadImage(f"{where}: empty image (0 bytes)", EMPTY)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(source) if isinstance(source, bytes) else source)
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as err:
        raise BadImage(f"{where}: {err}", BOMB) from None
    except Exception as err:  # noqa: BLE001 - PIL raises many types (OSError, SyntaxError, ...) for bad data
        raise BadImage(f"{where}: not a readable image ({type(err).__name__}: {err})") from None
    with image:
        image.draft(image.mode, DRAFT_SIZE)  # a no-op for other formats and for JPEGs under twice DRAFT_SIZE
        yield image


def _decoded(image: Image.Image, source: bytes | str | Path, name: str) -> Image.Image:
    try:
        return to_rgb(image)
    except Exception as err:  # noqa: BLE001 - as in _opened: any decoder error means a bad image
        raise BadImage(f"{_where(source, name)}: not a readable image ({type(err).__name__}: {err})") from None
