"""`vlm plan`: the three GPU recipes traced on the meta device from config files alone (tests/hub_configs.py, weight
reads refused), their parameter counts against the meta build, their FLOPs against the transformer FLOP formula
worked out here from the configs, the per-strategy memory and batch fitting; the estimate against the measured peak
of real CPU training steps; bad input."""

from __future__ import annotations

import json
import math
from pathlib import Path

import huggingface_hub.constants
import open_clip
import pytest
import torch
from hub_configs import BLIP2_FLAN_T5_XL, HUB_CONFIGS, use_hub_cache
from test_meta_build import _forbid_weight_reads
from transformers import Qwen2Config, Qwen2ForCausalLM

import vlm.plan.planner
from vlm.cli import main
from vlm.config import load_config
from vlm.model.vlm import VisionLLM
from vlm.objective.objective import Objective
from vlm.plan.estimate import strategy_memory
from vlm.plan.measure import measure_peak
from vlm.plan.planner import make_plan, trace_model
from vlm.plan.target import GIB, Target

ROOT = Path(__file__).resolve().parent.parent
# mT0-XL's trace takes a minute here: its seq2seq planning is checked on the CPU against a measured peak
# (benchmarks/plan_accuracy.py) and its meta build's sizes in test_meta_build.py.
RECIPES = ("bloomz-qformer", "qwen-moe")
FLOP_TOLERANCE = 0.01  # the heads the formula leaves out (ITC similarities, MoE router, ITM head) are tiny


@pytest.fixture(scope="module")
def recipes(tmp_path_factory) -> dict:
    """name -> (the meta-built objective, its plan trace for a GPU), built with weight reads refused."""
    with pytest.MonkeyPatch.context() as monkeypatch:
        use_hub_cache(monkeypatch, tmp_path_factory.mktemp("hf") / "hub")
        _forbid_weight_reads(monkeypatch)
        built = {}
        for name in RECIPES:
            cfg = load_config(ROOT / "configs" / f"{name}.yaml")
            built[name] = (Objective(VisionLLM(cfg, device="meta")), trace_model(cfg, "cuda"))
        return built


# --- parameters -------------------------------------------------------------------------------------------------


def _count(params, trainable: bool) -> int:
    return sum(p.numel() for p in params if p.requires_grad == trainable)


@pytest.mark.parametrize("name", RECIPES)
def test_parameter_counts_are_the_meta_builds(recipes, name):
    objective, trace = recipes[name]
    model = objective.model
    lora = [p for n, p in model.llm.named_parameters() if "lora_" in n]
    base = [p for n, p in model.llm.named_parameters() if "lora_" not in n]
    heads = [*model.contrastive_head.parameters(), *(p for n, p in objective.named_parameters()
                                                     if not n.startswith("model."))]
    parts = {"vision encoder": list(model.vision.parameters()), "bridge": list(model.bridge.parameters()),
             "LM base": base, "LoRA": lora, "heads": heads}
    for part, params in parts.items():
        counted = trace.parameters[part]
        assert (counted.trainable, counted.frozen) == (_count(params, True), _count(params, False)), part
    assert sum(c.total for c in trace.parameters.values()) == sum(p.numel() for p in objective.parameters())
    assert trace.parameters["LM base"].frozen > 3e9 and trace.parameters["LoRA"].trainable > 1e7


# --- FLOPs against the formula -------------------------------------------------------------------------------


