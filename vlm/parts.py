"""The small "pretrained" parts that `vlm demo` makes for itself, since nothing can be downloaded:
a CLIP trained with open_clip's own loss, and a byte-level BPE tokenizer plus a causal LM trained on
the translated text. Each is saved with its library's own format and later loaded back by path
through the same loaders a hub name takes (`local-dir:` for open_clip, `from_pretrained` for transformers).
"""

from __future__ import annotations

import logging
import math
import random
import time
from pathlib import Path

import open_clip
import torch
from open_clip.loss import ClipLoss
from open_clip.push_to_hf_hub import save_config_for_hf
from safetensors.torch import save_file
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
from tqdm import tqdm
from transformers import PreTrainedTokenizerFast, Qwen2Config, Qwen2ForCausalLM

from vlm.config import DemoConfig
from vlm.data.batch import IGNORE_INDEX
from vlm.data.collate import Collator
from vlm.data.records import read_records, read_samples
from vlm.data.templates import caption_prompt, vqa_prompt
from vlm.train.schedule import warmup_cosine

log = logging.getLogger(__name__)

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>"]
# Pre-tokenisation: one piece per CJK character, one per punctuation mark, and whole words (with their
# leading space) otherwise. GPT-2's letter regex would cut Indic words at every vowel sign, and would
# merge a whole Chinese clause into one token on a small corpus (shared/reference/demo_feasibility.md).
_PIECES = r" ?[^\s\p{Han}\p{Hiragana}\p{Katakana}\p{P}]+| ?[\p{Han}\p{Hiragana}\p{Katakana}]|\s+|\p{P}"


def train_tokenizer(texts: list[str], vocab_size: int) -> PreTrainedTokenizerFast:
    tokenizer = Tokenizer(models.BPE())
    tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(_PIECES), behavior="isolated"),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=SPECIAL_TOKENS, min_frequency=2,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False)
    tokenizer.train_from_iterator(texts, trainer=trainer)
    return PreTrainedTokenizerFast(tokenizer_object=tokenizer, pad_token="<pad>", bos_token="<s>",
                                   eos_token="</s>", unk_token="<unk>")


def lm_corpus(urls: list[str], languages: list[str]) -> list[tuple[str, str]]:
    """(prompt, target) pairs of every caption and question in the training shards, in the same
    templates the alignment stage uses, so the LM knows the prompt format before it sees images."""
    pairs = []
    for record in read_records(urls):
        for lang in languages:
            pairs += [(caption_prompt(lang), c) for c in record.get("captions", {}).get(lang, [])]
        pairs += [(vqa_prompt(q["question"], q["lang"]), q["answers"][0])
                  for q in record.get("qa", []) if q.get("lang") in languages and q.get("answers")]
    return pairs


def train_causal_lm(pairs: list[tuple[str, str]], tokenizer, cfg: DemoConfig, seed: int) -> Qwen2ForCausalLM:
    """A small Qwen2-architecture LM trained on whole sequences (prompt and target) of the corpus."""
    torch.manual_seed(seed)
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=cfg.lm_hidden_size,
                         intermediate_size=3 * cfg.lm_hidden_size, num_hidden_layers=cfg.lm_layers,
                         num_attention_heads=cfg.lm_heads, num_key_value_heads=cfg.lm_heads,
                         max_position_embeddings=512, tie_word_embeddings=True,
                         bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id,
                         pad_token_id=tokenizer.pad_token_id)
    model = Qwen2ForCausalLM(config)
    # The alignment stage's own encoding (prompt + target + eos), with every token supervised here.
    encoded = Collator(tokenizer, "causal", max_length=96).encode_many([p for p, _ in pairs], [t for _, t in pairs])
    rows = [prompt_ids + target_ids for prompt_ids, target_ids in encoded]
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.lm_lr, weight_decay=0.01)
    rng = random.Random(seed)
    model.train()
    loss = torch.tensor(float("nan"))
    for step in tqdm(range(cfg.lm_steps), desc="demo LM", dynamic_ncols=True, disable=None):
        batch = rng.sample(rows, min(cfg.lm_batch_size, len(rows)))
        width = max(len(r) for r in batch)
        ids = torch.tensor([r + [tokenizer.pad_token_id] * (width - len(r)) for r in batch])
        labels = torch.tensor([r + [IGNORE_INDEX] * (width - len(r)) for r in batch])
        factor = warmup_cosine(step, 20, cfg.lm_steps, 0.1)
        for group in optimizer.param_groups:
            group["lr"] = cfg.lm_lr * factor
        loss = model(input_ids=ids, attention_mask=(labels != IGNORE_INDEX).long(), labels=labels).loss
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
    log.info("demo LM: %d steps, final loss %.3f", cfg.lm_steps, loss.item())
    return model.eval()


