"""Work a training step must not do: weight gradients of frozen parts, unfused attention, logits at unlabelled
positions. Checked by the ops and FLOPs that actually run (a dispatch mode), not by timing."""

from __future__ import annotations

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from vlm.data.collate import Example
from vlm.model.vlm import VisionLLM
from vlm.objective.objective import Objective


class OpRecorder(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops: set[str] = set()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops.add(func.overloadpacket.__name__)
        return func(*args, **(kwargs or {}))


def _model(tiny_parts, tmp_path, *extra) -> VisionLLM:
    torch.manual_seed(0)
    return VisionLLM(tiny_parts.config(tmp_path, "llm.lora_r=0", "llm.train_embeddings=false", *extra)).load_weights()


def _batch(model: VisionLLM, n: int = 4):
    torch.manual_seed(0)
    return model.collator()([Example(torch.randn(3, 32, 32), "Caption in English:", "a small red circle" + " x" * i,
                                     "c", "en", "caption") for i in range(n)])


class MatmulShapes(TorchDispatchMode):
    """The shapes of every 2-d matmul output: a weight gradient has its weight's shape."""

    def __init__(self):
        super().__init__()
        self.shapes: list[tuple[int, ...]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        out = func(*args, **(kwargs or {}))
        if func.overloadpacket.__name__ in ("mm", "addmm") and out.dim() == 2:
            self.shapes.append(tuple(out.shape))
        return out


def _weight_gradient_matmuls(model: VisionLLM, batch, prefix: torch.Tensor) -> int:
    """Matmuls in the LM's backward pass whose output has the shape of one of its weight matrices."""
    weights = {tuple(p.shape) for p in model.llm.parameters() if p.dim() == 2}
    loss = model.llm(prefix, batch.input_ids, batch.attention_mask, batch.labels)
    recorder = MatmulShapes()
    with recorder:
        loss.backward()
    assert recorder.shapes  # the input gradients
    rows = {prefix.shape[0] * (prefix.shape[1] + batch.input_ids.shape[1]), int((batch.labels != -100).sum())}
    assert not rows & {shape[0] for shape in weights}  # an activation gradient never looks like a weight's
    return sum(shape in weights for shape in recorder.shapes)


def test_a_frozen_lm_backward_computes_no_weight_gradients(tiny_parts, tmp_path):
    model = _model(tiny_parts, tmp_path)
    batch = _batch(model)
    prefix = torch.randn(4, 4, model.llm.hidden_size, requires_grad=True)
    assert _weight_gradient_matmuls(model, batch, prefix) == 0
    assert all(p.grad is None for p in model.llm.parameters()) and prefix.grad is not None
    model.llm.requires_grad_(True)  # the same LM trainable: every weight matrix gets its gradient matmul
    assert _weight_gradient_matmuls(model, batch, prefix) >= sum(p.dim() == 2 for p in model.llm.parameters()) - 1


def test_the_frozen_encoder_builds_no_graph_and_its_weights_get_no_gradient(tiny_parts, tmp_path):
    model = _model(tiny_parts, tmp_path)
    objective = Objective(model).train()
    batch = _batch(model)
    assert model.vision(batch.images).grad_fn is None
    objective(batch)["loss"].backward()
    assert all(p.grad is None for p in model.vision.parameters())
    assert any(p.grad is not None for p in model.bridge.parameters())


def test_attention_runs_fused_kernels_everywhere(tiny_parts, tmp_path):
    """The LM through SDPA, the Q-Former through F.scaled_dot_product_attention in forward and backward (no
    softmax of its own), the frozen ViT through torch's fused multi-head attention."""
    model = _model(tiny_parts, tmp_path, "loss.itm_weight=0")
    assert model.llm.base_model.config._attn_implementation == "sdpa"
    batch = _batch(model)
    tokens = model.vision(batch.images)
    recorder = OpRecorder()
    with recorder:
        model.bridge(tokens).visual_tokens.sum().backward()
    assert any(op.startswith("_scaled_dot_product") for op in recorder.ops)
    assert not {"_softmax", "softmax"} & recorder.ops
    recorder = OpRecorder()
    with recorder, torch.no_grad():
        model.vision(batch.images)
    assert "_native_multi_head_attention" in recorder.ops or any(op.startswith("_scaled_dot_product")
                                                                  for op in recorder.ops)


def test_logits_are_computed_at_labelled_positions_only(tiny_parts, tmp_path):
    """The LM head's matmul runs on as many rows as there are labels, not on every position of the batch."""
    model = _model(tiny_parts, tmp_path)
    batch = _batch(model)
    prefix = torch.randn(4, 4, model.llm.hidden_size)
    head = model.llm.base_model.get_output_embeddings()
    vocab, width = head.weight.shape
    rows = []

    class HeadRows(TorchDispatchMode):
        def __torch_dispatch__(self, func, types, args=(), kwargs=None):
            out = func(*args, **(kwargs or {}))
            if func.overloadpacket.__name__ == "mm" and out.shape[-1] == vocab:
                rows.append(out.shape[0])
            return out

    with HeadRows(), torch.no_grad():
        model.llm(prefix, batch.input_ids, batch.attention_mask, batch.labels)
    labelled = int((batch.labels != -100).sum())
    all_positions = 4 * (4 + batch.input_ids.shape[1])
    assert sum(rows) == labelled < all_positions
