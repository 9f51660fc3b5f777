"""A plan in two steps: `trace_model` builds the config's objective on the meta device and traces its training step
(what depends on the config and the device type only), `make_plan` fits it to a target (GPUs, memory, strategies,
global batch), which is arithmetic and can be asked again for other targets."""

from __future__ import annotations

import copy
import dataclasses
from dataclasses import dataclass, field

import torch

from vlm import precision
from vlm.config import Config
from vlm.model.vlm import VisionLLM
from vlm.objective.objective import Objective
from vlm.plan.estimate import Activations, Fit, StrategyMemory, fit, strategy_memory, verdict
from vlm.plan.inputs import Workload
from vlm.plan.parameters import PartCount, ShardLayout, count_parameters, shard_layout
from vlm.plan.target import Target
from vlm.plan.target_ops import TargetOps
from vlm.plan.trace import StepTrace, StepTracer

DTYPE_NAMES = {torch.float32: "float32", torch.bfloat16: "bfloat16", torch.float16: "float16"}


@dataclass
class ModelTrace:
    """The objective of `cfg` as `device` would train it: its parameters, FSDP2 layout, workload and two traced steps
    per activation-checkpointing setting (train.batch_size and twice that)."""

    cfg: Config
    device: str
    autocast: bool
    llm_dtype: torch.dtype
    workload: Workload
    parameters: dict[str, PartCount]
    layout: ShardLayout
    steps: dict[bool, tuple[StepTrace, StepTrace]]  # checkpointing -> the two traced steps

    def activations(self, checkpointing: bool) -> Activations:
        return Activations.through(*self.steps[checkpointing])

    def flops_per_sample(self, checkpointing: bool) -> dict[str, float]:
        """encoder and forward (which includes it), backward and its recompute, at train.batch_size."""
        step = self.steps[checkpointing][0]
        flops = {phase: count / step.batch_size for phase, count in step.flops.items()}
        flops["forward"] += flops["encoder"]
        return flops


def meta_objective(cfg: Config, device: str) -> Objective:
    """The objective as the trainer builds it, on the meta device; llm.dtype is resolved for `device` ("auto" is
    bf16 on a GPU) rather than for this machine."""
    llm = dataclasses.replace(cfg.llm, dtype=DTYPE_NAMES[precision.weight_dtype(cfg.llm.dtype, device)])
    return Objective(VisionLLM(dataclasses.replace(cfg, llm=llm), device="meta")).train()


def trace_model(cfg: Config, device: str = "cuda") -> ModelTrace:
    objective = meta_objective(cfg, device)
    model = objective.model
    autocast = precision.uses_bf16_autocast(cfg.train.precision, device)
    top_k = cfg.bridge.type == "moe" and cfg.bridge.top_k > 0
    ops = TargetOps(device, autocast, nonzero_share=1 / cfg.bridge.num_experts if top_k else None)
    workload = Workload.of(model)
    batch = cfg.train.batch_size
    steps = {}
    checkpointed = copy.deepcopy(objective)  # checkpointing wraps its units for good: a copy of its own
    for checkpointing, traced in ((False, objective), (True, checkpointed)):
        tracer = StepTracer(traced, cfg, ops, workload, checkpointing)
        steps[checkpointing] = (tracer.trace(batch), tracer.trace(2 * batch))
    return ModelTrace(cfg=cfg, device=device, autocast=autocast, llm_dtype=model.llm.dtype, workload=workload,
                      parameters=count_parameters(objective),
                      layout=shard_layout(objective, torch.bfloat16 if autocast and device == "cuda" else None),
                      steps=steps)


@dataclass
class Plan:
    """A trace fitted to a target: per (strategy, activation checkpointing) the memory per GPU at train.batch_size
    and the fit, and the verdict for the config's checkpointing setting."""

    trace: ModelTrace
    target: Target
    global_batch: int
    memory: dict[tuple[str, bool], StrategyMemory] = field(default_factory=dict)
    fits: dict[tuple[str, bool], Fit] = field(default_factory=dict)
    verdict: str = ""


def make_plan(trace: ModelTrace, target: Target) -> Plan:
    """Memory per GPU at the config's micro-batch and the fits of every strategy of `target`, with and without
    activation checkpointing; the verdict for the config's setting."""
    target.check()
    train = trace.cfg.train
    global_batch = target.global_batch or train.batch_size * train.grad_accum * target.gpus
    plan = Plan(trace, target, global_batch)
    for strategy in target.strategies:
        gpus = target.gpus_of(strategy)
        for checkpointing in (False, True):
            step, activations = trace.steps[checkpointing][0], trace.activations(checkpointing)
            key = (strategy, checkpointing)
            plan.memory[key] = strategy_memory(strategy, gpus, step, activations, trace.layout, train.batch_size)
            plan.fits[key] = fit(strategy, gpus, step, activations, trace.layout, target.usable_bytes,
                                 global_batch)
    chosen = train.activation_checkpointing
    plan.verdict = verdict(target, [plan.fits[(s, chosen)] for s in target.strategies],
                           [plan.fits[(s, not chosen)] for s in target.strategies], train.batch_size)
    return plan
