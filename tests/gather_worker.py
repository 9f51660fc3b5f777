"""Run under a 2-process torchrun (gloo, CPU) by test_losses.py.

Every rank builds the same seeded full batch, takes its own slice as fresh leaf tensors, computes the losses on
the local slice against the features gathered with `distributed.gather_with_grad`, backpropagates, and saves its
losses, its slice gradients and its logit-scale gradients to <out_dir>/rank<r>.pt for the test to compare with
one process on the full batch. `make_batch` and `make_losses` are imported by the test, so both sides agree.
"""

from __future__ import annotations

import sys
from pathlib import Path

import torch
import torch.distributed as dist
import torch.nn.functional as F

from vlm import distributed
from vlm.objective.losses import ContrastiveLoss, ItcLoss

PER_RANK = 3  # B
QUERIES = 4  # Q
DIM = 5  # D
# image ids for the "duplicates" ItcLoss run (6 = 2 ranks x 3): id 7 repeats across ranks, id 2 within rank 1
DUPLICATE_IDS = [7, 1, 5, 2, 7, 2]


def make_batch(world_size: int) -> dict[str, torch.Tensor]:
    """The full batch of world_size * PER_RANK pairs, float64, identical on every rank (seeded)."""
    g = torch.Generator().manual_seed(1234)
    n = world_size * PER_RANK
    return {
        "queries": F.normalize(torch.randn(n, QUERIES, DIM, generator=g, dtype=torch.float64), dim=-1),
        "pooled": F.normalize(torch.randn(n, DIM, generator=g, dtype=torch.float64), dim=-1),
        "texts": F.normalize(torch.randn(n, DIM, generator=g, dtype=torch.float64), dim=-1),
    }


def make_losses() -> dict[str, torch.nn.Module]:
    """Fresh loss modules in float64 (the logit scale too); temperatures away from the clamp so they get grad."""
    return {
        "clip": ContrastiveLoss(init_temperature=0.2, max_logit_scale=100.0).double(),
        "itc": ItcLoss(init_temperature=0.1, max_logit_scale=100.0, label_smoothing=0.1).double(),
        "itc_dup": ItcLoss(init_temperature=0.1, max_logit_scale=100.0, label_smoothing=0.1).double(),
    }


def run_losses(batch: dict[str, torch.Tensor], ids: torch.Tensor) -> dict[str, torch.Tensor]:
    """Compute each loss on `batch` (leaves with requires_grad), backpropagate each one on its own and return the
    losses and gradients. Used on the local slice by the worker and on the full batch by the test."""
    out: dict[str, torch.Tensor] = {}
    losses = make_losses()
    runs = {
        "clip": lambda: losses["clip"](batch["pooled"], batch["texts"]),
        "itc": lambda: losses["itc"](batch["queries"], batch["texts"]).loss,
        "itc_dup": lambda: losses["itc_dup"](batch["queries"], batch["texts"], ids).loss,
    }
    for name, run in runs.items():
        for t in batch.values():
            t.grad = None
        loss = run()
        loss.backward()
        out[f"{name}/loss"] = loss.detach()
        out[f"{name}/logit_scale_grad"] = losses[name].logit_scale.grad.detach().clone()
        for key in ("queries", "texts") if name != "clip" else ("pooled", "texts"):
            out[f"{name}/{key}_grad"] = batch[key].grad.detach().clone()
    return out


def main() -> None:
    out_dir = Path(sys.argv[1])
    dist.init_process_group("gloo")
    rank, world = distributed.rank(), distributed.world_size()
    full = make_batch(world)
    local = {k: v[rank * PER_RANK:(rank + 1) * PER_RANK].clone().requires_grad_(True) for k, v in full.items()}
    ids = torch.tensor(DUPLICATE_IDS[rank * PER_RANK:(rank + 1) * PER_RANK])
    result = run_losses(local, ids)
    result["rank"] = torch.tensor(rank)
    result["world_size"] = torch.tensor(world)
    torch.save(result, out_dir / f"rank{rank}.pt")
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
