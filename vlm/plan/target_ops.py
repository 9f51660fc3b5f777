"""How the target device would run a step, for a trace on the meta device: `TargetOps`, a torch-function mode.

What a meta trace gets wrong by itself, each set right here where the model's code calls torch:

- bf16 autocast (`torch.autocast` has no meta device): the ops CUDA autocast runs in bf16 (matmuls, linear,
  convolutions, attention) get bf16 inputs and those it runs in fp32 (softmax, norms, losses, exp/log/pow,
  sums) get fp32 inputs, with the casts recorded by autograd as autocast's are, and the casts of trainable
  leaves cached for the forward as autocast caches them. The lists follow aten/src/ATen/autocast_mode.cpp (CUDA)
  at the level of the Python functions the model calls; code that switches autocast off (`suspended`) runs as is.
- attention kernels: on meta `F.scaled_dot_product_attention` takes the math path, which keeps the B x heads x
  S x S probabilities for the backward, where a GPU runs a fused kernel that keeps only the output and its
  log-sum-exp. Calls are routed to the memory-efficient kernel, which has meta kernels and FLOP formulas (flash
  attention keeps the same tensors). The CPU's fused kernel has no dropout: with dropout a CPU takes the math path.
- dropout: a GPU runs the fused kernel, which keeps a boolean mask for the backward, where the meta device (as a
  CPU) draws a noise tensor of the input's dtype and multiplies by it; on a GPU target dropout takes the fused op.
- data-dependent sizes: `nonzero` cannot run on meta. With `nonzero_share` set (a top-k MoE router's 1 / experts:
  balanced routing, the target of its balance loss) that share of the elements comes back as nonzero.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator

import torch
import torch.nn.functional as F
from torch.overrides import TorchFunctionMode
from torch.utils._pytree import tree_map

from vlm.plan.target import TARGET_DEVICES

# CUDA autocast's lower-precision list, as the Python functions that reach those aten ops. The mode does not see
# inside a Python function it intercepts: nn.MultiheadAttention's (open_clip's ViT) is cast at its entry, its
# projections and attention being all bf16 ops; its own attention call takes the math path (the encoder runs
# under no_grad, so that is transient memory).
_BF16_OPS = frozenset({
    F.multi_head_attention_forward, F.linear, F.bilinear, F.conv1d, F.conv2d, F.conv3d,
    F.conv_transpose1d, F.conv_transpose2d, F.conv_transpose3d, F.prelu, F.scaled_dot_product_attention,
    torch.matmul, torch.Tensor.matmul, torch.Tensor.__matmul__, torch.Tensor.__rmatmul__,
    torch.mm, torch.Tensor.mm, torch.bmm, torch.Tensor.bmm, torch.mv, torch.Tensor.mv,
    torch.addmm, torch.Tensor.addmm, torch.baddbmm, torch.Tensor.baddbmm, torch.addbmm, torch.Tensor.addbmm,
    torch.addmv, torch.Tensor.addmv, torch.einsum, torch.chain_matmul, torch.linalg.multi_dot,
})
# Its fp32 list (and the ops it gives an fp32 result dtype), likewise.
_FP32_OPS = frozenset({
    F.layer_norm, F.group_norm, F.softmax, F.log_softmax, F.softplus, F.normalize, F.cosine_similarity,
    F.cross_entropy, F.nll_loss, F.mse_loss, F.l1_loss, F.smooth_l1_loss, F.huber_loss, F.kl_div,
    F.binary_cross_entropy_with_logits, F.poisson_nll_loss, F.cosine_embedding_loss, F.margin_ranking_loss,
    F.triplet_margin_loss, F.multi_margin_loss, F.multilabel_margin_loss, F.soft_margin_loss,
    torch.softmax, torch.Tensor.softmax, torch.log_softmax, torch.Tensor.log_softmax,
    torch.exp, torch.Tensor.exp, torch.expm1, torch.Tensor.expm1, torch.log, torch.Tensor.log,
    torch.log10, torch.Tensor.log10, torch.log2, torch.Tensor.log2, torch.log1p, torch.Tensor.log1p,
    torch.reciprocal, torch.Tensor.reciprocal, torch.rsqrt, torch.Tensor.rsqrt,
    torch.pow, torch.Tensor.pow, torch.Tensor.__pow__,
    torch.acos, torch.asin, torch.cosh, torch.sinh, torch.tan, torch.erfinv,
    torch.sum, torch.Tensor.sum, torch.prod, torch.Tensor.prod, torch.cumsum, torch.Tensor.cumsum,
    torch.cumprod, torch.Tensor.cumprod, torch.logsumexp, torch.Tensor.logsumexp,
    torch.norm, torch.Tensor.norm, torch.linalg.vector_norm, torch.linalg.matrix_norm,
    torch.cdist, torch.dist, torch.layer_norm, torch.group_norm,
})
_NONZERO = frozenset({torch.nonzero, torch.Tensor.nonzero})
_SDPA_ARGS = ("query", "key", "value", "attn_mask", "dropout_p", "is_causal", "scale", "enable_gqa")
_DROPOUT_ARGS = ("input", "p", "training", "inplace")


class TargetOps(TorchFunctionMode):
    """Run the model's torch calls on meta tensors as `device` ("cuda" | "cpu") would, with bf16 autocast when
    `autocast` is set. A new instance starts an autocast region of its own (a fresh weight-cast cache)."""

    def __init__(self, device: str, autocast: bool, nonzero_share: float | None = None,
                 _suspension: list[int] | None = None):
        super().__init__()
        if device not in TARGET_DEVICES:
            raise ValueError(f"unknown target device '{device}'; expected one of {TARGET_DEVICES}")
        self.device, self.autocast, self.nonzero_share = device, autocast, nonzero_share
        self._suspension = [0] if _suspension is None else _suspension  # shared with the `fresh` copies
        self._cast_cache: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self.cast_bytes = 0  # of the bf16 copies of trainable leaves the region cached, once it has ended

    def fresh(self) -> TargetOps:
        """The same emulation for a new autocast region (activation checkpointing's recomputation is one)."""
        return TargetOps(self.device, self.autocast, self.nonzero_share, self._suspension)

    @contextlib.contextmanager
    def suspended(self) -> Iterator[None]:
        """What `torch.autocast(..., enabled=False)` does: ops run in the dtypes they are given."""
        self._suspension[0] += 1
        try:
            yield
        finally:
            self._suspension[0] -= 1

    def __exit__(self, *exc):
        # Autocast empties its cache when its region ends: the copies live on only where autograd saved them.
        self.cast_bytes = sum(cast.untyped_storage().nbytes() for _, cast in self._cast_cache.values())
        self._cast_cache.clear()
        return super().__exit__(*exc)

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if self.autocast and not self._suspension[0]:
            if func in _BF16_OPS:
                args, kwargs = tree_map(self._to_bf16, (args, kwargs))
            elif func in _FP32_OPS:
                args, kwargs = tree_map(_to_fp32, (args, kwargs))
        if func is F.scaled_dot_product_attention:
            call = dict(zip(_SDPA_ARGS, args)) | kwargs
            if call["query"].is_meta and (self.device == "cuda" or not call.get("dropout_p", 0.0)):
                return _efficient_attention(**call)
        if func is F.dropout and self.device == "cuda":
            call = dict(zip(_DROPOUT_ARGS, args)) | kwargs
            if call["input"].is_meta and call.get("training", True) and not call.get("inplace", False) \
                    and 0 < call.get("p", 0.5) < 1:
                return torch.native_dropout(call["input"], call.get("p", 0.5), True)[0]
        if func in _NONZERO and self.nonzero_share is not None and args[0].is_meta:
            return _planned_nonzero(args[0], self.nonzero_share, **kwargs)
        return func(*args, **kwargs)

    def _to_bf16(self, x):
        if not isinstance(x, torch.Tensor) or not x.is_floating_point() or x.dtype in (torch.bfloat16, torch.float64):
            return x
        if not (x.is_leaf and x.requires_grad):
            return x.to(torch.bfloat16)
        if id(x) not in self._cast_cache:  # the source is kept too, so that its id stays its own
            self._cast_cache[id(x)] = (x, x.to(torch.bfloat16))
        return self._cast_cache[id(x)][1]


def _to_fp32(x):
    if isinstance(x, torch.Tensor) and x.dtype in (torch.bfloat16, torch.float16):
        return x.float()
    return x


def _efficient_attention(query, key, value, attn_mask=None, dropout_p=0.0, is_causal=False, scale=None,
                         enable_gqa=False):
    """F.scaled_dot_product_attention through the memory-efficient kernel, with SDPA's own preprocessing:
    grouped key/value heads repeated, a boolean mask turned into an additive bias of the query's dtype."""
    if enable_gqa and key.shape[-3] != query.shape[-3]:
        repeat = query.shape[-3] // key.shape[-3]
        key, value = key.repeat_interleave(repeat, dim=-3), value.repeat_interleave(repeat, dim=-3)
    bias = None
    if attn_mask is not None:
        if attn_mask.dtype == torch.bool:
            bias = torch.zeros(attn_mask.shape, dtype=query.dtype, device=query.device).masked_fill(~attn_mask,
                                                                                                   -math.inf)
        else:
            bias = attn_mask.to(query.dtype)
        bias = bias.expand(*query.shape[:-1], key.shape[-2])
    needs_grad = torch.is_grad_enabled() and any(t.requires_grad for t in (query, key, value))
    return torch.ops.aten._scaled_dot_product_efficient_attention(
        query, key, value, bias, needs_grad, dropout_p, is_causal, scale=scale)[0]


def _planned_nonzero(x: torch.Tensor, share: float, as_tuple: bool = False):
    """The indices of the first ceil(share * numel) elements, as `nonzero` lays them out."""
    count = math.ceil(share * x.numel())
    flat = torch.arange(count, device=x.device)
    coords = []
    for size in reversed(x.shape):
        coords.append(flat % size)
        flat = flat // size
    coords.reverse()
    return tuple(coords) if as_tuple else torch.stack(coords, dim=1)
