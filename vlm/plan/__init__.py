"""`vlm plan`'s library: what training a config takes on a machine, before any weights are read.

The config's objective is built on the meta device (config files only) and one training step of it is traced,
as the trainer runs it and as the target device would (bf16 autocast, fused attention and dropout on a GPU), for
its live tensor bytes and FLOPs, with and without activation checkpointing; the per-strategy memory, the largest
micro-batch that fits and the grad_accum that reaches the global batch follow by arithmetic.

    target_ops.py    TargetOps: the target device's autocast, attention and dropout on meta tensors
    meta_patches.py  the few data-dependent spots of the step, and what the trace does there instead
    inputs.py        Workload (token counts of one example) and the synthetic batch
    trace.py         StepMeter (live bytes and FLOPs per phase) and StepTracer (one step, steady state)
    parameters.py    parameter counts per part and FSDP2's layout of them
    target.py        Target: the GPUs a plan is for, checked without torch
    estimate.py      memory per strategy, the largest micro-batch, grad_accum and the verdict
    planner.py       trace_model (config -> traces) and make_plan (traces + target -> plan)
    report.py        the table and the JSON numbers
    measure.py       the measured peak of real CPU training steps, to check the estimate against

    trace = trace_model(load_config("configs/qwen-moe.yaml"))            # ~30 s for a 7B recipe
    plan = make_plan(trace, Target(gpus=8, gpu_mem_gib=80))               # instant; ask again for other targets
"""
