"""A plan as a readable table (`format_plan`) and as JSON-ready numbers (`plan_dict`, bytes and FLOPs as integers)."""

from __future__ import annotations

import dataclasses

from vlm.data.features import DEFAULT_STORAGE, format_bytes, token_bytes
from vlm.plan.estimate import Fit, StrategyMemory
from vlm.plan.inputs import Workload
from vlm.plan.parameters import PARTS, PartCount
from vlm.plan.planner import Plan
from vlm.plan.target import ALLOCATOR_SLACK, GIB

SETTINGS = {False: "checkpointing off", True: "checkpointing on"}
MEMORY_ROWS = (("weights", "weights"), ("gradients", "gradients"), ("optimizer_state", "AdamW state"),
               ("buffers", "FSDP2 gathered units"),
               ("optimizer_step", "optimizer step temporaries (after the backward)"))


def approximations(plan: Plan) -> list[str]:
    """What the numbers rest on beyond the traced code, for the report."""
    trace = plan.trace
    steps = trace.steps[False]
    notes = []
    if trace.autocast:
        notes.append("bf16 autocast emulated on the meta device (CUDA autocast's op lists, at the level of the "
                     "Python functions the model calls)")
    if trace.device == "cuda":
        notes.append("attention and dropout as a GPU's fused kernels (they keep the output and log-sum-exp, and a "
                     "boolean mask, for the backward)")
    else:
        notes.append("attention as the CPU's fused kernel (output and log-sum-exp kept; the math path with dropout)")
    notes.append(f"activations traced at micro-batch {steps[0].batch_size} and {steps[1].batch_size}, "
                 "on a line between and beyond")
    notes.append("gradients held through the forward (any micro-step of an accumulation after the first)")
    if trace.workload.bridge_text_tokens and trace.cfg.loss.itm_weight > 0:
        notes.append("ITM on 3B pairs without the hard-negative sampling (distinct images: every row has one)")
    if trace.workload.bridge_text_tokens:
        notes.append(f"Q-Former captions of bridge.max_text_length ({trace.workload.bridge_text_tokens}) tokens")
    if trace.cfg.bridge.type == "moe" and trace.cfg.bridge.top_k > 0:
        notes.append("MoE top-k routing balanced over the experts")
    if "fsdp2" in plan.target.strategies:
        notes.append("fsdp2: shards split evenly; the root and two units gathered at a time")
    if plan.target.device == "cuda":
        notes.append(f"a GPU fits {plan.target.usable_bytes / GIB:.1f} of its {plan.target.gpu_mem_gib:g} GiB: "
                     f"{plan.target.reserved_gib:g} GiB for the CUDA context and NCCL, {ALLOCATOR_SLACK:.0%} of the "
                     "rest for allocator fragmentation")
    return notes


def plan_dict(plan: Plan) -> dict:
    trace, target = plan.trace, plan.target
    total = PartCount(sum(c.trainable for c in trace.parameters.values()),
                      sum(c.frozen for c in trace.parameters.values()))
    strategies = {}
    for strategy in target.strategies:
        strategies[strategy] = {
            _key(c): {"memory_bytes": _memory(plan.memory[(strategy, c)]), **_fit(plan.fits[(strategy, c)])}
            for c in (False, True)}
    return {
        "target": {**dataclasses.asdict(target), "usable_bytes": target.usable_bytes},
        "precision": {"bf16_autocast": trace.autocast, "llm_dtype": str(trace.llm_dtype).removeprefix("torch.")},
        "workload": {**dataclasses.asdict(trace.workload), "micro_batch": trace.cfg.train.batch_size,
                     "activation_checkpointing": trace.cfg.train.activation_checkpointing},
        "global_batch": plan.global_batch,
        "parameters": {part: _count(count) for part, count in {**trace.parameters, "total": total}.items()},
        "flops_per_sample": {_key(c): {k: int(v) for k, v in trace.flops_per_sample(c).items()} for c in (False, True)},
        "activations_bytes": {_key(c): dataclasses.asdict(trace.activations(c)) for c in (False, True)},
        "strategies": strategies,
        "verdict": plan.verdict,
        "approximations": approximations(plan),
        "feature_cache": feature_cache(trace.workload),
    }


def feature_cache(workload: Workload) -> dict:
    """What `vlm prep features` stores per image at its default dtype: the frozen encoder's (N, D) tokens."""
    per_image = token_bytes(workload.encoder_tokens, DEFAULT_STORAGE)
    return {"tokens": list(workload.encoder_tokens), "dtype": DEFAULT_STORAGE, "bytes_per_image": per_image,
            "bytes_per_million_images": per_image * 10**6}


def _key(checkpointing: bool) -> str:
    return SETTINGS[checkpointing].replace(" ", "_")


def _count(count: PartCount) -> dict[str, int]:
    return {"trainable": count.trainable, "frozen": count.frozen, "total": count.total}


