"""Evaluate a VisionLLM on a benchmark (eval.suites) per language: retrieval, captioning and VQA, each
beside its chance or majority baseline where one exists. Returns the `results` dict that `eval.report`
renders and `results.json` holds.

The frozen encoder runs once per image: its tokens serve the retrieval features and every caption and
question asked of that image. Under torchrun each rank decodes, encodes and generates for every
world_size-th image (and text), the parts are gathered to rank 0 once, and rank 0 scores them.

Beside the scores, rank 0 adds the per-language picture: the spread of every metric over languages and scripts
(eval.spread), the MEXA-style cross-lingual alignment of parallel captions (eval.alignment) and the tokenizers'
fertility on the suite's captions (data_prep.fertility).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset
from tqdm import tqdm

from data_prep import fertility
from data_prep.images import BadImage, decode_image
from data_prep.language_id import fidelity_method
from eval.alignment import evaluate_alignment
from eval.captioning import caption_scores, language_fidelity, majority_caption
from eval.retrieval import chance_recall, recall_at_k
from eval.spread import compute_spread
from eval.suites import Benchmark, BenchmarkImage
from eval.vqa import accuracy_by_type, majority_baseline
from vlm import distributed, precision
from vlm.config import EvalConfig
from vlm.data.templates import caption_prompt, templates_for, vqa_prompt
from vlm.model.vlm import VisionLLM

log = logging.getLogger(__name__)
_NAMED_IN_WARNING = 20  # skipped images named in the warning line; results.json names them all


# --- images ----------------------------------------------------------------------------------------


class _Images(Dataset):
    """The benchmark images at `positions`, transformed; an undecodable one yields None (skipped, counted)."""

    def __init__(self, images: list[BenchmarkImage], positions: list[int], transform: Callable):
        self.images, self.positions, self.transform = images, positions, transform

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, i: int) -> tuple[int, torch.Tensor | None]:
        position = self.positions[i]
        image = self.images[position].image
        try:
            return position, self.transform(decode_image(image) if isinstance(image, Path) else image)
        except (BadImage, FileNotFoundError):
            return position, None


def _collate(items: list[tuple[int, torch.Tensor | None]]) -> tuple[list[int], torch.Tensor | None, list[int]]:
    """(positions of the decoded images, their pixels, positions of the undecodable ones)."""
    good = [(p, x) for p, x in items if x is not None]
    pixels = torch.stack([x for _, x in good]) if good else None
    return [p for p, _ in good], pixels, [p for p, x in items if x is None]


def _batches(n: int, size: int):
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


# --- one rank's share of the work --------------------------------------------------------------------


@dataclass
class _Part:
    """What one rank computed; gathered to rank 0 once (CPU tensors and strings only)."""

    positions: list[int] = field(default_factory=list)  # benchmark positions of its decodable images
    image_features: list[torch.Tensor] = field(default_factory=list)
    captions: dict[str, dict[int, str]] = field(default_factory=dict)  # lang -> image position -> hypothesis
    answers: dict[str, dict[tuple[int, int], str]] = field(default_factory=dict)  # lang -> (image, qa) -> answer
    text_features: dict[str, tuple[list[int], torch.Tensor]] = field(default_factory=dict)  # lang -> (text positions, features)
    routing: dict[str, torch.Tensor] = field(default_factory=dict)  # lang -> summed router probabilities
    skipped: list[int] = field(default_factory=list)  # benchmark positions of its undecodable images


def decoding_options(cfg: EvalConfig, vqa: bool) -> dict:
    """transformers `generate` options from the eval config; the KV cache is always on."""
    options = {"max_new_tokens": cfg.vqa_max_new_tokens if vqa else cfg.max_new_tokens, "num_beams": cfg.num_beams,
               "do_sample": False, "use_cache": True}
    if cfg.num_beams > 1:
        options["length_penalty"] = cfg.length_penalty
    return options


def _generate(model: VisionLLM, tokens: torch.Tensor, rows: list[int], prompts: list[str], options: dict,
              batch_size: int) -> list[str]:
    outputs: list[str] = []
    for part in _batches(len(rows), batch_size):
        outputs += model.generate_from_tokens(tokens[rows[part]], prompts[part], **options)
    return outputs


def retrieval_texts(records: list[dict], lang: str, mode: str) -> tuple[list[int], list[str], list[int], list[int]]:
    """The retrieval gallery of one language: (kept image indices, texts, owner of each text as a position in
    the kept images, captions per kept image). mode "first": each image's first caption (CLIP_benchmark's
    XM3600 protocol); "all": every caption. Images without a caption in `lang` take no part."""
    images, texts, owners, counts = [], [], [], []
    for i, record in enumerate(records):
        captions = record.get("captions", {}).get(lang, [])
        captions = captions[:1] if mode == "first" else captions
        if captions:
            texts += captions
            owners += [len(images)] * len(captions)
            counts.append(len(captions))
            images.append(i)
    return images, texts, owners, counts


def _vqa_items(image: BenchmarkImage, lang: str) -> list[tuple[int, dict]]:
    return [(q, item) for q, item in enumerate(image.qa) if item.get("lang") == lang and item.get("answers")]


def _run_part(model: VisionLLM, bench: Benchmark, cfg: EvalConfig, mode: str, keep_tokens: bool,
              progress: bool) -> tuple[_Part, torch.Tensor | None]:
    rank, world = distributed.rank(), distributed.world_size()
    part = _Part()
    mine = list(range(rank, len(bench.images), world))
    in_memory = not isinstance(bench.images[0].image, Path)  # decoded demo shards: no worker processes needed
    loader = DataLoader(_Images(bench.images, mine, model.vision.preprocess), batch_size=cfg.batch_size,
                        num_workers=0 if in_memory else cfg.num_workers, collate_fn=_collate)
    caption_options, vqa_options = decoding_options(cfg, vqa=False), decoding_options(cfg, vqa=True)
    templates = templates_for(model.cfg.data)  # the prompts it was trained with (first template of each list)
    kept_tokens = []
    for positions, pixels, skipped in tqdm(loader, desc=f"eval {bench.name}", leave=False,
                                           disable=None if progress and rank == 0 else True):
        part.skipped += skipped
        if not positions:
            continue
        part.positions += positions
        tokens = model.vision(pixels.to(model.device))
        if keep_tokens:
            kept_tokens.append(tokens.float().cpu())
        if "retrieval" in bench.tasks:
            part.image_features.append(model.encode_image_tokens(tokens).float().cpu())
        for lang in bench.languages:
            if "captioning" in bench.tasks:
                rows = [j for j, p in enumerate(positions) if bench.images[p].captions.get(lang)]
                prompts = [caption_prompt(lang, cfg.prompt_language, templates)] * len(rows)
                hyps = _generate(model, tokens, rows, prompts, caption_options, cfg.batch_size)
                part.captions.setdefault(lang, {}).update({positions[j]: h for j, h in zip(rows, hyps)})
            if "vqa" in bench.tasks:
                rows, keys, prompts = [], [], []
                for j, p in enumerate(positions):
                    for q, item in _vqa_items(bench.images[p], lang):
                        rows.append(j)
                        keys.append((p, q))
                        prompts.append(vqa_prompt(item["question"], bench.answer_language or lang, cfg.prompt_language,
                                                  templates))
                answers = _generate(model, tokens, rows, prompts, vqa_options, cfg.batch_size)
                part.answers.setdefault(lang, {}).update(zip(keys, answers))
            if model.bridge_reads_prompt:
                probs = model.route(tokens, [caption_prompt(lang, cfg.prompt_language, templates)]
                                    * len(positions)).router_probs
                part.routing[lang] = part.routing.get(lang, 0) + probs.float().sum(dim=0).cpu()
    if "retrieval" in bench.tasks:
        records = [image.record for image in bench.images]
        for lang in bench.languages:
            _, texts, _, _ = retrieval_texts(records, lang, mode)
            texts_mine = list(range(rank, len(texts), world))
            features = [model.encode_text([texts[t] for t in texts_mine[s]]).float().cpu()
                        for s in _batches(len(texts_mine), cfg.batch_size)]
            part.text_features[lang] = (texts_mine, torch.cat(features) if features else torch.empty(0))
    return part, torch.cat(kept_tokens) if kept_tokens else None


# --- scoring (rank 0) ------------------------------------------------------------------------------


def _merge(parts: list[_Part]) -> _Part:
    merged = _Part()
    for part in parts:
        merged.positions += part.positions
        merged.image_features += part.image_features
        merged.skipped += part.skipped
        for lang, hyps in part.captions.items():
            merged.captions.setdefault(lang, {}).update(hyps)
        for lang, answers in part.answers.items():
            merged.answers.setdefault(lang, {}).update(answers)
        for lang, probs in part.routing.items():
            merged.routing[lang] = merged.routing.get(lang, 0) + probs
    for lang in parts[0].text_features:
        index = [t for part in parts for t in part.text_features[lang][0]]
        if not index:
            merged.text_features[lang] = ([], torch.empty(0))
            continue
        features = torch.cat([part.text_features[lang][1] for part in parts if part.text_features[lang][0]])
        merged.text_features[lang] = (sorted(index), features[torch.tensor(index).argsort()])
    return merged


def rerank_with_itm(sim: torch.Tensor, score_pairs: Callable[[list[int], list[int]], torch.Tensor],
                    k: int) -> torch.Tensor:
    """BLIP-2's retrieval protocol: re-score each query's top-k ITC candidates as ITM logit + ITC score, in
    both directions. Candidates outside a query's top k keep scores below every re-ranked one, so they
    stay behind them. Returns (i2t scores, t2i scores) as one (N, M) matrix each, stacked."""
    floor = sim.min() - 1e4  # below any ITM logit + similarity
    out = []
    for by_image in (True, False):
        scores = torch.full_like(sim, float(floor))
        rows = sim if by_image else sim.t()
        top = rows.topk(min(k, rows.shape[1]), dim=1).indices  # (queries, k)
        queries = torch.arange(rows.shape[0]).unsqueeze(1).expand_as(top)
        images, texts = (queries, top) if by_image else (top, queries)
        itm = score_pairs(images.flatten().tolist(), texts.flatten().tolist()).view_as(top)
        target = scores if by_image else scores.t()
        target.scatter_(1, top, itm + rows.gather(1, top))
        out.append(scores)
    return torch.stack(out)


def _score_retrieval(model: VisionLLM, records: list[dict], merged: _Part, image_features: torch.Tensor,
                     row_of: dict[int, int], lang: str, cfg: EvalConfig, mode: str,
                     vision_tokens: torch.Tensor | None) -> dict | None:
    images, texts, owners, counts = retrieval_texts(records, lang, mode)
    # Texts of images that failed to decode leave the gallery with their image.
    keep_image = [i for i, p in enumerate(images) if p in row_of]
    if not keep_image:
        return None
    new_owner = {old: new for new, old in enumerate(keep_image)}
    keep_text = [t for t, o in enumerate(owners) if o in new_owner]
    texts = [texts[t] for t in keep_text]
    owners = torch.tensor([new_owner[owners[t]] for t in keep_text])
    counts = [counts[i] for i in keep_image]
    rows = [row_of[images[i]] for i in keep_image]
    text_features = merged.text_features[lang][1][keep_text]
    sim = model.similarity(image_features[rows], text_features)
    scores = recall_at_k(sim, owners, ks=cfg.ks)
    scores.update(ranked_by="itc" if model.uses_itc_retrieval else "contrastive", n_images=len(rows),
                  n_texts=len(texts), protocol=f"hit@k as CLIP_benchmark; captions: {mode}")
    if vision_tokens is not None:
        def score_pairs(image_index: list[int], text_index: list[int]) -> torch.Tensor:
            return torch.cat([model.itm_scores(vision_tokens[[rows[i] for i in image_index[p]]].to(model.device),
                                               [texts[j] for j in text_index[p]]).cpu()
                              for p in _batches(len(image_index), cfg.batch_size)])

        i2t, t2i = rerank_with_itm(sim, score_pairs, cfg.itm_rerank_k)
        scores.update({f"itm_{k}": v for k, v in recall_at_k(i2t, owners, ks=cfg.ks).items() if k.startswith("i2t")})
        scores.update({f"itm_{k}": v for k, v in recall_at_k(t2i, owners, ks=cfg.ks).items() if k.startswith("t2i")})
        scores["itm_rerank_k"] = cfg.itm_rerank_k
    scores.update(chance_recall(len(rows), counts, ks=cfg.ks))
    return scores


def _score_captioning(bench: Benchmark, merged: _Part, lang: str, cfg: EvalConfig) -> dict | None:
    hyps = merged.captions.get(lang, {})
    if len(hyps) < 2:  # CIDEr-D's IDF is identically 0 on one image
        return None
    order = sorted(hyps)
    refs = {bench.images[p].key: bench.images[p].captions[lang] for p in order}
    hyp_by_key = {bench.images[p].key: hyps[p] for p in order}
    result = caption_scores(refs, hyp_by_key, lang, cfg.caption_tokenizer or None)
    result["fidelity"] = language_fidelity(list(hyp_by_key.values()), lang)
    result["fidelity_method"] = fidelity_method(lang)
    result["samples"] = [{"image": key, "reference": refs[key][0], "hypothesis": hyp_by_key[key]}
                         for key in list(refs)[: cfg.samples_per_language]]
    train_captions = [c for r in bench.train_records for c in r.get("captions", {}).get(lang, [])]
    if train_captions:
        guess = majority_caption(train_captions)
        result["majority_cider"] = caption_scores(refs, dict.fromkeys(refs, guess), lang,
                                                  cfg.caption_tokenizer or None)["cider"]
    return result


def _score_vqa(bench: Benchmark, merged: _Part, lang: str) -> dict | None:
    answers = merged.answers.get(lang, {})
    if not answers:
        return None
    keys = sorted(answers)
    items = [bench.images[p].qa[q] for p, q in keys]
    answer_lang = bench.answer_language or lang
    scores = accuracy_by_type([answers[k] for k in keys], items, answer_lang)
    scores["answer_language"] = answer_lang
    train_items = [q for r in bench.train_records for q in r.get("qa", []) if q.get("lang") == lang and q.get("answers")]
    if train_items:
        baseline = majority_baseline(train_items, items, answer_lang)
        scores["majority_overall"] = baseline["overall"]
        for qtype, row in scores["by_type"].items():
            row["majority"] = baseline["by_type"][qtype]["accuracy"]
    return scores


def language_means(per_language: dict) -> dict:
    """Per section, the unweighted mean over languages of every numeric metric (how papers average)."""
    means: dict[str, dict[str, float]] = {}
    for section in ("retrieval", "captioning", "vqa", "alignment"):
        values: dict[str, list[float]] = {}
        for scores in per_language.values():
            for name, value in scores.get(section, {}).items():
                if isinstance(value, (int, float)) and not isinstance(value, bool):
                    values.setdefault(name, []).append(float(value))
        if values:
            means[section] = {name: sum(v) / len(v) for name, v in values.items()}
            means[section]["n_languages"] = max(len(v) for v in values.values())
    return means


def tokenizer_fertility(model: VisionLLM, bench: Benchmark, parallel: bool) -> dict:
    """Tokenizer fertility (data_prep.fertility) on the suite's captions per language, English included as the
    reference: "llm" for the LLM's tokenizer and, for a Q-Former text branch, "bridge" for its own (the same
    table when it shares the LLM's). Each table names its tokenizer; a language over 3x English is logged.
    Empty for a suite without captions."""
    languages = list(dict.fromkeys([*bench.languages, fertility.REFERENCE]))
    texts = {lang: [c for image in bench.images for c in image.captions.get(lang, [])] for lang in languages}
    if not any(texts.values()):  # a VQA suite
        return {}
    tokenizers = {"llm": model.tokenizer}
    if model.has_text_branch:
        tokenizers["bridge"] = model.bridge_tokenizer
    tables: dict[str, dict] = {}
    for part, tokenizer in tokenizers.items():
        if part == "bridge" and tokenizer is model.tokenizer:
            tables[part] = tables["llm"]
            continue
        name = getattr(tokenizer, "name_or_path", "") or type(tokenizer).__name__
        tables[part] = {"tokenizer": name, **fertility.measure(fertility.counter(tokenizer), texts, parallel)}
        for line in fertility.warnings(tables[part], f"{part} tokenizer ({name})"):
            log.warning("eval %s: %s", bench.name, line)
    return tables


def skipped_images(bench: Benchmark, positions: list[int]) -> list[str]:
    """The names of the images left out: those the suite's loader skipped, then the keys (and files) of those
    that failed to decode here, in benchmark order."""
    named = [f"{bench.images[p].key} ({bench.images[p].image})" if isinstance(bench.images[p].image, Path)
             else bench.images[p].key for p in sorted(positions)]
    return list(bench.skipped) + named


@torch.no_grad()
def evaluate(model: VisionLLM, bench: Benchmark, cfg: EvalConfig, progress: bool = True) -> dict | None:
    """Score `model` on `bench` per language. Every rank must call it; rank 0 returns the results, the
    others None. The model's train/eval mode is restored afterwards (the trainer calls this mid-run)."""
    was_training = model.training
    model.eval()
    try:
        return _evaluate(model, bench, cfg, progress)
    finally:
        model.train(was_training)


