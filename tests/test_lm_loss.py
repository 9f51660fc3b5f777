"""The labelled-positions LM loss (vlm/model/lm_loss.py) against transformers' own loss and against a plain
cross-entropy over whole logits: the same values and gradients, for every architecture it accepts."""

from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from peft import LoraConfig, get_peft_model
from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM

from vlm.data.batch import IGNORE_INDEX
from vlm.data.collate import Example
from vlm.model.lm_loss import (
    CAUSAL_BACKBONE_HEADS,
    SEQ2SEQ_HEADS,
    final_hidden_states,
    labelled_lm_loss,
    linear_cross_entropy,
    supports_labelled_logits,
)
from vlm.model.vlm import VisionLLM

VOCAB = 97
SMALL = {"vocab_size": VOCAB, "hidden_size": 32, "intermediate_size": 64, "num_hidden_layers": 2,
         "num_attention_heads": 4, "num_key_value_heads": 2, "pad_token_id": 0}
CAUSAL = {
    "bloom": {"vocab_size": VOCAB, "hidden_size": 32, "n_layer": 2, "n_head": 4},
    "gemma": {**SMALL, "head_dim": 8},
    "gpt2": {"vocab_size": VOCAB, "n_embd": 32, "n_layer": 2, "n_head": 4},
    "llama": SMALL,
    "mistral": SMALL,
    "opt": {"vocab_size": VOCAB, "hidden_size": 32, "ffn_dim": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
            "word_embed_proj_dim": 32, "pad_token_id": 1},
    "qwen2": SMALL,
    "qwen2_moe": {**SMALL, "moe_intermediate_size": 16, "shared_expert_intermediate_size": 32, "num_experts": 4,
                  "num_experts_per_tok": 2},
    "qwen3": {**SMALL, "head_dim": 8},
}
T5_SIZES = {"vocab_size": VOCAB, "d_model": 32, "d_kv": 8, "d_ff": 64, "num_layers": 2, "num_decoder_layers": 2,
            "num_heads": 4, "pad_token_id": 0, "decoder_start_token_id": 0}
SEQ2SEQ = {
    "t5 (tied: decoder output rescaled)": ("t5", {**T5_SIZES, "tie_word_embeddings": True}),
    "t5 v1.1 (untied)": ("t5", {**T5_SIZES, "tie_word_embeddings": False, "feed_forward_proj": "gated-gelu"}),
    "mt5": ("mt5", {**T5_SIZES, "tie_word_embeddings": False}),
    "umt5": ("umt5", {**T5_SIZES, "tie_word_embeddings": False}),
}


def test_every_accepted_architecture_is_tested():
    assert set(CAUSAL) == CAUSAL_BACKBONE_HEADS
    assert {model_type for model_type, _ in SEQ2SEQ.values()} == SEQ2SEQ_HEADS


def _labels(batch: int, length: int, prefix: int) -> torch.Tensor:
    """Right-padded targets of different lengths after a prefix and a prompt, -100 elsewhere."""
    labels = torch.full((batch, length), IGNORE_INDEX)
    for row in range(batch):
        start, stop = prefix + 2 + row, length - 3 * row
        labels[row, start:stop] = torch.randint(2, VOCAB, (stop - start,))
    return labels


def _compare(model, embeds, mask, labels):
    embeds = embeds.clone().requires_grad_(True)
    reference = model(inputs_embeds=embeds, attention_mask=mask, labels=labels, use_cache=False).loss
    (grad_ref,) = torch.autograd.grad(reference, embeds)
    ours = labelled_lm_loss(model, final_hidden_states(model, embeds, mask, labels), labels)
    (grad_ours,) = torch.autograd.grad(ours, embeds)
    torch.testing.assert_close(ours, reference, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(grad_ours, grad_ref, rtol=1e-4, atol=1e-7)


@pytest.mark.parametrize("model_type", sorted(CAUSAL))
def test_causal_loss_equals_transformers(model_type):
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(model_type, **CAUSAL[model_type])).eval()
    assert supports_labelled_logits(model)
    embeds = torch.randn(3, 20, model.get_input_embeddings().embedding_dim)
    mask = torch.ones(3, 20, dtype=torch.long)
    mask[2, -6:] = 0  # padding at the end of the shortest row
    _compare(model, embeds, mask, _labels(3, 20, prefix=4))


