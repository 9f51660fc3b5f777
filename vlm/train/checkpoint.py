"""Training checkpoints through torch.distributed.checkpoint (DCP): sharded, resharded on load, atomic.

    output_dir/checkpoints/step-0000500/
        .metadata, __0_0.distcp, ...   the trainable weights (network and objective) and the optimizer state,
                                       written by every rank in parallel (a shared filesystem across nodes)
        training_state.pt              step, schedule, the run's layout (ranks, loader workers, global batch),
                                       each rank's RNG state and data position
        config.json                    the run's resolved config
    output_dir/checkpoints/latest      the name of the newest complete checkpoint

A checkpoint is written into a staging folder, fsynced and renamed into place, then `latest` is replaced
atomically, so a kill at any moment leaves the previous checkpoint intact and `latest` valid; a `latest` naming no
checkpoint is an error, never a fresh start. Tensors are keyed by parameter names without any strategy's wrapper
prefix, so a checkpoint of one strategy and world size loads into another; frozen weights are never written.

Resuming with the ranks and loader workers a checkpoint was written with continues exactly (bit for bit). With
another layout, the weights, optimizer and schedule continue as saved, the data stream starts a fresh pass
(`StreamPosition.next_pass`) and ranks the checkpoint did not have get fresh RNG streams seeded by
(train.seed, step, rank); with `train.keep_global_batch` the global batch must stay what it was.
"""

from __future__ import annotations

import json
import pickle
import random
import shutil
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
import torch.distributed.checkpoint as dcp
from torch.distributed.checkpoint.api import CheckpointException
from torch.distributed.checkpoint.state_dict import (
    get_model_state_dict,
    set_model_state_dict,
)

from vlm import distributed
from vlm.config import Config, InputError, check_paths, config_from_dict, first_line
from vlm.data.stream import StreamPosition
from vlm.folders import atomic_file, publish_folder, staging_folder
from vlm.model.vlm import VisionLLM
from vlm.objective.objective import Objective
from vlm.train.safe_dcp import SafeLoadPlanner, SafeReader
from vlm.train.strategies.base import LOAD_OPTIONS, STATE_DICT_OPTIONS, Strategy

STATE = "training_state.pt"
CONFIG = "config.json"
LATEST = "latest"
METADATA = ".metadata"  # DCP's index of a checkpoint's tensors
# What must match for a checkpoint's weights to mean anything to a model: its parts and which terms it trains.
ARCHITECTURE_KEYS = {
    "vision": ("name", "layer", "include_cls"),
    "bridge": None,  # every key
    "llm": ("name", "kind", "lora_r", "lora_targets", "train_embeddings"),
}


def _dcp(call, state: dict, path: Path) -> None:
    """dcp.save or dcp.load, without the warning DCP gives on every call in one process (a supported layout);
    loads go through the reader and planner that never execute a pickle."""
    loading = call is dcp.load
    extra = {"storage_reader": SafeReader(str(path)), "planner": SafeLoadPlanner()} if loading else {}
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled", category=UserWarning)
        try:
            call(state, checkpoint_id=str(path), no_dist=not distributed.is_distributed(), **extra)
        except CheckpointException as err:  # DCP's per-rank tracebacks; the shapes were checked before loading
            if not loading:
                raise
            causes = [cause for cause, _ in err.failures.values()]
            refused = any(isinstance(cause, pickle.UnpicklingError) for cause in causes)
            reason = "an entry holds objects other than tensors and plain values, refused" if refused else (
                f"{type(causes[0]).__name__}: {first_line(causes[0])}")
            raise InputError(f"{path}: cannot load the checkpoint ({reason})") from None


# --- RNG -------------------------------------------------------------------------------------------


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


# --- the run's layout --------------------------------------------------------------------------------


@dataclass(frozen=True)
class Layout:
    """How a run's work is split: ranks, loader workers per rank (the stream's roles), and the global batch."""

    world_size: int
    num_roles: int
    global_batch: int

    @classmethod
    def of(cls, cfg: Config, world_size: int) -> Layout:
        return cls(world_size, max(cfg.data.num_workers, 1),
                   world_size * cfg.train.batch_size * cfg.train.grad_accum)


@dataclass
class Resume:
    """Where a resumed run starts: the checkpoint, its step, and this rank's RNG state and data position."""

    path: Path
    step: int
    scheduler: dict
    rng: dict | None  # None: a rank the checkpoint did not have (seeded afresh)
    position: StreamPosition
    same_layout: bool


