"""`vlm export --format hf-blip2`: a trained model as transformers' Blip2ForConditionalGeneration and
Blip2Processor, which load with transformers alone (as mBLIP's releases do) and caption as our model does.

What has a place in that class: the image encoder up to `vision.layer` (vlm.model.blip2_vision), the
Q-Former's query branch with its language projection (vlm.model.qformer_weights), and the LM with LoRA
merged. What has none: the Q-Former's text branch, the ITC/ITM and contrastive heads (retrieval needs the
native release), the MoE and MLP bridges, and our prompt templates (the model card lists them).

BLIP-2's prompts start with `num_query_tokens` `<image>` placeholders whose embeddings the model replaces
with the visual tokens. The placeholder takes the LM's first unused embedding row when there is one (real
multilingual LMs pad their vocabulary); otherwise one row is added, set to the mean of the others, so its
logit is the mean logit and greedy decoding never picks it.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import torch
from transformers import (
    AddedToken,
    AutoTokenizer,
    Blip2Config,
    Blip2ForConditionalGeneration,
    Blip2Processor,
    CLIPImageProcessor,
)

from vlm.config import Config, ConfigError
from vlm.data.templates import caption_prompt, templates_for, vqa_prompt
from vlm.folders import atomic_folder
from vlm.model.blip2_vision import blip2_vision_tower, check_architecture
from vlm.model.qformer_weights import blip2_qformer_config, blip2_state_dict
from vlm.model.vision import open_clip_architecture
from vlm.model.vlm import VisionLLM

IMAGE_TOKEN = "<image>"
_RESAMPLE = {"bicubic": 3, "bilinear": 2, "nearest": 0, "random": 3}  # PIL.Image.Resampling values


def check_config(cfg: Config) -> None:
    """What the config (and the open_clip architecture it names) rules out, before any weights load."""
    if cfg.bridge.type != "qformer":
        raise ConfigError(f"--format hf-blip2: bridge.type is '{cfg.bridge.type}', but Blip2ForConditionalGeneration "
                          "holds a Q-Former only; export --format native")
    if not cfg.vision.include_cls:
        raise ConfigError("--format hf-blip2: vision.include_cls is false, but BLIP-2's vision model always passes "
                          "the class token to the Q-Former; export --format native")
    check_architecture(open_clip_architecture(cfg.vision))


def _image_processor(encoder) -> CLIPImageProcessor:
    """open_clip's eval transform (resize the short side, centre crop, normalise) as an image processor."""
    pp = encoder.visual.preprocess_cfg
    size = pp["size"] if isinstance(pp["size"], int) else pp["size"][0]
    mode = pp.get("resize_mode", "shortest")
    if mode not in ("shortest", "squash"):
        raise ConfigError(f"--format hf-blip2: open_clip resize_mode '{mode}' has no image-processor counterpart")
    crop = mode == "shortest"
    return CLIPImageProcessor(
        size={"shortest_edge": size} if crop else {"height": size, "width": size}, do_center_crop=crop,
        crop_size={"height": size, "width": size}, resample=_RESAMPLE.get(pp.get("interpolation"), 3),
        image_mean=list(pp["mean"]), image_std=list(pp["std"]), do_convert_rgb=True)


def _tokenizer_with_image_token(model: VisionLLM, folder: Path):
    """A copy of the LM tokenizer with `<image>` added as a special token, as Blip2Processor adds it (the
    processor then finds it and keeps its id)."""
    model.tokenizer.save_pretrained(folder)
    tokenizer = AutoTokenizer.from_pretrained(folder)
    tokenizer.add_tokens([AddedToken(IMAGE_TOKEN, normalized=False, special=True)], special_tokens=True)
    return tokenizer, tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)


def _language_model_state(lm, image_token_id: int) -> tuple[dict[str, torch.Tensor], int]:
    """The merged LM's weights; its embedding tables grown by mean rows when the image token lies past them."""
    state = {k: v.detach() for k, v in lm.state_dict().items()}
    rows = lm.get_input_embeddings().weight.shape[0]
    if image_token_id < rows:
        return state, rows
    grow = image_token_id + 1 - rows
    tables = {id(lm.get_input_embeddings().weight), id(lm.get_output_embeddings().weight)}
    for name, param in lm.named_parameters(remove_duplicate=False):  # every name of a tied table
        if id(param) in tables and name in state:
            mean = param.detach().float().mean(dim=0, keepdim=True).to(param.dtype)
            state[name] = torch.cat([param.detach(), mean.expand(grow, -1)])
    return state, rows + grow


