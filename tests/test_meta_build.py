"""The three GPU recipes in configs/ build on the meta device from config files alone and have the published
parameter counts; a small config built on the meta device materialises into the model an eager build gives.

The recipes' hub ids resolve offline from a Hugging Face cache that holds only the models' published config.json
files (tests/hub_configs.py), and every weight loader raises while they are built. Counts are compared with the
published figures within TOLERANCE (papers and cards round to 2-3 digits), exactly where the figure is exact or
a reference implementation exists (transformers' BLIP-2 Q-Former), and LoRA's from the LM's config.json.
"""

from __future__ import annotations

import copy
import json
import math
import re
from pathlib import Path

import huggingface_hub
import open_clip.factory
import pytest
import safetensors
import safetensors.torch
import timm.models._builder
import torch
import transformers.utils.hub
from hub_configs import BLIP2_FLAN_T5_XL, HUB_CONFIGS, XLM_ROBERTA_BASE, use_hub_cache
from torch import nn
from transformers import (
    AutoModelForSeq2SeqLM,
    Blip2QFormerConfig,
    Blip2QFormerModel,
    MT5Config,
    MT5ForConditionalGeneration,
    PreTrainedModel,
)
from transformers.models.auto.auto_factory import _BaseAutoModelClass

import vlm.model.vision
from vlm.config import LLMConfig, load_config
from vlm.model import qformer_weights
from vlm.model.llm import LanguageModel
from vlm.model.vlm import VisionLLM

ROOT = Path(__file__).resolve().parent.parent
RECIPES = ("bloomz-qformer", "mt0-xl-qformer", "qwen-moe")
TOLERANCE = 0.02  # relative: published sizes are rounded ("1.0B", "3.7B", "304M")
# The Q-Former parts that only the text branch (ITC/ITM/ITG) has; the rest is BLIP-2's query branch.
TEXT_BRANCH = ("embeddings.", "lm_head.", "vision_proj.", "text_proj.", "itm_head.")
TEXT_FFN = re.compile(r"encoder\.layer\.\d+\.(intermediate|output)\.")
# Query-branch parameters that BLIP-2 keeps beside its Blip2QFormerModel (ln_vision is its post_layernorm).
BESIDE_QFORMER = ("query_tokens", "ln_vision.", "language_projection.")
SIZE_KEYS = ("hidden_size", "d_model", "intermediate_size", "d_ff", "d_kv", "n_layer", "num_layers",
             "num_hidden_layers", "num_decoder_layers", "n_head", "num_heads", "num_attention_heads",
             "num_key_value_heads", "vocab_size", "num_query_tokens", "encoder_hidden_size")


class WeightsRead(Exception):
    pass


def _refuse(name: str):
    def refuse(*args, **kwargs):
        raise WeightsRead(name)
    return refuse


def _forbid_weight_reads(monkeypatch) -> None:
    """Make every function that reads or fetches weights raise, under the names its callers look it up by."""
    for owner, name in [
        (safetensors.torch, "load_file"), (vlm.model.vision, "load_file"), (safetensors, "safe_open"),
        (qformer_weights, "safe_open"), (torch, "load"),
        (PreTrainedModel, "from_pretrained"), (_BaseAutoModelClass, "from_pretrained"),
        (open_clip.factory, "load_checkpoint"), (open_clip.factory, "load_state_dict"),
        (open_clip.factory, "download_pretrained"), (open_clip.factory, "download_pretrained_from_hf"),
        (timm.models._builder, "load_pretrained"),
        # Nothing is fetched either: the configs come out of the cache by its lookup, not by a download.
        (huggingface_hub, "hf_hub_download"), (transformers.utils.hub, "hf_hub_download"),
        (transformers.utils.hub, "snapshot_download"),
    ]:
        monkeypatch.setattr(owner, name, _refuse(f"{owner.__name__}.{name}"))