def _memory(m: StrategyMemory) -> dict[str, int]:
    return {"weights": m.weights, "gradients": m.gradients, "optimizer_state": m.optimizer_state,
            "buffers": m.step_buffers, "activations": m.activations,
            "optimizer_step": m.optimizer_step, "peak": m.peak}


def _fit(f: Fit) -> dict:
    return {"fits": f.fits, "max_micro_batch": f.max_micro_batch, "needs_bytes_at_micro_batch_1": f.needs,
            "micro_batch": f.micro_batch, "grad_accum": f.grad_accum, "global_batch": f.global_batch}


def format_plan(plan: Plan, title: str) -> str:
    trace, target, data = plan.trace, plan.target, plan_dict(plan)
    w, cfg = trace.workload, trace.cfg
    precision = "bf16 autocast" if trace.autocast else "fp32"
    lines = [f"vlm plan {title}: {target.gpus} x {target.gpu_mem_gib:g} GiB ({target.device}), {precision}, "
             f"frozen LM weights in {data['precision']['llm_dtype']}",
             f"workload: micro-batch {cfg.train.batch_size} (train.batch_size), {w.image_size} px images, "
             f"{w.visual_tokens} visual + {w.prompt_tokens} prompt + {w.target_tokens} target tokens "
             f"(llm.max_length {cfg.llm.max_length})"
             + (f", {w.bridge_text_tokens} Q-Former text tokens" if w.bridge_text_tokens else ""), ""]
    lines += _table(["parameters", "trainable", "frozen", "total"],
                    [[part, *(f"{v:,}" for v in data["parameters"][part].values())] for part in (*PARTS, "total")])
    lines.append("")
    strategies = target.strategies
    head = [f"memory per GPU (GiB), micro-batch {cfg.train.batch_size}", *strategies]
    rows = [["", *(f"{target.gpus_of(s)} GPU" + ("s" if target.gpus_of(s) > 1 else "") for s in strategies)]]
    mem = {(s, c): data["strategies"][s][_key(c)] for s in strategies for c in (False, True)}
    for key, label in MEMORY_ROWS:
        rows.append([label, *(_gib(mem[(s, False)]["memory_bytes"][key]) for s in strategies)])
    chosen = cfg.train.activation_checkpointing
    for c in (False, True):
        mark = " (config)" if c == chosen else ""
        rows.append([f"activations, {SETTINGS[c]}{mark}",
                     *(_gib(mem[(s, c)]["memory_bytes"]["activations"]) for s in strategies)])
    for c in (False, True):
        rows.append([f"peak, {SETTINGS[c]}", *(_gib(mem[(s, c)]["memory_bytes"]["peak"]) for s in strategies)])
    for c in (False, True):
        rows.append([f"largest micro-batch, {SETTINGS[c]}", *(str(mem[(s, c)]["max_micro_batch"] or "-")
                                                             for s in strategies)])
    for c in (False, True):
        rows.append([f"micro-batch x grad_accum for global {plan.global_batch}, {SETTINGS[c].split()[-1]}",
                     *(f"{mem[(s, c)]['micro_batch']} x {mem[(s, c)]['grad_accum']}" if mem[(s, c)]["fits"] else "-"
                       for s in strategies)])
    lines += _table(head, rows)
    flops = trace.flops_per_sample(False)
    recompute = trace.flops_per_sample(True)["recompute"]
    step = (flops["forward"] + flops["backward"]) * plan.global_batch
    lines += ["", f"FLOPs per sample: forward {_tflop(flops['forward'])} (frozen encoder {_tflop(flops['encoder'])}), "
                  f"backward {_tflop(flops['backward'])}, recomputed with activation checkpointing {_tflop(recompute)}",
              f"FLOPs per optimizer step (global batch {plan.global_batch}): {step / 1e15:.3g} PFLOP, "
              f"{(step + recompute * plan.global_batch) / 1e15:.3g} PFLOP with checkpointing",
              _feature_cache_line(data["feature_cache"]),
              "", "approximations:", *(f"  - {note}" for note in data["approximations"]),
              "", f"verdict: {plan.verdict}"]
    return "\n".join(lines)


def _feature_cache_line(cache: dict) -> str:
    n, d = cache["tokens"]
    return (f"feature cache (`vlm prep features`, {cache['dtype']}): {n} x {d} encoder tokens, "
            f"{format_bytes(cache['bytes_per_image'])} per image, {format_bytes(cache['bytes_per_million_images'])} "
            "per million images on disk")


def _gib(n: int) -> str:
    return f"{n / GIB:.2f}"


def _tflop(n: float) -> str:
    return f"{n / 1e12:.3g} TFLOP"


def _table(head: list[str], rows: list[list[str]]) -> list[str]:
    widths = [max(len(r[i]) for r in [head, *rows]) for i in range(len(head))]
    return ["  ".join(cell.ljust(widths[0]) if i == 0 else cell.rjust(widths[i]) for i, cell in enumerate(r))
            for r in [head, *rows]]
