"""The BLIP-2 Q-Former: the masks of its four modes, what each mode can and cannot see, initialisation from
BERT-family encoders, and weight interop with transformers' Blip2ForConditionalGeneration."""

from __future__ import annotations

import pytest
import torch
from transformers import (
    BertConfig,
    BertForMaskedLM,
    BertTokenizer,
    Blip2Config,
    Blip2ForConditionalGeneration,
    OPTConfig,
    XLMRobertaConfig,
    XLMRobertaForMaskedLM,
)

from vlm.config import BridgeConfig
from vlm.data.collate import bridge_text_ids
from vlm.model.bridges.qformer import QFormer, attention_mask
from vlm.model.qformer_weights import _checkpoint_files, blip2_qformer_config, blip2_state_dict, initialise
from vlm.model.vlm import VisionLLM

VISION_WIDTH, LLM_WIDTH = 24, 40


def _cfg(**kw) -> BridgeConfig:
    base = dict(num_queries=3, hidden_size=16, num_layers=3, num_heads=2, cross_attention_freq=2, mlp_ratio=2.0,
                dropout=0.0, max_text_length=10)
    return BridgeConfig(**{**base, **kw})


@pytest.fixture
def qformer() -> QFormer:
    torch.manual_seed(0)
    return QFormer(_cfg(), VISION_WIDTH, LLM_WIDTH, text_vocab_size=30).eval()


def _inputs(b: int = 2, length: int = 6):
    torch.manual_seed(1)
    images = torch.randn(b, 5, VISION_WIDTH)
    ids = torch.randint(4, 30, (b, length))
    mask = torch.ones(b, length, dtype=torch.long)
    mask[1, 4:] = 0
    return images, ids, mask


# --- masks ---------------------------------------------------------------------------------------


def test_masks_of_every_mode():
    text_mask = torch.tensor([[1, 1, 0]])
    assert attention_mask("query", 2, None) is None
    text = attention_mask("text", 2, text_mask)[0].int().tolist()
    assert text == [[1, 1, 0]] * 3  # bidirectional over the non-pad text, no queries
    multimodal = attention_mask("multimodal", 2, text_mask)[0].int().tolist()
    assert multimodal == [[1, 1, 1, 1, 0]] * 5  # queries and text see each other, never the padding
    causal = attention_mask("causal", 2, text_mask)[0].int().tolist()
    assert causal == [
        [1, 1, 0, 0, 0],  # query: queries only
        [1, 1, 0, 0, 0],
        [1, 1, 1, 0, 0],  # text 0: every query and itself
        [1, 1, 1, 1, 0],  # text 1: every query and earlier text
        [1, 1, 1, 1, 0],  # text 2 (padding): never attended itself
    ]
    with pytest.raises(ValueError, match="unknown Q-Former mode"):
        attention_mask("sideways", 2, text_mask)


# --- what each mode sees -------------------------------------------------------------------------


def test_causal_mode_query_rows_equal_the_query_only_mode_and_ignore_the_text(qformer):
    images, ids, mask = _inputs()
    with torch.no_grad():
        queries = qformer.encode_queries(images)
        decoded = qformer.decode(images, ids, mask)
        other_text = qformer.decode(images, torch.randint(4, 30, ids.shape), mask)
    assert decoded.shape == (2, 3 + 6, 16)
    assert torch.allclose(decoded[:, :3], queries, atol=1e-6)
    assert torch.allclose(other_text[:, :3], queries, atol=1e-6)


def test_causal_text_sees_only_earlier_text(qformer):
    images, ids, mask = _inputs()
    changed = ids.clone()
    changed[:, 3] = (ids[:, 3] + 1 - 4) % 26 + 4
    with torch.no_grad():
        a, b = qformer.decode(images, ids, mask), qformer.decode(images, changed, mask)
    text_a, text_b = a[:, 3:], b[:, 3:]
    assert torch.allclose(text_a[:, :3], text_b[:, :3], atol=1e-6)  # positions before the change
    assert not torch.allclose(text_a[:, 3], text_b[:, 3])
    # and the text does read the image, through the queries
    with torch.no_grad():
        other_image = qformer.decode(torch.randn_like(images), ids, mask)
    assert not torch.allclose(other_image[:, 3:], text_a)


