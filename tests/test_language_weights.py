"""Per-language levers: loss.language_weights weigh each example's terms by its language, validation reports the LM
loss per language, and loss.lagging_boost moves weight to the languages whose validation loss lags (kept in
checkpoints, so a resumed run continues with them)."""

from __future__ import annotations

import pytest
import torch

from vlm.config import ConfigError
from vlm.data.collate import Example
from vlm.model.vlm import VisionLLM
from vlm.objective.language_weights import lagging_weights, language_losses
from vlm.objective.objective import Objective
from vlm.train.checkpoint import latest_checkpoint, load_checkpoint
from vlm.train.metrics import read_metrics
from vlm.train.strategies import make_strategy
from vlm.train.trainer import build_optimizer, train

CAPTIONS = {"en": "a small red circle on the left", "de": "ein großer blauer Stern oben",
            "zh": "左边有一个小的红色圆形", "hi": "बाईं ओर एक छोटा लाल वृत्त"}
GENERATIVE = ("lm", "itg")  # per-token terms: a sub-batch's loss is the weighted mean's limit


def _objective(tiny_parts, tmp_path, *overrides: str) -> Objective:
    torch.manual_seed(0)
    return Objective(VisionLLM(tiny_parts.config(tmp_path, *overrides)).load_weights()).eval()


def _batch(objective: Objective, langs: list[str], images: list[int] | None = None):
    """A caption batch; example i shows image images[i] (default i) of a fixed pool."""
    pool = torch.randn(8, 3, 32, 32, generator=torch.Generator().manual_seed(1))
    images = list(range(len(langs))) if images is None else images
    examples = [Example(pool[i], "Caption:", CAPTIONS[lang], CAPTIONS[lang], lang, "caption", image_id=i)
                for i, lang in zip(images, langs)]
    return objective.model.collator()(examples)


def _terms(objective: Objective, batch, **options) -> dict[str, torch.Tensor]:
    torch.manual_seed(2)  # ITM draws its negatives at random
    with torch.no_grad():
        return objective(batch, **options)


def test_equal_weights_change_nothing_and_a_heavy_language_dominates(tiny_parts, tmp_path):
    langs = ["en", "de", "en", "de", "zh", "hi"]
    plain = _objective(tiny_parts, tmp_path)
    batch = _batch(plain, langs)
    reference = _terms(plain, batch)
    # Every term is a weighted mean: weighing every language alike gives the unweighted terms.
    same = _objective(tiny_parts, tmp_path, "loss.language_weights={en: 2.5, de: 2.5, zh: 2.5, hi: 2.5}")
    for name, value in _terms(same, batch).items():
        assert value.item() == pytest.approx(reference[name].item(), rel=1e-5, abs=1e-6), name
    # A weight far above the others: the per-token terms become those of that language's examples alone.
    heavy = _objective(tiny_parts, tmp_path, "loss.language_weights={de: 1.0e6}")
    weighted = _terms(heavy, batch)
    keep = [i for i, lang in enumerate(langs) if lang == "de"]
    german = _terms(plain, _batch(plain, ["de"] * len(keep), images=keep))
    for name in GENERATIVE:
        assert weighted[name].item() == pytest.approx(german[name].item(), rel=1e-3), name
        assert abs(weighted[name].item() - reference[name].item()) > 1e-3, name  # it did move


def test_weighted_lm_loss_gradient_is_the_weighted_mean_of_token_gradients():
    """The chunked labelled-logits path with row weights against plain autograd on the same logits."""
    from vlm.model.lm_loss import linear_cross_entropy

    torch.manual_seed(0)
    hidden = torch.randn(13, 8, requires_grad=True)
    weight = torch.randn(50, 8, requires_grad=True)
    targets = torch.randint(0, 50, (13,))
    rows = torch.rand(13) * 3
    ours = linear_cross_entropy(hidden, weight, None, targets, chunk_rows=4, row_weights=rows)
    ours.backward()
    grads = hidden.grad.clone(), weight.grad.clone()
    hidden.grad = weight.grad = None
    losses = torch.nn.functional.cross_entropy(hidden @ weight.t(), targets, reduction="none")
    reference = (rows * losses).sum() / rows.sum()
    reference.backward()
    assert ours.item() == pytest.approx(reference.item(), rel=1e-6)
    assert torch.allclose(grads[0], hidden.grad, atol=1e-6) and torch.allclose(grads[1], weight.grad, atol=1e-6)


def test_per_language_validation_losses_match_each_language_alone(tiny_parts, tmp_path):
    objective = _objective(tiny_parts, tmp_path)
    langs = ["en", "zh", "en", "hi", "zh", "zh"]
    out = _terms(objective, _batch(objective, langs), by_language=True)
    table = out["lm_by_language"]
    assert table.shape == (len(objective.languages), 2)
    losses = language_losses(objective.languages, table)
    assert set(losses) == {"en", "zh", "hi"}  # de had no example: left out, not 0
    assert table[:, 1].sum() > 0
    # The token-weighted mean of the per-language losses is the batch's LM loss ...
    assert (table[:, 0].sum() / table[:, 1].sum()).item() == pytest.approx(out["lm"].item(), rel=1e-5)
    # ... and the plain forward gives the same LM loss as the per-language one.
    assert _terms(objective, _batch(objective, langs))["lm"].item() == pytest.approx(out["lm"].item(), rel=1e-5)


