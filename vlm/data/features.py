"""The frozen-feature cache on disk: `vlm prep features` writes it (vlm/feature_prep.py), training with
`data.features` reads it instead of pixels.

A cache is a folder holding identity.json (the encoder that made it, see vlm/model/vision_identity.py, with its
layer resolved, the token shape (N, D) and the storage dtype) and one safetensors file per shard,
`<shard name without .tar>.safetensors`, with one (N, D) tensor per sample named by its `__key__` and the shard's
counts in the file's metadata. Training opens a shard's file on first use with safe_open (memory-mapped: only the
samples it reads are loaded). A sample whose image did not decode has no tensor.
"""

from __future__ import annotations

import json
import shutil
from collections import Counter, OrderedDict
from collections.abc import Iterable
from pathlib import Path

import torch
from safetensors import SafetensorError, safe_open

from data_prep.manifest import write_json
from vlm.config import ConfigError
from vlm.folders import atomic_file

IDENTITY = "identity.json"
STORAGE = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}  # config.FEATURE_DTYPES
DEFAULT_STORAGE = "bf16"
_SAFETENSORS_DTYPES = {torch.bfloat16: "BF16", torch.float16: "F16", torch.float32: "F32"}
# The identity fields a cache must share with the config's encoder, and where the config sets each.
CHECKED = {"name": "vision.name", "weights": "vision.pretrained / vision.visual_weights / the local-dir: files",
           "architecture": "the open_clip model config", "image_size": "the encoder's input size",
           "layer": "vision.layer", "include_cls": "vision.include_cls"}
OPEN_FILES = 8  # shard files a reader keeps open: a shuffle buffer mixes the samples of a few consecutive shards


def feature_file(folder: str | Path, url: str) -> Path:
    return Path(folder) / (Path(url).name.removesuffix(".tar") + ".safetensors")


def check_names(urls: Iterable[str]) -> None:
    """A cache has one file per shard name, so two shards of one name (in two folders) cannot share one."""
    seen: dict[str, str] = {}
    for url in urls:
        name = feature_file("", url).name
        if name in seen and seen[name] != url:
            raise ConfigError(f"feature cache: two shards are both named {Path(url).name} ({seen[name]}, {url}); "
                              "a cache holds one file per shard name: rename one")
        seen[name] = url


def read_identity(folder: str | Path) -> dict | None:
    path = Path(folder) / IDENTITY
    return json.loads(path.read_text()) if path.is_file() else None


def write_identity(folder: str | Path, identity: dict) -> None:
    write_json(Path(folder) / IDENTITY, identity)


def mismatch(cached: dict, expected: dict) -> str | None:
    """The first field in which a cache's identity differs from the config's encoder (`encoder_identity`), as a
    phrase naming it, or None. The config's layer may count from the end; the cache's is resolved."""
    expected = json.loads(json.dumps(expected))  # tuples as lists, as the cache's json has them
    for name, where in CHECKED.items():
        want = expected[name]
        if name == "layer" and want < 0:
            want += cached.get("num_blocks", 0)
        if cached.get(name) != want:
            return f"{name} is {cached.get(name)!r} there, {want!r} in this config ({where})"
    return None


def check_cache(folder: str | Path, expected: dict, urls: list[str]) -> dict:
    """Refuse, in one line, a `data.features` folder that is not a finished cache of the config's encoder for
    `urls`; return its identity."""
    folder = Path(folder)
    if not folder.is_dir():
        raise ConfigError(f"'data.features': folder not found: {folder} (write it with `vlm prep features CONFIG`)")
    cached = read_identity(folder)
    if cached is None:
        raise ConfigError(f"'data.features': {folder} has no {IDENTITY}, so it is no feature cache "
                          "(write one with `vlm prep features CONFIG`)")
    if problem := mismatch(cached, expected):
        raise ConfigError(f"'data.features': {folder} was made by another encoder: {problem}; "
                          "rerun `vlm prep features` with this config and another --out")
    check_names(urls)
    if missing := [url for url in urls if not feature_file(folder, url).is_file()]:
        raise ConfigError(f"'data.features': {folder} lacks {len(missing)} of the {len(urls)} shards' tokens "
                          f"(first: {Path(missing[0]).name}); rerun `vlm prep features` to finish it")
    return cached


