"""Two-process torchrun (gloo, DDP) through the real trainer and CLI."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from vlm.train.checkpoint import read_training_state
from vlm.train.metrics import read_metrics

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "configs" / "demo.yaml"


def _torchrun(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=env, timeout=300)


def test_ddp_ranks_end_with_identical_weights(tiny_parts, tmp_path):
    out = tmp_path / "run"
    result_path = tmp_path / "ddp.json"
    overrides = tiny_parts.overrides(out) + ["train.max_steps=5", "train.lr=3e-3", "train.grad_accum=2"]
    proc = _torchrun([str(ROOT / "tests" / "ddp_worker.py"), str(DEMO), str(result_path), *overrides], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    found = json.loads(result_path.read_text())
    assert found["world_size"] == 2 and found["steps"] == 5 and found["n_tensors"] > 0
    assert found["max_diff"] == 0.0
    # rank 0 wrote the metrics (averaged over ranks) and one checkpoint with both ranks' data positions
    rows = [r for r in read_metrics(out / "metrics.jsonl") if r["kind"] == "train"]
    assert [r["step"] for r in rows] == [1, 2, 3, 4, 5]
    state = read_training_state(out / "checkpoints" / "step-0000005")
    assert len(state["ranks"]) == 2
    assert [r["data"]["batches"] for r in state["ranks"]] == [10, 10]  # 5 steps x grad_accum 2 per rank


def test_ddp_through_the_cli_and_resume(tiny_parts, tmp_path):
    out = tmp_path / "run"
    overrides = tiny_parts.overrides(out) + ["train.max_steps=4", "train.save_every=2"]
    proc = _torchrun(["-m", "vlm.cli", "train", str(DEMO), *overrides], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    proc = _torchrun(["-m", "vlm.cli", "train", str(DEMO), *overrides[:-2], "train.max_steps=6", "--resume"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    steps = [r["step"] for r in read_metrics(out / "metrics.jsonl") if r["kind"] == "train"]
    assert steps == [1, 2, 3, 4, 5, 6]
