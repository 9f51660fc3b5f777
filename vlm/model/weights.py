"""Moving pretrained tensors into a model that was built without them (the weights step of a build)."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


def copy_tensors(source: nn.Module, target: nn.Module, rename: Callable[[str], str] = lambda name: name,
                 skip: Callable[[str], bool] = lambda name: False) -> None:
    """Copy every parameter and buffer of `source` (non-persistent buffers too: no state dict holds them) into
    the tensor of `target` named `rename(name)`, skipping the target's names where `skip` holds (e.g. adapter
    weights the source lacks). `target` has the same architecture and may have just been materialised with
    `to_empty`; a tensor shared by two names (tied embeddings) is copied once per name, which is harmless."""
    theirs = {**dict(source.named_parameters(remove_duplicate=False)),
              **dict(source.named_buffers(remove_duplicate=False))}
    mine = {name: tensor for name, tensor in {**dict(target.named_parameters(remove_duplicate=False)),
                                              **dict(target.named_buffers(remove_duplicate=False))}.items()
            if not skip(name)}
    wanted = {rename(name): name for name in mine}
    if set(wanted) != set(theirs):
        odd = sorted(set(wanted) ^ set(theirs))[:3]
        raise ValueError(f"{type(target).__name__}: the pretrained weights do not match the built model ({odd})")
    with torch.no_grad():
        for source_name, name in wanted.items():
            mine[name].copy_(theirs[source_name])
