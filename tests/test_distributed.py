"""Training strategies for real: two gloo ranks under torchrun through the trainer and the CLI.

- DDP and FSDP2 (with activation checkpointing and gradient accumulation) give one process's losses on the same
  global batches, within ATOL: only the order of float sums differs (gradients averaged over ranks, gathered
  features, per-rank padding);
- a run resumes bit for bit under FSDP2 (and DDP), and a checkpoint of 2 ranks resumes on 1 and the reverse, with
  its weights and optimizer state resharded exactly;
- a changed global batch, a single-process strategy under torchrun, FSDP2 without it and a config FSDP2 cannot
  shard fail in one line.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch.distributed.checkpoint.format_utils import dcp_to_torch_save

from vlm.cli import main
from vlm.config import ConfigError
from vlm.train.checkpoint import LATEST, read_training_state
from vlm.train.metrics import read_metrics
from vlm.train.strategies import make_strategy, resolve_strategy

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "configs" / "demo.yaml"
WORKER = ROOT / "tests" / "strategy_worker.py"
ATOL = 1e-5  # per loss term (terms are 1-7 here); measured differences are ~1e-6
# ITM draws its hard negatives at random on each rank, which one process cannot mirror: off for the comparisons.
SAME_BATCHES = ["train.lr=3e-3", "loss.itm_weight=0", "bridge.dropout=0", "llm.lora_dropout=0", "train.eval_every=0"]
TERMS = ("loss", "lm", "contrastive", "itc", "itg", "grad_norm")


def _env() -> dict:
    return {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}


def _torchrun(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args]
    return subprocess.run(cmd, capture_output=True, text=True, cwd=cwd, env=_env(), timeout=300)


def _one_process(args: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=cwd, env=_env(), timeout=300)


def _train_rows(run: Path) -> list[dict]:
    return [r for r in read_metrics(run / "metrics.jsonl") if r["kind"] == "train"]


def _resume_copy(run: Path, step: str, into: Path) -> None:
    """A new run folder whose latest checkpoint is `run`'s checkpoint `step`."""
    (into / "checkpoints").mkdir(parents=True)
    shutil.copytree(run / "checkpoints" / step, into / "checkpoints" / step)
    (into / "checkpoints" / LATEST).write_text(step + "\n")


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
    assert [r["step"] for r in _train_rows(out)] == [1, 2, 3, 4, 5]
    state = read_training_state(out / "checkpoints" / "step-0000005")
    assert len(state["ranks"]) == 2
    assert [r["data"]["batches"] for r in state["ranks"]] == [10, 10]  # 5 steps x grad_accum 2 per rank


def test_ddp_and_fsdp2_give_the_losses_of_one_process(tiny_parts, tmp_path):
    """The same 8-example global batches: one process takes them whole, two ranks 4 rows each."""
    runs = {
        "single": (_one_process, 1, []), "ddp": (_torchrun, 1, ["train.strategy=ddp"]),
        "single-accum": (_one_process, 2, []),
        "fsdp2-accum-ac": (_torchrun, 2, ["train.strategy=fsdp2", "train.activation_checkpointing=true"]),
    }
    rows = {}
    for name, (launch, accum, extra) in runs.items():
        out = tmp_path / name
        overrides = tiny_parts.overrides(out) + SAME_BATCHES + ["train.max_steps=3", f"train.grad_accum={accum}"]
        proc = launch([str(WORKER), str(DEMO), "8", *overrides, *extra], tmp_path)
        assert proc.returncode == 0, (name, proc.stderr[-3000:])
        rows[name] = _train_rows(out)
    for reference, other in (("single", "ddp"), ("single-accum", "fsdp2-accum-ac")):
        assert [r["step"] for r in rows[other]] == [1, 2, 3]
        for a, b in zip(rows[reference], rows[other]):
            for term in TERMS:
                assert b[term] == pytest.approx(a[term], abs=ATOL), (other, a["step"], term)
    assert rows["single"][-1]["loss"] < rows["single"][0]["loss"]  # it trains


