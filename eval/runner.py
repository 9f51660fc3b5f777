"""Evaluate a VisionLLM per language on held-out shards: retrieval, captioning and VQA, each beside
its chance or majority baseline. Returns the `results` dict that `eval.report` renders."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass

import torch
from tqdm import tqdm

from eval.captioning import bleu, cider_d, fidelity_method, language_fidelity, majority_caption
from eval.retrieval import chance_recall, recall_at_k
from eval.vqa import accuracy_by_type, majority_baseline
from vlm.config import EvalConfig
from vlm.data.pipeline import read_records, read_samples
from vlm.data.templates import caption_prompt, vqa_prompt
from vlm.model.vlm import VisionLLM

TRAIN_RECORDS_FOR_BASELINES = 5000


@dataclass
class EvalSet:
    keys: list[str]
    images: torch.Tensor  # (N, 3, H, W), transformed
    records: list[dict]


def load_eval_set(urls: list[str], transform: Callable, max_images: int = 0) -> EvalSet:
    keys, images, records = [], [], []
    for sample in read_samples(urls):
        keys.append(sample.key)
        images.append(transform(sample.image))
        records.append(sample.record)
        if max_images and len(keys) == max_images:
            break
    if not keys:
        raise ValueError(f"no decodable evaluation samples in {urls[:3]}")
    return EvalSet(keys, torch.stack(images), records)


def _batches(n: int, size: int):
    for start in range(0, n, size):
        yield slice(start, min(start + size, n))


def _generate(model: VisionLLM, images: torch.Tensor, prompts: list[str], cfg: EvalConfig, desc: str,
              progress: bool) -> list[str]:
    outputs: list[str] = []
    for part in tqdm(list(_batches(len(prompts), cfg.batch_size)), desc=desc, disable=None if progress else True, leave=False):
        outputs += model.generate(images[part].to(model.device), prompts[part],
                                  max_new_tokens=cfg.max_new_tokens, num_beams=cfg.num_beams, do_sample=False)
    return outputs


def _encode_images(model: VisionLLM, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    return torch.cat([model.encode_image(images[p].to(model.device)).float().cpu()
                      for p in _batches(len(images), batch_size)])


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


def _vision_tokens(model: VisionLLM, images: torch.Tensor, batch_size: int) -> torch.Tensor:
    """The frozen encoder's tokens of every image, kept on the CPU for ITM re-ranking (as LAVIS does), so the
    encoder runs once per image, not once per candidate pair."""
    return torch.cat([model.vision(images[p].to(model.device)).cpu() for p in _batches(len(images), batch_size)])


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


def evaluate_retrieval(model: VisionLLM, data: EvalSet, image_features: torch.Tensor, lang: str,
                       cfg: EvalConfig, vision_tokens: torch.Tensor | None = None) -> dict | None:
    images, texts, owners, counts = retrieval_texts(data.records, lang, cfg.retrieval_captions)
    if not texts:
        return None
    text_features = torch.cat([model.encode_text(texts[p]).float().cpu() for p in _batches(len(texts), cfg.batch_size)])
    sim = model.similarity(image_features[images], text_features)
    owners = torch.tensor(owners)
    scores = recall_at_k(sim, owners, ks=cfg.ks)
    scores.update(ranked_by="itc" if model.uses_itc_retrieval else "contrastive", n_images=len(images),
                  n_texts=len(texts), protocol=f"hit@k as CLIP_benchmark; captions: {cfg.retrieval_captions}")
    if vision_tokens is not None:
        def score_pairs(image_index: list[int], text_index: list[int]) -> torch.Tensor:
            return torch.cat([model.itm_scores(vision_tokens[[images[i] for i in image_index[p]]].to(model.device),
                                               [texts[j] for j in text_index[p]]).cpu()
                              for p in _batches(len(image_index), cfg.batch_size)])

        i2t, t2i = rerank_with_itm(sim, score_pairs, cfg.itm_rerank_k)
        reranked = recall_at_k(i2t, owners, ks=cfg.ks)
        reranked_t2i = recall_at_k(t2i, owners, ks=cfg.ks)
        scores.update({f"itm_{name}": value for name, value in reranked.items() if name.startswith("i2t")})
        scores.update({f"itm_{name}": value for name, value in reranked_t2i.items() if name.startswith("t2i")})
        scores["itm_rerank_k"] = cfg.itm_rerank_k
    scores.update(chance_recall(len(images), counts, ks=cfg.ks))
    return scores


def expert_usage(model: VisionLLM, data: EvalSet, lang: str, batch_size: int) -> list[float]:
    """Mean MoE routing weight per expert over the evaluation images under `lang`'s captioning prompt."""
    probs = torch.cat([model.route(data.images[p].to(model.device), lang).router_probs.float().cpu()
                       for p in _batches(len(data.images), batch_size)])
    return probs.mean(dim=0).tolist()