@pytest.fixture(scope="module")
def recipes(tmp_path_factory) -> dict[str, VisionLLM]:
    """The recipes built on the meta device, with the config-only hub cache in place and weight loading refused."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        use_hub_cache(monkeypatch, tmp_path_factory.mktemp("hf") / "hub")
        _forbid_weight_reads(monkeypatch)
        return {name: VisionLLM(load_config(ROOT / "configs" / f"{name}.yaml"), device="meta") for name in RECIPES}


def _count(tensors) -> int:
    return sum(t.numel() for t in tensors)


def _near(found: int, published: float) -> bool:
    return math.isclose(found, published, rel_tol=TOLERANCE)


# --- building -------------------------------------------------------------------------------------------------


def _sizes(config: dict, prefix: str = "") -> dict[str, int]:
    """The size fields of a config, those of nested configs (BLIP-2's) included."""
    sizes = {}
    for key, value in config.items():
        if isinstance(value, dict):
            sizes.update(_sizes(value, f"{prefix}{key}."))
        elif key in SIZE_KEYS:
            sizes[prefix + key] = value
    return sizes


def test_hub_ids_resolve_from_the_config_only_cache(tmp_path, monkeypatch):
    use_hub_cache(monkeypatch, tmp_path / "hub")
    _forbid_weight_reads(monkeypatch)
    for repo_id, published in HUB_CONFIGS.items():
        config = qformer_weights.read_model_config(repo_id)  # transformers' AutoConfig, as the build reads them
        sizes, found = _sizes(published), _sizes(config)
        assert len(sizes) >= 4 and {key: found.get(key) for key in sizes} == sizes, repo_id
    assert qformer_weights.is_blip2(qformer_weights.read_model_config("Salesforce/blip2-flan-t5-xl"))


@pytest.mark.parametrize("name", RECIPES)
def test_recipes_build_on_the_meta_device(recipes, name):
    model = recipes[name]
    assert {t.device.type for t in [*model.parameters(), *model.buffers()]} == {"meta"}


def test_the_refused_loaders_are_those_that_read_weights(tiny_parts, tmp_path, monkeypatch):
    """Refusing loaders that nothing calls would prove nothing: the weights step does call them."""
    _forbid_weight_reads(monkeypatch)
    model = VisionLLM(tiny_parts.config(tmp_path), device="meta")
    with pytest.raises(WeightsRead):
        model.vision.load_weights()
    with pytest.raises(WeightsRead):
        model.llm.load_weights()


# --- published sizes ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, tower, published, width", [
    ("bloomz-qformer", "EVA01-g-14", 1.0e9, 1408),  # EVA-CLIP g/14's image encoder, "1.0B"
    ("mt0-xl-qformer", "ViT-L-14", 304e6, 1024),    # CLIP ViT-L/14's, "304M"
    ("qwen-moe", "ViT-L-14-336", 304e6, 1024),      # the same at 336 px: 577 position embeddings, not 257
])
def test_image_encoders_have_the_published_sizes(recipes, name, tower, published, width):
    encoder = recipes[name].vision
    assert encoder.cfg.name == tower and encoder.width == width
    assert _near(_count(encoder.visual.parameters()), published)
    assert not any(p.requires_grad for p in encoder.parameters())


def test_eva_is_read_where_blip2_reads_it(recipes):
    """BLIP-2's ViT-g is EVA01-g's first 39 of 40 blocks (layer -2), 1408 wide: its published vision_config."""
    encoder = recipes["bloomz-qformer"].vision
    vision_config = BLIP2_FLAN_T5_XL["vision_config"]
    assert len(encoder.visual.trunk.blocks) == 40
    assert encoder.layer_index + 1 == vision_config["num_hidden_layers"]
    assert encoder.width == vision_config["hidden_size"]


