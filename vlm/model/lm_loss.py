"""The LM's next-token loss with logits only where a label is: the output layer and the cross-entropy run on
the labelled positions alone (never on the visual prefix, the prompt or padding), a bounded number of rows at a
time, so the (tokens x vocabulary) logits of a 250k-token vocabulary are never held whole.

transformers computes logits at every position and keeps them (and their float copy, shifted copy and softmax)
for the backward pass; `logits_to_keep` trims only a suffix shared by the whole batch. Fused linear +
cross-entropy kernels (Liger) are Triton, GPU-only; this is the same idea in plain torch, so it runs on every
device: each chunk's gradients are taken in the forward pass, while its logits exist, and the backward pass only
scales them. It is checked against transformers' own loss for every architecture it accepts
(tests/test_lm_loss.py).
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import PreTrainedModel

from vlm.data.batch import IGNORE_INDEX

# Logit rows per chunk are chosen so that one chunk's float32 logits (and their softmax) take about this much.
CHUNK_BYTES = 64 * 2**20

# Architectures whose LM head is exactly `lm_head(final hidden states)` (no soft-capping, logit scale or extra
# loss term), so the loss can be computed from the hidden states. Any other falls back to transformers' loss.
CAUSAL_BACKBONE_HEADS = {"bloom", "gemma", "gpt2", "llama", "mistral", "opt", "qwen2", "qwen2_moe", "qwen3"}
SEQ2SEQ_HEADS = {"mt5", "t5", "umt5"}


def supports_labelled_logits(model: PreTrainedModel) -> bool:
    config = model.config
    if getattr(config, "output_router_logits", False):  # an MoE LM then adds its router loss to the LM loss
        return False
    if type(model.get_output_embeddings()) is not nn.Linear:
        return False  # e.g. a LoRA-wrapped output layer
    return config.model_type in (SEQ2SEQ_HEADS if config.is_encoder_decoder else CAUSAL_BACKBONE_HEADS)


def final_hidden_states(model: PreTrainedModel, embeds: torch.Tensor, mask: torch.Tensor,
                        labels: torch.Tensor) -> torch.Tensor:
    """What the model's LM head reads: the backbone's last hidden states (causal) or the decoder's on the
    labels shifted right (seq2seq, T5's own teacher forcing), scaled as T5 scales them."""
    if not model.config.is_encoder_decoder:
        backbone = getattr(model, model.base_model_prefix)
        return backbone(inputs_embeds=embeds, attention_mask=mask, use_cache=False).last_hidden_state
    encoded = model.get_encoder()(inputs_embeds=embeds, attention_mask=mask).last_hidden_state
    decoded = model.get_decoder()(input_ids=model._shift_right(labels), encoder_hidden_states=encoded,
                                  encoder_attention_mask=mask, use_cache=False).last_hidden_state
    if getattr(model.config, "scale_decoder_outputs", False):
        decoded = decoded * (model.config.d_model ** -0.5)
    return decoded


def labelled_lm_loss(model: PreTrainedModel, hidden: torch.Tensor, labels: torch.Tensor,
                     sample_weights: torch.Tensor | None = None) -> torch.Tensor:
    """Mean cross-entropy over the labelled positions (each weighted by its sample's weight, when given: the
    weighted mean). Causal: position t predicts labels[t + 1]; seq2seq: decoder position t predicts labels[t]."""
    rows, targets, samples = labelled_rows(hidden, labels, shift=not model.config.is_encoder_decoder)
    head = model.get_output_embeddings()
    row_weights = None if sample_weights is None else sample_weights.to(torch.float32)[samples]
    return linear_cross_entropy(rows, head.weight, head.bias, targets, row_weights=row_weights)


@torch.no_grad()
def labelled_token_losses(model: PreTrainedModel, hidden: torch.Tensor, labels: torch.Tensor
                          ) -> tuple[torch.Tensor, torch.Tensor]:
    """(N,) float32 cross-entropy of each labelled position and (N,) the sample it belongs to, without gradients
    (per-language validation losses)."""
    rows, targets, samples = labelled_rows(hidden, labels, shift=not model.config.is_encoder_decoder)
    head = model.get_output_embeddings()
    w = head.weight.to(_compute_dtype(rows))
    losses = [lse - logits[torch.arange(len(target), device=target.device), target]
              for _, _, logits, lse, target in _chunk_logits(rows, w, head.bias, targets, _chunk_rows(w))]
    return (torch.cat(losses) if losses else rows.new_zeros(0, dtype=torch.float32)), samples


def labelled_rows(hidden: torch.Tensor, labels: torch.Tensor, shift: bool
                  ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(N, D) hidden states of the positions that have a label, their (N,) labels and (N,) sample indices."""
    if shift:
        hidden, labels = hidden[:, :-1], labels[:, 1:]
    keep = labels != IGNORE_INDEX
    return hidden[keep], labels[keep], keep.nonzero()[:, 0]


def linear_cross_entropy(hidden: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor | None,
                         targets: torch.Tensor, chunk_rows: int | None = None,
                         row_weights: torch.Tensor | None = None) -> torch.Tensor:
    """mean_i CE(hidden_i @ weight.T + bias, targets_i) for (N, D) rows, without ever holding (N, V) logits;
    with (N,) `row_weights` r the weighted mean sum_i r_i CE_i / sum_i r_i. Logits are computed in the autocast
    dtype when autocast is on (as an nn.Linear would be), then in float32."""
    if chunk_rows is None:
        chunk_rows = _chunk_rows(weight)
    # Inside a Function's forward grad mode is always off: whether a backward pass can follow is decided here.
    return _LinearCrossEntropy.apply(hidden, weight, bias, targets, row_weights, chunk_rows, torch.is_grad_enabled())


def _chunk_rows(weight: torch.Tensor) -> int:
    return max(1, CHUNK_BYTES // (4 * weight.shape[0]))


def _chunk_logits(hidden, w, bias, targets, chunk_rows):
    """(start, rows in the compute dtype, float32 logits, their log-sum-exp, targets) of each chunk of rows; `w` is
    in the compute dtype."""
    for start in range(0, hidden.shape[0], chunk_rows):
        rows = hidden[start: start + chunk_rows].to(w.dtype)
        logits = (rows @ w.t()).float()
        if bias is not None:
            logits = logits + bias.float()
        yield start, rows, logits, torch.logsumexp(logits, dim=-1), targets[start: start + chunk_rows]


def _compute_dtype(x: torch.Tensor) -> torch.dtype:
    device = x.device.type
    if device == "meta":  # no autocast there (vlm plan emulates it on the ops themselves)
        return x.dtype
    return torch.get_autocast_dtype(device) if torch.is_autocast_enabled(device) else x.dtype


class _LinearCrossEntropy(torch.autograd.Function):
    @staticmethod
    def forward(ctx, hidden, weight, bias, targets, row_weights, chunk_rows, track):
        dtype = _compute_dtype(hidden)
        w = weight.to(dtype)
        # The mean's denominator: the row count, or the rows' total weight.
        denominator = hidden.shape[0] if row_weights is None else row_weights.sum()
        want_hidden, want_weight, want_bias = (track and need for need in ctx.needs_input_grad[:3])
        grads = want_hidden or want_weight or want_bias
        grad_hidden = torch.empty_like(hidden) if want_hidden else None
        grad_weight = torch.zeros(weight.shape, dtype=torch.float32, device=weight.device) if want_weight else None
        grad_bias = torch.zeros(bias.shape, dtype=torch.float32, device=bias.device) if want_bias else None
        total = torch.zeros((), dtype=torch.float32, device=hidden.device)
        for start, rows, logits, lse, target in _chunk_logits(hidden, w, bias, targets, chunk_rows):
            picked = torch.arange(target.shape[0], device=target.device), target
            losses = lse - logits[picked]
            r = None if row_weights is None else row_weights[start: start + chunk_rows]
            total += losses.sum() if r is None else (r * losses).sum()
            if not grads:
                continue
            # d(mean CE)/d(logits) = (softmax - one_hot) / N, taken now while the chunk's logits exist; the softmax
            # reuses the log-sum-exp, in place of the logits.
            grad_logits = logits.sub_(lse.unsqueeze(1)).exp_()
            grad_logits[picked] -= 1.0
            if r is not None:
                grad_logits *= r.unsqueeze(1)
            grad_logits /= denominator
            if want_hidden:
                grad_hidden[start: start + chunk_rows] = (grad_logits.to(dtype) @ w).to(hidden.dtype)
            if want_weight:
                grad_weight += (grad_logits.to(dtype).t() @ rows).float()
            if want_bias:
                grad_bias += grad_logits.sum(dim=0)
        ctx.save_for_backward(*(g for g in (grad_hidden, grad_weight, grad_bias) if g is not None))
        ctx.present = (want_hidden, want_weight, want_bias)
        ctx.dtypes = (weight.dtype, None if bias is None else bias.dtype)
        if row_weights is None:
            return total / max(denominator, 1)
        return total / denominator.clamp(min=torch.finfo(torch.float32).tiny)

    @staticmethod
    def backward(ctx, grad_out):
        saved = iter(ctx.saved_tensors)
        grad_hidden, grad_weight, grad_bias = (next(saved) if present else None for present in ctx.present)
        if grad_hidden is not None:
            grad_hidden = grad_hidden * grad_out.to(grad_hidden.dtype)
        if grad_weight is not None:
            grad_weight = (grad_weight * grad_out).to(ctx.dtypes[0])
        if grad_bias is not None:
            grad_bias = (grad_bias * grad_out).to(ctx.dtypes[1])
        return grad_hidden, grad_weight, grad_bias, None, None, None, None