def _evaluate(model: VisionLLM, bench: Benchmark, cfg: EvalConfig, progress: bool) -> dict | None:
    start = time.time()
    mode = bench.retrieval_captions if cfg.retrieval_captions == "auto" else cfg.retrieval_captions
    world = distributed.world_size()
    rerank = cfg.itm_rerank_k > 0 and model.can_itm_rerank and "retrieval" in bench.tasks
    if rerank and world > 1:
        log.warning("eval.itm_rerank_k: ITM re-ranking runs in single-process evaluation only; skipped")
        rerank = False
    with precision.autocast(cfg.precision, model.device):
        part, vision_tokens = _run_part(model, bench, cfg, mode, rerank, progress)
    parts = distributed.gather_to_main(part)
    if parts is None:
        return None
    merged = _merge(parts)
    row_of = {p: r for r, p in enumerate(merged.positions)}
    image_features = torch.cat(merged.image_features) if merged.image_features else None
    records = [image.record for image in bench.images]
    parallel = bench.parallel_captions
    # Text only and seconds long (eval.alignment_pairs per language): rank 0 alone, the other ranks go on.
    aligning = time.time()
    with precision.autocast(cfg.precision, model.device):
        alignment, aligned = evaluate_alignment(model, records, bench.languages, cfg, parallel)
    aligning = time.time() - aligning
    skipped = skipped_images(bench, merged.skipped)
    if skipped:
        log.warning("eval %s: skipped %d image(s) that do not decode: %s%s", bench.name, len(skipped),
                    ", ".join(skipped[:_NAMED_IN_WARNING]), ", ... (all in results.json)" if
                    len(skipped) > _NAMED_IN_WARNING else "")
    per_language: dict[str, dict] = {}
    for lang in bench.languages:
        sections = {}
        if image_features is not None:
            sections["retrieval"] = _score_retrieval(model, records, merged, image_features, row_of, lang, cfg, mode,
                                                     vision_tokens)
        if "captioning" in bench.tasks:
            sections["captioning"] = _score_captioning(bench, merged, lang, cfg)
        if "vqa" in bench.tasks:
            sections["vqa"] = _score_vqa(bench, merged, lang)
        per_language[lang] = {name: value for name, value in sections.items() if value is not None}
        if lang in merged.routing:
            per_language[lang]["experts"] = (merged.routing[lang] / len(merged.positions)).tolist()
        if lang in aligned:
            per_language[lang]["alignment"] = aligned[lang]
    return {
        "suite": bench.name,
        "source": bench.source,
        "languages": list(bench.languages),
        "bridge": model.cfg.bridge.type,
        "n_images": len(merged.positions),
        "skipped_images": len(skipped),
        "skipped_image_names": skipped,
        "world_size": world,
        "decoding": {"caption": decoding_options(cfg, vqa=False), "vqa": decoding_options(cfg, vqa=True),
                     "prompt_language": cfg.prompt_language,
                     "precision": precision.describe(cfg.precision, model.device)},
        "per_language": per_language,
        "mean": language_means(per_language),
        "spread": compute_spread(list(bench.languages), per_language),
        "alignment": alignment,
        "fertility": tokenizer_fertility(model, bench, parallel),
        "timings": {"eval": round(time.time() - start - aligning, 1), "alignment": round(aligning, 1)},
    }