@pytest.mark.parametrize("name, published", [
    ("bloomz-qformer", 7_069_016_064),                                                       # its card, exact
    ("mt0-xl-qformer", 3.7e9),                                                               # "3.7B"
    ("qwen-moe", 7.7e9),                                                                     # "7.7B"
])
def test_language_models_have_the_published_sizes(recipes, name, published):
    base = [p for n, p in recipes[name].llm.named_parameters() if "lora_" not in n]
    assert _near(_count(base), published)
    assert isinstance(published, float) or _count(base) == published
    assert not any(p.requires_grad for p in base)


def _lora_shapes(config: dict) -> list[tuple[int, int]]:
    """(in, out) of every Linear layer peft's all-linear targets (all but the output head), from config.json."""
    if config["model_type"] == "bloom":
        h = config["hidden_size"]
        return [(h, 3 * h), (h, h), (h, 4 * h), (4 * h, h)] * config["n_layer"]
    if config["model_type"] == "mt5":
        d, inner, ff = config["d_model"], config["num_heads"] * config["d_kv"], config["d_ff"]
        attention, gated_ffn = [(d, inner)] * 3 + [(inner, d)], [(d, ff), (d, ff), (ff, d)]
        encoder, decoder = attention + gated_ffn, 2 * attention + gated_ffn  # the decoder's cross-attention
        return encoder * config["num_layers"] + decoder * config["num_decoder_layers"]
    if config["model_type"] == "qwen2":
        h, i = config["hidden_size"], config["intermediate_size"]
        kv = config["num_key_value_heads"] * h // config["num_attention_heads"]
        return [(h, h), (h, kv), (h, kv), (h, h), (h, i), (h, i), (i, h)] * config["num_hidden_layers"]
    raise ValueError(config["model_type"])


@pytest.mark.parametrize("name", RECIPES)
def test_trainable_parameters_are_lora_bridge_and_head(recipes, name):
    model = recipes[name]
    lora = [p for n, p in model.llm.named_parameters() if "lora_" in n]
    assert _count(lora) == model.cfg.llm.lora_r * sum(i + o for i, o in _lora_shapes(HUB_CONFIGS[model.cfg.llm.name]))
    new = [*lora, *model.bridge.parameters(), *model.contrastive_head.parameters()]
    assert all(p.requires_grad for p in new)
    assert _count(p for p in model.parameters() if p.requires_grad) == _count(new)
    width, dim = model.llm.hidden_size, model.cfg.loss.contrastive_dim
    assert _count(model.contrastive_head.parameters()) == 2 * (width * dim + dim)


def _query_branch(model: VisionLLM) -> list[nn.Parameter]:
    return [p for n, p in model.bridge.named_parameters() if not n.startswith(TEXT_BRANCH) and not TEXT_FFN.match(n)]


def _blip2_qformer_parameters(vision_width: int) -> int:
    """transformers' own Blip2QFormerModel, built on the meta device from the published qformer_config."""
    qformer_config = dict(BLIP2_FLAN_T5_XL["qformer_config"], encoder_hidden_size=vision_width)
    with torch.device("meta"):
        return _count(Blip2QFormerModel(Blip2QFormerConfig(**qformer_config)).parameters())


@pytest.mark.parametrize("name, published", [
    # BLIP-2's Table 1 counts as trainable the Q-Former, query tokens and language projection: 108M with ViT-g
    # and a 4096-wide LLM (OPT-6.7B, FlanT5-XXL; here BLOOMZ-7B1), 103M with ViT-L and FlanT5-XL (2048 as mT0-XL).
    ("bloomz-qformer", 108e6),
    ("mt0-xl-qformer", 103e6),
])
def test_qformer_query_branch_is_blip2s(recipes, name, published):
    """The query branch is transformers' Blip2QFormerModel parameter for parameter, plus the 32 x 768 query
    tokens, ln_vision and the language projection (all trainable, all counted)."""
    model = recipes[name]
    bridge, qformer_config = model.bridge, BLIP2_FLAN_T5_XL["qformer_config"]
    ours = qformer_weights.blip2_qformer_config(bridge, model.cfg.bridge.cross_attention_freq)["qformer_config"]
    for key in ("hidden_size", "num_hidden_layers", "num_attention_heads", "intermediate_size",
                "cross_attention_frequency"):
        assert ours[key] == qformer_config[key], key
    queries, h, llm_width = BLIP2_FLAN_T5_XL["num_query_tokens"], qformer_config["hidden_size"], model.llm.hidden_size
    assert bridge.query_tokens.shape == (1, queries, h)
    beside = [p for n, p in bridge.named_parameters() if n.startswith(BESIDE_QFORMER)]
    assert _count(beside) == queries * h + 2 * model.vision.width + h * llm_width + llm_width
    query_branch = _query_branch(model)
    assert _count(query_branch) - _count(beside) == _blip2_qformer_parameters(model.vision.width)
    assert _near(_count(query_branch), published)