def test_fsdp2_through_the_cli_resumes_exactly_and_across_world_sizes(tiny_parts, tmp_path, capsys):
    """The frozen LM in bf16 beside fp32 LoRA weights in the same FSDP2 units (the GPU recipes' layout)."""
    run = tmp_path / "run"
    # A trained bf16 embedding table cannot share the root unit with fp32 heads: not with FSDP2 (tested below).
    bf16 = ["llm.dtype=bfloat16", "llm.train_embeddings=false"]
    extra = ["train.strategy=fsdp2", "train.max_steps=4", "train.save_every=2", "train.lr=3e-3", "train.eval_every=2",
             "train.benchmark_every=4", "eval.max_images=6", "eval.languages=[en]", *bf16]
    proc = _torchrun(["-m", "vlm.cli", "train", str(DEMO), *tiny_parts.overrides(run), *extra], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    reference = {r["step"]: r for r in _train_rows(run)}
    rows = read_metrics(run / "metrics.jsonl")
    assert [r["step"] for r in rows if r["kind"] == "eval"] == [2, 4]  # validation under FSDP2
    assert [r["step"] for r in rows if r["kind"] == "benchmark"] == [4]  # and generation, every unit gathered
    assert (run / "eval" / "step-4" / "results.json").is_file()

    # The same layout: the next steps bit for bit.
    again = tmp_path / "again"
    _resume_copy(run, "step-0000002", again)
    proc = _torchrun(["-m", "vlm.cli", "train", str(DEMO), *tiny_parts.overrides(again), *extra, "--resume"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    resumed = {r["step"]: r for r in _train_rows(again)}
    assert sorted(resumed) == [3, 4]
    for step in (3, 4):
        for term in ("loss", "lm", "contrastive", "itc", "itm", "itg", "lr"):
            assert resumed[step][term] == reference[step][term], (step, term)

    # 2 ranks -> 1: the checkpoint's tensors reshard exactly. Resumed at the step it was saved, the run trains
    # no step and writes the checkpoint again, which must equal the one it read.
    single = tmp_path / "single"
    _resume_copy(run, "step-0000002", single)
    overrides = tiny_parts.overrides(single) + bf16 + ["train.max_steps=2", "train.grad_accum=2"]  # 2 x 8 = 1 x 8 x 2
    assert main(["train", str(DEMO), *overrides, "--resume"]) == 0
    saved, rewritten = tmp_path / "saved.pt", tmp_path / "rewritten.pt"
    dcp_to_torch_save(run / "checkpoints" / "step-0000002", saved)
    dcp_to_torch_save(single / "checkpoints" / "step-0000002", rewritten)
    before, after = torch.load(saved, weights_only=False), torch.load(rewritten, weights_only=False)
    tensors = [k for k in before["model"]] + [f"optim.{k}" for k in before["optim"]["state"]]
    assert len(tensors) > 20
    for name, value in before["model"].items():
        assert torch.equal(value, after["model"][name]), name
    for name, state in before["optim"]["state"].items():
        for key, value in state.items():
            assert torch.equal(value, after["optim"]["state"][name][key]), (name, key)
    state = read_training_state(single / "checkpoints" / "step-0000002")
    assert state["layout"] == {"world_size": 1, "num_roles": 1, "global_batch": 16}
    # the data stream started the pass after the furthest one any saved rank had reached
    saved_epochs = [e for r in read_training_state(run / "checkpoints" / "step-0000002")["ranks"]
                    for e in r["data"]["epochs"].values()]
    assert state["ranks"][0]["data"]["start_epoch"] == max(saved_epochs) + 1

    # ... and on: 1 rank trains steps 3-4, then 1 -> 2 ranks (DDP) trains steps 5-6.
    assert main(["train", str(DEMO), *overrides[:-2], "train.max_steps=4", "train.grad_accum=2", "--resume"]) == 0
    assert [r["step"] for r in _train_rows(single)] == [3, 4]
    proc = _torchrun(["-m", "vlm.cli", "train", str(DEMO), *tiny_parts.overrides(single), *bf16, "train.max_steps=6",
                      "train.strategy=ddp", "--resume"], tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [r["step"] for r in _train_rows(single)] == [3, 4, 5, 6]
    assert read_training_state(single / "checkpoints" / "step-0000006")["layout"]["world_size"] == 2

    # Another global batch is refused in one line before anything is built or written.
    capsys.readouterr()
    checkpoints = sorted(p.name for p in (single / "checkpoints").iterdir())
    assert main(["train", str(DEMO), *tiny_parts.overrides(single), *bf16, "train.max_steps=8", "--resume"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "global batch of 16" in err[0] and "train.grad_accum" in err[0], err
    assert sorted(p.name for p in (single / "checkpoints").iterdir()) == checkpoints
    assert [r["step"] for r in _train_rows(single)] == [3, 4, 5, 6]


def test_a_strategy_the_launch_cannot_run_fails_in_one_line(tiny_parts, tmp_path, capsys, monkeypatch):
    for override, culprit in (("train.strategy=zero3", "'train.strategy' is 'zero3'"),
                              ("train.strategy=fsdp2", "needs torchrun")):
        capsys.readouterr()
        assert main(["train", str(DEMO), *tiny_parts.overrides(tmp_path / "run"), override]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and culprit in err[0], err
    assert not (tmp_path / "run").exists()
    # What torchrun's environment says, checked before a process group exists: the same on every rank.
    monkeypatch.setenv("RANK", "0")
    monkeypatch.setenv("WORLD_SIZE", "2")
    assert resolve_strategy("auto") == "ddp"
    with pytest.raises(ConfigError, match="started 2 ranks, which would each train alone"):
        resolve_strategy("single")
    cfg = tiny_parts.config(tmp_path / "run", "llm.dtype=bfloat16", "train.strategy=fsdp2")  # + train_embeddings
    with pytest.raises(ConfigError, match="fsdp2 trains one dtype per unit"):
        make_strategy(cfg.train, torch.device("cpu")).check(cfg)


def _rank_pid(torchrun: int, rank: int) -> int | None:
    """The pid of torchrun's worker `rank` (its child whose environment says RANK=rank), read from /proc."""
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            parent = int(stat.read_text().rsplit(")", 1)[1].split()[1])
            env = (stat.parent / "environ").read_bytes().split(b"\0")
        except (OSError, ValueError, IndexError):
            continue
        if parent == torchrun and f"RANK={rank}".encode() in env:
            return int(stat.parent.name)
    return None


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the ranks' pids through /proc (Linux)")
@pytest.mark.parametrize("how", ["hangs", "dies"])
def test_a_rank_that_hangs_or_dies_is_named_by_the_survivor_within_the_timeout(tiny_parts, tmp_path, how):
    """Rank 1 is stopped (SIGSTOP: its sockets stay open, so only the timeout can tell) or killed mid-run; rank 0
    exits with one line naming rank 1 within train.dist_timeout_s (+ the few seconds of reports)."""
    import signal
    import time

    from vlm.train.lost_ranks import REPORT_WAIT_S

    timeout_s = 6
    run = tmp_path / "run"
    args = ["-m", "vlm.cli", "train", str(DEMO), *tiny_parts.overrides(run), "train.max_steps=100000",
            "train.log_every=1", "train.eval_every=0", f"train.dist_timeout_s={timeout_s}"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args]
    log, victim = tmp_path / "stderr.txt", None
    with log.open("w") as stderr:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=stderr, cwd=tmp_path, env=_env())
    try:
        deadline = time.monotonic() + 240
        while not (run / "metrics.jsonl").exists() or len(_train_rows(run)) < 2:  # both ranks are stepping
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        victim = _rank_pid(proc.pid, 1)
        assert victim is not None
        os.kill(victim, signal.SIGSTOP if how == "hangs" else signal.SIGKILL)
        hit = time.monotonic()
        while "stopped responding" not in log.read_text():
            assert time.monotonic() - hit < timeout_s + REPORT_WAIT_S + 20, log.read_text()[-3000:]
            time.sleep(0.2)
        named_after = time.monotonic() - hit
    finally:
        if how == "hangs" and victim is not None:
            os.kill(victim, signal.SIGKILL)  # torchrun would wait 30 s for a stopped worker to take its SIGTERM
        proc.wait(timeout=120)
    lines = [line for line in log.read_text().splitlines() if "vlm train: stopped:" in line]
    assert len(lines) == 1 and "rank 1 stopped responding" in lines[0], log.read_text()[-3000:]
    assert proc.returncode != 0
    if how == "hangs":  # only the timeout can tell a stopped peer from a slow one
        assert timeout_s - 1 < named_after < timeout_s + REPORT_WAIT_S + 10
    else:  # a dead peer's connection resets: no need to wait for the timeout
        assert named_after < REPORT_WAIT_S + 10


def test_uneven_shards_across_ranks_finish_without_a_hang(tiny_parts, tmp_path):
    """3 train shards over 2 ranks (2 and 1) and 1 validation shard (one rank validates on nothing): the endless
    per-rank stream and validation's single all-reduce keep every collective matched."""
    train = sorted(Path(tiny_parts.data).glob("train-*.tar"))[:3]
    val = sorted(Path(tiny_parts.data).glob("val-*.tar"))[:1]
    run = tmp_path / "run"
    args = ["-m", "vlm.cli", "train", str(DEMO), *tiny_parts.overrides(run),
            f"data.train=[{','.join(map(str, train))}]", f"data.val=[{val[0]}]", "train.max_steps=6",
            "train.eval_every=3", "train.save_every=3", "train.dist_timeout_s=60"]
    proc = _torchrun(args, tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = read_metrics(run / "metrics.jsonl")
    assert [r["step"] for r in rows if r["kind"] == "train"] == [1, 2, 3, 4, 5, 6]
    assert [r["step"] for r in rows if r["kind"] == "eval"] == [3, 6]
    assert (run / "checkpoints" / "step-0000006").is_dir()


@pytest.mark.skipif(not Path("/proc/self/environ").exists(), reason="finds the ranks' pids through /proc (Linux)")
def test_a_stop_signal_to_one_rank_stops_every_rank_after_the_same_step(tiny_parts, tmp_path):
    """SIGUSR1 reaches rank 1 only: both ranks stop after the same step, one checkpoint holds both ranks' state,
    torchrun exits 0."""
    import signal
    import time

    run = tmp_path / "run"
    args = ["-m", "vlm.cli", "train", str(DEMO), *tiny_parts.overrides(run), "train.max_steps=100000",
            "train.log_every=1", "train.eval_every=0", "train.save_every=0"]
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2", *args]
    log = tmp_path / "stderr.txt"
    with log.open("w") as stderr:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=stderr, cwd=tmp_path, env=_env())
    try:
        deadline = time.monotonic() + 240
        while not (run / "metrics.jsonl").exists() or len(_train_rows(run)) < 2:
            assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-3000:]
            time.sleep(0.2)
        os.kill(_rank_pid(proc.pid, 1), signal.SIGUSR1)
        assert proc.wait(timeout=120) == 0, log.read_text()[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    last = _train_rows(run)[-1]["step"]
    assert (run / "checkpoints" / LATEST).read_text().strip() == f"step-{last:07d}"
    state = read_training_state(run / "checkpoints" / f"step-{last:07d}")
    assert state["step"] == last and len(state["ranks"]) == 2
    assert f"received: stopped after step {last} with checkpoint" in log.read_text()
