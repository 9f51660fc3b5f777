"""Cross-lingual alignment per language, MEXA-style (Kargaran et al. 2024, "MEXA: Multilingual Evaluation of
English-Centric LLMs via Cross-Lingual Alignment"): on parallel captions (an English caption and its translation
into language L), the share of English captions whose embedding is nearer to their own translation than to the
other n-1 translations (en→x), and back (x→en). MEXA finds this tracks downstream scores per language, so a low
value next to a low R@1 says the language's text side is not aligned with English, not that the images are hard.

Two embeddings are scored: (i) the LLM's hidden states at `eval.alignment_layer` (mean over the caption's tokens,
no special tokens; the encoder's for a seq2seq LM), (ii) the text embedding retrieval ranks with
(`VisionLLM.encode_text`: the Q-Former's ITC feature or the CG-VLM-style head). Chance is 100/n %. A tie with
another candidate is a miss, so a collapsed embedding scores 0, not 100.

Only suites whose captions translate each other have pairs (results say why otherwise). Text only, no images:
`eval.runner.evaluate` runs it on rank 0 after the gather; the other ranks skip it.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as F

from vlm.config import ConfigError, EvalConfig, LLMConfig
from vlm.model.llm import LanguageModel, model_config
from vlm.model.vlm import VisionLLM

REFERENCE = "en"
MIN_PAIRS = 2  # with one pair every embedding "retrieves" its translation

Embedder = Callable[[list[str]], torch.Tensor]  # texts -> (len(texts), D)


def parallel_pairs(records: list[dict], lang: str, limit: int) -> list[tuple[str, str]]:
    """The first `limit` (English caption, its translation) pairs. Captions pair by position within an image, so
    an image whose two lists differ in length (a filter dropped a translation) is left out. A caption seen
    before, on either side, is skipped: a duplicate would be an ambiguous target."""
    pairs, seen_en, seen_x = [], set(), set()
    for record in records:
        captions = record.get("captions", {})
        english, translated = captions.get(REFERENCE, []), captions.get(lang, [])
        if len(english) != len(translated):
            continue
        for en, x in zip(english, translated):
            if en and x and en not in seen_en and x not in seen_x:
                pairs.append((en, x))
                seen_en.add(en)
                seen_x.add(x)
                if len(pairs) == limit:
                    return pairs
    return pairs


def mutual_retrieval(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """(% of rows of `a` whose most similar row of `b` (cosine) is its own, the same from `b` to `a`);
    row i of `a` and of `b` are a pair. A tie with another row is a miss."""
    sim = F.normalize(a.float(), dim=-1) @ F.normalize(b.float(), dim=-1).t()
    others = sim.masked_fill(torch.eye(len(sim), dtype=torch.bool), float("-inf"))
    diagonal = sim.diagonal()
    return (100.0 * (diagonal > others.amax(dim=1)).float().mean().item(),
            100.0 * (diagonal > others.amax(dim=0)).float().mean().item())


def resolve_layer(layer: int, depth: int, name: str) -> int:
    """eval.alignment_layer as a hidden-state index in 1..depth: 0 the middle layer, -1 the last."""
    resolved = (depth + 1) // 2 if layer == 0 else depth + 1 + layer if layer < 0 else layer
    if not 1 <= resolved <= depth:
        raise ConfigError(f"'eval.alignment_layer' ({layer}) is outside '{name}', which has {depth} layer(s): use "
                          f"1..{depth}, -1..-{depth}, or 0 for the middle one")
    return resolved


def check_layer(cfg: EvalConfig, llm: LLMConfig) -> None:
    """eval.alignment_layer against the depth of the LM `llm` names (its config.json only), before any model
    is built."""
    if cfg.alignment_pairs:
        resolve_layer(cfg.alignment_layer, model_config(llm).num_hidden_layers, llm.name)


def llm_embedder(lm: LanguageModel, layer: int, max_length: int, batch_size: int) -> Embedder:
    """Mean hidden state at `layer` over each text's tokens: the decoder stack of a causal LM, the encoder of a
    seq2seq one (the LM head never runs: its logits would be batch x length x vocabulary)."""
    stack = lm.base_model.get_encoder() if lm.is_seq2seq else lm.base_model.base_model
    device = lm.model.get_input_embeddings().weight.device

    def embed(texts: list[str]) -> torch.Tensor:
        out = []
        for start in range(0, len(texts), batch_size):
            # Right padding: a causal LM's positions count from the left, so left pads would shift them.
            enc = lm.tokenizer(texts[start: start + batch_size], add_special_tokens=False, padding=True,
                               padding_side="right", truncation=True, max_length=max_length, return_tensors="pt")
            mask = enc["attention_mask"].to(device)
            states = stack(input_ids=enc["input_ids"].to(device), attention_mask=mask,
                           output_hidden_states=True).hidden_states[layer].float()  # bf16 sums drift
            weights = mask.unsqueeze(-1).float()
            out.append(((states * weights).sum(dim=1) / weights.sum(dim=1).clamp(min=1)).cpu())
        return torch.cat(out)

    return embed


def text_head_embedder(model: VisionLLM, batch_size: int) -> Embedder:
    def embed(texts: list[str]) -> torch.Tensor:
        return torch.cat([model.encode_text(texts[s: s + batch_size]).float().cpu()
                          for s in range(0, len(texts), batch_size)])

    return embed


def score_pairs(pairs: dict[str, list[tuple[str, str]]], embedders: dict[str, Embedder]) -> dict[str, dict]:
    """{lang: {"<embedder>_en_to_x", "<embedder>_x_to_en", "n", "chance"}}; each distinct text is embedded once."""
    texts = list(dict.fromkeys(text for lang_pairs in pairs.values() for pair in lang_pairs for text in pair))
    row = {text: i for i, text in enumerate(texts)}
    scores = {lang: {"n": len(p), "chance": 100.0 / len(p)} for lang, p in pairs.items()}
    for name, embed in embedders.items():
        vectors = embed(texts)
        for lang, lang_pairs in pairs.items():
            english = vectors[[row[en] for en, _ in lang_pairs]]
            translated = vectors[[row[x] for _, x in lang_pairs]]
            scores[lang][f"{name}_en_to_x"], scores[lang][f"{name}_x_to_en"] = mutual_retrieval(english, translated)
    return scores


@torch.no_grad()
def evaluate_alignment(model: VisionLLM, records: list[dict], languages: list[str], cfg: EvalConfig,
                       parallel: bool) -> tuple[dict, dict[str, dict]]:
    """(results["alignment"]: the settings, or {"skipped": why}; per-language scores, English left out)."""
    if not cfg.alignment_pairs:
        return {"skipped": "eval.alignment_pairs is 0"}, {}
    if not any(record.get("captions") for record in records):
        return {"skipped": "the suite has no captions"}, {}
    if not parallel:
        return {"skipped": "the suite's captions are not translations of each other"}, {}
    depth = model.llm.base_model.config.num_hidden_layers
    layer = resolve_layer(cfg.alignment_layer, depth, model.cfg.llm.name)
    pairs = {lang: parallel_pairs(records, lang, cfg.alignment_pairs) for lang in languages if lang != REFERENCE}
    too_few = {lang: f"{len(p)} parallel caption pair(s) with '{REFERENCE}'" for lang, p in pairs.items()
               if len(p) < MIN_PAIRS}
    pairs = {lang: p for lang, p in pairs.items() if lang not in too_few}
    embedders = {"llm": llm_embedder(model.llm, layer, model.cfg.llm.max_length, cfg.batch_size),
                 "text_head": text_head_embedder(model, cfg.batch_size)}
    scores = score_pairs(pairs, embedders) if pairs else {}
    for lang_scores in scores.values():
        lang_scores["layer"] = layer
    summary = {"reference": REFERENCE, "layer": layer, "depth": depth, "pairs": cfg.alignment_pairs,
               "text_head": "itc" if model.uses_itc_retrieval else "contrastive", "skipped_languages": too_few}
    return summary, scores
