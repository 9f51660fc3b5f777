"""Model pieces on tiny parts: encoder tokens, label masking, forward/backward for causal and seq2seq
LMs, and batched generation that matches one-by-one generation."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

from vlm.config import LLMConfig
from vlm.data.collate import Collator, Example
from vlm.model.llm import IGNORE_INDEX, load_tokenizer
from vlm.model.vlm import VisionLLM
from vlm.objective.objective import Objective


def _examples(n: int) -> list[Example]:
    torch.manual_seed(0)
    texts = [("Caption in English:", "a small red circle on the left", "en"),
             ("问题：有几个形状？ 回答：", "两个", "zh"),
             ("Frage: Welche Farbe hat der Kreis? Antwort:", "rot", "de")]
    return [Example(torch.randn(3, 32, 32), p, t, t, lang, "caption") for p, t, lang in (texts * n)[:n]]


@pytest.fixture(scope="module")
def causal(tiny_parts, tmp_path_factory):
    torch.manual_seed(0)
    return VisionLLM(tiny_parts.config(tmp_path_factory.mktemp("run"))).load_weights()


def test_image_encoder_is_frozen_and_returns_tokens(causal):
    enc = causal.vision
    enc.train()
    assert not enc.training and not enc.visual.training
    images = torch.randn(2, 3, 32, 32, requires_grad=True)
    tokens = enc(images)
    assert tokens.shape == (2, 1 + (32 // 8) ** 2, 32)  # CLS + 4x4 patches, width 32
    assert not tokens.requires_grad
    assert all(not p.requires_grad for p in enc.parameters())


def test_causal_labels_mask_prompt_and_padding(causal):
    collator = Collator(causal.tokenizer, "causal", max_length=48)
    batch = collator(_examples(3))
    for row in range(3):
        prompt_ids, target_ids = collator.encode(*[(e.prompt, e.target) for e in _examples(3)][row])
        n = len(prompt_ids) + len(target_ids)
        assert batch.input_ids[row, :n].tolist() == prompt_ids + target_ids
        assert batch.labels[row, : len(prompt_ids)].eq(IGNORE_INDEX).all()
        assert batch.labels[row, len(prompt_ids) : n].tolist() == target_ids
        assert batch.labels[row, n:].eq(IGNORE_INDEX).all() and batch.attention_mask[row, n:].eq(0).all()
        assert target_ids[-1] == causal.tokenizer.eos_token_id


def test_seq2seq_labels_are_the_target(tiny_parts):
    tokenizer = load_tokenizer(LLMConfig(name=str(tiny_parts.tokenizer)))
    collator = Collator(tokenizer, "seq2seq", max_length=48)
    batch = collator(_examples(2))
    for row, example in enumerate(_examples(2)):
        prompt_ids, target_ids = collator.encode(example.prompt, example.target)
        assert batch.input_ids[row, : len(prompt_ids)].tolist() == prompt_ids
        assert batch.labels[row, : len(target_ids)].tolist() == target_ids
        assert batch.labels[row, len(target_ids) :].eq(IGNORE_INDEX).all()


def test_causal_loss_is_the_target_tokens_only(causal):
    """The LM term equals a hand-computed CE over target positions, with the visual prefix masked."""
    causal.eval()
    batch = Collator(causal.tokenizer, "causal", 48)(_examples(3))
    prefix = causal.visual(batch.images).visual_tokens
    loss = causal.llm(prefix, batch.input_ids, batch.attention_mask, batch.labels)
    embeds = torch.cat([prefix, causal.llm.embed(batch.input_ids)], 1)
    mask = torch.cat([torch.ones(prefix.shape[:2], dtype=torch.long), batch.attention_mask], 1)
    logits = causal.llm.model(inputs_embeds=embeds, attention_mask=mask).logits[:, prefix.shape[1] :]
    manual = F.cross_entropy(logits[:, :-1].reshape(-1, logits.shape[-1]), batch.labels[:, 1:].reshape(-1),
                             ignore_index=IGNORE_INDEX)
    assert loss.item() == pytest.approx(manual.item(), rel=1e-5)


@pytest.mark.parametrize("kind", ["causal", "seq2seq"])
def test_forward_backward_reaches_only_trainable_parts(tiny_parts, tmp_path, kind):
    torch.manual_seed(0)
    model = VisionLLM(tiny_parts.config(tmp_path, kind=kind)).load_weights()
    objective = Objective(model)
    objective.train()
    batch = model.collator()(_examples(4))
    out = objective(batch)
    assert set(out) == {"loss", "lm", "contrastive", "itc", "itm", "itg"}
    assert out["loss"].item() == pytest.approx(sum(out[k].item() for k in out if k != "loss"), rel=1e-5)
    out["loss"].backward()
    grads = {n for n, p in objective.named_parameters() if p.grad is not None and p.grad.abs().sum() > 0}
    trainable = {n for n, p in objective.named_parameters() if p.requires_grad}
    assert any(n.startswith("model.bridge.") for n in grads)
    assert any("lora_" in n for n in grads)
    assert {"contrastive_loss.logit_scale", "itc_loss.logit_scale"} <= grads  # the objective's own temperatures
    heads = {"model.bridge.itm_head.weight", "model.bridge.lm_head.dense.weight", "model.bridge.text_proj.weight"}
    assert heads <= grads
    assert grads <= trainable
    assert not any(n.startswith("model.vision.") for n in trainable)
    frozen_llm = [n for n, p in model.llm.named_parameters() if not p.requires_grad]
    assert frozen_llm and not any("lora_" in n for n in frozen_llm)
    # train_embeddings (on in the demo config) makes only the input embedding table trainable in the LLM
    assert any("embed" in n or "shared" in n for n in trainable if n.startswith("model.llm."))
    assert model.visual(batch.images).visual_tokens.shape == (4, 4, model.llm.hidden_size)


@pytest.mark.parametrize("kind", ["causal", "seq2seq"])
def test_batched_generation_matches_single(tiny_parts, tmp_path, kind):
    torch.manual_seed(0)
    model = VisionLLM(tiny_parts.config(tmp_path, kind=kind)).load_weights().eval()
    images = torch.randn(3, 3, 32, 32)
    prompts = ["Caption in English:", "问题：有几个形状？ 回答：", "Frage: Welche Farbe hat der Kreis? Antwort:"]
    batched = model.generate(images, prompts, max_new_tokens=5, do_sample=False)
    single = [model.generate(images[i : i + 1], [p], max_new_tokens=5, do_sample=False)[0]
              for i, p in enumerate(prompts)]
    assert batched == single
    assert all(isinstance(t, str) for t in batched)


def test_retrieval_encoders_use_itc_max_over_queries(causal):
    assert causal.uses_itc_retrieval
    img = causal.encode_image(torch.randn(3, 3, 32, 32))
    txt = causal.encode_text(["a red circle", "两个", "ein blauer Stern oben"])
    assert img.shape == (3, 4, 16) and txt.shape == (3, 16)
    assert torch.allclose(img.norm(dim=-1), torch.ones(3, 4), atol=1e-5)
    assert torch.allclose(txt.norm(dim=-1), torch.ones(3), atol=1e-5)
    sim = causal.similarity(img, txt)
    hand = torch.tensor([[max(float(q @ t) for q in img[i]) for t in txt] for i in range(3)])
    assert torch.allclose(sim, hand, atol=1e-6)
    assert torch.allclose(causal.similarity(img, txt, chunk=2), sim)  # chunked over images, same scores


@pytest.mark.parametrize("bridge", ["mlp", "moe"])
def test_projector_bridges_retrieve_with_pooled_features(tiny_parts, tmp_path, bridge):
    model = VisionLLM(tiny_parts.config(tmp_path, f"bridge.type={bridge}")).load_weights().eval()
    assert not model.uses_itc_retrieval and not model.has_text_branch
    img = model.encode_image(torch.randn(3, 3, 32, 32))
    txt = model.encode_text(["a red circle", "两个", "ein blauer Stern oben"])
    assert img.shape == txt.shape[:1] + (16,)
    assert torch.allclose(img.norm(dim=-1), torch.ones(3), atol=1e-5)
    assert torch.allclose(model.similarity(img, txt), img @ txt.t())


def test_kind_mismatch_is_a_clear_error(tiny_parts, tmp_path):
    cfg = tiny_parts.config(tmp_path, f"llm.name={tiny_parts.seq2seq}")  # seq2seq weights, kind causal
    with pytest.raises(ValueError, match="encoder-decoder"):
        VisionLLM(cfg)


def test_open_clip_name_plus_local_weights_file(tiny_parts, tmp_path):
    """The `name + pretrained` route a hub tag takes, with a local checkpoint file as the tag."""
    from safetensors.torch import load_file

    from vlm.config import VisionConfig
    from vlm.model.vision import ImageEncoder

    weights = tiny_parts.clip / "open_clip_model.safetensors"
    configs = Path(__file__).resolve().parent.parent / "configs" / "open_clip"
    cfg = VisionConfig(name="tiny-test-vit", pretrained=str(weights), model_config_dir=str(configs))
    by_name, by_dir = ImageEncoder(cfg), ImageEncoder(VisionConfig(name=f"local-dir:{tiny_parts.clip}"))
    by_name.load_weights()
    by_dir.load_weights()
    saved = {k[len("visual."):]: v for k, v in load_file(weights).items() if k.startswith("visual.")}
    for key, value in by_name.visual.state_dict().items():
        assert torch.equal(value, saved[key]), key
        assert torch.equal(value, by_dir.visual.state_dict()[key]), key
    images = torch.randn(2, 3, 32, 32)
    assert torch.equal(by_name(images), by_dir(images))
    with pytest.raises(ValueError, match="outside the 2 blocks"):
        ImageEncoder(VisionConfig(name=f"local-dir:{tiny_parts.clip}", layer=5))


def test_timm_eva_trunk_gives_tokens_at_the_chosen_block():
    """BLIP-2's encoder is an EVA ViT-g, which open_clip builds as a timm trunk (EVA01-g-14); a tiny EVA here."""
    from vlm.config import VisionConfig
    from vlm.model.vision import ImageEncoder

    configs = Path(__file__).resolve().parent.parent / "configs" / "open_clip"
    encoder = ImageEncoder(VisionConfig(name="tiny-test-eva", model_config_dir=str(configs), layer=-2))
    assert encoder.width == 192 and encoder.layer_index == 10
    tokens = encoder(torch.randn(2, 3, 224, 224))
    assert tokens.shape == (2, 1 + 16 * 16, 192)
    without_cls = ImageEncoder(VisionConfig(name="tiny-test-eva", model_config_dir=str(configs), layer=-2,
                                            include_cls=False))
    without_cls.load_state_dict(encoder.state_dict())
    assert torch.equal(without_cls(torch.ones(1, 3, 224, 224)), encoder(torch.ones(1, 3, 224, 224))[:, 1:])
