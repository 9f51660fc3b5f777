"""The launch scripts: scripts/torchrun_multinode.sh trains for real (two gloo ranks on one node meeting through
the c10d rendezvous it sets up), then continues the run with the --resume it always passes; scripts/slurm/
train.sbatch, run against stub srun and scontrol, launches that same torchrun on every node of the allocation
and requeues the job when SLURM signals the time limit."""

from __future__ import annotations

import os
import shlex
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

from vlm.train.checkpoint import METADATA, read_training_state
from vlm.train.metrics import read_metrics

ROOT = Path(__file__).resolve().parent.parent
MULTINODE = ROOT / "scripts" / "torchrun_multinode.sh"
SBATCH = ROOT / "scripts" / "slurm" / "train.sbatch"


def _env(path_first: Path | None = None, **extra: str) -> dict[str, str]:
    # The scripts run `python` from PATH when VENV is empty: make it this test's interpreter.
    path = os.pathsep.join(str(p) for p in (path_first, Path(sys.executable).parent) if p is not None)
    return {**os.environ, "PATH": f"{path}{os.pathsep}{os.environ['PATH']}", "VENV": "", "OMP_NUM_THREADS": "1",
            "PYTHONPATH": str(ROOT), **extra}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _multinode(overrides: list[str], cwd: Path) -> subprocess.CompletedProcess:
    env = _env(NNODES="1", NPROC_PER_NODE="2", MASTER_ADDR="127.0.0.1", MASTER_PORT=str(_free_port()),
               RDZV_ID="test", CONFIG="configs/demo.yaml")
    return subprocess.run([str(MULTINODE), *overrides], capture_output=True, text=True, cwd=cwd, env=env,
                          timeout=300)


def _train_steps(out: Path) -> list[int]:
    return [r["step"] for r in read_metrics(out / "metrics.jsonl") if r["kind"] == "train"]


def test_scripts_are_executable_bash():
    for script in (MULTINODE, SBATCH):
        assert os.access(script, os.X_OK), script
        subprocess.run(["bash", "-n", str(script)], check=True)


def test_multinode_script_trains_two_ranks_and_resumes(tiny_parts, tmp_path):
    out = tmp_path / "run"
    # Launched from elsewhere: the script finds the repository root (CONFIG is relative to it) by itself.
    proc = _multinode(tiny_parts.overrides(out) + ["train.max_steps=3"], tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    assert "--rdzv_backend=c10d --rdzv_endpoint=127.0.0.1:" in proc.stdout  # it printed what it launched
    assert "--resume: no checkpoint" in proc.stderr  # --resume on a fresh output_dir starts from scratch
    assert _train_steps(out) == [1, 2, 3]
    ckpt = out / "checkpoints" / "step-0000003"
    assert (ckpt / METADATA).is_file()
    state = read_training_state(ckpt)
    assert state["layout"]["world_size"] == 2 and len(state["ranks"]) == 2

    proc = _multinode(tiny_parts.overrides(out) + ["train.max_steps=5"], tmp_path)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-3000:]
    # Continued from step 3 (a fresh start would have appended steps 1 to 5 to the metrics again).
    assert _train_steps(out) == [1, 2, 3, 4, 5]
    assert (out / "checkpoints" / "step-0000005" / METADATA).is_file()


def _stub(path: Path, body: str) -> None:
    path.write_text(f"#!/bin/sh\n{body}\n")
    path.chmod(0o755)


def _slurm(tmp_path: Path, srun_body: str) -> tuple[dict[str, str], Path]:
    """Stub srun and scontrol (each appends its command line to `calls`) and a fake 2-node allocation."""
    bin_dir, calls = tmp_path / "bin", tmp_path / "calls"
    bin_dir.mkdir()
    log = f'echo "$(basename "$0") $*" >> {shlex.quote(str(calls))}'
    _stub(bin_dir / "srun", f"{log}\n{srun_body}")
    _stub(bin_dir / "scontrol", f"{log}\nprintf 'node-a\\nnode-b\\n'")
    env = _env(bin_dir, SLURM_JOB_NODELIST="node-[a-b]", SLURM_NNODES="2", SLURM_JOB_ID="42",
               SLURM_CPUS_PER_TASK="16", SLURM_GPUS_PER_NODE="h100:4", CONFIG="configs/demo.yaml")
    return env, calls


def test_sbatch_script_launches_torchrun_on_every_node(tmp_path):
    env, calls = _slurm(tmp_path, "")
    # sbatch runs a job in the directory it was submitted from: the repository root.
    proc = subprocess.run(["bash", str(SBATCH), "train.lr=1e-4"], capture_output=True, text=True, cwd=ROOT,
                          env=env, timeout=60)
    assert proc.returncode == 0, proc.stderr
    lines = calls.read_text().splitlines()
    assert lines[0] == "scontrol show hostnames node-[a-b]"
    srun = lines[1]
    assert srun.startswith("srun ") and len(lines) == 2
    assert "--ntasks-per-node=1 --cpus-per-task=16 python -m torch.distributed.run --nnodes=2" in srun
    assert "--nproc_per_node=4 --rdzv_id=42 --rdzv_backend=c10d" in srun  # the GPU count of h100:4
    assert f"--rdzv_endpoint=node-a:{29500 + 42}" in srun  # the first host; the port follows the job id
    assert srun.endswith("-m vlm.cli train configs/demo.yaml train.lr=1e-4 --resume")
    assert f"+ {srun}" in proc.stdout  # it printed what it launched


def test_sbatch_script_requeues_itself_before_the_time_limit(tmp_path):
    pid_file = tmp_path / "srun.pid"
    # The stub srun runs until killed, as training would; it leaves its pid so the test can end it.
    env, calls = _slurm(tmp_path, f"echo $$ > {shlex.quote(str(pid_file))}\nexec sleep 60")
    job = subprocess.Popen(["bash", str(SBATCH)], cwd=ROOT, env=env, stdout=subprocess.DEVNULL,
                           stderr=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while not pid_file.is_file() or not pid_file.read_text().strip():
            assert time.monotonic() < deadline and job.poll() is None, "the stub srun never started"
            time.sleep(0.05)
        job.send_signal(signal.SIGUSR1)  # what --signal=B:USR1@180 sends 3 minutes before the time limit
        assert job.wait(timeout=30) == 128 + signal.SIGUSR1
    finally:
        if job.poll() is None:
            job.kill()
        if pid_file.is_file() and pid_file.read_text().strip():
            os.kill(int(pid_file.read_text()), signal.SIGTERM)
    assert calls.read_text().splitlines()[-1] == "scontrol requeue 42"
