"""Every bridge through the real trainer and evaluator: each learns beyond chance, the MoE logs per-language
expert usage in training and in the eval report, and ITM re-ranking follows the BLIP-2 protocol."""

from __future__ import annotations

import math

import pytest
import torch

from eval.report import write_report
from eval.retrieval import recall_at_k
from eval.runner import evaluate, rerank_with_itm, retrieval_texts
from eval.suites.loading import load_suite
from vlm.data.shards import resolve_shards
from vlm.data.stream import fixed_batches
from vlm.train.metrics import read_metrics
from vlm.train.trainer import train

BATCH = 8


def _val_terms(objective, cfg) -> dict[str, float]:
    model = objective.model
    batches = fixed_batches(resolve_shards(cfg.data.val, "val"), cfg.data, model.vision.preprocess, model.collator(),
                            batch_size=BATCH, max_batches=3, seed=1)
    sums: dict[str, float] = {}
    torch.manual_seed(0)
    with torch.no_grad():
        for batch in batches:
            for name, value in objective(batch).items():
                sums[name] = sums.get(name, 0.0) + float(value) / len(batches)
    return sums


@pytest.mark.parametrize("bridge", ["qformer", "moe", "mlp"])
def test_every_bridge_beats_chance_in_a_short_run(tiny_parts, tmp_path, bridge):
    cfg = tiny_parts.config(tmp_path, f"bridge.type={bridge}", "train.max_steps=100", "train.lr=3e-3",
                            "train.warmup_steps=2", "train.log_every=10")
    result = train(cfg)
    model = result.model
    terms = _val_terms(result.objective, cfg)
    chance = math.log(BATCH)  # a contrastive loss that cannot tell the pairs apart
    assert terms["contrastive"] < chance - 0.2, terms
    if bridge == "qformer":
        assert terms["itc"] < chance - 0.1, terms
        assert terms["itg"] < math.log(len(model.bridge_tokenizer)) - 1.0, terms
    first = next(r for r in read_metrics(tmp_path / "metrics.jsonl") if r["kind"] == "train")
    assert terms["lm"] < first["lm"] - 0.5, (first, terms)


def test_moe_expert_usage_in_training_logs_and_the_eval_report(tiny_parts, tmp_path):
    cfg = tiny_parts.config(tmp_path, "bridge.type=moe", "bridge.num_experts=3", "bridge.top_k=2",
                            "loss.moe_balance_weight=0.01", "train.max_steps=3")
    model = train(cfg).model
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert all("moe_balance" in r for r in rows if r["kind"] == "train")
    routing = [r for r in rows if r["kind"] == "routing"]
    assert [r["step"] for r in routing] == [1, 2, 3]
    for row in routing:
        usage = {k: v for k, v in row.items() if isinstance(v, list)}
        assert usage and set(usage) <= set(cfg.data.languages)
        assert all(len(v) == 3 and abs(sum(v) - 1) < 1e-5 for v in usage.values())

    results = evaluate(model, load_suite(cfg.eval, cfg.data), cfg.eval, progress=False)
    assert results["bridge"] == "moe"
    for lang in cfg.data.languages:
        experts = results["per_language"][lang]["experts"]
        assert len(experts) == 3 and abs(sum(experts) - 1) < 1e-5
        assert results["per_language"][lang]["retrieval"]["ranked_by"] == "contrastive"
    report = write_report(results, tmp_path / "report", tmp_path / "metrics.jsonl").read_text()
    assert "MoE expert usage on the evaluation images" in report and "MoE expert usage in training" in report
    assert "| e0 | e1 | e2 |" in report


