"""The losses against hand computations (loops on tiny float64 inputs), their clamped learnable temperatures, ITM
negative sampling, and the gathered losses under a real 2-process torchrun against one process on the full batch."""

from __future__ import annotations

import importlib.util
import math
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from vlm.model.heads import mean_token_features
from vlm.objective.losses import ContrastiveLoss, ItcLoss, itg_loss, sample_itm_negatives

ROOT = Path(__file__).resolve().parent.parent


def _hand_infonce(images: list[list[float]], texts: list[list[float]], scale: float) -> float:
    """Symmetric InfoNCE written out with loops: -log softmax of the matching pair, both directions."""
    n = len(images)
    sim = [[scale * sum(a * b for a, b in zip(images[i], texts[j])) for j in range(n)] for i in range(n)]
    i2t = -sum(sim[i][i] - math.log(sum(math.exp(sim[i][j]) for j in range(n))) for i in range(n)) / n
    t2i = -sum(sim[j][j] - math.log(sum(math.exp(sim[i][j]) for i in range(n))) for j in range(n)) / n
    return 0.5 * (i2t + t2i)


def test_matches_hand_computation():
    torch.manual_seed(0)
    images = F.normalize(torch.randn(5, 8, dtype=torch.float64), dim=-1)
    texts = F.normalize(torch.randn(5, 8, dtype=torch.float64), dim=-1)
    loss_fn = ContrastiveLoss(init_temperature=0.1, max_logit_scale=100.0)
    expected = _hand_infonce(images.tolist(), texts.tolist(), scale=10.0)
    assert loss_fn(images, texts).item() == pytest.approx(expected, rel=1e-6)


def test_perfect_alignment_beats_random_and_swapping_sides_is_symmetric():
    torch.manual_seed(1)
    feats = F.normalize(torch.randn(8, 16), dim=-1)
    loss_fn = ContrastiveLoss(init_temperature=0.05)
    aligned = loss_fn(feats, feats).item()
    shuffled = loss_fn(feats, feats[torch.randperm(8)]).item()
    assert aligned < 0.1 < math.log(8) < shuffled + 1.0
    other = F.normalize(torch.randn(8, 16), dim=-1)
    assert loss_fn(feats, other).item() == pytest.approx(loss_fn(other, feats).item(), rel=1e-6)


@pytest.mark.parametrize("loss_class", [ContrastiveLoss, ItcLoss])
def test_temperature_is_learnable_and_clamped(loss_class):
    loss_fn = loss_class(init_temperature=0.07, max_logit_scale=50.0)
    assert loss_fn.scale().item() == pytest.approx(1 / 0.07, rel=1e-5)
    if loss_class is ItcLoss:
        images, texts = _itc_inputs()
        loss_fn(images.float(), texts.float()).loss.backward()
    else:
        feats = F.normalize(torch.randn(4, 8), dim=-1)
        loss_fn(feats, F.normalize(torch.randn(4, 8), dim=-1)).backward()
    assert loss_fn.logit_scale.grad is not None and loss_fn.logit_scale.grad.abs() > 0
    with torch.no_grad():
        loss_fn.logit_scale.fill_(math.log(1e4))
    assert loss_fn.scale().item() == pytest.approx(50.0)
    with torch.no_grad():
        loss_fn.logit_scale.fill_(-5.0)
    assert loss_fn.scale().item() == pytest.approx(1.0)


# ---------------------------------------------------------------------------------------------------------------
# BLIP-2 ITC / ITM / ITG and the CG-VLM-style text feature

def _hand_max_sim(images: list, texts: list) -> list[list[float]]:
    """s[i][j] = max over queries q of <images[i][q], texts[j]>, with loops."""
    return [[max(sum(a * b for a, b in zip(query, text)) for query in image) for text in texts] for image in images]


def _hand_soft_ce(sim: list[list[float]], row_ids: list[int], col_ids: list[int], scale: float, ls: float) -> float:
    """Mean over rows of -sum_k target_k log softmax(scale * sim)_k, targets = positives / #pos smoothed by ls."""
    total = 0.0
    for i, row in enumerate(sim):
        n = len(row)
        log_z = math.log(sum(math.exp(scale * s) for s in row))
        n_pos = sum(1 for c in col_ids if c == row_ids[i])
        for k in range(n):
            target = (1 - ls) * (1.0 / n_pos if col_ids[k] == row_ids[i] else 0.0) + ls / n
            total -= target * (scale * row[k] - log_z)
    return total / len(sim)


