"""Image-text retrieval recall (R@k) and its chance level.

Naming follows the CLIP paper, not CLIP_benchmark: ``i2t`` = query an image, retrieve texts;
``t2i`` = query a text, retrieve images. All values are percentages (0-100).
"""

from collections.abc import Sequence
from math import comb

import torch

DEFAULT_KS: tuple[int, ...] = (1, 5, 10)


def _check_ks(ks: Sequence[int]) -> None:
    if not ks or any(not isinstance(k, int) or k < 1 for k in ks):
        raise ValueError(f"ks must be positive integers, got {ks!r}")


def recall_at_k(
    sim: torch.Tensor, text_to_image: torch.Tensor, ks: Sequence[int] = DEFAULT_KS
) -> dict[str, float]:
    """Recall@k in both directions from an (n_images, n_texts) similarity matrix.

    ``text_to_image[j]`` is the image that text j describes; an image may own several texts.
    A query hits at k when its best-scoring positive ranks within the top k. Ties are broken
    against the model: rank = 1 + #negatives scoring >= the best positive, so a collapsed
    model (all scores equal) gets no hits instead of hits decided by index order.

    Returns ``{"i2t_r{k}": pct, ..., "t2i_r{k}": pct, ...}``.
    """
    _check_ks(ks)
    if sim.dim() != 2:
        raise ValueError(f"sim must be 2-D (n_images, n_texts), got shape {tuple(sim.shape)}")
    n_images, n_texts = sim.shape
    if sim.numel() == 0:
        raise ValueError(f"sim is empty, shape {tuple(sim.shape)}")
    if text_to_image.shape != (n_texts,):
        raise ValueError(
            f"text_to_image must have shape ({n_texts},) to match sim, got {tuple(text_to_image.shape)}"
        )
    if text_to_image.is_floating_point() or text_to_image.is_complex():
        raise ValueError(f"text_to_image must hold integer indices, got dtype {text_to_image.dtype}")
    if (text_to_image.min() < 0 or text_to_image.max() >= n_images):
        raise ValueError(f"text_to_image values must lie in [0, {n_images}), got {text_to_image.tolist()}")
    sim = sim.float()
    # NaN compares False with everything, which would silently count as a win for the positive.
    if torch.isnan(sim).any():
        raise ValueError("sim contains NaN")

    text_to_image = text_to_image.to(device=sim.device, dtype=torch.long)
    positive = text_to_image.unsqueeze(0) == torch.arange(n_images, device=sim.device).unsqueeze(1)
    if not positive.any(dim=1).all():
        orphan = int((~positive.any(dim=1)).nonzero()[0])
        raise ValueError(f"image {orphan} has no text in text_to_image; i2t recall is undefined for it")

    # t2i: each text has exactly one positive image.
    pos_t2i = sim.gather(0, text_to_image.unsqueeze(0))  # (1, n_texts)
    rank_t2i = (sim >= pos_t2i).sum(dim=0)  # counts the positive itself, so this is 1 + #negatives
    # i2t: the best of an image's texts decides the hit ("any text in top k").
    best_pos_i2t = sim.masked_fill(~positive, float("-inf")).amax(dim=1, keepdim=True)  # (n_images, 1)
    rank_i2t = 1 + ((sim >= best_pos_i2t) & ~positive).sum(dim=1)

    out: dict[str, float] = {}
    for name, rank in (("i2t", rank_i2t), ("t2i", rank_t2i)):
        for k in ks:
            out[f"{name}_r{k}"] = 100.0 * (rank <= k).float().mean().item()
    return out


def chance_recall(
    n_images: int, n_texts_per_image: int | Sequence[int] = 1, ks: Sequence[int] = DEFAULT_KS
) -> dict[str, float]:
    """Expected R@k of random scores, the floor every recall_at_k number should be read against.

    t2i: one positive among n_images, so k / n_images. i2t: an image with m positives among all texts T
    misses with probability C(T - m, k) / C(T, k); with per-image counts (a list, one per image) the
    chance is averaged over the images. Returns ``{"chance_i2t_r{k}": pct, ..., "chance_t2i_r{k}": pct, ...}``.
    """
    _check_ks(ks)
    counts = [n_texts_per_image] * n_images if isinstance(n_texts_per_image, int) else list(n_texts_per_image)
    if n_images < 1 or len(counts) != n_images or min(counts) < 1:
        raise ValueError(
            f"need n_images >= 1 and one count >= 1 per image, got {n_images} images and counts {counts[:5]}"
        )
    n_texts = sum(counts)
    out: dict[str, float] = {}
    for k in ks:
        # math.comb returns 0 when k > n_texts - m, giving a certain hit as it should.
        misses = [comb(n_texts - m, k) / comb(n_texts, k) if k <= n_texts else 0.0 for m in counts]
        out[f"chance_i2t_r{k}"] = 100.0 * (1.0 - sum(misses) / n_images)
    for k in ks:
        out[f"chance_t2i_r{k}"] = 100.0 * min(k / n_images, 1.0)
    return out