def _encoder(name: str, image_size: int) -> tuple[int, int, int]:
    """(width, tokens, forward FLOPs per image) of the frozen ViT up to the block the bridge reads (layer -2)."""
    if name == "bloomz-qformer":  # EVA01-g-14 as BLIP-2 publishes its first 39 blocks
        v = BLIP2_FLAN_T5_XL["vision_config"]
        width, mlp, blocks, patch = v["hidden_size"], v["intermediate_size"], v["num_hidden_layers"], v["patch_size"]
    else:
        v = open_clip.get_model_config("ViT-L-14-336" if name == "qwen-moe" else "ViT-L-14")["vision_cfg"]
        width, patch, blocks = v["width"], v["patch_size"], v["layers"] - 1
        mlp = int(width * v.get("mlp_ratio", 4.0))
    patches = (image_size // patch) ** 2
    tokens = patches + 1  # CLS
    block = 2 * tokens * (4 * width * width + 2 * width * mlp) + 4 * tokens * tokens * width
    return width, tokens, blocks * block + 2 * patches * 3 * patch * patch * width


def _qformer_pass(c, vision_width: int, image_tokens: int, queries: int, text: int) -> int:
    """One Q-Former pass over [queries; text]: shared self-attention, cross-attention of the queries to the image
    in every cross_attention_freq-th layer, the query and text FFNs."""
    h, inner, s = c.hidden_size, int(c.hidden_size * c.mlp_ratio), queries + text
    total = 0
    for layer in range(c.num_layers):
        total += 2 * s * 4 * h * h + 4 * s * s * h
        if queries and layer % c.cross_attention_freq == 0:
            total += 2 * queries * 2 * h * h + 2 * image_tokens * 2 * vision_width * h + 4 * queries * image_tokens * h
        total += 2 * s * 2 * h * inner
    return total


def _bridge(cfg, vision_width: int, image_tokens: int, llm_width: int) -> int:
    """Forward FLOPs per sample of the bridge and its stage-1 heads, as the objective runs them."""
    c = cfg.bridge
    if c.type == "moe":  # LLaVA's projection and every expert on every token, twice: routed, and unrouted for the
        # contrastive term
        inner = c.expert_hidden or llm_width
        once = 2 * image_tokens * (vision_width * llm_width + llm_width * llm_width)
        return 2 * (once + c.num_experts * 2 * image_tokens * 3 * llm_width * inner)
    q, h = c.num_queries, c.hidden_size
    projection = 2 * q * h * llm_width
    if not c.text_branch:
        return _qformer_pass(c, vision_width, image_tokens, q, 0) + projection
    text, vocab = c.max_text_length, HUB_CONFIGS[c.init_from]["vocab_size"] + 1  # + [DEC]
    itg = _qformer_pass(c, vision_width, image_tokens, q, text)  # also the visual prefix (queries never see text)
    itc_text = _qformer_pass(c, vision_width, image_tokens, 0, text)
    itm = 3 * itg  # B positives, B negative images, B negative texts through the multimodal mode
    itg_head = 2 * text * (h * h + h * vocab)
    return itg + projection + itc_text + itm + itg_head + 2 * q * h * c.itc_dim


def _lm_linears(config: dict, encoder_tokens: int, decoder_tokens: int) -> tuple[list[tuple[int, int, int]], int]:
    """(in, out, tokens) of every linear layer LoRA adapts, and the attention FLOPs (QK^T and AV, the full S x S)."""
    kind = config["model_type"]
    if kind == "bloom":
        h, s = config["hidden_size"], decoder_tokens
        return [(h, 3 * h, s), (h, h, s), (h, 4 * h, s), (4 * h, h, s)] * config["n_layer"], \
            config["n_layer"] * 4 * s * s * h
    if kind == "qwen2":
        h, i, s = config["hidden_size"], config["intermediate_size"], decoder_tokens
        kv = config["num_key_value_heads"] * h // config["num_attention_heads"]
        return [(h, h, s), (h, kv, s), (h, kv, s), (h, h, s), (h, i, s), (h, i, s), (i, h, s)] \
            * config["num_hidden_layers"], config["num_hidden_layers"] * 4 * s * s * h
    d, inner, ff = config["d_model"], config["num_heads"] * config["d_kv"], config["d_ff"]
    e, t = encoder_tokens, decoder_tokens
    encoder = [(d, inner, e)] * 3 + [(inner, d, e), (d, ff, e), (d, ff, e), (ff, d, e)]
    decoder = [(d, inner, t)] * 3 + [(inner, d, t), (d, inner, t), (d, inner, e), (d, inner, e), (inner, d, t),
                                     (d, ff, t), (d, ff, t), (ff, d, t)]
    attention = config["num_layers"] * 4 * e * e * inner + config["num_decoder_layers"] * 4 * (t * t + t * e) * inner
    return encoder * config["num_layers"] + decoder * config["num_decoder_layers"], attention


def _expected_flops(name: str, trace) -> tuple[int, int, int]:
    """(encoder forward, forward, backward) FLOPs per sample. The backward of the frozen LM is its input gradients
    (1x its forward), LoRA's and the bridge's 2x; attention's is 2x (Bloom's eager matmuls) or 2.5x (the fused
    kernel recomputes QK^T); the encoder has none."""
    cfg, w = trace.cfg, trace.workload
    config = HUB_CONFIGS[cfg.llm.name]
    width, image_tokens, encoder = _encoder(name, w.image_size)
    llm_width = config.get("hidden_size") or config["d_model"]
    bridge = _bridge(cfg, width, image_tokens, llm_width)
    if w.seq2seq:
        enc_tokens, dec_tokens = w.visual_tokens + w.prompt_tokens, w.target_tokens
    else:
        enc_tokens, dec_tokens = 0, w.lm_tokens
    linears, attention = _lm_linears(config, enc_tokens, dec_tokens)
    base = sum(2 * i * o * t for i, o, t in linears)
    # The LM head runs on the labelled (target) positions only, and the loss's gradients are taken in its forward
    # pass while the logits exist (vlm/model/lm_loss.py): the input gradient, and the weight's when it is trained.
    lm_head = 2 * w.target_tokens * llm_width * config["vocab_size"] * (3 if cfg.llm.train_embeddings else 2)
    lora = sum(2 * cfg.llm.lora_r * (i + o) * t for i, o, t in linears)
    head = 2 * w.target_tokens * llm_width * cfg.loss.contrastive_dim  # the caption side of the contrastive head
    forward = encoder + bridge + base + lm_head + lora + attention + head
    attention_backward = 2.0 if config["model_type"] == "bloom" else 2.5
    backward = 2 * bridge + base + 2 * lora + attention_backward * attention + head
    return encoder, forward, int(backward)


@pytest.mark.parametrize("name", RECIPES)
def test_flops_follow_the_formula(recipes, name):
    _, trace = recipes[name]
    encoder, forward, backward = _expected_flops(name, trace)
    flops = trace.flops_per_sample(False)
    assert math.isclose(flops["encoder"], encoder, rel_tol=FLOP_TOLERANCE)
    assert math.isclose(flops["forward"], forward, rel_tol=FLOP_TOLERANCE)
    assert math.isclose(flops["backward"], backward, rel_tol=FLOP_TOLERANCE)
    assert flops["recompute"] == 0
    # Checkpointing recomputes the units' forward (LM blocks, bridge units) in the backward, and only that.
    recompute = trace.flops_per_sample(True)["recompute"]
    assert 0.5 * (forward - encoder) < recompute < forward - encoder


# --- memory and batch fitting -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", RECIPES)
def test_fsdp2_needs_less_than_ddp_and_less_with_more_gpus(recipes, name):
    _, trace = recipes[name]
    peaks = []
    for gpus in (2, 4, 8):
        plan = make_plan(trace, Target(gpus=gpus))
        fsdp2, ddp = plan.memory[("fsdp2", False)], plan.memory[("ddp", False)]
        assert fsdp2.peak < ddp.peak
        assert ddp.peak == plan.memory[("single", False)].peak  # gradients are views of DDP's buckets
        # Activations are per micro-batch whatever shards the parameters, but parameters gathered in bf16 need
        # none of autocast's copies.
        assert 0 < trace.steps[False][0].weight_casts == ddp.activations - fsdp2.activations
        peaks.append(fsdp2.peak)
    assert peaks[0] > peaks[1] > peaks[2]
    # The frozen encoder is replicated, the rest sharded: weights shrink towards the encoder alone.
    encoder_bytes = trace.parameters["vision encoder"].frozen * 4
    assert encoder_bytes < make_plan(trace, Target(gpus=8)).memory[("fsdp2", False)].weights
    assert make_plan(trace, Target(gpus=1024)).memory[("fsdp2", False)].weights < 1.1 * encoder_bytes


@pytest.mark.parametrize("name", RECIPES)
def test_activation_checkpointing_lowers_activations(recipes, name):
    _, trace = recipes[name]
    off, on = trace.steps[False][0], trace.steps[True][0]
    assert on.activations < 0.5 * off.activations
    assert (on.weights, on.gradients, on.optimizer_state) == (off.weights, off.gradients, off.optimizer_state)
    assert trace.activations(True).per_sample < trace.activations(False).per_sample
    plan = make_plan(trace, Target())
    assert plan.fits[("ddp", True)].max_micro_batch > plan.fits[("ddp", False)].max_micro_batch


@pytest.mark.parametrize("name", RECIPES)
def test_more_gpu_memory_fits_a_larger_micro_batch_and_grad_accum_reaches_the_global_batch(recipes, name):
    _, trace = recipes[name]
    largest = []
    for gpu_mem in (40, 80, 141):
        plan = make_plan(trace, Target(gpus=8, gpu_mem_gib=gpu_mem, global_batch=256))
        f = plan.fits[("fsdp2", True)]
        largest.append(f.max_micro_batch)
        assert f.fits and f.micro_batch <= f.max_micro_batch
        assert f.micro_batch * f.grad_accum * 8 == 256
        assert math.ceil(32 / f.max_micro_batch) <= f.grad_accum  # no fewer micro-steps could reach it
        # The largest micro-batch is the last that fits: one more does not.
        memory = plan.memory[("fsdp2", True)]
        step = trace.steps[True][0]
        over = strategy_memory("fsdp2", 8, step, trace.activations(True), trace.layout, f.max_micro_batch + 1)
        assert over.peak > plan.target.usable_bytes >= over.peak - trace.activations(True).per_sample
        assert memory.micro_batch == trace.cfg.train.batch_size
    assert largest[0] < largest[1] < largest[2]


def test_default_global_batch_is_the_configs(recipes):
    _, trace = recipes["qwen-moe"]
    train = trace.cfg.train
    plan = make_plan(trace, Target(gpus=4))
    assert plan.global_batch == train.batch_size * train.grad_accum * 4
    fit = plan.fits[("ddp", True)]
    assert fit.micro_batch * fit.grad_accum * 4 == plan.global_batch


def test_verdict_for_qwen_moe_on_8x80_and_1x24(recipes):
    _, trace = recipes["qwen-moe"]
    big = make_plan(trace, Target(gpus=8, gpu_mem_gib=80))
    assert big.fits[("fsdp2", False)].fits and big.fits[("fsdp2", True)].fits
    assert big.verdict.split(";")[0].endswith(f"(global {big.global_batch})")
    assert " on 8 x 80 GiB: fits" in big.verdict.split(";")[0]
    small = make_plan(trace, Target(gpus=1, gpu_mem_gib=24))
    assert not any(f.fits for f in small.fits.values())  # 7.7B bf16 weights + 1.4 GB trainable fp32 with AdamW
    assert small.verdict.count("does not fit (needs") == 3
    for part in small.verdict.split("; "):
        needs = float(part.split("needs ")[1].split(" GiB")[0])
        assert 24 < needs < 40


# --- the estimate against a measured CPU step -----------------------------------------------------------------


def test_estimate_matches_the_measured_peak_on_the_cpu(tiny_parts, tmp_path):
    """A config whose training memory dwarfs the process's own: micro-batch 16, 256 LLM tokens, a Qwen2 LM 256 wide;
    Q-Former with ITC, ITM and ITG, LoRA. Steps of the real trainer, in a fresh process (vlm.plan.measure)."""
    torch.manual_seed(0)
    Qwen2ForCausalLM(Qwen2Config(vocab_size=600, hidden_size=256, intermediate_size=1024, num_hidden_layers=4,
                                 num_attention_heads=4, num_key_value_heads=4, tie_word_embeddings=True,
                                 pad_token_id=0, eos_token_id=1)).save_pretrained(tmp_path / "lm")
    cfg = tiny_parts.config(tmp_path / "run", f"llm.name={tmp_path / 'lm'}", "train.batch_size=16",
                            "llm.max_length=256", "train.grad_accum=2")
    estimated = trace_model(cfg, "cpu").steps[False][0]
    assert estimated.activations > 10 * (estimated.weights + estimated.gradients + estimated.optimizer_state)
    measured = measure_peak(cfg, steps=2)
    assert measured.steps == 2 and measured.peak_bytes > 200 * 2**20
    assert 0.75 <= estimated.peak / measured.peak_bytes <= 1.25


# --- the command ---------------------------------------------------------------------------------------------


def test_vlm_plan_prints_the_table_and_writes_json(tiny_parts, tmp_path, capsys):
    config = tmp_path / "config.json"
    tiny_parts.config(tmp_path / "run").save(config)
    out = tmp_path / "plan.json"
    assert main(["plan", str(config), "train.batch_size=4", "--device", "cpu", "--gpus", "2", "--gpu-mem", "8",
                 "--strategies", "ddp,fsdp2", "--json", str(out)]) == 0
    printed = capsys.readouterr().out
    numbers = json.loads(out.read_text())
    assert numbers["overrides"] == ["train.batch_size=4"] and numbers["workload"]["micro_batch"] == 4
    assert set(numbers["strategies"]) == {"ddp", "fsdp2"}
    assert numbers["verdict"] in printed and "verdict: " in printed
    for part in ("vision encoder", "bridge", "LM base", "LoRA", "heads"):
        assert f"{numbers['parameters'][part]['total']:,}" in printed
    ddp = numbers["strategies"]["ddp"]["checkpointing_off"]
    assert ddp["fits"] and ddp["micro_batch"] * ddp["grad_accum"] * 2 == numbers["global_batch"] == 4 * 2
    assert f"{ddp['memory_bytes']['peak'] / GIB:.2f}" in printed
    assert numbers["precision"] == {"bf16_autocast": False, "llm_dtype": "float32"}
    # the feature cache: the tiny ViT's 16 patches + CLS, 32 wide, in bf16
    assert numbers["feature_cache"] == {"tokens": [17, 32], "dtype": "bf16", "bytes_per_image": 17 * 32 * 2,
                                        "bytes_per_million_images": 17 * 32 * 2 * 10**6}
    assert "feature cache (`vlm prep features`, bf16): 17 x 32 encoder tokens, 1.062 KiB per image, 1.013 GiB per " \
           "million images on disk" in printed


def test_a_hub_id_outside_the_cache_exits_2_naming_it(tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HF_HUB_CACHE", str(tmp_path / "empty"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_CACHE", str(tmp_path / "empty"))
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    assert main(["plan", str(ROOT / "configs" / "bloomz-qformer.yaml")]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "'llm.name' (bigscience/bloomz-7b1)" in err


@pytest.mark.parametrize("option, culprit", [
    (["--gpus", "0"], "--gpus"),
    (["--strategies", "ddp,zero3"], "zero3"),
    (["--gpu-mem", "-8"], "--gpu-mem"),
    (["--global-batch", "0"], "--global-batch"),
    (["--device", "tpu"], "--device"),
])
def test_bad_input_exits_2_in_one_line_before_building(option, culprit, tmp_path, capsys, monkeypatch):
    def refuse(*args, **kwargs):
        raise AssertionError("the model was built")

    monkeypatch.setattr(vlm.plan.planner, "trace_model", refuse)
    assert main(["plan", str(ROOT / "configs" / "qwen-moe.yaml"), *option]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and culprit in err and err.startswith("vlm plan: error:")