class FeatureCache:
    """`tokens(url, key)`: the (N, D) tokens of sample `key` of shard `url`, or None when the cache has none (its
    image did not decode when the cache was made, or the shard's file is unreadable). Files are opened on first
    use, in the process that reads them (a DataLoader worker), and the last OPEN_FILES stay open."""

    def __init__(self, folder: str | Path):
        self.folder = Path(folder)
        self._open: OrderedDict[str, tuple] = OrderedDict()  # url -> (handle or None, its keys)

    def tokens(self, url: str, key: str) -> torch.Tensor | None:
        if url not in self._open:
            try:
                handle = safe_open(str(feature_file(self.folder, url)), framework="pt")
                self._open[url] = (handle, set(handle.keys()))
            except (OSError, SafetensorError):  # removed or corrupt since the start: its samples are skipped
                self._open[url] = (None, set())
            if len(self._open) > OPEN_FILES:
                self._open.popitem(last=False)
        self._open.move_to_end(url)
        handle, keys = self._open[url]
        return handle.get_tensor(key) if key in keys else None


class TokenWriter:
    """One shard's file, written without holding its tokens in memory (a 10k-image shard of ViT-L tokens is 5 GB):
    each sample's bytes are appended to a side file as they come, and `close` writes the safetensors header (which
    comes first and lists every tensor) and then those bytes, renamed into place whole (vlm.folders.atomic_file)."""

    def __init__(self, path: str | Path, dtype: torch.dtype):
        self.path, self.dtype = Path(path), dtype
        self.header: dict[str, dict] = {}
        self._body_path = self.path.with_name(f".{self.path.name}.body")
        self._body = self._body_path.open("wb")
        self._offset = 0

    def __contains__(self, key: str) -> bool:
        return key in self.header

    def __len__(self) -> int:
        return len(self.header)

    def add(self, key: str, tokens: torch.Tensor) -> None:
        data = tokens.detach().to("cpu", self.dtype).contiguous()
        raw = data.view(torch.uint8).numpy().tobytes()  # numpy has no bf16: the bytes go through uint8
        end = self._offset + len(raw)
        self.header[key] = {"dtype": _SAFETENSORS_DTYPES[self.dtype], "shape": list(data.shape),
                            "data_offsets": [self._offset, end]}
        self._body.write(raw)
        self._offset = end

    def close(self, metadata: dict[str, str]) -> None:
        self._body.close()
        header = json.dumps({"__metadata__": metadata, **self.header}, ensure_ascii=False).encode()
        header += b" " * (-len(header) % 8)  # safetensors pads its header with spaces to align the data
        with atomic_file(self.path) as tmp, tmp.open("wb") as f, self._body_path.open("rb") as body:
            f.write(len(header).to_bytes(8, "little"))
            f.write(header)
            shutil.copyfileobj(body, f, 1 << 22)
        self._body_path.unlink()

    def discard(self) -> None:
        self._body.close()
        self._body_path.unlink(missing_ok=True)


def shard_counts(path: str | Path) -> tuple[int, Counter]:
    """(samples stored, skipped samples by reason) of one shard's file, from its metadata."""
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata() or {}
    return int(meta.get("samples", 0)), Counter(json.loads(meta.get("skipped", "{}")))


def token_bytes(tokens: tuple[int, int] | list[int], storage: str = DEFAULT_STORAGE) -> int:
    """Bytes of one image's tokens (N, D) stored in `storage` (bf16 | fp16 | fp32)."""
    return tokens[0] * tokens[1] * STORAGE[storage].itemsize


def format_bytes(n: float) -> str:
    units = ["B", "KiB", "MiB", "GiB", "TiB"]
    while n >= 1024 and len(units) > 1:
        n /= 1024
        units.pop(0)
    return f"{n:.4g} {units[0]}"