def plan_resume(output_dir: Path, cfg: Config, rank: int, world_size: int) -> Resume | None:
    """Read the latest checkpoint's training state (no tensors) and decide how this rank resumes; every problem
    (another architecture, a changed global batch, a damaged file) is one line naming it, raised before anything
    is built."""
    path = latest_checkpoint(output_dir)
    if path is None:
        return None
    check_architecture(path, cfg)
    read_tensor_index(path)
    state = read_training_state(path)
    saved, now = Layout(**state["layout"]), Layout.of(cfg, world_size)
    if cfg.train.keep_global_batch and saved.global_batch != now.global_batch:
        raise InputError(
            f"{path} was trained with a global batch of {saved.global_batch} ({saved.world_size} ranks x "
            f"batch_size x grad_accum); this run's is {now.global_batch} ({world_size} x {cfg.train.batch_size} x "
            f"{cfg.train.grad_accum}): set train.grad_accum or train.batch_size to keep it, or "
            f"train.keep_global_batch=false")
    ranks = state["ranks"]
    same = (saved.world_size, saved.num_roles) == (now.world_size, now.num_roles)
    if same:
        position = StreamPosition.from_dict(ranks[rank]["data"])
    else:
        position = StreamPosition.next_pass([StreamPosition.from_dict(r["data"]) for r in ranks])
    rng = ranks[rank]["rng"] if rank < len(ranks) else None
    return Resume(path, int(state["step"]), state["scheduler"], rng, position, same)


def check_architecture(path: Path, cfg: Config) -> None:
    """The checkpoint's saved config names the same parts as `cfg` (and the same trained terms), or one line
    says which key differs."""
    saved = json.loads((path / CONFIG).read_text())
    ours = cfg.to_dict()
    for section, keys in ARCHITECTURE_KEYS.items():
        for key in keys or ours[section]:
            if saved.get(section, {}).get(key) != ours[section][key]:
                raise InputError(f"{path} is a checkpoint of another architecture: {section}.{key} is "
                                 f"{saved.get(section, {}).get(key)!r} there and {ours[section][key]!r} here")
    trained = {k for k, v in saved.get("loss", {}).items() if k.endswith("_weight") and v > 0}
    training = {k for k, v in ours["loss"].items() if k.endswith("_weight") and v > 0}
    if trained != training:
        raise InputError(f"{path} trained the loss terms {sorted(trained)}, this config trains {sorted(training)}: "
                         "their heads and temperatures differ")


# --- writing ---------------------------------------------------------------------------------------


def save_checkpoint(output_dir: Path, step: int, strategy: Strategy, optimizer: torch.optim.Optimizer,
                    scheduler_state: dict, position: StreamPosition, cfg: Config, layout: Layout) -> Path | None:
    """Write `output_dir/checkpoints/step-XXXXXXX` atomically and point `latest` at it. A collective: every rank
    calls it with its own data position; rank 0 returns the path, the others None."""
    root = output_dir / "checkpoints"
    final = root / f"step-{step:07d}"
    tmp = staging_folder(final) if distributed.is_main() else None
    if tmp is not None:
        tmp.mkdir(parents=True)
    tmp = Path(distributed.broadcast_object(str(tmp)))
    _dcp(dcp.save, strategy.state_dicts(optimizer), tmp)
    ranks = distributed.all_gather_object({"rng": rng_state(), "data": position.to_dict()})
    path = None
    if distributed.is_main():
        torch.save({"step": step, "scheduler": scheduler_state, "ranks": ranks, "layout": vars(layout)},
                   tmp / STATE)
        (tmp / CONFIG).write_text(json.dumps(cfg.to_dict(), indent=2, ensure_ascii=False) + "\n")
        # fsyncs every file, then the rename (DCP's FileSystemWriter already synced its shards: sync_files=True)
        path = publish_folder(tmp, final)
        with atomic_file(root / LATEST) as pointer:
            pointer.write_text(final.name + "\n")
        _prune(root, cfg.train.keep_checkpoints)
    distributed.barrier()
    return path


def _prune(root: Path, keep: int) -> None:
    """Keep the newest `keep` checkpoints; remove any staging or moved-aside folder a killed save left behind."""
    done = sorted(p for p in root.glob("step-*") if p.is_dir())
    for old in done[:-keep] + list(root.glob(".step-*")):
        shutil.rmtree(old, ignore_errors=True)