def test_multimodal_queries_read_the_text_and_text_mode_ignores_the_image(qformer):
    images, ids, mask = _inputs()
    with torch.no_grad():
        joint = qformer.encode_multimodal(images, ids, mask)
        queries = qformer.encode_queries(images)
        text = qformer.encode_text(ids, mask)
    assert not torch.allclose(joint[:, :3], queries)  # bidirectional: queries see the text
    assert text.shape == (2, 6, 16)
    # padding is invisible: changing a padded token leaves every real position unchanged
    padded = ids.clone()
    padded[1, 5] = 7 if ids[1, 5] != 7 else 8
    with torch.no_grad():
        again = qformer.encode_text(padded, mask)
        joint_again = qformer.encode_multimodal(images, padded, mask)
    assert torch.allclose(again[1, :4], text[1, :4], atol=1e-6)
    assert torch.allclose(joint_again[1, :7], joint[1, :7], atol=1e-6)


def test_cross_attention_layers_and_separate_ffns(qformer):
    layers = qformer.encoder.layer
    assert [layer.crossattention is not None for layer in layers] == [True, False, True]  # freq 2
    images, ids, mask = _inputs()
    with torch.no_grad():
        text_before, queries_before = qformer.encode_text(ids, mask), qformer.encode_queries(images)
        for p in layers[0].intermediate_query.parameters():
            p.add_(1.0)
        text_after, queries_after = qformer.encode_text(ids, mask), qformer.encode_queries(images)
    assert torch.equal(text_before, text_after)  # the text never goes through the query FFN
    assert not torch.allclose(queries_before, queries_after)


def test_queries_have_no_position_embeddings(qformer):
    images, _, _ = _inputs()
    with torch.no_grad():
        out = qformer.encode_queries(images)
        qformer.query_tokens.copy_(qformer.query_tokens.flip(1))
        flipped = qformer.encode_queries(images)
    # permuting the queries permutes the outputs: nothing but the query vectors tells them apart
    assert torch.allclose(flipped, out.flip(1), atol=1e-6)


def test_heads_shapes_and_itg_logits_cover_the_dec_token(qformer):
    images, ids, mask = _inputs()
    with torch.no_grad():
        queries = qformer.encode_queries(images)
        image_feats = qformer.image_features(queries)
        text_feats = qformer.text_features(qformer.encode_text(ids, mask))
        itm = qformer.itm_logits(qformer.encode_multimodal(images, ids, mask))
        logits = qformer.lm_logits(qformer.decode(images, ids, mask)[:, 3:])
    assert image_feats.shape == (2, 3, 256) and torch.allclose(image_feats.norm(dim=-1), torch.ones(2, 3))
    assert text_feats.shape == (2, 256) and torch.allclose(text_feats.norm(dim=-1), torch.ones(2))
    assert itm.shape == (2, 2)
    assert logits.shape == (2, 6, 31) and qformer.dec_token_id == 30


def test_query_branch_only_refuses_text():
    q = QFormer(_cfg(), VISION_WIDTH, LLM_WIDTH)
    assert not hasattr(q, "embeddings")
    with pytest.raises(ValueError, match="no text branch"):
        q.encode_text(torch.ones(1, 3, dtype=torch.long), torch.ones(1, 3))


def test_bridge_text_ids_frame_and_pad():
    tokenizer = _bert_tokenizer()
    ids, mask = bridge_text_ids(tokenizer, ["a red circle", "两个 circles " * 10], max_length=8)
    assert ids.shape == mask.shape == (2, 8)
    assert ids[0].tolist()[:5] == [tokenizer.cls_token_id, 5, 6, 7, tokenizer.sep_token_id]
    assert mask[0].tolist() == [1] * 5 + [0] * 3 and ids[0, 5:].eq(tokenizer.pad_token_id).all()
    assert mask[1].all() and ids[1, -1] == tokenizer.sep_token_id  # truncated, still closed


# --- initialisation from BERT-family encoders -----------------------------------------------------


WORDS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "red", "circle", "ein", "##s", "kreis", "两", "个",
         "blue", "star", "top"]


def _bert_tokenizer() -> BertTokenizer:
    return BertTokenizer(vocab={w: i for i, w in enumerate(WORDS)})


def _randomised(model):
    torch.manual_seed(3)
    with torch.no_grad():
        for p in model.parameters():
            p.add_(torch.randn_like(p) * 0.1)  # LayerNorms and biases too, so nothing matches by accident
    return model.eval()


