"""Frozen open_clip image encoder that returns patch tokens from a chosen block."""

from __future__ import annotations

import contextlib
import json
import logging
import pickle
from pathlib import Path

import open_clip
import torch
from open_clip.push_to_hf_hub import save_config_for_hf
from safetensors.torch import load_file, save_file
from torch import nn

from vlm.config import ConfigError, InputError, VisionConfig, fetch_error
from vlm.model.weights import copy_tensors

LOCAL_DIR = "local-dir:"
OPEN_CLIP_CONFIG = "open_clip_config.json"


def _pretrained_tag(cfg: VisionConfig) -> dict:
    """open_clip's entry for the tag `vision.pretrained` names ({} for none, or for a checkpoint file); a value
    that is neither a file nor one of the model's tags is named with the tags it has."""
    if not cfg.pretrained or Path(cfg.pretrained).expanduser().is_file():
        return {}
    tag = open_clip.get_pretrained_cfg(cfg.name, cfg.pretrained)
    if not tag:
        tags = ", ".join(open_clip.list_pretrained_tags_by_model(cfg.name)) or "none"
        raise ConfigError(f"'vision.pretrained' ({cfg.pretrained}) is neither a file nor a pretrained tag of "
                          f"open_clip's '{cfg.name}' (its tags: {tags})")
    return tag


def fetch_pretrained(cfg: VisionConfig) -> None:
    """Download the weights of the pretrained tag (or find them in the cache), so that a tag whose weights cannot
    be had is one line naming it, before anything is built."""
    tag = _pretrained_tag(cfg)
    if not tag:
        return
    try:
        open_clip.pretrained.download_pretrained(tag)  # the cache open_clip's own loader reads next
    except OSError as err:  # open_clip's FileNotFoundError from the hub, urllib's URLError
        raise fetch_error("vision.pretrained", cfg.pretrained, err, instead="a local checkpoint file") from None


def _tag_preprocess(cfg: VisionConfig) -> dict:
    """The preprocessing (mean, std, resize) of a pretrained tag, read without downloading anything, as
    `create_model_and_transforms` arguments."""
    tag = _pretrained_tag(cfg)
    keep = ("mean", "std", "interpolation", "resize_mode")
    return {f"image_{k}": tag[k] for k in keep if k in tag}


def create_open_clip(cfg: VisionConfig, load_weights: bool,
                     device: str | torch.device = "cpu") -> tuple[nn.Module, object]:
    """The open_clip model `cfg` names and its eval image transform.

    `cfg.name` is a built-in or registered open_clip name (weights from `cfg.pretrained`: a tag or a local file),
    or `local-dir:PATH`, a folder with open_clip_config.json + weights (the Hub layout). Without `load_weights`
    nothing is read but configs: the model has open_clip's random initialisation (nothing at all on the meta
    device), and the transform still has the pretrained tag's preprocessing.
    """
    if not load_weights or cfg.visual_weights:
        # open_clip would warn that the model is "initialized randomly"; the weights follow in a separate step.
        with _quiet_root_logger(), torch.device(device):
            model, _, preprocess = open_clip.create_model_and_transforms(
                cfg.name, load_weights=False, device=device, **_tag_preprocess(cfg))
        if load_weights:
            model.visual.load_state_dict(load_file(cfg.visual_weights), strict=True)
        return model, preprocess
    fetch_pretrained(cfg)
    try:
        model, _, preprocess = open_clip.create_model_and_transforms(cfg.name, pretrained=(cfg.pretrained or None))
    except pickle.UnpicklingError:  # open_clip reads checkpoints with torch.load(weights_only=True)
        local = cfg.name.startswith(LOCAL_DIR)
        key, value = ("vision.name", cfg.name) if local else ("vision.pretrained", cfg.pretrained)
        raise InputError(f"'{key}' ({value}): the weights file holds objects other than tensors, which are never "
                         "unpickled: save its state dict alone, or as safetensors") from None
    return model, preprocess