# --- reading ---------------------------------------------------------------------------------------


def latest_checkpoint(output_dir: Path) -> Path | None:
    """The checkpoint `checkpoints/latest` names; None before the first save. A `latest` naming no checkpoint
    (one deleted or copied without its folder) is an error: resuming must never silently start afresh."""
    pointer = Path(output_dir) / "checkpoints" / LATEST
    if not pointer.is_file():
        return None
    path = pointer.parent / pointer.read_text().strip()
    if not (path / METADATA).is_file():
        what = f"not a checkpoint (no {METADATA})" if path.is_dir() else "missing"
        raise InputError(f"{pointer} names {path}, which is {what}: point it at an existing step-* folder "
                         "or remove it")
    return path


def resolve_checkpoint(path: str | Path) -> Path:
    """A checkpoint folder, or a run folder whose `checkpoints/latest` is used."""
    path = Path(path)
    if (path / METADATA).is_file():
        return path
    latest = latest_checkpoint(path)
    if latest is None:
        raise FileNotFoundError(f"{path}: neither a checkpoint nor a run folder with checkpoints/latest")
    return latest


def read_training_state(path: Path) -> dict:
    try:
        return torch.load(path / STATE, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError:  # weights_only refused a global: a crafted file (torch's hint would say unsafe)
        raise InputError(f"{path / STATE}: refused, it holds objects other than tensors and plain values") from None
    except (RuntimeError, EOFError, OSError) as err:  # pickle/zip errors of a truncated file
        raise InputError(f"{path / STATE}: unreadable ({str(err).splitlines()[0]})") from None


def read_tensor_index(path: Path) -> dict:
    """The names and shapes of a checkpoint's tensors (its DCP metadata: no tensor is read); a missing or damaged
    index is one line naming it."""
    try:
        return SafeReader(str(path)).read_metadata().state_dict_metadata
    except Exception as err:  # noqa: BLE001 - a missing or damaged .metadata: pickle, OS and value errors
        raise InputError(f"{path / METADATA}: unreadable ({type(err).__name__}: {err})") from None


def _check_tensors(path: Path, state: dict) -> None:
    """Every tensor the model expects is in the checkpoint with the same shape (DCP's own error would not name
    the checkpoint), read from its metadata alone."""
    saved = read_tensor_index(path)
    for name, tensor in state["model"].items():
        found = saved.get(f"model.{name}")
        if found is None or tuple(found.size) != tuple(tensor.shape):
            where = "missing" if found is None else f"{tuple(found.size)} there"
            raise InputError(f"{path} does not match this model: model.{name} is {where}, "
                             f"{tuple(tensor.shape)} here")


def load_checkpoint(path: Path, strategy: Strategy, optimizer: torch.optim.Optimizer) -> None:
    """The trainable weights and optimizer state of `path` into the (wrapped) objective and its optimizer,
    resharded to this run's strategy and world size."""
    state = strategy.state_dicts(optimizer)
    _check_tensors(path, state)
    _dcp(dcp.load, state, path)
    strategy.load_state_dicts(optimizer, state)


def load_trained_model(path: str | Path, cfg: Config | None = None) -> VisionLLM:
    """A run's or checkpoint's trained network, in one process, in eval mode."""
    return load_trained_objective(path, cfg).model.eval()


def load_trained_objective(path: str | Path, cfg: Config | None = None) -> Objective:
    """A run's or checkpoint's trained network and objective, in one process: built from the checkpoint's config
    (or `cfg`), the pretrained parts loaded, then the trained weights read from the checkpoint's shards."""
    folder = resolve_checkpoint(path)
    if cfg is None:
        cfg = config_from_dict(json.loads((folder / CONFIG).read_text()))
    check_paths(cfg)
    read_tensor_index(folder)  # a damaged checkpoint fails before any model is built
    # Built on the meta device: the checkpoint overwrites every new part, so nothing is initialised twice.
    objective = Objective(VisionLLM(cfg, device="meta").load_weights())
    state = {"model": get_model_state_dict(objective, options=STATE_DICT_OPTIONS)}
    _check_tensors(folder, state)
    _dcp(dcp.load, state, folder)
    set_model_state_dict(objective, state["model"], options=LOAD_OPTIONS)
    return objective