def _itc_inputs(b=4, q=3, d=6, seed=0):
    g = torch.Generator().manual_seed(seed)
    images = F.normalize(torch.randn(b, q, d, generator=g, dtype=torch.float64), dim=-1)
    texts = F.normalize(torch.randn(b, d, generator=g, dtype=torch.float64), dim=-1)
    return images, texts


def test_itc_matches_hand_max_over_queries_and_smoothed_ce():
    images, texts = _itc_inputs()
    loss_fn = ItcLoss(init_temperature=0.1, label_smoothing=0.1).double()
    out = loss_fn(images, texts)
    sim = _hand_max_sim(images.tolist(), texts.tolist())
    assert torch.allclose(out.sim_i2t, torch.tensor(sim, dtype=torch.float64), rtol=0, atol=1e-12)
    assert torch.allclose(out.sim_t2i, torch.tensor(sim, dtype=torch.float64).t(), rtol=0, atol=1e-12)  # one rank
    assert not out.sim_i2t.requires_grad and not out.sim_t2i.requires_grad
    assert out.image_ids_all.tolist() == [0, 1, 2, 3]
    ids = [0, 1, 2, 3]
    sim_t2i = [list(col) for col in zip(*sim)]
    scale = loss_fn.scale().item()  # 10 up to the float32 rounding of the log parameter
    assert scale == pytest.approx(10.0, rel=1e-6)
    expected = 0.5 * (_hand_soft_ce(sim, ids, ids, scale, 0.1) + _hand_soft_ce(sim_t2i, ids, ids, scale, 0.1))
    assert out.loss.item() == pytest.approx(expected, rel=1e-10)


def test_itc_with_unique_ids_equals_cross_entropy_with_label_smoothing():
    images, texts = _itc_inputs(b=5, seed=1)
    loss_fn = ItcLoss(init_temperature=0.07, label_smoothing=0.1).double()
    out = loss_fn(images, texts)
    scale = loss_fn.scale()
    target = torch.arange(5)
    reference = 0.5 * (F.cross_entropy(scale * out.sim_i2t, target, label_smoothing=0.1)
                       + F.cross_entropy(scale * out.sim_t2i, target, label_smoothing=0.1))
    assert out.loss.item() == pytest.approx(reference.item(), rel=1e-10)
    # any unique ids are the same as None: only the pair itself is positive
    assert loss_fn(images, texts, torch.tensor([40, 3, 17, 8, 0])).loss.item() == pytest.approx(out.loss.item())


def test_itc_duplicate_image_ids_are_all_positives():
    images, texts = _itc_inputs(b=4, seed=2)
    ids = [5, 9, 5, 1]  # pairs 0 and 2 show the same image: each one's text is a positive for the other
    loss_fn = ItcLoss(init_temperature=0.1, label_smoothing=0.1).double()
    images = images.clone().requires_grad_(True)
    out = loss_fn(images, texts, torch.tensor(ids))
    sim = _hand_max_sim(images.tolist(), texts.tolist())
    sim_t2i = [list(col) for col in zip(*sim)]
    scale = loss_fn.scale().item()
    expected = 0.5 * (_hand_soft_ce(sim, ids, ids, scale, 0.1) + _hand_soft_ce(sim_t2i, ids, ids, scale, 0.1))
    assert out.loss.item() == pytest.approx(expected, rel=1e-10)
    assert out.loss.item() != pytest.approx(loss_fn(images, texts).loss.item())  # not the diagonal-only loss
    out.loss.backward()
    assert torch.isfinite(out.loss) and torch.isfinite(images.grad).all()
    # every pair the same image: no negatives at all, still finite
    assert torch.isfinite(loss_fn(images, texts, torch.zeros(4, dtype=torch.long)).loss)


def test_itc_computes_in_fp32_from_half_inputs():
    images, texts = _itc_inputs()
    out = ItcLoss()(images.bfloat16(), texts.bfloat16())
    assert out.loss.dtype == out.sim_i2t.dtype == out.sim_t2i.dtype == torch.float32


def test_itm_negatives_are_never_positives():
    ids = torch.tensor([0, 0, 1, 2, 2, 3])
    g = torch.Generator().manual_seed(0)
    sims = torch.rand(6, 6, generator=g) * 2 - 1
    for _ in range(200):
        neg = sample_itm_negatives(sims, sims.t(), ids, ids, scale=1 / 0.07, generator=g)
        assert neg.valid_image_neg.all() and neg.valid_text_neg.all()
        assert (ids[neg.image_for_text] != ids).all() and (ids[neg.text_for_image] != ids).all()