def open_clip_architecture(cfg: VisionConfig) -> dict:
    """The open_clip model config (embed_dim, vision_cfg, text_cfg) that `cfg` names, read without weights."""
    if cfg.model_config_dir:
        open_clip.add_model_config(Path(cfg.model_config_dir))
    if cfg.name.startswith(LOCAL_DIR):
        folder = Path(cfg.name[len(LOCAL_DIR):])
        if not (folder / OPEN_CLIP_CONFIG).is_file():
            raise ConfigError(f"'vision.name': {folder} has no {OPEN_CLIP_CONFIG}")
        return json.loads((folder / OPEN_CLIP_CONFIG).read_text())["model_cfg"]
    architecture = open_clip.get_model_config(cfg.name)
    if architecture is None:
        raise ConfigError(f"'vision.name': unknown open_clip model '{cfg.name}' "
                          f"(add its JSON folder as vision.model_config_dir)")
    return architecture


@contextlib.contextmanager
def _quiet_root_logger():
    level = logging.root.level
    logging.root.setLevel(logging.ERROR)
    try:
        yield
    finally:
        logging.root.setLevel(level)


def _blocks_and_width(visual: nn.Module, name: str) -> tuple[int, int]:
    """Depth and token width of open_clip's own ViT or of a timm trunk (EVA ViT-g, BLIP-2's encoder, is one)."""
    if hasattr(visual, "transformer"):
        return len(visual.transformer.resblocks), visual.transformer.width
    trunk = getattr(visual, "trunk", None)
    if trunk is not None and hasattr(trunk, "blocks") and hasattr(trunk, "embed_dim"):
        return len(trunk.blocks), trunk.embed_dim
    raise ConfigError(f"'vision.name' ({name}): {type(visual).__name__} is not a ViT with patch tokens "
                      "(open_clip's VisionTransformer or a timm ViT/EVA trunk)")


class ImageEncoder(nn.Module):
    """open_clip visual tower, frozen and kept in eval mode: images (B,3,H,W) -> tokens (B, N, D).

    Built from the config alone (`device="meta"`: no memory either); `load_weights` reads the weights."""

    def __init__(self, cfg: VisionConfig, device: str | torch.device = "cpu"):
        super().__init__()
        self.cfg = cfg
        self.architecture = open_clip_architecture(cfg)
        clip_model, preprocess = create_open_clip(cfg, load_weights=False, device=device)
        self.visual = clip_model.visual  # the text tower is dropped here
        self.preprocess = preprocess  # eval transform, used for training and evaluation alike
        self.num_blocks, self.width = _blocks_and_width(self.visual, cfg.name)
        layer = cfg.layer if cfg.layer >= 0 else self.num_blocks + cfg.layer
        if not 0 <= layer < self.num_blocks:
            raise ConfigError(f"'vision.layer' ({cfg.layer}) is outside the {self.num_blocks} blocks of '{cfg.name}' "
                              f"(0 to {self.num_blocks - 1}, or -1 for the last)")
        self.layer_index = layer
        self.visual.requires_grad_(False)
        self.visual.eval()

    def load_weights(self) -> None:
        """The pretrained tower through open_clip's own loader (any tag, file or `local-dir:`, or the release's
        `visual_weights`), copied into this one with every buffer (the non-persistent ones too, which no weights
        file holds: an encoder materialised from the meta device has none yet)."""
        # A throwaway twin: its random initialisation must not move the run's RNG.
        with torch.random.fork_rng(devices=[]):
            twin, _ = create_open_clip(self.cfg, load_weights=True)
        copy_tensors(twin.visual, self.visual)

    def train(self, mode: bool = True) -> "ImageEncoder":
        # Frozen: dropout and norm statistics never switch to training behaviour.
        return super().train(False)

    @torch.no_grad()
    def forward(self, images: torch.Tensor) -> torch.Tensor:
        out = self.visual.forward_intermediates(
            images,
            indices=[self.layer_index],
            stop_early=True,
            intermediates_only=True,
            output_fmt="NLC",
            output_extra_tokens=self.cfg.include_cls,
        )
        tokens = out["image_intermediates"][0]  # (B, N_patches, D)
        if self.cfg.include_cls:
            tokens = torch.cat([out["image_intermediates_prefix"][0], tokens], dim=1)
        return tokens

    def save(self, folder: Path) -> None:
        """open_clip_config.json (architecture + preprocessing) and the visual-tower weights."""
        folder.mkdir(parents=True, exist_ok=True)
        save_config_for_hf(self, folder / OPEN_CLIP_CONFIG, model_config=self.architecture)
        save_file({k: v.contiguous() for k, v in self.visual.state_dict().items()}, str(folder / "visual.safetensors"))