@pytest.mark.parametrize("name", sorted(SEQ2SEQ))
def test_seq2seq_loss_equals_transformers(name):
    model_type, sizes = SEQ2SEQ[name]
    torch.manual_seed(0)
    model = AutoModelForSeq2SeqLM.from_config(AutoConfig.for_model(model_type, **sizes)).eval()
    assert supports_labelled_logits(model)
    embeds = torch.randn(3, 12, 32)
    mask = torch.ones(3, 12, dtype=torch.long)
    mask[1, -4:] = 0
    _compare(model, embeds, mask, _labels(3, 9, prefix=-2))


def test_lora_layers_are_kept_and_a_lora_output_layer_falls_back():
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_config(AutoConfig.for_model("qwen2", **SMALL))
    model = get_peft_model(base, LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    inner = model.get_base_model()
    assert supports_labelled_logits(inner)
    _compare(inner, torch.randn(2, 10, 32), torch.ones(2, 10, dtype=torch.long), _labels(2, 10, prefix=3))
    lora_head = get_peft_model(AutoModelForCausalLM.from_config(AutoConfig.for_model("qwen2", **SMALL)),
                               LoraConfig(r=4, target_modules=["lm_head"]))
    assert not supports_labelled_logits(lora_head.get_base_model())


def test_an_moe_lm_that_adds_its_router_loss_falls_back():
    model = AutoModelForCausalLM.from_config(AutoConfig.for_model(
        "qwen2_moe", **CAUSAL["qwen2_moe"], output_router_logits=True))
    assert not supports_labelled_logits(model)


@pytest.mark.parametrize("with_bias", [False, True])
def test_chunked_linear_cross_entropy_equals_whole_logits(with_bias):
    torch.manual_seed(0)
    hidden = torch.randn(23, 16, requires_grad=True)
    weight = torch.randn(50, 16, requires_grad=True)
    bias = torch.randn(50, requires_grad=True) if with_bias else None
    targets = torch.randint(0, 50, (23,))
    reference = F.cross_entropy(F.linear(hidden, weight, bias), targets)
    grads_ref = torch.autograd.grad(reference * 3.0, [hidden, weight] + ([bias] if with_bias else []))
    ours = linear_cross_entropy(hidden, weight, bias, targets, chunk_rows=4)  # 6 chunks, the last one short
    grads = torch.autograd.grad(ours * 3.0, [hidden, weight] + ([bias] if with_bias else []))
    torch.testing.assert_close(ours, reference)
    for got, want in zip(grads, grads_ref):
        torch.testing.assert_close(got, want)


def test_frozen_output_layer_gets_no_gradient_work_and_no_grad_mode_gives_the_value():
    torch.manual_seed(0)
    hidden = torch.randn(7, 8, requires_grad=True)
    weight = torch.randn(11, 8)  # frozen, like an LM head without trained embeddings
    targets = torch.randint(0, 11, (7,))
    loss = linear_cross_entropy(hidden, weight, None, targets, chunk_rows=3)
    loss.backward()
    assert weight.grad is None and hidden.grad is not None
    with torch.no_grad():
        value = linear_cross_entropy(hidden, weight, None, targets)
    assert not value.requires_grad
    torch.testing.assert_close(value, F.cross_entropy(hidden.detach() @ weight.t(), targets))


def test_autocast_computes_logits_in_the_autocast_dtype():
    torch.manual_seed(0)
    hidden = torch.randn(6, 8, requires_grad=True)
    weight = torch.randn(13, 8, requires_grad=True)
    targets = torch.randint(0, 13, (6,))
    with torch.autocast("cpu", dtype=torch.bfloat16):
        reference = F.cross_entropy(F.linear(hidden, weight).float(), targets)
        ours = linear_cross_entropy(hidden, weight, None, targets)
    torch.testing.assert_close(ours, reference)
    ours.backward()
    assert weight.grad.dtype == torch.float32 and hidden.grad.dtype == torch.float32


def test_the_model_path_switch_gives_the_same_loss(tiny_parts, tmp_path):
    losses = []
    for switch in ("true", "false"):
        torch.manual_seed(0)
        model = VisionLLM(tiny_parts.config(tmp_path, f"llm.labelled_logits={switch}")).load_weights()
        collator = model.collator()
        examples = [Example(torch.randn(3, 32, 32), "Caption:", "a red circle" + " left" * i, "c", "en", "caption")
                    for i in range(4)]
        batch = collator(examples)
        prefix = torch.randn(4, 4, model.llm.hidden_size)
        losses.append(model.llm(prefix, batch.input_ids, batch.attention_mask, batch.labels))
    torch.testing.assert_close(losses[0], losses[1], rtol=1e-6, atol=1e-7)