def test_lagging_weights_follow_the_progress_ratio_within_the_clip():
    start = {"en": 2.0, "de": 1.0, "zh": 0.5}
    # Progress r = loss / baseline: en 0.5, de 1.0, zh 1.5 (zh fell least): against the mean 1.0, clipped.
    weights = lagging_weights({"en": 1.0, "de": 1.0, "zh": 0.75}, start, boost=1.0, max_weight=1.4)
    assert weights == {"en": pytest.approx(1 / 1.4), "de": pytest.approx(1.0), "zh": pytest.approx(1.4)}
    # The lowest per-token loss can be the language that lags: what counts is how far each fell.
    weights = lagging_weights({"en": 1.0, "si": 0.4}, {"en": 2.0, "si": 0.5}, boost=0.5, max_weight=4.0)
    assert weights == {"en": pytest.approx((0.5 / 0.65) ** 0.5), "si": pytest.approx((0.8 / 0.65) ** 0.5)}
    assert lagging_weights({"en": 1.0, "hi": 1.0}, {"en": 2.0, "hi": 0.0}, 1.0, 2.0) == {"en": 1.0}  # no baseline
    assert lagging_weights({}, {}, boost=1.0, max_weight=2.0) == {}
    assert language_losses(["en", "de"], torch.tensor([[6.0, 3.0], [0.0, 0.0]], dtype=torch.float64)) == {"en": 2.0}


def test_a_lagging_boost_run_logs_and_checkpoints_its_weights(tiny_parts, tmp_path):
    args = ["train.max_steps=4", "train.eval_every=2", "loss.lagging_boost=2.0", "loss.lagging_max_weight=3.0",
            "loss.language_weights={zh: 2.0}", "train.lr=1e-2"]
    train(tiny_parts.config(tmp_path / "run", *args))
    evals = [r for r in read_metrics(tmp_path / "run" / "metrics.jsonl") if r["kind"] == "eval"]
    assert [r["step"] for r in evals] == [0, 2, 4]  # step 0: the baseline, before any training
    assert all(evals[0][f"lang_weight/{lang}"] == (2.0 if lang == "zh" else 1.0) for lang in ("en", "de", "hi", "zh"))
    first, last = evals[0], evals[-1]
    losses = {lang: last[f"val_lm/{lang}"] for lang in ("en", "de", "zh", "hi")}
    expected = lagging_weights(losses, {lang: first[f"val_lm/{lang}"] for lang in losses}, 2.0, 3.0)
    for lang in losses:  # zh's static weight multiplies its lagging weight
        assert last[f"lang_weight/{lang}"] == pytest.approx(expected[lang] * (2.0 if lang == "zh" else 1.0))
    assert len({round(v, 6) for v in expected.values()}) > 1  # the languages progressed differently
    # The checkpoint keeps them: a fresh objective loaded from it weighs as the run ended.
    cfg = tiny_parts.config(tmp_path / "run", *args)
    fresh = Objective(VisionLLM(cfg).load_weights())
    assert fresh.language_weights() == {"en": 1.0, "de": 1.0, "zh": 2.0, "hi": 1.0}
    strategy = make_strategy(cfg.train, torch.device("cpu"))
    strategy.prepare(fresh)
    load_checkpoint(latest_checkpoint(tmp_path / "run"), strategy, build_optimizer(fresh, cfg))
    for lang, weight in fresh.language_weights().items():
        assert weight == pytest.approx(last[f"lang_weight/{lang}"], rel=1e-6), lang
    baseline = dict(zip(fresh.languages, fresh.lagging_baseline.tolist()))
    assert baseline == pytest.approx({lang: first[f"val_lm/{lang}"] for lang in baseline}, rel=1e-6)


@pytest.mark.parametrize("override, message", [
    ("loss.language_weights={ja: 2.0}", "'loss.language_weights' names 'ja', which is not in data.languages"),
    ("loss.language_weights={de: 0}", "'loss.language_weights.de' must be > 0"),
    ("loss.language_weights=[de]", "'loss.language_weights' must be a mapping"),
    ("loss.lagging_boost=-1", "'loss.lagging_boost' must be >= 0"),
    ("loss.lagging_max_weight=0.5", "'loss.lagging_max_weight' must be >= 1"),
])
def test_bad_language_weighting_is_one_line(tiny_parts, tmp_path, override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[").replace("(", r"\(")):
        tiny_parts.config(tmp_path, override)


def test_lagging_needs_validation(tiny_parts, tmp_path):
    with pytest.raises(ConfigError, match="'loss.lagging_boost' follows the per-language validation loss"):
        tiny_parts.config(tmp_path, "loss.lagging_boost=1.0", "train.eval_every=0")