MAX_LM_PAIRS = 100_000  # a random subset: more than the LM sees in its steps, and quick to tokenise


def make_language_model(urls: list[str], languages: list[str], cfg: DemoConfig, out_dir: Path,
                        tokenizer_dir: Path) -> dict:
    """Tokenizer + LM trained on the translated text, each saved with `save_pretrained`.

    The tokenizer goes into its own folder: next to a Qwen2 config.json, AutoTokenizer would load
    Qwen2's own class, whose pre-tokenizer cuts Indic words apart.
    """
    start = time.time()
    pairs = lm_corpus(urls, languages)
    if len(pairs) > MAX_LM_PAIRS:
        pairs = random.Random(cfg.seed).sample(pairs, MAX_LM_PAIRS)
    tokenizer = train_tokenizer([f"{p} {t}" for p, t in pairs], cfg.tokenizer_vocab_size)
    model = train_causal_lm(pairs, tokenizer, cfg, cfg.seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out_dir)
    tokenizer.save_pretrained(tokenizer_dir)
    return {"lm_pairs": len(pairs), "vocab_size": len(tokenizer), "lm_seconds": round(time.time() - start, 1)}


def train_clip(urls: list[str], cfg: DemoConfig, model_name: str, seed: int) -> tuple[torch.nn.Module, dict]:
    """A CLIP from scratch on the English captions, with open_clip's own model, tokenizer and loss."""
    torch.manual_seed(seed)
    model, _, preprocess = open_clip.create_model_and_transforms(model_name, pretrained=None, output_dict=True)
    tokenizer = open_clip.get_tokenizer(model_name)
    images, captions = [], []
    for sample in read_samples(urls):
        english = sample.record.get("captions", {}).get("en")
        if english:
            images.append(preprocess(sample.image))
            captions.append(english[0])
    images_t = torch.stack(images)
    texts_t = tokenizer(captions)
    loss_fn = ClipLoss()
    optimizer = torch.optim.AdamW(model.parameters(), lr=cfg.clip_lr, weight_decay=0.1)
    rng = random.Random(seed)
    model.train()
    loss = torch.tensor(float("nan"))
    for step in tqdm(range(cfg.clip_steps), desc="demo CLIP", dynamic_ncols=True, disable=None):
        idx = torch.tensor(rng.sample(range(len(captions)), min(cfg.clip_batch_size, len(captions))))
        factor = warmup_cosine(step, 20, cfg.clip_steps, 0.0)
        for group in optimizer.param_groups:
            group["lr"] = cfg.clip_lr * factor
        out = model(images_t[idx], texts_t[idx])
        loss = loss_fn(out["image_features"], out["text_features"], out["logit_scale"])
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)  # CLIP from scratch is prone to collapse
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
    return model.eval(), {"clip_steps": cfg.clip_steps, "clip_loss": round(loss.item(), 4), "clip_images": len(captions)}


def make_clip(urls: list[str], cfg: DemoConfig, model_config_dir: str, out_dir: Path) -> dict:
    """Train the `cfg.clip_model` architecture (its JSON in `model_config_dir`) and save it as an
    open_clip `local-dir:` folder (open_clip_config.json + safetensors)."""
    start = time.time()
    if model_config_dir:
        open_clip.add_model_config(Path(model_config_dir))
    model_name = cfg.clip_model
    model, stats = train_clip(urls, cfg, model_name, cfg.seed)
    out_dir.mkdir(parents=True, exist_ok=True)
    save_config_for_hf(model, out_dir / "open_clip_config.json", model_config=open_clip.get_model_config(model_name))
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, str(out_dir / "open_clip_model.safetensors"))
    stats["clip_seconds"] = round(time.time() - start, 1)
    return stats