def evaluate_captioning(model: VisionLLM, data: EvalSet, lang: str, cfg: EvalConfig, train_captions: list[str],
                        progress: bool) -> dict | None:
    index = [i for i, r in enumerate(data.records) if r.get("captions", {}).get(lang)]
    if len(index) < 2:
        return None
    prompts = [caption_prompt(lang)] * len(index)
    hyps = _generate(model, data.images[index], prompts, cfg, f"caption {lang}", progress)
    refs = {data.keys[i]: data.records[i]["captions"][lang] for i in index}
    hyp_by_key = dict(zip((data.keys[i] for i in index), hyps))
    result = {
        "cider": cider_d(refs, hyp_by_key, lang)[0],
        "bleu": bleu(refs, hyp_by_key, lang),
        "fidelity": language_fidelity(hyps, lang),
        "fidelity_method": fidelity_method(lang),
        "samples": [{"image": data.keys[i], "reference": refs[data.keys[i]][0], "hypothesis": h}
                    for i, h in list(zip(index, hyps))[: cfg.samples_per_language]],
    }
    if train_captions:
        guess = majority_caption(train_captions)
        result["majority_cider"] = cider_d(refs, {k: guess for k in refs}, lang)[0]
    return result


def evaluate_vqa(model: VisionLLM, data: EvalSet, lang: str, cfg: EvalConfig, train_items: list[dict],
                 progress: bool) -> dict | None:
    rows, items = [], []
    for i, record in enumerate(data.records):
        for item in record.get("qa", []):
            if item.get("lang") == lang and item.get("answers"):
                rows.append(i)
                items.append(item)
    if not items:
        return None
    prompts = [vqa_prompt(item["question"], lang) for item in items]
    predictions = _generate(model, data.images[rows], prompts, cfg, f"vqa {lang}", progress)
    scores = accuracy_by_type(predictions, items, lang)
    if train_items:
        baseline = majority_baseline(train_items, items, lang)
        scores["majority_overall"] = baseline["overall"]
        for qtype, row in scores["by_type"].items():
            row["majority"] = baseline["by_type"][qtype]["accuracy"]
    return scores


def evaluate(model: VisionLLM, val_urls: list[str], languages: list[str], cfg: EvalConfig,
             train_urls: list[str] | None = None, progress: bool = True) -> dict:
    """Per-language retrieval, captioning and VQA on `val_urls`; baselines from `train_urls`."""
    start = time.time()
    model.eval()
    data = load_eval_set(val_urls, model.vision.preprocess, cfg.max_images)
    train_records = read_records(train_urls, TRAIN_RECORDS_FOR_BASELINES) if train_urls else []
    vision_tokens = None
    if cfg.itm_rerank_k > 0 and "itm" in model.loss_weights:  # ITM re-ranking needs the tokens again
        vision_tokens = _vision_tokens(model, data.images, cfg.batch_size)
        image_features = torch.cat([model.encode_image_tokens(vision_tokens[p].to(model.device)).float().cpu()
                                    for p in _batches(len(vision_tokens), cfg.batch_size)])
    else:
        image_features = _encode_images(model, data.images, cfg.batch_size)
    per_language: dict[str, dict] = {}
    for lang in languages:
        train_captions = [c for r in train_records for c in r.get("captions", {}).get(lang, [])]
        train_items = [q for r in train_records for q in r.get("qa", []) if q.get("lang") == lang and q.get("answers")]
        sections = {
            "retrieval": evaluate_retrieval(model, data, image_features, lang, cfg, vision_tokens),
            "captioning": evaluate_captioning(model, data, lang, cfg, train_captions, progress),
            "vqa": evaluate_vqa(model, data, lang, cfg, train_items, progress),
        }
        per_language[lang] = {name: value for name, value in sections.items() if value is not None}
        if model.bridge_reads_prompt:
            per_language[lang]["experts"] = expert_usage(model, data, lang, cfg.batch_size)
    return {
        "languages": list(languages),
        "bridge": model.cfg.bridge.type,
        "n_images": len(data.keys),
        "per_language": per_language,
        "timings": {"eval": round(time.time() - start, 1)},
    }
