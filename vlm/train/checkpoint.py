"""Atomic training checkpoints: trainable weights (safetensors) + optimizer, schedule, RNG and data position.

A checkpoint is written into a temporary folder and renamed into place, then `latest` is replaced
atomically, so a kill at any moment leaves the previous checkpoint intact and `latest` valid.
"""

from __future__ import annotations

import json
import os
import random
import shutil
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from vlm.config import InputError
from vlm.data.pipeline import StreamPosition

WEIGHTS = "trainable.safetensors"
STATE = "training_state.pt"
CONFIG = "config.json"
LATEST = "latest"


def rng_state() -> dict:
    state = {"torch": torch.get_rng_state(), "python": list(_encode_python_rng(random.getstate()))}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict) -> None:
    torch.set_rng_state(state["torch"])
    random.setstate(_decode_python_rng(state["python"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def _encode_python_rng(state: tuple) -> tuple:
    version, internal, gauss = state
    return version, torch.tensor(internal, dtype=torch.int64), gauss


def _decode_python_rng(state: list) -> tuple:
    version, internal, gauss = state
    return version, tuple(int(x) for x in internal.tolist()), gauss


def save_checkpoint(output_dir: Path, step: int, trainable: dict[str, torch.Tensor], optimizer_state: dict,
                    scheduler_state: dict, per_rank: list[dict], config_dict: dict, keep: int) -> Path:
    """Write `output_dir/checkpoints/step-XXXXXXX` atomically and point `latest` at it.

    `per_rank` holds each rank's RNG state and data-stream position, in rank order.
    """
    root = output_dir / "checkpoints"
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step-{step:07d}"
    tmp = root / f".tmp-step-{step:07d}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    save_file({k: v.contiguous().cpu() for k, v in trainable.items()}, str(tmp / WEIGHTS))
    torch.save({"step": step, "optimizer": optimizer_state, "scheduler": scheduler_state, "ranks": per_rank},
               tmp / STATE)
    (tmp / CONFIG).write_text(json.dumps(config_dict, indent=2, ensure_ascii=False) + "\n")
    if final.exists():
        shutil.rmtree(final)
    os.replace(tmp, final)
    pointer = root / f".{LATEST}.tmp"
    pointer.write_text(final.name + "\n")
    os.replace(pointer, root / LATEST)
    _prune(root, keep)
    return final


def _prune(root: Path, keep: int) -> None:
    done = sorted(p for p in root.glob("step-*") if p.is_dir())
    for old in done[:-keep]:
        shutil.rmtree(old, ignore_errors=True)


def latest_checkpoint(output_dir: Path) -> Path | None:
    pointer = output_dir / "checkpoints" / LATEST
    if not pointer.is_file():
        return None
    path = pointer.parent / pointer.read_text().strip()
    return path if path.is_dir() else None


def load_checkpoint(path: Path) -> tuple[dict[str, torch.Tensor], dict]:
    """(trainable weights, training state) of a checkpoint folder; a damaged file is one line naming it."""
    from vlm.model.vlm import check_weight_files  # local: the model module imports the data pipeline too

    check_weight_files(path)
    weights = load_file(str(path / WEIGHTS))
    try:
        state = torch.load(path / STATE, map_location="cpu", weights_only=True)
    except (RuntimeError, EOFError, OSError) as err:  # pickle/zip errors of a truncated file
        raise InputError(f"{path / STATE}: unreadable ({str(err).splitlines()[0]})") from None
    return weights, state


def position_to_dict(position: StreamPosition) -> dict:
    return {"batches": position.batches, "consumed": {str(k): v for k, v in position.consumed.items()}}


def position_from_dict(data: dict) -> StreamPosition:
    return StreamPosition(batches=int(data["batches"]), consumed={int(k): int(v) for k, v in data["consumed"].items()})


