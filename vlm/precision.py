"""Precision, decided in one place: the dtype the frozen LLM weights are held in (`llm.dtype`) and whether
training (`train.precision`) and evaluation (`eval.precision`) run under bf16 autocast.

"auto" means bf16 on a GPU and fp32 on a CPU, where bf16 matmuls are about 2x slower than fp32
(shared/reference/machine_probe.md section 4).
"""

from __future__ import annotations

import contextlib

import torch

_DTYPES = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}


def _gpu(device: torch.device | str | None) -> bool:
    if device is None:
        return torch.cuda.is_available()
    return torch.device(device).type == "cuda"


def weight_dtype(name: str, device: torch.device | str | None = None) -> torch.dtype:
    """`llm.dtype` (auto | float32 | bfloat16 | float16) for weights that will live on `device` (default: a GPU
    when there is one)."""
    if name == "auto":
        return torch.bfloat16 if _gpu(device) else torch.float32
    return _DTYPES[name]


def uses_bf16_autocast(setting: str, device: torch.device | str) -> bool:
    """`train.precision` / `eval.precision` (auto | fp32 | bf16) on `device`."""
    return setting == "bf16" or (setting == "auto" and _gpu(device))


def autocast(setting: str, device: torch.device | str) -> contextlib.AbstractContextManager:
    """bf16 autocast when `setting` asks for it on `device`, else a no-op context."""
    device = torch.device(device)
    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=uses_bf16_autocast(setting, device))


def describe(setting: str, device: torch.device | str) -> str:
    return "bf16 autocast" if uses_bf16_autocast(setting, device) else "fp32"
