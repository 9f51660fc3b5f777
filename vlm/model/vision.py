"""Frozen open_clip image encoder that returns patch tokens from a chosen block."""

from __future__ import annotations

import contextlib
import json
import logging
from pathlib import Path

import open_clip
import torch
from open_clip.push_to_hf_hub import save_config_for_hf
from safetensors.torch import load_file, save_file
from torch import nn

from vlm.config import VisionConfig

LOCAL_DIR = "local-dir:"
OPEN_CLIP_CONFIG = "open_clip_config.json"


def create_open_clip(cfg: VisionConfig) -> tuple[nn.Module, object, dict]:
    """Build the open_clip model, its eval image transform and its architecture dict.

    `cfg.name` is a built-in or registered open_clip name (weights from `cfg.pretrained`: a tag or a
    local file), or `local-dir:PATH`, a folder with open_clip_config.json + weights (the Hub layout).
    """
    architecture = open_clip_architecture(cfg)
    if cfg.visual_weights:
        # open_clip would warn that the model is "initialized randomly"; the weights follow, strictly.
        with _quiet_root_logger():
            model, _, preprocess = open_clip.create_model_and_transforms(cfg.name, load_weights=False)
        model.visual.load_state_dict(load_file(cfg.visual_weights), strict=True)
    else:
        model, _, preprocess = open_clip.create_model_and_transforms(cfg.name, pretrained=(cfg.pretrained or None))
    return model, preprocess, architecture


def open_clip_architecture(cfg: VisionConfig) -> dict:
    """The open_clip model config (embed_dim, vision_cfg, text_cfg) that `cfg` names, read without weights."""
    if cfg.model_config_dir:
        open_clip.add_model_config(Path(cfg.model_config_dir))
    if cfg.name.startswith(LOCAL_DIR):
        folder = Path(cfg.name[len(LOCAL_DIR):])
        if not (folder / OPEN_CLIP_CONFIG).is_file():
            raise FileNotFoundError(f"vision.name: {folder} has no {OPEN_CLIP_CONFIG}")
        return json.loads((folder / OPEN_CLIP_CONFIG).read_text())["model_cfg"]
    architecture = open_clip.get_model_config(cfg.name)
    if architecture is None:
        raise ValueError(f"vision.name: unknown open_clip model '{cfg.name}' "
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
    raise ValueError(f"vision.name '{name}': {type(visual).__name__} is not a ViT with patch tokens "
                     "(open_clip's VisionTransformer or a timm ViT/EVA trunk)")


class ImageEncoder(nn.Module):
    """open_clip visual tower, frozen and kept in eval mode: images (B,3,H,W) -> tokens (B, N, D)."""

    def __init__(self, cfg: VisionConfig):
        super().__init__()
        clip_model, preprocess, architecture = create_open_clip(cfg)
        self.cfg = cfg
        self.architecture = architecture
        self.visual = clip_model.visual  # the text tower is dropped here
        self.preprocess = preprocess  # eval transform, used for training and evaluation alike
        num_blocks, self.width = _blocks_and_width(self.visual, cfg.name)
        layer = cfg.layer if cfg.layer >= 0 else num_blocks + cfg.layer
        if not 0 <= layer < num_blocks:
            raise ValueError(f"vision.layer={cfg.layer} is outside the {num_blocks} blocks of '{cfg.name}'")
        self.layer_index = layer
        self.visual.requires_grad_(False)
        self.visual.eval()

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