def test_mblip_qformer_is_blip2s_query_branch_alone(recipes):
    """mBLIP's Q-Former has BLIP-2 Flan-T5-XL's 1408-wide cross-attention and no text branch."""
    bridge = recipes["bloomz-qformer"].bridge
    assert bridge.ln_vision.normalized_shape == (BLIP2_FLAN_T5_XL["qformer_config"]["encoder_hidden_size"],)
    assert not bridge.text_branch
    assert _count(_query_branch(recipes["bloomz-qformer"])) == _count(bridge.parameters())


def test_xlm_r_text_branch_is_sized_from_its_config(recipes):
    """The mT0-XL recipe's text branch is sized from XLM-R's config.json alone (no tokenizer read): its 250,002
    tokens plus [DEC], max_text_length positions, every layer's text FFN, the MLM head, the ITC and ITM heads."""
    model = recipes["mt0-xl-qformer"]
    cfg, config = model.cfg.bridge, XLM_ROBERTA_BASE
    h, inner, vocab = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
    assert model.bridge.dec_token_id == vocab
    embeddings = (vocab + 1) * h + cfg.max_text_length * h
    text_ffn = config["num_hidden_layers"] * (h * inner + inner + inner * h + h + 2 * h)
    heads = (h * h + h + 2 * h + vocab + 1) + 2 * (h * cfg.itc_dim + cfg.itc_dim) + (h * 2 + 2)
    assert _count(model.bridge.parameters()) - _count(_query_branch(model)) == embeddings + text_ffn + heads


def test_moe_projector_is_llavas_mlp_and_six_swiglu_experts(recipes):
    """LLaVA's 1024 -> 4096 -> 4096 MLP, a bias-free router and bias-free SwiGLU experts of 4096."""
    model = recipes["qwen-moe"]
    v, h, inner, experts = model.vision.width, model.llm.hidden_size, model.cfg.bridge.expert_hidden, 6
    assert model.cfg.bridge.num_experts == experts
    projector = (v * h + h) + (h * h + h)
    assert _count(model.bridge.parameters()) == projector + experts * h + experts * 3 * h * inner


# --- materialising a meta build -------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def built(tiny_parts, tmp_path_factory) -> tuple[VisionLLM, VisionLLM]:
    """The tiny config (Q-Former with a text branch, LoRA, a Qwen2 LM with tied embeddings) built eagerly and on the
    meta device, each then given its weights."""
    cfg = tiny_parts.config(tmp_path_factory.mktemp("run"))
    torch.manual_seed(0)
    eager = VisionLLM(cfg).load_weights()
    meta = VisionLLM(cfg, device="meta").load_weights()
    return eager.eval(), meta.eval()


def _pretrained_tensors(model: VisionLLM) -> dict[str, torch.Tensor]:
    """The encoder's and LM base's parameters and buffers, the non-persistent ones too (no checkpoint holds them)."""
    named = [*model.named_parameters(remove_duplicate=False), *model.named_buffers(remove_duplicate=False)]
    return {n: t for n, t in named if n.startswith(("vision.", "llm.")) and "lora_" not in n}


def _new_parameters(model: VisionLLM) -> list[nn.Parameter]:
    lora = [p for n, p in model.llm.named_parameters() if "lora_" in n]
    return [*model.bridge.parameters(), *model.contrastive_head.parameters(), *lora]


