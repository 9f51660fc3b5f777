"""One training step of the objective, traced on the meta device: the live tensor bytes at every op (the peak an
allocator that frees on time would see) and the FLOPs, per phase.

The step is the trainer's: the objective's forward under (emulated) autocast, the backward, gradient clipping
and AdamW's step (vlm/train/trainer.py), with `build_optimizer`'s parameter groups, and with activation
checkpointing applied as vlm/train/strategies/base.py applies it: torch's composable `checkpoint` on each of
`model.shard_units()`. The step is traced in its steady state: the AdamW state exists, and the gradients are held
through the forward, as in every micro-step of an accumulation after the first (for grad_accum 1 this counts the
gradients up to one step early, an overestimate of at most their size).

Memory is counted by storage (meta tensors have no data pointer, but each storage its own StorageImpl), held by
weak references, so that a tensor counts from the op that makes it until the last reference to it goes.
"""

from __future__ import annotations

import contextlib
import weakref
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field

import torch
from torch.distributed._composable import checkpoint
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten
from torch.utils.flop_counter import flop_registry

from vlm.config import Config
from vlm.objective.objective import Objective
from vlm.plan.inputs import Workload, synthetic_inputs
from vlm.plan.meta_patches import meta_compatible
from vlm.plan.target_ops import TargetOps
from vlm.train.trainer import build_optimizer

PHASES = ("encoder", "forward", "backward", "recompute", "optimizer")


class StepMeter(TorchDispatchMode):
    """Live bytes (current and peak per phase) and FLOPs per phase of everything that runs under it."""

    def __init__(self):
        super().__init__()
        self.phase = "forward"
        self.current = 0
        self.peaks: dict[str, int] = defaultdict(int)
        self.flops: dict[str, int] = defaultdict(int)
        self._live: dict[int, int] = {}

    def hold(self, tensors: Iterable[torch.Tensor]) -> None:
        """Count tensors that exist before the step (weights, gradients, optimizer state)."""
        for tensor in tensors:
            self._add(tensor)

    @contextlib.contextmanager
    def phase_of(self, phase: str) -> Iterator[None]:
        previous, self.phase = self.phase, phase
        self.peaks[phase] = max(self.peaks[phase], self.current)
        try:
            yield
        finally:
            self.phase = previous

    def _add(self, tensor: torch.Tensor) -> None:
        storage = tensor.untyped_storage()
        key = storage._cdata
        if key in self._live:
            return
        self._live[key] = storage.nbytes()
        self.current += self._live[key]
        weakref.finalize(storage, self._free, key)

    def _free(self, key: int) -> None:
        self.current -= self._live.pop(key, 0)

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        out = func(*args, **kwargs)
        formula = flop_registry.get(func._overloadpacket)
        if formula is not None:
            self.flops[self.phase] += formula(*args, **kwargs, out_val=out)
        for tensor in tree_flatten(out)[0]:
            if isinstance(tensor, torch.Tensor):
                self._add(tensor)
        self.peaks[self.phase] = max(self.peaks[self.phase], self.current)
        return out


@dataclass
class StepTrace:
    """Bytes and FLOPs of one traced step at `batch_size` (one process holding the whole model)."""

    batch_size: int
    checkpointing: bool
    weights: int  # parameters and buffers
    gradients: int
    optimizer_state: int
    activations: int  # the forward + backward peak above weights, gradients and optimizer state
    optimizer_step: int  # the clipping + AdamW peak above them (the step's temporaries)
    weight_casts: int  # of the activations: autocast's bf16 copies of trainable weights, kept through the forward
    flops: dict[str, int] = field(default_factory=dict)  # per phase; "forward" excludes the encoder's

    @property
    def resident(self) -> int:
        return self.weights + self.gradients + self.optimizer_state

    @property
    def peak(self) -> int:
        return self.resident + max(self.activations, self.optimizer_step)


class StepTracer:
    """Traces steps of a meta-device objective (which it checkpoints, when asked, and owns from then on) as `ops`
    runs them; `trace(batch_size)` may be called for several batch sizes."""

    def __init__(self, objective: Objective, cfg: Config, ops: TargetOps, workload: Workload, checkpointing: bool):
        self.objective, self.cfg, self.ops, self.workload = objective, cfg, ops, workload
        self.checkpointing = checkpointing
        self._meter: StepMeter | None = None
        if checkpointing:
            for unit in objective.model.shard_units():
                checkpoint(unit, context_fn=lambda: (contextlib.nullcontext(), self._recomputation()))
        objective.model.vision.register_forward_pre_hook(lambda *_: self._enter_phase("encoder"))
        objective.model.vision.register_forward_hook(lambda *_: self._enter_phase("forward"))
        self.optimizer = build_optimizer(objective, cfg)
        if ops.device == "cuda":  # torch's default there: the multi-tensor step and its temporaries
            for group in self.optimizer.param_groups:
                group["foreach"] = True
        self.trainable = [p for p in objective.parameters() if p.requires_grad]
        for param in self.trainable:
            param.grad = torch.zeros_like(param)
        self.optimizer.step()  # the AdamW state, as after the first step

    def _enter_phase(self, phase: str) -> None:
        if self._meter is not None:
            self._meter.phase = phase

    @contextlib.contextmanager
    def _recomputation(self) -> Iterator[None]:
        """The recomputation of a checkpointed unit, in the backward: torch-function modes are not active there
        (the backward call leaves them), so the target's ops are entered again, as checkpoint re-enters autocast."""
        with self._meter.phase_of("recompute"), self.ops.fresh():
            yield

    def _optimizer_state(self) -> list[torch.Tensor]:
        """AdamW's moments (its step counters are CPU scalars)."""
        return [v for state in self.optimizer.state.values() for v in state.values()
                if isinstance(v, torch.Tensor) and v.is_meta]

    def trace(self, batch_size: int) -> StepTrace:
        meter = self._meter = StepMeter()
        weights = [*self.objective.parameters(), *self.objective.buffers()]
        gradients = [p.grad for p in self.trainable]
        meter.hold([*weights, *gradients, *self._optimizer_state()])
        resident = meter.current
        grad_clip, grad_accum = self.cfg.train.grad_clip, self.cfg.train.grad_accum
        try:
            with meter, meta_compatible(self.objective, self.ops, self.workload):
                with self.ops.fresh() as forward_ops:
                    loss = self.objective(synthetic_inputs(self.objective.model, self.workload, batch_size))["loss"]
                    loss = loss / grad_accum
                weight_casts = forward_ops.cast_bytes
                with meter.phase_of("backward"):
                    loss.backward()
                del loss
                with meter.phase_of("optimizer"):
                    if grad_clip > 0:
                        torch.nn.utils.clip_grad_norm_(self.trainable, grad_clip)
                    self.optimizer.step()
        finally:
            self._meter = None
        step_peak = max(meter.peaks[p] for p in ("encoder", "forward", "backward", "recompute"))
        return StepTrace(batch_size=batch_size, checkpointing=self.checkpointing, weights=_bytes(weights),
                         gradients=_bytes(gradients), optimizer_state=_bytes(self._optimizer_state()),
                         activations=step_peak - resident, optimizer_step=meter.peaks["optimizer"] - resident,
                         weight_casts=weight_casts,
                         flops={phase: int(meter.flops[phase]) for phase in PHASES if phase != "optimizer"})


def _bytes(tensors: Iterable[torch.Tensor]) -> int:
    """Bytes of the distinct storages of `tensors` (tied weights count once)."""
    storages = {t.untyped_storage()._cdata: t.untyped_storage().nbytes() for t in tensors}
    return sum(storages.values())