def test_moe_contrastive_image_side_never_reads_the_prompt(tiny_parts, tmp_path):
    """The router reads the prompt, whose language (and question) match the caption: routed by it, the
    contrastive image features could match pairs by language alone. They are routed without text, as in
    retrieval, so neither the prompt nor its language changes them."""
    from vlm.data.collate import Example
    from vlm.model.vlm import VisionLLM
    from vlm.objective.objective import Objective

    torch.manual_seed(0)
    model = VisionLLM(tiny_parts.config(tmp_path, "bridge.type=moe")).load_weights().eval()
    objective = Objective(model).eval()
    with torch.no_grad():  # make the router and experts matter
        for p in model.bridge.parameters():
            p.add_(torch.randn_like(p) * 0.5)
    images = torch.randn(3, 3, 32, 32)
    captions = ["a small red circle on the left", "ein großer blauer Stern oben", "左边有一个小的红色圆形"]
    langs = ["en", "de", "zh"]

    def batch(prompts: list[str]):
        return model.collator()([Example(img, p, "x", c, lang, "vqa") for img, p, c, lang in
                                 zip(images, prompts, captions, langs)])

    with torch.no_grad():
        a = objective(batch(["Question: how many circles? Answer:", "Frage: Welche Farbe? Antwort:",
                             "问题：几个？ 回答："]))
        b = objective(batch(["Caption in English:", "Caption in English:", "Caption in English:"]))
    assert a["contrastive"].item() == pytest.approx(b["contrastive"].item(), abs=1e-6)
    assert a["lm"].item() != pytest.approx(b["lm"].item(), abs=1e-6)  # the LM path does read the prompt
    assert torch.allclose(model.encode_image(images), model.contrastive_head.image(
        model.bridge(model.vision(images)).visual_tokens))


def test_retrieval_gallery_first_or_all_captions():
    records = [{"captions": {"de": ["a", "b"], "en": ["x"]}}, {"captions": {"en": ["y"]}},
               {"captions": {"de": ["c", "d", "e"]}}]
    assert retrieval_texts(records, "de", "first") == ([0, 2], ["a", "c"], [0, 1], [1, 1])
    assert retrieval_texts(records, "de", "all") == ([0, 2], ["a", "b", "c", "d", "e"], [0, 0, 1, 1, 1], [2, 3])
    assert retrieval_texts(records, "fr", "all") == ([], [], [], [])


def test_itm_rerank_fixes_the_order_within_the_top_k():
    # ITC puts the right text second for image 0 and third for image 1; ITM knows the truth.
    sim = torch.tensor([[0.5, 0.9, 0.1, 0.0],
                        [0.8, 0.1, 0.2, 0.7],
                        [0.0, 0.05, 0.9, 0.2],
                        [0.1, 0.0, 0.3, 0.9]])
    owners = torch.arange(4)

    def score_pairs(images: list[int], texts: list[int]) -> torch.Tensor:
        return torch.tensor([5.0 if i == t else -5.0 for i, t in zip(images, texts)])

    i2t, t2i = rerank_with_itm(sim, score_pairs, k=2)
    before = recall_at_k(sim, owners, ks=[1])
    assert before["i2t_r1"] == 50.0
    assert recall_at_k(i2t, owners, ks=[1])["i2t_r1"] == 75.0  # image 1's true text was outside its top 2
    assert recall_at_k(t2i, owners, ks=[1])["t2i_r1"] == 100.0
    # re-scored candidates are ITM + ITC; everything outside the top k sits below all of them
    assert i2t[0, 0] == pytest.approx(5.5) and i2t[0, 1] == pytest.approx(-5.0 + 0.9)
    assert i2t[0, 2] < i2t[0].topk(2).values.min()


@pytest.mark.parametrize("captions", ["first", "all"])
def test_eval_with_itm_rerank_on_a_qformer(tiny_parts, tmp_path, captions):
    cfg = tiny_parts.config(tmp_path, "eval.itm_rerank_k=3", "train.max_steps=2", f"eval.retrieval_captions={captions}")
    model = train(cfg).model
    cfg.eval.languages = cfg.data.languages[:2]
    results = evaluate(model, load_suite(cfg.eval, cfg.data), cfg.eval, progress=False)
    retrieval = results["per_language"][cfg.data.languages[0]]["retrieval"]
    assert retrieval["ranked_by"] == "itc" and retrieval["itm_rerank_k"] == 3
    assert {"itm_i2t_r1", "itm_t2i_r1", "i2t_r1", "t2i_r1"} <= set(retrieval)
    assert retrieval["protocol"] == f"hit@k as CLIP_benchmark; captions: {captions}"
    assert retrieval["n_texts"] >= retrieval["n_images"] == results["n_images"]
    report = write_report(results, tmp_path / "report").read_text()
    assert "Retrieval re-ranked by ITM" in report and "Retrieval protocol: hit@k" in report
