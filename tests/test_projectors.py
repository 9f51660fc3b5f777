"""LLaVA's MLP projector and the Parrot MoE projector, checked against hand computations."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from vlm.config import BridgeConfig
from vlm.model.bridges.mlp import MLPProjector
from vlm.model.bridges.moe import MoEProjector, load_balance_loss

DV, H, N, L, E = 6, 8, 5, 4, 3


def make_moe(**fields) -> MoEProjector:
    defaults = {"projector_hidden": 10, "num_experts": E, "expert_hidden": 12}
    return MoEProjector(BridgeConfig(**(defaults | fields)), DV, H)


def inputs(batch: int = 4) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    mask = torch.ones(batch, L, dtype=torch.long)
    mask[1, 2:] = 0
    return torch.randn(batch, N, DV), torch.randn(batch, L, H), mask


def randomise_down_proj(moe: MoEProjector) -> None:
    for expert in moe.experts:
        torch.nn.init.normal_(expert.down_proj.weight)


def swiglu(expert, x: torch.Tensor) -> torch.Tensor:
    gate, up, down = expert.gate_proj.weight, expert.up_proj.weight, expert.down_proj.weight
    return (F.silu(x @ gate.T) * (x @ up.T)) @ down.T


def test_mlp_projector_is_linear_gelu_linear():
    torch.manual_seed(0)
    mlp = MLPProjector(BridgeConfig(projector_hidden=10), DV, H)
    x = torch.randn(2, N, DV)
    out = mlp(x, torch.randn(2, L, H))
    assert out.visual_tokens.shape == (2, N, H) and out.hidden is out.visual_tokens
    assert out.router_probs is None and out.losses == {}
    first, last = mlp.layers[0], mlp.layers[2]
    expected = F.gelu(x @ first.weight.T + first.bias) @ last.weight.T + last.bias
    torch.testing.assert_close(out.visual_tokens, expected, atol=1e-6, rtol=1e-6)
    assert MLPProjector(BridgeConfig(), DV, H).layers[0].out_features == H  # projector_hidden=0: the LLM width


@pytest.mark.parametrize("top_k", [0, 2])
@pytest.mark.parametrize("with_text", [False, True])
def test_identity_moe_starts_as_the_projection_and_learns(top_k, with_text):
    torch.manual_seed(0)
    moe = make_moe(top_k=top_k)
    x, text, mask = inputs()
    out = moe(x, text, mask) if with_text else moe(x)
    projection = moe.projector(x).visual_tokens
    assert torch.equal(out.visual_tokens, projection)
    out.visual_tokens.pow(2).sum().backward()
    chosen = out.router_probs.topk(top_k or E, dim=-1).indices.unique().tolist()
    for e in chosen:
        assert moe.experts[e].down_proj.weight.grad.abs().sum() > 0


def test_parrot_init_is_weighted_experts_plus_scaled_input():
    torch.manual_seed(0)
    moe = make_moe(moe_init="parrot", parrot_residual=0.1)
    assert moe.experts[0].down_proj.weight.abs().sum() > 0
    x, text, mask = inputs()
    out = moe(x, text, mask)
    v = moe.projector(x).visual_tokens
    w = out.router_probs
    expected = sum(w[:, e, None, None] * swiglu(moe.experts[e], v) for e in range(E)) + 0.1 * v
    torch.testing.assert_close(out.visual_tokens, expected, atol=1e-6, rtol=1e-5)


def test_router_attention_by_hand():
    torch.manual_seed(0)
    moe = make_moe()
    x, text, mask = inputs(batch=2)
    probs = moe(x, text, mask).router_probs
    cls = moe.projector(x).visual_tokens[:, 0].tolist()
    router = moe.router.weight.tolist()
    for b in range(2):
        kept = [text[b, j].tolist() for j in range(L) if mask[b, j]]
        scores = [sum(c * t for c, t in zip(cls[b], tok)) / math.sqrt(H) for tok in kept]
        alpha = [math.exp(s) / sum(math.exp(r) for r in scores) for s in scores]
        g = [sum(a * tok[h] for a, tok in zip(alpha, kept)) for h in range(H)]
        logits = [sum(r * gh for r, gh in zip(row, g)) for row in router]
        expected = [math.exp(z) / sum(math.exp(y) for y in logits) for z in logits]
        assert probs[b].tolist() == pytest.approx(expected, abs=1e-6)
    assert probs.dtype == torch.float32


def test_padding_is_never_attended():
    torch.manual_seed(0)
    moe = make_moe(moe_init="parrot")
    x, text, mask = inputs()
    out = moe(x, text, mask)
    garbage = 100 * torch.randn(4, 3, H)
    padded = moe(x, torch.cat([text, garbage], 1), torch.cat([mask, torch.zeros(4, 3, dtype=mask.dtype)], 1))
    torch.testing.assert_close(padded.router_probs, out.router_probs, atol=1e-6, rtol=0)
    torch.testing.assert_close(padded.visual_tokens, out.visual_tokens, atol=1e-6, rtol=0)
    # Row 1 masks its last two tokens: same as giving it only its first two.
    alone = moe(x[1:2], text[1:2, :2])
    torch.testing.assert_close(alone.router_probs, out.router_probs[1:2], atol=1e-6, rtol=0)


def test_no_text_or_all_padding_gives_uniform_weights_without_nan():
    torch.manual_seed(0)
    moe = make_moe(moe_init="parrot")
    x, text, mask = inputs()
    mask[2] = 0
    out = moe(x, text.requires_grad_(), mask)
    assert torch.allclose(out.router_probs[2], torch.full((E,), 1 / E))
    assert not torch.allclose(out.router_probs[0], torch.full((E,), 1 / E))
    out.visual_tokens.sum().backward()
    assert torch.isfinite(out.visual_tokens).all() and torch.isfinite(text.grad).all()
    assert all(torch.isfinite(p.grad).all() for p in moe.parameters())
    none = moe(x)
    assert torch.allclose(none.router_probs, torch.full((4, E), 1 / E))
    assert torch.isfinite(none.visual_tokens).all()
    assert none.losses["moe_balance"].item() == pytest.approx(1.0)


def test_router_depends_on_the_prompt():
    torch.manual_seed(0)
    moe = make_moe()
    x = torch.randn(1, N, DV).expand(2, N, DV)
    probs = moe(x, torch.randn(2, L, H)).router_probs
    assert (probs[0] - probs[1]).abs().max() > 1e-3


@pytest.mark.parametrize("top_k", [1, 2])
def test_top_k_runs_only_the_selected_experts(top_k):
    torch.manual_seed(0)
    moe = make_moe(top_k=top_k, num_experts=5)
    randomise_down_proj(moe)
    x, text, mask = inputs(batch=2)
    calls = {e: [] for e in range(5)}
    for e, expert in enumerate(moe.experts):
        expert.register_forward_hook(lambda _, args, __, e=e: calls[e].append(args[0].shape[0]))
    out = moe(x, text, mask)
    v = moe.projector(x).visual_tokens
    chosen = out.router_probs.topk(top_k, dim=-1).indices
    assert {e: sum(n) for e, n in calls.items()} == {e: int((chosen == e).sum()) for e in range(5)}
    for b in range(2):
        ranked = sorted(range(5), key=lambda e: -out.router_probs[b, e].item())[:top_k]
        total = sum(out.router_probs[b, e] for e in ranked)
        expected = v[b] + sum(out.router_probs[b, e] / total * swiglu(moe.experts[e], v[b]) for e in ranked)
        torch.testing.assert_close(out.visual_tokens[b], expected, atol=1e-5, rtol=1e-5)
    out.visual_tokens.sum().backward()
    selected = set(chosen.flatten().tolist())
    assert len(selected) < 5
    for e, expert in enumerate(moe.experts):
        grads = [p.grad for p in expert.parameters()]
        if e in selected:
            assert all(g is not None and g.abs().sum() > 0 for g in grads)
        else:
            assert all(g is None for g in grads)


def test_top_1_output_is_the_argmax_expert():
    torch.manual_seed(1)
    moe = make_moe(top_k=1, moe_init="parrot")
    x, text, mask = inputs()
    out = moe(x, text, mask)
    v = moe.projector(x).visual_tokens
    best = out.router_probs.argmax(-1)
    expected = torch.stack([swiglu(moe.experts[e], v[b]) for b, e in enumerate(best.tolist())]) + 0.1 * v
    torch.testing.assert_close(out.visual_tokens, expected, atol=1e-6, rtol=1e-5)


def test_balance_loss():
    uniform = torch.full((4, 3), 1 / 3)
    assert load_balance_loss(uniform, uniform.argmax(-1, keepdim=True)).item() == pytest.approx(1.0)
    assert load_balance_loss(uniform, torch.tensor([[0, 1]] * 4)).item() == pytest.approx(1.0)
    collapsed = torch.tensor([[0.8, 0.1, 0.1]] * 4)
    assert load_balance_loss(collapsed, collapsed.argmax(-1, keepdim=True)).item() == pytest.approx(3 * 0.8)
    # f = (1/2, 1/2, 0), P = (0.3, 0.45, 0.25): 3 * (0.15 + 0.225)
    probs = torch.tensor([[0.5, 0.3, 0.2], [0.1, 0.6, 0.3]], requires_grad=True)
    loss = load_balance_loss(probs, probs.argmax(-1, keepdim=True))
    assert loss.item() == pytest.approx(1.125)
    loss.backward()  # the gradient flows through P only: E * f_e / B
    torch.testing.assert_close(probs.grad, torch.tensor([[0.75, 0.75, 0.0]] * 2))
    # top-2 dispatches (0, 1) and (1, 2): f = (1/4, 1/2, 1/4)
    top2 = load_balance_loss(probs.detach(), torch.tensor([[0, 1], [1, 2]]))
    assert top2.item() == pytest.approx(3 * (0.25 * 0.3 + 0.5 * 0.45 + 0.25 * 0.25))


def test_module_balance_loss_uses_its_routing():
    torch.manual_seed(0)
    for top_k in (0, 2):
        moe = make_moe(top_k=top_k)
        x, text, mask = inputs()
        out = moe(x, text, mask)
        chosen = out.router_probs.topk(top_k or 1, dim=-1).indices
        assert out.losses["moe_balance"].ndim == 0
        torch.testing.assert_close(out.losses["moe_balance"], load_balance_loss(out.router_probs, chosen))
        out.losses["moe_balance"].backward()
        assert moe.router.weight.grad.abs().sum() > 0


def test_bf16_autocast_keeps_router_in_fp32():
    torch.manual_seed(0)
    moe = make_moe(top_k=2)
    randomise_down_proj(moe)
    x, text, mask = inputs()
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = moe(x, text, mask)
    assert out.router_probs.dtype == torch.float32
    assert out.visual_tokens.dtype == torch.bfloat16 and torch.isfinite(out.visual_tokens).all()
    out.visual_tokens.float().sum().backward()
    assert moe.router.weight.grad is not None


def test_text_routing_beats_the_mlp_when_the_target_depends_on_the_language():
    """Two "languages" (prompt embeddings around two directions) map the same image tokens to different targets:
    the MLP alone can only fit their average, the routed MoE can fit both."""

    def train(model: torch.nn.Module) -> float:
        torch.manual_seed(1)
        direction = 2 * torch.randn(2, H)
        teacher = torch.randn(2, DV, H) / math.sqrt(DV)

        def batch(size: int = 32):
            lang = torch.randint(0, 2, (size,))
            x = torch.randn(size, N, DV)
            text = direction[lang, None, :] + 0.3 * torch.randn(size, L, H)
            return x, text, torch.einsum("bnd,bdh->bnh", x, teacher[lang])

        opt = torch.optim.Adam(model.parameters(), lr=1e-2)
        for _ in range(100):
            x, text, target = batch()
            loss = F.mse_loss(model(x, text).visual_tokens, target)
            opt.zero_grad()
            loss.backward()
            opt.step()
        with torch.no_grad():
            x, text, target = batch(256)
            return F.mse_loss(model(x, text).visual_tokens, target).item()

    cfg = BridgeConfig(num_experts=2, projector_hidden=16, expert_hidden=16)
    torch.manual_seed(0)
    mlp_loss = train(MLPProjector(cfg, DV, H))
    torch.manual_seed(0)
    moe_loss = train(MoEProjector(cfg, DV, H))
    assert moe_loss < 0.6 * mlp_loss