def test_materialised_pretrained_parts_equal_the_eager_build(built):
    eager, meta = built
    assert meta.device.type == "cpu"
    theirs, ours = _pretrained_tensors(eager), _pretrained_tensors(meta)
    assert set(ours) == set(theirs) and len(ours) > 20
    for name, tensor in ours.items():
        assert torch.equal(tensor, theirs[name]), name


def test_materialised_new_parts_are_freshly_initialised(built):
    _, meta = built
    assert all(torch.isfinite(p).all() for p in _new_parameters(meta))
    lora = {n: p for n, p in meta.llm.named_parameters() if "lora_" in n}
    assert lora
    for name, p in lora.items():  # peft: A Kaiming-uniform, B zeros (a fresh adapter changes nothing)
        assert bool(p.eq(0).all()) == (".lora_B." in name), name
    assert abs(meta.bridge.query_tokens.std().item() - 0.02) < 0.005  # BERT's initializer_range
    assert meta.bridge.lm_head.bias.eq(0).all()


def test_materialised_lm_keeps_its_tied_embeddings(built):
    for model in built:
        lm = model.llm.base_model
        assert lm.config.tie_word_embeddings
        assert lm.get_output_embeddings().weight is lm.get_input_embeddings().weight


def test_materialised_model_generates_as_the_eager_one(built):
    eager, meta = built
    meta = copy.deepcopy(meta)  # the module's fixture keeps its own fresh new parts
    meta.load_trainable_state_dict(eager.trainable_state_dict())
    torch.manual_seed(0)
    images = torch.randn(2, 3, 32, 32)
    prompts = ["Caption in English:", "Frage: Welche Farbe hat der Kreis? Antwort:"]
    captions = meta.generate(images, prompts, max_new_tokens=5)
    assert captions == eager.generate(images, prompts, max_new_tokens=5)
    assert any(captions)


@pytest.mark.parametrize("bridge", ["qformer", "moe", "mlp"])
def test_init_new_parameters_overwrites_every_new_parameter(tiny_parts, tmp_path, bridge):
    model = VisionLLM(tiny_parts.config(tmp_path, f"bridge.type={bridge}"), device="meta")
    model.to_empty(device="cpu")
    with torch.no_grad():
        for p in _new_parameters(model):
            p.fill_(math.nan)
    model.init_new_parameters()
    assert all(torch.isfinite(p).all() for p in _new_parameters(model))


def test_untied_output_embeddings_stay_untied(tmp_path):
    """mT5 checkpoints (mT0) hold an lm_head apart from the input embeddings, and both must survive the weights
    step: here a tiny mT5 saved with its own lm_head, built eagerly (the same LanguageModel as on the meta device)."""
    torch.manual_seed(0)
    mt5 = MT5ForConditionalGeneration(MT5Config(vocab_size=64, d_model=16, d_kv=8, d_ff=32, num_layers=1,
                                                num_heads=2))
    mt5.lm_head.weight = nn.Parameter(torch.randn(64, 16))
    mt5.save_pretrained(tmp_path / "mt5")
    config = json.loads((tmp_path / "mt5" / "config.json").read_text())
    config["tie_word_embeddings"] = False  # as mT0's published config.json says (transformers 5 writes true)
    (tmp_path / "mt5" / "config.json").write_text(json.dumps(config))
    pretrained = AutoModelForSeq2SeqLM.from_pretrained(tmp_path / "mt5")
    assert pretrained.lm_head.weight is not pretrained.shared.weight  # transformers keeps the checkpoint's two
    lm = LanguageModel(LLMConfig(name=str(tmp_path / "mt5"), kind="seq2seq", dtype="float32"))
    lm.load_weights()
    assert torch.equal(lm.base_model.shared.weight, pretrained.shared.weight)
    assert torch.equal(lm.base_model.lm_head.weight, pretrained.lm_head.weight)
