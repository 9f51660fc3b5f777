"""VisionLLM: frozen image encoder -> bridge -> language model (visual tokens as a prefix), plus a
contrastive head that aligns pooled visual tokens with pooled text embeddings of the caption."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
import torch.nn.functional as F
from torch import nn

from vlm.config import Config, config_from_dict
from vlm.losses import ContrastiveLoss
from vlm.model.llm import LanguageModel
from vlm.model.qformer import BridgeOutput, build_bridge
from vlm.model.vision import ImageEncoder


class ContrastiveHead(nn.Module):
    """Projects pooled visual tokens and pooled LLM text embeddings into one normalised space."""

    def __init__(self, bridge_width: int, text_width: int, dim: int):
        super().__init__()
        self.vision_proj = nn.Linear(bridge_width, dim)
        self.text_proj = nn.Linear(text_width, dim)

    def image(self, pooled: torch.Tensor) -> torch.Tensor:
        return F.normalize(self.vision_proj(pooled), dim=-1)

    def text(self, token_embeds: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        weights = mask.unsqueeze(-1).to(token_embeds.dtype)
        pooled = (token_embeds * weights).sum(1) / weights.sum(1).clamp(min=1.0)
        return F.normalize(self.text_proj(pooled.float()), dim=-1)


class VisionLLM(nn.Module):
    def __init__(self, cfg: Config, vision: ImageEncoder | None = None, llm: LanguageModel | None = None):
        super().__init__()
        self.cfg = cfg
        self.vision = vision if vision is not None else ImageEncoder(cfg.vision)
        self.llm = llm if llm is not None else LanguageModel(cfg.llm)
        self.bridge = build_bridge(cfg.bridge, self.vision.width, self.llm.hidden_size)
        self.contrastive_head = ContrastiveHead(cfg.bridge.hidden_size, self.llm.hidden_size, cfg.loss.contrastive_dim)
        self.contrastive_loss = ContrastiveLoss(cfg.loss.init_temperature, cfg.loss.max_logit_scale)

    @property
    def tokenizer(self):
        return self.llm.tokenizer

    @property
    def device(self) -> torch.device:
        return self.bridge.query_tokens.device

    # --- training ------------------------------------------------------------------------------

    def visual(self, images: torch.Tensor) -> BridgeOutput:
        return self.bridge(self.vision(images))

    def forward(self, batch: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        """Returns {"loss": weighted total, "lm": generative loss, "itc": contrastive loss}."""
        loss_cfg = self.cfg.loss
        out = self.visual(batch["images"])
        terms: dict[str, torch.Tensor] = {}
        if loss_cfg.lm_weight > 0:
            terms["lm"] = self.llm(out.visual_tokens, batch["input_ids"], batch["attention_mask"], batch["labels"])
        if loss_cfg.contrastive_weight > 0:
            image_features = self.contrastive_head.image(out.pooled)
            text_features = self.contrastive_head.text(self.llm.embed(batch["caption_ids"]), batch["caption_mask"])
            terms["itc"] = self.contrastive_loss(image_features, text_features)
        total = sum(
            weight * terms[name]
            for name, weight in (("lm", loss_cfg.lm_weight), ("itc", loss_cfg.contrastive_weight))
            if name in terms
        )
        return {"loss": total, **terms}

    # --- inference -----------------------------------------------------------------------------

    @torch.no_grad()
    def encode_image(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, H, W) -> (B, contrastive_dim), L2-normalised."""
        return self.contrastive_head.image(self.visual(images).pooled)

    @torch.no_grad()
    def encode_text(self, texts: list[str]) -> torch.Tensor:
        """Captions -> (B, contrastive_dim), L2-normalised."""
        enc = self.tokenizer(texts, add_special_tokens=False, padding=True, return_tensors="pt",
                             truncation=True, max_length=self.cfg.llm.max_length)
        ids, mask = enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device)
        return self.contrastive_head.text(self.llm.embed(ids), mask)

    @torch.no_grad()
    def generate(self, images: torch.Tensor, prompts: list[str], **generate_kwargs) -> list[str]:
        """Answer one prompt per image (a caption instruction or a question in any language)."""
        if len(prompts) != images.shape[0]:
            raise ValueError(f"generate: {images.shape[0]} images but {len(prompts)} prompts")
        enc = self.tokenizer(prompts, padding=True, return_tensors="pt")
        prefix = self.visual(images).visual_tokens
        return self.llm.generate(prefix, enc["input_ids"].to(self.device), enc["attention_mask"].to(self.device),
                                 **generate_kwargs)

    # --- state ---------------------------------------------------------------------------------

    def trainable_state_dict(self) -> dict[str, torch.Tensor]:
        """Only what training changes: the frozen encoder and LLM weights are never written to checkpoints."""
        names = {name for name, p in self.named_parameters() if p.requires_grad}
        return {k: v.detach() for k, v in self.state_dict().items() if k in names}

    def load_trainable_state_dict(self, state: dict[str, torch.Tensor]) -> None:
        expected = set(self.trainable_state_dict())
        missing, unexpected = expected - set(state), set(state) - expected
        if missing or unexpected:
            raise ValueError(f"checkpoint does not match the model: missing {sorted(missing)[:3]}, "
                             f"unexpected {sorted(unexpected)[:3]}")
        self.load_state_dict(state, strict=False)

    # --- release folders -----------------------------------------------------------------------

    def save_pretrained(self, folder: str | Path, extra_files: dict[str, str] | None = None) -> Path:
        """A self-contained folder: config.json, model.safetensors (bridge and heads), vision/ (open_clip
        layout), llm/ (transformers layout, LoRA merged), tokenizer/, plus `extra_files` (name -> text).
        Written into a temporary folder and renamed, so a kill never leaves a half-written release."""
        folder = Path(folder)
        tmp = folder.with_name(f".{folder.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
        self.vision.save(tmp / RELEASE_VISION)
        llm = self.llm.merged_model()
        llm.save_pretrained(tmp / RELEASE_LLM)
        # The tokenizer gets its own folder: next to a model config.json, transformers' AutoTokenizer
        # would swap a generic tokenizer.json for the model type's own class and pre-tokenizer.
        self.tokenizer.save_pretrained(tmp / RELEASE_TOKENIZER)
        own = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()
               if not k.startswith(("vision.", "llm."))}
        save_file(own, str(tmp / RELEASE_WEIGHTS))
        (tmp / "config.json").write_text(json.dumps(release_config(self.cfg), indent=2, ensure_ascii=False) + "\n")
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
        if folder.exists():
            shutil.rmtree(folder)
        os.replace(tmp, folder)
        return folder

    @classmethod
    def from_pretrained(cls, folder: str | Path) -> "VisionLLM":
        folder = Path(folder)
        config_path = folder / "config.json"
        if not config_path.is_file():
            raise FileNotFoundError(f"{folder} is not a release folder: config.json is missing")
        raw = json.loads(config_path.read_text())
        raw["vision"]["name"] = f"local-dir:{folder / RELEASE_VISION}"
        raw["vision"]["visual_weights"] = str(folder / RELEASE_VISION / "visual.safetensors")
        raw["llm"]["name"] = str(folder / RELEASE_LLM)
        raw["llm"]["tokenizer"] = str(folder / RELEASE_TOKENIZER)
        model = cls(config_from_dict(raw))
        own = load_file(str(folder / RELEASE_WEIGHTS))
        missing, unexpected = model.load_state_dict(own, strict=False)
        missing = [k for k in missing if not k.startswith(("vision.", "llm."))]
        if missing or unexpected:
            raise ValueError(f"{folder / RELEASE_WEIGHTS} does not match the config: missing {missing[:3]}, "
                             f"unexpected {list(unexpected)[:3]}")
        return model.eval()


RELEASE_VISION = "vision"
RELEASE_LLM = "llm"
RELEASE_TOKENIZER = "tokenizer"
RELEASE_WEIGHTS = "model.safetensors"


def release_config(cfg: Config) -> dict:
    """The config as stored in a release: the parts point into the folder itself, LoRA is merged."""
    cfg = dataclasses.replace(
        cfg,
        vision=dataclasses.replace(cfg.vision, name=f"local-dir:{RELEASE_VISION}", pretrained="", model_config_dir="",
                                   visual_weights=f"{RELEASE_VISION}/visual.safetensors"),
        llm=dataclasses.replace(cfg.llm, name=RELEASE_LLM, tokenizer=RELEASE_TOKENIZER, lora_r=0, train_embeddings=False),
    )
    return cfg.to_dict()
