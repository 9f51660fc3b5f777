"""The frozen image encoder in transformers' Blip2VisionModel layout, for `vlm export --format hf-blip2`.

Blip2VisionModel is EVA's ViT as BLIP-2 uses it: patch conv (with bias) + class token + absolute positions,
no LayerNorm before the blocks, pre-norm blocks whose fused qkv has q and v biases only, a GELU MLP, and one
final LayerNorm (our Q-Former's ln_vision). Two trunks fit it exactly:

    timm EVA (open_clip's EVA01-g-14, BLIP-2's and mBLIP's encoder): the same parameters under other names;
    open_clip's own ViT built with `no_ln_pre: true`: nn.MultiheadAttention's k bias is dropped, which changes
    nothing (q.b_k is the same for every key of a query, and softmax ignores a shift); LayerScale is folded
    into the output projections.

Anything else (ln_pre, RoPE, SwiGLU, register tokens, qk-norm) has no place in that class and is refused in
one line naming the part. Only the blocks up to `vision.layer` are kept: BLIP-2's vision model ends where
our tokens are taken. Its post_layernorm shares the blocks' eps: EVA's 1e-6 where our ln_vision has torch's
1e-5 (LAVIS and transformers' BLIP-2 differ the same way), a difference a trained trunk's scale hides.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import nn

from vlm.config import ConfigError
from vlm.model.vision import ImageEncoder

_ACTIVATIONS = {("GELU", "none"): "gelu", ("GELU", "tanh"): "gelu_pytorch_tanh", ("QuickGELU", None): "quick_gelu"}


@dataclass
class VisionTower:
    """The BLIP-2 vision weights (Blip2VisionModel keys, without the `vision_model.` prefix) and config."""

    state: dict[str, torch.Tensor] = field(default_factory=dict)
    config: dict = field(default_factory=dict)


def check_architecture(architecture: dict) -> None:
    """What the open_clip config alone tells (before any weights load): its own ViT needs `no_ln_pre`."""
    vision = architecture.get("vision_cfg", {})
    if not vision.get("timm_model_name") and not vision.get("no_ln_pre"):
        raise _refuse(_LN_PRE)


_LN_PRE = "has a LayerNorm before its blocks (ln_pre; open_clip's `no_ln_pre: true` removes it)"


def _refuse(what: str) -> ConfigError:
    return ConfigError(f"--format hf-blip2: the image encoder {what}, which Blip2VisionModel has no place for "
                       "(it fits timm EVA trunks and open_clip ViTs built with no_ln_pre); export --format native")


def _activation(module: nn.Module) -> str:
    key = (type(module).__name__, getattr(module, "approximate", None))
    if key not in _ACTIVATIONS:
        raise _refuse(f"uses a {key[0]} activation")
    return _ACTIVATIONS[key]


def _block(tower: VisionTower, i: int, norms: tuple[nn.LayerNorm, nn.LayerNorm], qkv_weight: torch.Tensor,
           q_bias: torch.Tensor, v_bias: torch.Tensor, proj: nn.Linear, fc1: nn.Linear, fc2: nn.Linear,
           gammas: tuple[torch.Tensor | None, torch.Tensor | None]) -> None:
    """One encoder layer; a LayerScale gamma multiplies the output projection's rows and bias."""
    prefix = f"encoder.layers.{i}."
    s = tower.state
    for name, norm in zip(("layer_norm1", "layer_norm2"), norms):
        s[prefix + name + ".weight"], s[prefix + name + ".bias"] = norm.weight, norm.bias
    s[prefix + "self_attn.qkv.weight"] = qkv_weight
    s[prefix + "self_attn.qkv.bias"] = torch.cat([q_bias, torch.zeros_like(q_bias), v_bias])
    for name, linear, gamma in (("self_attn.projection", proj, gammas[0]), ("mlp.fc2", fc2, gammas[1])):
        scale = gamma if gamma is not None else torch.ones_like(linear.bias)
        s[prefix + name + ".weight"] = linear.weight * scale[:, None]
        s[prefix + name + ".bias"] = linear.bias * scale
    s[prefix + "mlp.fc1.weight"], s[prefix + "mlp.fc1.bias"] = fc1.weight, fc1.bias