def export_hf_blip2(model: VisionLLM, out_dir: str | Path, extra_files: dict[str, str],
                    max_shard_size: int | str = "5GB") -> Path:
    """Write OUT as Blip2ForConditionalGeneration weights + config, a Blip2Processor (CLIP-style image processor
    and the LM tokenizer with `<image>`) and `extra_files` (name -> text: the card, results.json); written aside
    and renamed into place, so a failure or a kill never leaves a half-written folder."""
    check_config(model.cfg)
    vision = blip2_vision_tower(model.vision)  # refuses a tower BLIP-2 cannot hold, before anything is written
    image_processor = _image_processor(model.vision)
    with tempfile.TemporaryDirectory() as scratch:
        tokenizer, image_token_id = _tokenizer_with_image_token(model, Path(scratch))
    lm = model.llm.merged_model()
    lm_state, vocab_rows = _language_model_state(lm, image_token_id)
    text_config = lm.config.to_dict()
    text_config.update(vocab_size=vocab_rows, pad_token_id=tokenizer.pad_token_id,
                       eos_token_id=tokenizer.eos_token_id)
    qformer = blip2_qformer_config(model.bridge, model.cfg.bridge.cross_attention_freq)
    config = Blip2Config(vision_config=vision.config, qformer_config=qformer["qformer_config"],
                         text_config=text_config, num_query_tokens=qformer["num_query_tokens"],
                         image_token_index=image_token_id)

    state = {f"vision_model.{k}": v for k, v in vision.state.items()}
    state.update({k: v.detach().float().contiguous() for k, v in blip2_state_dict(model.bridge).items()})
    state.update({f"language_model.{k}": v for k, v in lm_state.items()})
    with torch.device("meta"):
        hf = Blip2ForConditionalGeneration(config)
    expected = set(hf.state_dict())
    if set(state) != expected:  # a layout this code does not know: never write a half-filled model
        raise RuntimeError(f"hf-blip2 export: missing {sorted(expected - set(state))[:3]}, "
                           f"unexpected {sorted(set(state) - expected)[:3]}")
    hf.load_state_dict(state, assign=True)
    hf.tie_weights()
    with atomic_folder(out_dir) as tmp:
        hf.save_pretrained(tmp, max_shard_size=max_shard_size)
        Blip2Processor(image_processor, tokenizer, num_query_tokens=config.num_query_tokens).save_pretrained(tmp)
        for name, text in extra_files.items():
            (tmp / name).write_text(text)
    return Path(out_dir)


def usage_section(model: VisionLLM) -> list[str]:
    """The card's how-to-load lines and the prompts the model was trained with, per language."""
    templates = templates_for(model.cfg.data)
    first_prompt = json.dumps(caption_prompt(model.cfg.data.languages[0], templates=templates), ensure_ascii=False)
    lines = [
        "## Use with transformers", "",
        "```python",
        "from PIL import Image",
        "from transformers import Blip2ForConditionalGeneration, Blip2Processor",
        "",
        "processor = Blip2Processor.from_pretrained(PATH)",
        "model = Blip2ForConditionalGeneration.from_pretrained(PATH)",
        f"inputs = processor(images=Image.open(IMAGE), text={first_prompt}, return_tensors=\"pt\")",
        "ids = model.generate(**inputs, max_new_tokens=32)",
    ]
    if model.llm.is_seq2seq:
        lines.append("print(processor.batch_decode(ids, skip_special_tokens=True)[0])")
    else:  # a decoder-only LM returns the prompt (with the image placeholders) before the new tokens
        lines.append("print(processor.batch_decode(ids[:, inputs['input_ids'].shape[1]:], "
                     "skip_special_tokens=True)[0])")
    lines += ["```", "", "The prompts it was trained with (captioning; VQA puts the question in the second):", "",
              "| lang | caption | VQA |", "|---|---|---|"]
    for lang in model.cfg.data.languages:
        lines.append(f"| {lang} | `{caption_prompt(lang, templates=templates)}` | "
                     f"`{vqa_prompt('{question}', lang, templates=templates)}` |")
    left_out = "The Q-Former's text branch and the retrieval heads are" if model.has_text_branch else \
        "The retrieval head is"
    lines += ["", f"{left_out} not in this format: retrieval needs the native release (`vlm export` without "
              "`--format`).", ""]
    return lines


def caption_with_transformers(folder: str | Path, images: list, prompt: str, **decoding) -> list[str]:
    """What a user of the export runs: transformers alone loads FOLDER, its processor builds the inputs
    (image placeholders, then the prompt), and the new tokens are decoded."""
    processor = Blip2Processor.from_pretrained(folder)
    model = Blip2ForConditionalGeneration.from_pretrained(folder).eval()
    inputs = processor(images=images, text=[prompt] * len(images), return_tensors="pt")
    ids = model.generate(**inputs, **decoding)
    if not model.config.is_encoder_decoder:  # a decoder-only LM returns the prompt first
        ids = ids[:, inputs["input_ids"].shape[1]:]
    return [text.strip() for text in processor.batch_decode(ids, skip_special_tokens=True)]