@pytest.mark.parametrize("family", ["bert", "xlm-roberta"])
def test_init_from_text_encoder_reproduces_it_exactly(family, tmp_path):
    shape = dict(vocab_size=len(WORDS), hidden_size=16, num_hidden_layers=3, num_attention_heads=2,
                 intermediate_size=32, max_position_embeddings=24)
    if family == "bert":
        source = _randomised(BertForMaskedLM(BertConfig(**shape)))
        encoder = source.bert
    else:
        source = _randomised(XLMRobertaForMaskedLM(XLMRobertaConfig(**shape, pad_token_id=0)))
        encoder = source.roberta
    source.save_pretrained(tmp_path / family)
    q = QFormer(_cfg(), VISION_WIDTH, LLM_WIDTH, text_vocab_size=len(WORDS)).eval()
    initialise(q, str(tmp_path / family), cross_attention_freq=2)

    ids = torch.randint(4, len(WORDS), (2, 7))
    ids[:, 0] = 2
    mask = torch.ones_like(ids)
    mask[1, 5:] = 0
    hf_ids = ids.masked_fill(mask == 0, 0)  # RoBERTa derives positions from the pad id
    with torch.no_grad():
        ours = q.encode_text(ids, mask)
        theirs = encoder(input_ids=hf_ids, attention_mask=mask).last_hidden_state
        our_logits = q.lm_logits(ours)[..., : len(WORDS)]
        their_logits = source(input_ids=hf_ids, attention_mask=mask).logits
    real = mask.bool()
    assert (ours - theirs)[real].abs().max() < 1e-5
    assert (our_logits - their_logits)[real].abs().max() < 1e-5
    for layer in q.encoder.layer:  # LAVIS: the query FFN starts as a copy of the text FFN
        assert torch.equal(layer.intermediate_query.dense.weight, layer.intermediate.dense.weight)
        assert torch.equal(layer.output_query.LayerNorm.bias, layer.output.LayerNorm.bias)


def test_init_from_text_encoder_shape_mismatch_names_the_key(tmp_path):
    BertForMaskedLM(BertConfig(vocab_size=len(WORDS), hidden_size=32, num_hidden_layers=3, num_attention_heads=2,
                               intermediate_size=64)).save_pretrained(tmp_path / "bert")
    q = QFormer(_cfg(), VISION_WIDTH, LLM_WIDTH, text_vocab_size=len(WORDS))
    with pytest.raises(ValueError, match=r"hidden_size \(bridge.hidden_size\) is 32 but the config asks for 16"):
        initialise(q, str(tmp_path / "bert"), cross_attention_freq=2)
    with pytest.raises(ValueError, match="set bridge.text_branch=true"):
        initialise(QFormer(_cfg(), VISION_WIDTH, LLM_WIDTH), str(tmp_path / "bert"), cross_attention_freq=2)


def test_visionllm_builds_its_text_branch_from_a_bert_folder(tiny_parts, tmp_path):
    """The config path a user takes: bridge.init_from + bridge.tokenizer = a BERT checkpoint folder."""
    bert = tmp_path / "mbert"
    _randomised(BertForMaskedLM(BertConfig(vocab_size=len(WORDS), hidden_size=32, num_hidden_layers=2,
                                           num_attention_heads=2, intermediate_size=128))).save_pretrained(bert)
    _bert_tokenizer().save_pretrained(bert)
    cfg = tiny_parts.config(tmp_path / "run", "bridge.text_branch=true", f"bridge.init_from={bert}")
    model = VisionLLM(cfg).load_weights()
    assert len(model.bridge_tokenizer) == len(WORDS)
    source = BertForMaskedLM.from_pretrained(bert)
    assert torch.equal(model.bridge.encoder.layer[1].attention.attention.key.weight,
                       source.bert.encoder.layer[1].attention.self.key.weight)


# --- transformers BLIP-2 interop ---------------------------------------------------------------------


def _tiny_blip2(llm_width: int = LLM_WIDTH) -> Blip2ForConditionalGeneration:
    config = Blip2Config(
        vision_config=dict(hidden_size=VISION_WIDTH, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
                           image_size=16, patch_size=8),
        qformer_config=dict(hidden_size=16, num_hidden_layers=3, num_attention_heads=2, intermediate_size=32,
                            cross_attention_frequency=2, vocab_size=50),
        text_config=OPTConfig(vocab_size=60, hidden_size=llm_width, num_hidden_layers=1, num_attention_heads=2,
                              ffn_dim=32, word_embed_proj_dim=llm_width).to_dict(),
        num_query_tokens=3, image_token_index=59)
    torch.manual_seed(0)
    model = Blip2ForConditionalGeneration(config)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.startswith(("qformer.", "query_tokens", "language_projection", "vision_model.post_layernorm")):
                p.add_(torch.randn_like(p) * 0.1)
    return model.eval()