def _open_clip_vit(visual: nn.Module, layers: int) -> VisionTower:
    from open_clip.transformer import LayerScale, ResidualAttentionBlock

    if not isinstance(visual.ln_pre, nn.Identity):
        raise _refuse(_LN_PRE)
    blocks = visual.transformer.resblocks[:layers]
    first = blocks[0]
    if not all(type(b) is ResidualAttentionBlock and isinstance(b.attn, nn.MultiheadAttention) for b in blocks):
        raise _refuse(f"has {type(first).__name__} blocks with custom attention (qk-norm, scaled cosine)")
    width = visual.transformer.width
    tower = VisionTower()
    tower.state.update({
        "embeddings.class_embedding": visual.class_embedding.reshape(1, 1, width),
        "embeddings.position_embedding": visual.positional_embedding.unsqueeze(0),
        "embeddings.patch_embedding.weight": visual.conv1.weight,
        "embeddings.patch_embedding.bias": torch.zeros(width, dtype=visual.conv1.weight.dtype),
    })
    for i, b in enumerate(blocks):
        gammas = tuple(ls.gamma if isinstance(ls, LayerScale) else None for ls in (b.ls_1, b.ls_2))
        q_bias, _, v_bias = b.attn.in_proj_bias.chunk(3)
        _block(tower, i, (b.ln_1, b.ln_2), b.attn.in_proj_weight, q_bias, v_bias, b.attn.out_proj,
               b.mlp.c_fc, b.mlp.c_proj, gammas)
    image_size, patch_size = visual.image_size, visual.patch_size
    tower.config = dict(hidden_size=width, intermediate_size=first.mlp.c_fc.out_features,
                        num_attention_heads=first.attn.num_heads, hidden_act=_activation(first.mlp.gelu),
                        layer_norm_eps=first.ln_1.eps, image_size=image_size, patch_size=patch_size)
    return tower


def _timm_eva(trunk: nn.Module, layers: int) -> VisionTower:
    checks = (
        (not isinstance(trunk.norm_pre, nn.Identity), "has a LayerNorm before its blocks"),
        (trunk.rope is not None, "uses rotary position embeddings (EVA02)"),
        (trunk.pos_embed is None or trunk.no_embed_class, "has no absolute position for its class token"),
        (trunk.cls_token is None or trunk.num_prefix_tokens != 1, "has register tokens or no class token"),
    )
    for failed, what in checks:
        if failed:
            raise _refuse(what)
    blocks = trunk.blocks[:layers]
    first = blocks[0]
    for b in blocks:
        attn = b.attn
        if type(b).__name__ != "EvaBlock" or not hasattr(b.mlp, "fc1") or not hasattr(b.mlp, "fc2"):
            raise _refuse(f"has {type(b).__name__} blocks with a {type(b.mlp).__name__} MLP (EVA02's SwiGLU)")
        if not all(isinstance(m, nn.Identity) for m in (attn.q_norm, attn.k_norm, attn.norm)) or attn.gate is not None:
            raise _refuse("normalises or gates its attention (qk-norm, scale-norm)")
        if attn.head_dim * attn.num_heads != b.norm1.normalized_shape[0]:
            raise _refuse("has an attention head width other than width / heads")
    width = first.norm1.normalized_shape[0]
    patch = trunk.patch_embed.proj
    tower = VisionTower()
    tower.state.update({
        "embeddings.class_embedding": trunk.cls_token,
        "embeddings.position_embedding": trunk.pos_embed,
        "embeddings.patch_embedding.weight": patch.weight,
        "embeddings.patch_embedding.bias": patch.bias if patch.bias is not None else torch.zeros(width),
    })
    for i, b in enumerate(blocks):
        attn = b.attn
        if attn.qkv is not None:
            qkv = attn.qkv.weight
            zeros = torch.zeros(width, dtype=qkv.dtype)
            q_bias = attn.q_bias if attn.q_bias is not None else zeros
            v_bias = attn.v_bias if attn.v_bias is not None else zeros
        else:  # separate q/k/v projections
            qkv = torch.cat([attn.q_proj.weight, attn.k_proj.weight, attn.v_proj.weight])
            zeros = torch.zeros(width, dtype=qkv.dtype)
            q_bias = attn.q_proj.bias if attn.q_proj.bias is not None else zeros
            v_bias = attn.v_proj.bias if attn.v_proj.bias is not None else zeros
        _block(tower, i, (b.norm1, b.norm2), qkv, q_bias, v_bias, attn.proj, b.mlp.fc1, b.mlp.fc2,
               (b.gamma_1, b.gamma_2))
    image_size, patch_size = trunk.patch_embed.img_size, trunk.patch_embed.patch_size
    tower.config = dict(hidden_size=width, intermediate_size=first.mlp.fc1.out_features,
                        num_attention_heads=first.attn.num_heads, hidden_act=_activation(first.mlp.act),
                        layer_norm_eps=first.norm1.eps, image_size=image_size, patch_size=patch_size)
    return tower


def blip2_vision_tower(encoder: ImageEncoder) -> VisionTower:
    """The encoder's blocks up to `vision.layer` as Blip2VisionModel weights and config (`qkv_bias` on)."""
    visual, layers = encoder.visual, encoder.layer_index + 1
    if hasattr(visual, "transformer"):
        tower = _open_clip_vit(visual, layers)
    elif type(getattr(visual, "trunk", None)).__name__ == "Eva":
        tower = _timm_eva(visual.trunk, layers)
    else:
        raise _refuse(f"is a {type(getattr(visual, 'trunk', visual)).__name__}")
    for key in ("image_size", "patch_size"):
        value = tower.config[key]
        if isinstance(value, (tuple, list)):
            if len(set(value)) != 1:
                raise _refuse(f"has a non-square {key} {tuple(value)}")
            tower.config[key] = value[0]
    tower.config.update(num_hidden_layers=layers, qkv_bias=True)
    tower.state = {k: v.detach().float().contiguous().clone() for k, v in tower.state.items()}
    return tower
