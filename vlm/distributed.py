"""Process-group helpers: every call is guarded, so the same code runs as one process and under torchrun."""

from __future__ import annotations

import datetime
import os

import torch
import torch.distributed as dist
import torch.distributed.nn.functional as dist_fn


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    return dist.get_rank() if is_distributed() else 0


def world_size() -> int:
    return dist.get_world_size() if is_distributed() else 1


def is_main() -> bool:
    return rank() == 0


def launched_by_torchrun() -> bool:
    return "RANK" in os.environ and "WORLD_SIZE" in os.environ


def launch_world_size() -> int:
    """The number of ranks torchrun started (1 without torchrun), known before the process group exists."""
    return int(os.environ["WORLD_SIZE"]) if launched_by_torchrun() else 1


def init_distributed(timeout_s: float = 600.0) -> torch.device:
    """Join the torchrun process group and return this rank's device. On GPUs, NCCL for CUDA tensors and gloo for
    the few CPU ones (the trainer's flags and log sums); gloo alone on CPU. A collective that waits longer than
    `timeout_s` for a peer (train.dist_timeout_s) fails instead of hanging."""
    if torch.cuda.is_available():
        local_rank = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local_rank)
        device = torch.device("cuda", local_rank)
    else:
        device = torch.device("cpu")
    if launched_by_torchrun() and not is_distributed():
        backend = "cuda:nccl,cpu:gloo" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend, timeout=datetime.timedelta(seconds=timeout_s))
    return device


def shutdown() -> None:
    if is_distributed():
        dist.destroy_process_group()


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def gather_with_grad(x: torch.Tensor) -> torch.Tensor:
    """Concatenate `x` from every rank along dim 0; gradients flow back to each rank's own slice."""
    if not is_distributed():
        return x
    return torch.cat(dist_fn.all_gather(x), dim=0)


def all_gather(x: torch.Tensor) -> torch.Tensor:
    """Concatenate `x` from every rank along dim 0, without gradient (same shape on every rank)."""
    if not is_distributed():
        return x
    parts = [torch.empty_like(x) for _ in range(world_size())]
    dist.all_gather(parts, x.contiguous())
    return torch.cat(parts, dim=0)


def all_reduce_sum(x: torch.Tensor) -> torch.Tensor:
    if is_distributed():
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
    return x


def all_reduce_max(x: torch.Tensor) -> torch.Tensor:
    if is_distributed():
        dist.all_reduce(x, op=dist.ReduceOp.MAX)
    return x


def broadcast_object(obj):
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather_to_main(obj) -> list | None:
    """Every rank's `obj` (picklable; CPU tensors inside), in rank order, on rank 0; None on the others."""
    if not is_distributed():
        return [obj]
    parts = [None] * world_size() if is_main() else None
    dist.gather_object(obj, parts, dst=0)
    return parts


def all_gather_object(obj) -> list:
    """Every rank's `obj` (picklable), in rank order, on every rank."""
    if not is_distributed():
        return [obj]
    parts = [None] * world_size()
    dist.all_gather_object(parts, obj)
    return parts


def share_of_global_mean(local_count: torch.Tensor) -> torch.Tensor | None:
    """The factor that turns a rank's mean over its own `local_count` items (target tokens, say) into its share of
    the mean over every rank's items: local_count * world / global_count. Averaging the scaled means over ranks (as
    the logs do, and DDP and FSDP2 do with gradients) then gives the mean over the global batch, as one process
    would compute it; unscaled, ranks with few tokens would weigh as much as ranks with many. None on one process
    (no scaling at all, so its numbers stay bit for bit what they were)."""
    if not is_distributed():
        return None
    count = local_count.detach().to(torch.float64)
    total = all_reduce_sum(count.clone())
    return (count * world_size() / total.clamp(min=1.0)).to(torch.float32)
