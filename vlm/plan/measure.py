"""The measured peak memory of real training steps on this CPU, to check the planner against: `measure_peak` runs
the trainer (vlm.train.trainer.Trainer, strategy single) for a few steps on the planner's own synthetic batch, in
a fresh process, and reads the process's peak resident memory (ru_maxrss) minus its resident memory before the
trainer built the model.

The process gets MALLOC_MMAP_THRESHOLD_=131072: glibc's default grows the threshold with every large free, after
which freed activations stay in the heap and the resident memory drifts 1.8-3x above what tensors hold.

    python -m vlm.plan.measure CONFIG [overrides] [--steps 3]   (prints one JSON line; use a fresh process)
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import resource
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

import torch

from vlm.config import Config, load_config
from vlm.data.batch import Batch, StreamTelemetry
from vlm.model.vlm import VisionLLM
from vlm.plan.inputs import Workload, synthetic_inputs
from vlm.train.trainer import Trainer

MALLOC_ENV = {"MALLOC_MMAP_THRESHOLD_": "131072"}
MARKER = "MEASURED "


@dataclass
class Measurement:
    peak_bytes: int  # ru_maxrss at the end minus the resident memory before the model was built
    baseline_bytes: int
    steps: int
    seconds: float


def measure_peak(cfg: Config, steps: int = 3, threads: int = 2, timeout: float = 600.0) -> Measurement:
    """Train `cfg` for `steps` optimizer steps in a fresh process (its own output directory, no evaluation)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "config.json"
        cfg.save(path)
        command = [sys.executable, "-m", "vlm.plan.measure", str(path), f"train.output_dir={Path(tmp) / 'run'}",
                   "--steps", str(steps), "--threads", str(threads)]
        done = subprocess.run(command, capture_output=True, text=True, timeout=timeout,
                              env={**os.environ, **MALLOC_ENV})
    lines = [line for line in done.stdout.splitlines() if line.startswith(MARKER)]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"measuring failed (exit {done.returncode}): {done.stderr.strip()[-2000:]}")
    return Measurement(**json.loads(lines[-1][len(MARKER):]))


def _measure_here(cfg: Config, steps: int) -> Measurement:
    """In this process, which must be fresh: the planner's batch, then the trainer's steps on it."""
    meta = VisionLLM(cfg, device="meta")
    inputs = synthetic_inputs(meta, Workload.of(meta), cfg.train.batch_size, device="cpu")
    batches = itertools.repeat(Batch(inputs, StreamTelemetry(role=0, consumed=0, epoch=0)))
    baseline = _resident_bytes()
    result = Trainer(cfg, batches=batches).fit()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024 - baseline  # ru_maxrss is in KiB on Linux
    return Measurement(peak_bytes=peak, baseline_bytes=baseline, steps=result.steps, seconds=result.seconds)


def _resident_bytes() -> int:
    """This process's resident memory now (Linux: /proc/self/statm counts pages)."""
    return int(Path("/proc/self/statm").read_text().split()[1]) * os.sysconf("SC_PAGE_SIZE")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("config")
    parser.add_argument("overrides", nargs="*")
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args(argv)
    torch.set_num_threads(args.threads)
    overrides = [*args.overrides, f"train.max_steps={args.steps}", "train.eval_every=0", "loss.lagging_boost=0",
                 "train.benchmark_every=0", "train.save_every=0", "train.progress=false", "train.tensorboard=false",
                 "data.val=[]"]
    measured = _measure_here(load_config(args.config, overrides), args.steps)
    print(MARKER + json.dumps(measured.__dict__), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
