"""Which model a path names: a release folder, a run folder (its latest checkpoint) or a checkpoint folder."""

from __future__ import annotations

from pathlib import Path

from vlm.config import Config, load_config
from vlm.model.vlm import VisionLLM
from vlm.release import from_pretrained
from vlm.release.native import RELEASE_INDEX, RELEASE_WEIGHTS, release_model_config
from vlm.train.checkpoint import CONFIG, load_trained_model, resolve_checkpoint


def is_release(path: Path) -> bool:
    weights = (RELEASE_WEIGHTS, RELEASE_INDEX)  # one file, or shards and their index
    return (path / "config.json").is_file() and any((path / name).is_file() for name in weights)


def model_config_path(path: Path) -> Path:
    """config.json of a release folder, or of a run/checkpoint folder's checkpoint."""
    if is_release(path):
        release_model_config(path)  # a transformers BLIP-2 export is refused here
        return path / "config.json"
    return resolve_checkpoint(path) / CONFIG


def saved_config(path: Path) -> Config:
    """The config a model at `path` was built with (a release's parts pointing into the release)."""
    return release_model_config(path) if is_release(path) else load_config(resolve_checkpoint(path) / CONFIG)


def load_model(path: Path, cfg: Config | None = None) -> VisionLLM:
    return from_pretrained(path) if is_release(path) else load_trained_model(path, cfg)
