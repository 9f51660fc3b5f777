"""Native release folders: what `vlm export` writes and `from_pretrained` reads back, apart from the model class.

A self-contained release holds config.json (parts pointing into the folder), model.safetensors (bridge, heads
and, unless merged, the LoRA adapter), vision/ (open_clip layout), llm/ (transformers layout), tokenizer/ (+
bridge_tokenizer/), and optionally templates.yaml; a delta release holds only what training changed and the base
models' ids (delta.json marks it).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import torch
from huggingface_hub import save_torch_state_dict
from safetensors import safe_open
from safetensors.torch import load_file

from vlm.config import Config, InputError, check_paths, config_from_dict
from vlm.folders import atomic_folder
from vlm.model.vlm import VisionLLM

# Releases written before the objective had its own module carry its learnt temperatures; inference needs none.
_OBJECTIVE_KEYS = ("contrastive_loss.", "itc_loss.")


def save_pretrained(model: VisionLLM, folder: str | Path, extra_files: dict[str, str] | None = None,
                    delta: bool = False, merge_lora: bool = False, max_shard_size: int | str = "5GB") -> Path:
    """A self-contained folder: config.json, model.safetensors (bridge, heads and the LoRA adapter), vision/
    (open_clip layout), llm/ (transformers layout, the base weights as trained), tokenizer/, plus
    `extra_files` (name -> text). `merge_lora` folds the adapter into llm/ instead (a plain transformers
    LM, faster to run; equal to the unmerged model within float rounding).
    `delta`: only what training changed (bridge, heads, LoRA adapter, trained embeddings) in
    model.safetensors, and a config naming the base encoder, LM and tokenizers as training did (hub ids
    or paths), which `from_pretrained` loads first. Written into a temporary folder and renamed, so a kill
    never leaves a half-written release. model.safetensors is split into model-0000k-of-0000n.safetensors
    + model.safetensors.index.json (the transformers layout) past `max_shard_size`."""
    with atomic_folder(folder) as tmp:
        if delta:
            _write_delta(model, tmp, max_shard_size)
        else:
            _write_self_contained(model, tmp, merge_lora, max_shard_size)
        for name, text in (extra_files or {}).items():
            (tmp / name).write_text(text)
    return Path(folder)


def _write_self_contained(model: VisionLLM, tmp: Path, merge_lora: bool, max_shard_size: int | str) -> None:
    cfg = model.cfg
    keep_adapter = cfg.llm.lora_r > 0 and not merge_lora
    model.vision.save(tmp / RELEASE_VISION)
    if keep_adapter:
        model.llm.save_base(tmp / RELEASE_LLM)
    else:
        model.llm.merged_model().save_pretrained(tmp / RELEASE_LLM)
    # The tokenizer gets its own folder: next to a model config.json, transformers' AutoTokenizer
    # would swap a generic tokenizer.json for the model type's own class and pre-tokenizer.
    model.tokenizer.save_pretrained(tmp / RELEASE_TOKENIZER)
    if model.bridge_tokenizer is not None:
        model.bridge_tokenizer.save_pretrained(tmp / RELEASE_BRIDGE_TOKENIZER)
    own = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()
           if not k.startswith(("vision.", "llm.")) or (keep_adapter and "lora_" in k)}
    _save_weights(own, tmp, max_shard_size)
    (tmp / "config.json").write_text(json.dumps(release_config(cfg, keep_adapter), indent=2,
                                                ensure_ascii=False) + "\n")
    if cfg.data.templates:  # a user's prompt templates travel with the model they trained
        shutil.copyfile(cfg.data.templates, tmp / RELEASE_TEMPLATES)


def _write_delta(model: VisionLLM, tmp: Path, max_shard_size: int | str) -> None:
    trainable = set(model.trainable_state_dict())
    state = {k: v.detach().contiguous().cpu() for k, v in model.state_dict().items()
             if not k.startswith(("vision.", "llm.")) or k in trainable}
    _save_weights(state, tmp, max_shard_size)
    raw = model.cfg.to_dict()
    if model.cfg.data.templates:
        shutil.copyfile(model.cfg.data.templates, tmp / RELEASE_TEMPLATES)
        raw["data"]["templates"] = RELEASE_TEMPLATES
    (tmp / "config.json").write_text(json.dumps(raw, indent=2, ensure_ascii=False) + "\n")
    (tmp / RELEASE_FORM).write_text(json.dumps({"form": "delta"}) + "\n")


def from_pretrained(folder: str | Path) -> VisionLLM:
    """The model of a native release folder, in eval mode (every file is checked before anything loads)."""
    folder = Path(folder)
    cfg = release_model_config(folder)
    check_weight_files(folder)
    if (folder / RELEASE_FORM).is_file():  # delta: the base parts load from where training found them
        check_paths(cfg)
    # Built on the meta device: the release overwrites every new part, so nothing is initialised twice.
    model = VisionLLM(cfg, device="meta").load_weights()
    # The adapter of an unmerged or delta release is rebuilt from the config and is, with a delta's trained
    # embeddings, the only trainable weight inside the base parts that model.safetensors holds.
    _load_own(model, folder, base=("vision.", "llm."), allowed=set(model.trainable_state_dict()))
    return model.eval()


def _load_own(model: VisionLLM, folder: Path, base: tuple[str, ...], allowed: set[str]) -> None:
    """Load model.safetensors: every weight outside the `base` parts, plus the `allowed` ones inside them."""
    own = {k: v for k, v in _load_weights(folder).items() if not k.startswith(_OBJECTIVE_KEYS)}
    missing, unexpected = model.load_state_dict(own, strict=False)
    missing = [k for k in missing if not k.startswith(base) or k in allowed]
    if missing or unexpected:
        raise ValueError(f"{folder / RELEASE_WEIGHTS} does not match the config: missing {missing[:3]}, "
                         f"unexpected {list(unexpected)[:3]}")


RELEASE_VISION = "vision"
RELEASE_LLM = "llm"
RELEASE_TOKENIZER = "tokenizer"
RELEASE_BRIDGE_TOKENIZER = "bridge_tokenizer"
RELEASE_WEIGHTS = "model.safetensors"
RELEASE_TEMPLATES = "templates.yaml"
RELEASE_FORM = "delta.json"  # present only in a delta release
RELEASE_INDEX = "model.safetensors.index.json"  # present only when the weights are sharded


def release_model_config(folder: Path) -> Config:
    """The config of a native release, its parts pointing into the folder (a delta's base parts stay where
    training found them); a transformers BLIP-2 export is named as such, in one line."""
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"{folder} is not a release folder: config.json is missing")
    raw = json.loads((folder / "config.json").read_text())
    if raw.get("model_type") == "blip-2":
        raise InputError(f"{folder} is a Blip2ForConditionalGeneration export (--format hf-blip2): load it with "
                         "transformers, or use the native release")
    if raw.get("data", {}).get("templates"):
        raw["data"]["templates"] = str(folder / RELEASE_TEMPLATES)
    if not (folder / RELEASE_FORM).is_file():
        raw["vision"]["name"] = f"local-dir:{folder / RELEASE_VISION}"
        raw["vision"]["visual_weights"] = str(folder / RELEASE_VISION / "visual.safetensors")
        raw["llm"]["name"] = str(folder / RELEASE_LLM)
        raw["llm"]["tokenizer"] = str(folder / RELEASE_TOKENIZER)
        if raw["bridge"].get("tokenizer"):
            raw["bridge"]["tokenizer"] = str(folder / RELEASE_BRIDGE_TOKENIZER)
    return config_from_dict(raw)


def _save_weights(state: dict[str, torch.Tensor], folder: Path, max_shard_size: int | str) -> None:
    # huggingface_hub writes transformers' layout: one model.safetensors, or shards and an index.
    save_torch_state_dict(state, folder, filename_pattern="model{suffix}.safetensors", max_shard_size=max_shard_size)


def _load_weights(folder: Path) -> dict[str, torch.Tensor]:
    index = folder / RELEASE_INDEX
    if not index.is_file():
        return load_file(str(folder / RELEASE_WEIGHTS))
    state: dict[str, torch.Tensor] = {}
    for name in sorted(set(json.loads(index.read_text())["weight_map"].values())):
        if not (folder / name).is_file():
            raise FileNotFoundError(f"{folder / name}: a shard listed in {index.name} is missing")
        state.update(load_file(str(folder / name)))
    return state


def check_weight_files(folder: Path) -> None:
    """Read the header of every safetensors file in a release (cheap) before anything loads: a truncated or
    corrupted download fails here in one line naming the file, not deep inside torch or transformers."""
    for path in sorted(Path(folder).rglob("*.safetensors")):
        try:
            with safe_open(str(path), framework="pt"):
                pass
        except Exception as err:  # noqa: BLE001 - SafetensorError, OSError: all mean an unusable file
            raise InputError(f"{path}: not a readable safetensors file ({str(err).splitlines()[0]}); "
                             f"export or download the release again") from None


def release_config(cfg: Config, keep_adapter: bool = False) -> dict:
    """The config as stored in a release: the parts point into the folder itself; LoRA is merged unless
    `keep_adapter` (its weights are then in model.safetensors)."""
    cfg = dataclasses.replace(
        cfg,
        vision=dataclasses.replace(cfg.vision, name=f"local-dir:{RELEASE_VISION}", pretrained="", model_config_dir="",
                                   visual_weights=f"{RELEASE_VISION}/visual.safetensors"),
        llm=dataclasses.replace(cfg.llm, name=RELEASE_LLM, tokenizer=RELEASE_TOKENIZER,
                                lora_r=cfg.llm.lora_r if keep_adapter else 0, train_embeddings=False),
        # The bridge weights are in model.safetensors: nothing is initialised from elsewhere again.
        bridge=dataclasses.replace(cfg.bridge, init_from="",
                                   tokenizer=RELEASE_BRIDGE_TOKENIZER if cfg.bridge.text_branch else ""),
        data=dataclasses.replace(cfg.data, templates=RELEASE_TEMPLATES if cfg.data.templates else ""),
    )
    return cfg.to_dict()
