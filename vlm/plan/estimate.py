"""Memory per GPU of each strategy from the traced steps, the largest micro-batch that fits a GPU, the grad_accum
that reaches the global batch with it, and the verdict.

single  one GPU, the objective as it is.
ddp     every GPU holds the whole model; the gradients are views into DDP's all-reduce buckets (no second copy).
fsdp2   parameters, gradients and AdamW state split over the GPUs, the frozen encoder replicated, plus the gathered
        root and units and their unsharded gradients during the step (plan.parameters.ShardLayout).
Activations are the same per micro-batch under every strategy (data parallel): those of the traced step, on a line
through the two traced micro-batches.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from vlm.plan.parameters import ShardLayout
from vlm.plan.target import GIB, Target
from vlm.plan.trace import StepTrace


@dataclass(frozen=True)
class Activations:
    """Activation bytes against the micro-batch: the line through two traced steps."""

    intercept: float
    per_sample: float

    @classmethod
    def through(cls, first: StepTrace, second: StepTrace) -> Activations:
        per_sample = (second.activations - first.activations) / (second.batch_size - first.batch_size)
        return cls(first.activations - per_sample * first.batch_size, per_sample)

    def at(self, micro_batch: int) -> int:
        return int(self.intercept + self.per_sample * micro_batch)


@dataclass
class StrategyMemory:
    """Bytes per GPU of one strategy at one micro-batch; `step_buffers` are held for the forward and backward
    (FSDP2's gathered parameters and unsharded gradients)."""

    strategy: str
    gpus: int
    checkpointing: bool
    micro_batch: int
    weights: int
    gradients: int
    optimizer_state: int
    step_buffers: int
    activations: int
    optimizer_step: int

    @property
    def resident(self) -> int:
        return self.weights + self.gradients + self.optimizer_state

    @property
    def peak(self) -> int:
        return self.resident + max(self.step_buffers + self.activations, self.optimizer_step)


def strategy_memory(strategy: str, gpus: int, trace: StepTrace, activations: Activations, layout: ShardLayout,
                    micro_batch: int) -> StrategyMemory:
    """`trace`: a traced step of the same checkpointing setting (its weights, gradients, optimizer state and
    optimizer-step temporaries; one process holds them all)."""
    common = {"strategy": strategy, "gpus": gpus, "checkpointing": trace.checkpointing, "micro_batch": micro_batch}
    act = activations.at(micro_batch)
    if strategy == "fsdp2":
        # Gathered in bf16, the parameters need no autocast copies: the gathered units stand in for them.
        act -= trace.weight_casts if layout.mixed_precision else 0
        return StrategyMemory(activations=act, weights=layout.replicated + math.ceil(layout.sharded / gpus),
                              gradients=math.ceil(trace.gradients / gpus),
                              optimizer_state=math.ceil(trace.optimizer_state / gpus),
                              step_buffers=layout.step_buffers, optimizer_step=math.ceil(trace.optimizer_step / gpus),
                              **common)
    return StrategyMemory(activations=act, weights=trace.weights, gradients=trace.gradients,
                          optimizer_state=trace.optimizer_state,
                          step_buffers=0,
                          optimizer_step=trace.optimizer_step, **common)


@dataclass
class Fit:
    """The largest micro-batch one strategy fits on the target (0: not even 1; `needs` is the peak at 1) and the
    fewest micro-steps that reach the global batch with micro-batches no larger: micro_batch x grad_accum x gpus is
    the global batch (rounded up to a multiple of the GPUs)."""

    strategy: str
    gpus: int
    checkpointing: bool
    max_micro_batch: int
    needs: int  # peak bytes per GPU at micro-batch 1
    micro_batch: int = 0
    grad_accum: int = 0

    @property
    def fits(self) -> bool:
        return self.max_micro_batch >= 1

    @property
    def global_batch(self) -> int:
        return self.micro_batch * self.grad_accum * self.gpus


MAX_MICRO_BATCH = 1 << 16  # for a model whose activations would not grow with the batch
# On a tie in micro-steps DDP goes first: it gathers no parameters.
PREFERENCE = {"ddp": 0, "fsdp2": 1, "single": 2}


def fit(strategy: str, gpus: int, trace: StepTrace, activations: Activations, layout: ShardLayout, usable: int,
        global_batch: int) -> Fit:
    at_one = strategy_memory(strategy, gpus, trace, activations, layout, 1)
    result = Fit(strategy, gpus, trace.checkpointing, 0, at_one.peak)
    if at_one.peak > usable:
        return result
    room = usable - at_one.resident - at_one.step_buffers - (at_one.activations - activations.per_sample)
    largest = int(room // activations.per_sample) if activations.per_sample > 0 else MAX_MICRO_BATCH
    result.max_micro_batch = max(1, min(largest, MAX_MICRO_BATCH))
    # The fewest micro-steps whose equal micro-batches make up a GPU's share exactly (1 x share always does).
    per_gpu = math.ceil(global_batch / gpus)
    accum = math.ceil(per_gpu / result.max_micro_batch)
    while per_gpu % accum:
        accum += 1
    result.grad_accum, result.micro_batch = accum, per_gpu // accum
    return result


def _describe(f: Fit) -> str:
    if f.fits:
        return f"fits, micro-batch {f.micro_batch}, grad_accum {f.grad_accum} (global {f.global_batch})"
    return f"does not fit (needs {f.needs / GIB:.1f} GiB per GPU at micro-batch 1)"


def verdict(target: Target, fits: list[Fit], other_setting: list[Fit], configured_micro_batch: int) -> str:
    """One line: the strategies that fit, fewest micro-steps first (saying when train.batch_size is too large), then
    those that do not, each of those with the other activation-checkpointing setting where that one fits
    (`other_setting`: the same strategies' fits)."""
    alternative = {f.strategy: f for f in other_setting}
    order = sorted(fits, key=lambda f: (not f.fits, f.grad_accum if f.fits else f.needs, PREFERENCE[f.strategy]))
    parts = []
    for i, f in enumerate(order):
        where = f" on {target.gpus_of(f.strategy)} x {target.gpu_mem_gib:g} GiB" if i == 0 else \
            (" (1 GPU)" if f.strategy == "single" and target.gpus > 1 else "")
        text = f"{f.strategy}{where}: {_describe(f)}"
        if f.fits and f.max_micro_batch < configured_micro_batch:
            text += f", not at train.batch_size {configured_micro_batch}"
        other = alternative.get(f.strategy)
        if not f.fits and other is not None and other.fits:
            text += f", with train.activation_checkpointing={str(other.checkpointing).lower()}: {_describe(other)}"
        parts.append(text)
    return "; ".join(parts)