def test_itm_negatives_prefer_the_hard_negative():
    g = torch.Generator().manual_seed(0)
    b = 5
    sims = torch.rand(b, b, generator=g) * 0.2
    sims.fill_diagonal_(1.0)  # the positive is the most similar, but must never be drawn
    hard = torch.tensor([3, 0, 4, 1, 2])
    sims[torch.arange(b), hard] = 0.6  # the hard negative of each row
    picked = torch.zeros(b)
    draws = 200
    for _ in range(draws):
        neg = sample_itm_negatives(sims, sims, None, torch.arange(b), scale=10.0, generator=g)
        picked += (neg.text_for_image == hard).float()
        assert (neg.text_for_image != torch.arange(b)).all()
    # p(hard) = e^6 / (e^6 + 3 e^~1) ~ 0.97 per row: "most of the time", deterministic with the seeded generator
    assert (picked / draws > 0.9).all()


def test_itm_rows_without_candidates_are_marked_invalid():
    g = torch.Generator().manual_seed(0)
    sims = torch.rand(3, 3, generator=g)
    same = torch.full((3,), 7)
    neg = sample_itm_negatives(sims, sims, same, same, scale=20.0, generator=g)
    assert not neg.valid_image_neg.any() and not neg.valid_text_neg.any()
    assert neg.image_for_text.tolist() == [0, 0, 0] and neg.text_for_image.tolist() == [0, 0, 0]
    one = sample_itm_negatives(torch.ones(1, 1), torch.ones(1, 1), torch.tensor([0]), torch.tensor([0]), scale=1.0)
    assert one.valid_image_neg.tolist() == [False] and one.image_for_text.tolist() == [0]
    # mixed: pairs 0 and 1 share an id, pair 2 differs -> every row still has a candidate
    mixed = sample_itm_negatives(sims, sims, torch.tensor([1, 1, 2]), torch.tensor([1, 1, 2]), scale=20.0, generator=g)
    assert mixed.valid_image_neg.all() and mixed.image_for_text.tolist()[:2] == [2, 2]


def test_itm_sampling_survives_huge_and_non_finite_similarities():
    g = torch.Generator().manual_seed(0)
    ids = torch.arange(4)
    huge = (torch.rand(4, 4, generator=g) * 2e4 - 1e4).half()  # 1e4 * scale 100 overflows fp16
    huge[0, 1] = float("inf")
    huge[1, 2] = float("nan")
    huge[2, 3] = float("-inf")
    for _ in range(20):
        neg = sample_itm_negatives(huge, huge, ids, ids, scale=torch.tensor(100.0), generator=g)
        assert neg.valid_image_neg.all() and neg.valid_text_neg.all()
        assert (neg.image_for_text != ids).all() and (neg.text_for_image != ids).all()
        assert ((0 <= neg.image_for_text) & (neg.image_for_text < 4)).all()
    assert neg.image_for_text[0].item() == 1  # the +inf similarity is the (overwhelmingly) hard negative


def _hand_itg(logits: list, targets: list, mask: list, ls: float) -> float:
    total, count = 0.0, 0
    for b in range(len(logits)):
        for t in range(len(logits[b]) - 1):
            if not mask[b][t + 1]:
                continue
            row = logits[b][t]
            log_z = math.log(sum(math.exp(x) for x in row))
            logp = [x - log_z for x in row]
            total += -(1 - ls) * logp[targets[b][t + 1]] - ls / len(row) * sum(logp)
            count += 1
    return total / count


def test_itg_loss_matches_hand_shifted_ce_with_padding():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(2, 5, 7, generator=g, dtype=torch.float64)
    targets = torch.tensor([[1, 4, 2, 6, 0], [3, 5, 0, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 0, 0, 0]])
    expected = _hand_itg(logits.tolist(), targets.tolist(), mask.tolist(), 0.1)  # 3 + 1 kept positions
    assert itg_loss(logits, targets, mask, label_smoothing=0.1).item() == pytest.approx(expected, rel=1e-10)
    assert itg_loss(logits, targets, mask, label_smoothing=0.0).item() == pytest.approx(
        _hand_itg(logits.tolist(), targets.tolist(), mask.tolist(), 0.0), rel=1e-10)


