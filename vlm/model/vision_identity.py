"""The frozen encoder's identity: what its output tokens depend on, so that a feature cache of them
(vlm/data/features.py) can be checked against a config. Read from the config and the weights files alone, before
any model is built."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from vlm.config import ConfigError, VisionConfig
from vlm.model.vision import LOCAL_DIR, OPEN_CLIP_CONFIG, open_clip_architecture

WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pth", ".pt")  # what open_clip loads from a local-dir: folder


def encoder_identity(cfg: VisionConfig) -> dict:
    """name, weights (a pretrained tag, or a content hash of the weights files), architecture (a hash of its open_clip
    config), image_size, layer (as configured: a negative one is resolved against the cache's num_blocks) and
    include_cls. A local-dir: encoder is named by its files' hash alone, so moving the folder keeps its cache."""
    try:
        architecture = open_clip_architecture(cfg)
    except (FileNotFoundError, ValueError) as err:
        raise ConfigError(str(err)) from None
    return {
        "name": "local-dir" if cfg.name.startswith(LOCAL_DIR) else cfg.name,
        "weights": _weights(cfg),
        "architecture": _digest([json.dumps(architecture, sort_keys=True).encode()]),
        "image_size": architecture.get("vision_cfg", {}).get("image_size"),
        "layer": cfg.layer,
        "include_cls": cfg.include_cls,
    }


def _weights(cfg: VisionConfig) -> str:
    if cfg.name.startswith(LOCAL_DIR):
        folder = Path(cfg.name[len(LOCAL_DIR):])
        # open_clip_config.json holds the preprocessing too (mean, std, resize), which the tokens depend on.
        weights = [Path(cfg.visual_weights)] if cfg.visual_weights else sorted(
            p for p in folder.iterdir() if p.suffix in WEIGHT_SUFFIXES)
        return _digest_files([folder / OPEN_CLIP_CONFIG, *weights])
    if cfg.visual_weights:
        return _digest_files([Path(cfg.visual_weights)])
    if cfg.pretrained and Path(cfg.pretrained).expanduser().is_file():
        return _digest_files([Path(cfg.pretrained).expanduser()])
    if cfg.pretrained:
        return f"tag:{cfg.pretrained}"
    raise ConfigError(f"'vision.pretrained' is empty: '{cfg.name}' would have random weights, whose tokens no "
                      "feature cache can stand for; name a tag, a weights file or a local-dir: folder")


def _digest_files(paths: list[Path]) -> str:
    def chunks():
        for path in paths:
            yield f"{path.name}:{path.stat().st_size}:".encode()
            with path.open("rb") as f:
                while block := f.read(1 << 22):
                    yield block

    return _digest(chunks())


def _digest(blocks) -> str:
    h = hashlib.blake2b(digest_size=16)
    for block in blocks:
        h.update(block)
    return f"blake2b:{h.hexdigest()}"