def _hf_qformer(model: Blip2ForConditionalGeneration, image_tokens: torch.Tensor):
    memory = model.vision_model.post_layernorm(image_tokens)
    queries = model.qformer(query_embeds=model.query_tokens.expand(image_tokens.shape[0], -1, -1),
                            encoder_hidden_states=memory).last_hidden_state
    return queries, model.language_projection(queries)


@pytest.mark.parametrize("shard_size", [None, "40KB"])
def test_blip2_import_matches_transformers(tmp_path, shard_size):
    hf = _tiny_blip2()
    hf.save_pretrained(tmp_path / "blip2", **({"max_shard_size": shard_size} if shard_size else {}))
    if shard_size:  # only the shards holding Q-Former tensors are opened
        wanted = {k for k in hf.state_dict() if k.startswith(("qformer.", "query_tokens", "language_projection"))}
        opened = _checkpoint_files(str(tmp_path / "blip2"), wanted.__contains__)
        assert 1 <= len(opened) < len(list((tmp_path / "blip2").glob("*.safetensors")))
    ours = QFormer(_cfg(), VISION_WIDTH, LLM_WIDTH).eval()
    initialise(ours, str(tmp_path / "blip2"), cross_attention_freq=2)
    image_tokens = torch.randn(2, 5, VISION_WIDTH) * 3
    with torch.no_grad():
        their_queries, their_tokens = _hf_qformer(hf, image_tokens)
        out = ours(image_tokens)
    assert (out.hidden - their_queries).abs().max() < 1e-5
    assert (out.visual_tokens - their_tokens).abs().max() < 1e-5


def test_blip2_export_round_trips_through_transformers(tmp_path):
    torch.manual_seed(5)
    ours = QFormer(_cfg(), VISION_WIDTH, LLM_WIDTH, text_vocab_size=30).eval()
    state = blip2_state_dict(ours)
    assert not any("embeddings" in k or ".intermediate." in k for k in state)  # no text branch in that class
    hf = _tiny_blip2()
    missing, unexpected = hf.load_state_dict(state, strict=False)
    assert not unexpected and not any(k.startswith(("qformer.", "query_tokens", "language_projection")) for k in missing)
    described = blip2_qformer_config(ours, 2)
    assert described["num_query_tokens"] == hf.config.num_query_tokens
    for key, value in described["qformer_config"].items():
        assert getattr(hf.config.qformer_config, key) == value, key
    image_tokens = torch.randn(2, 5, VISION_WIDTH)
    with torch.no_grad():
        _, their_tokens = _hf_qformer(hf, image_tokens)
        mine = ours(image_tokens).visual_tokens
    assert (mine - their_tokens).abs().max() < 1e-5
    # and back: importing what transformers now holds gives the same module
    hf.save_pretrained(tmp_path / "exported")
    again = QFormer(_cfg(), VISION_WIDTH, LLM_WIDTH).eval()
    initialise(again, str(tmp_path / "exported"), cross_attention_freq=2)
    for key, value in blip2_state_dict(again).items():
        assert torch.equal(value, state[key]), key


def test_blip2_import_to_a_new_llm_keeps_a_fresh_projection_and_rejects_a_wrong_vision_width(tmp_path):
    _tiny_blip2(llm_width=48).save_pretrained(tmp_path / "blip2")
    ours = QFormer(_cfg(), VISION_WIDTH, LLM_WIDTH)
    fresh = ours.language_projection.weight.clone()
    initialise(ours, str(tmp_path / "blip2"), cross_attention_freq=2)  # mBLIP: re-align to another LLM
    assert torch.equal(ours.language_projection.weight, fresh)
    with pytest.raises(ValueError, match="reads 24-wide image tokens but the vision encoder gives 32"):
        initialise(QFormer(_cfg(), 32, LLM_WIDTH), str(tmp_path / "blip2"), cross_attention_freq=2)
    with pytest.raises(ValueError, match=r"num_query_tokens \(bridge.num_queries\) is 3 but the config asks for 4"):
        initialise(QFormer(_cfg(num_queries=4), VISION_WIDTH, LLM_WIDTH), str(tmp_path / "blip2"), 2)