def test_itg_loss_ignores_positions_after_the_padding():
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(2, 5, 7, generator=g, dtype=torch.float64)
    targets = torch.tensor([[1, 4, 2, 6, 0], [3, 5, 0, 0, 0]])
    mask = torch.tensor([[1, 1, 1, 1, 0], [1, 1, 0, 0, 0]])
    base = itg_loss(logits, targets, mask)
    garbage = logits.clone().requires_grad_(True)
    with torch.no_grad():
        garbage[0, 3:] = 1e4  # position 3 predicts a pad, position 4 has no next token
        garbage[1, 1:] = -1e4
    garbage_targets = targets.clone()
    garbage_targets[0, 4], garbage_targets[1, 2:] = 6, 6
    loss = itg_loss(garbage, garbage_targets, mask)
    assert loss.item() == pytest.approx(base.item(), rel=1e-12)
    loss.backward()
    assert garbage.grad[0, 3:].abs().max() == 0 and garbage.grad[1, 1:].abs().max() == 0
    assert garbage.grad[0, :3].abs().min() > 0
    assert itg_loss(logits.half(), targets, mask).dtype == torch.float32
    assert itg_loss(logits, targets, torch.zeros_like(mask)).item() == 0.0  # nothing kept: 0, not NaN


def test_mean_token_features_is_the_average_cosine_and_ignores_padding():
    g = torch.Generator().manual_seed(0)
    tokens = torch.randn(2, 4, 5, generator=g, dtype=torch.float64) * torch.tensor([0.5, 3.0, 1.0, 7.0])[:, None]
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 0, 0]])
    image = F.normalize(torch.randn(2, 5, generator=g, dtype=torch.float64), dim=-1)
    feats = mean_token_features(tokens, mask)
    for b in range(2):
        p = image[b].tolist()
        cosines = []
        for j in range(4):
            if mask[b, j]:
                t = tokens[b, j].tolist()
                cosines.append(sum(x * y for x, y in zip(p, t)) / math.sqrt(sum(y * y for y in t)))
        assert (image[b] @ feats[b]).item() == pytest.approx(sum(cosines) / len(cosines), rel=1e-10)
    assert (feats.norm(dim=-1) < 1).all()  # not renormalised
    changed = tokens.clone()
    changed[0, 3], changed[1, 2:] = 100.0, -3.0
    assert torch.equal(mean_token_features(changed, mask), feats)
    assert mean_token_features(tokens, torch.zeros_like(mask)).abs().max() == 0  # no tokens: zeros, not NaN


def _load_gather_worker():
    spec = importlib.util.spec_from_file_location("gather_worker", ROOT / "tests" / "gather_worker.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_gathered_losses_match_one_process_on_the_full_batch(tmp_path):
    """2 ranks (torchrun, gloo, CPU) with local loss + gather_with_grad vs one process on the concatenated batch.

    Rank r's loss L_r is the mean over its B rows (against all W*B columns); the full-batch loss is the mean over
    all W*B rows, so L_full = (1/W) sum_r L_r. The gather's backward sums every rank's gradient into the owner's
    slice, so rank r's raw feature gradient is d(sum_k L_k)/dx_r = W * dL_full/dx_r. The logit scale is not
    gathered: rank r gets dL_r/d(scale) and DDP's average (1/W) sum_r gives dL_full/d(scale). The same average
    applied to encoder parameters turns the W * dL_full/dx_r of every rank into exactly dL_full/d(theta).
    """
    worker = _load_gather_worker()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           str(ROOT / "tests" / "gather_worker.py"), str(tmp_path)]
    proc = subprocess.run(cmd, capture_output=True, text=True, cwd=tmp_path, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr[-3000:]
    ranks = [torch.load(tmp_path / f"rank{r}.pt", weights_only=True) for r in range(2)]
    world, b = 2, worker.PER_RANK
    assert [int(r["rank"]) for r in ranks] == [0, 1] and all(int(r["world_size"]) == world for r in ranks)

    full = {k: v.clone().requires_grad_(True) for k, v in worker.make_batch(world).items()}
    single = worker.run_losses(full, torch.tensor(worker.DUPLICATE_IDS))
    for name, keys in [("clip", ("pooled", "texts")), ("itc", ("queries", "texts")), ("itc_dup", ("queries", "texts"))]:
        mean_loss = sum(r[f"{name}/loss"] for r in ranks) / world
        assert torch.allclose(mean_loss, single[f"{name}/loss"], atol=1e-6, rtol=0), name
        mean_scale_grad = sum(r[f"{name}/logit_scale_grad"] for r in ranks) / world
        assert single[f"{name}/logit_scale_grad"].abs() > 0
        assert torch.allclose(mean_scale_grad, single[f"{name}/logit_scale_grad"], atol=1e-6, rtol=0), name
        for key in keys:
            for r, found in enumerate(ranks):
                expected = world * single[f"{name}/{key}_grad"][r * b:(r + 1) * b]
                assert found[f"{name}/{key}_grad"].dtype == torch.float64
                assert torch.allclose(found[f"{name}/{key}_grad"], expected, atol=1e-6, rtol=0), (name, key, r)
