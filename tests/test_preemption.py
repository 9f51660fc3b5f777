"""Stop signals end a run after the current step with a checkpoint; non-finite steps are skipped and counted."""

from __future__ import annotations

import math
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from vlm.train.checkpoint import latest_checkpoint, read_training_state
from vlm.train.metrics import read_metrics
from vlm.train.trainer import NonFiniteTraining, Trainer, train

DEMO = Path(__file__).parent.parent / "configs" / "demo.yaml"


def _train_rows(output_dir: Path) -> dict[int, dict]:
    return {r["step"]: r for r in read_metrics(output_dir / "metrics.jsonl") if r["kind"] == "train"}


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGUSR1])
def test_stop_signal_saves_and_resume_is_exact(tiny_parts, tmp_path, sig):
    args = ["train.max_steps=30", "train.log_every=1", "data.num_workers=2", "train.lr=3e-3", "bridge.dropout=0.1"]
    straight = tmp_path / "straight"
    train(tiny_parts.config(straight, *args))

    stopped = tmp_path / "stopped"
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    proc = subprocess.Popen([sys.executable, "-m", "vlm.cli", "train", str(DEMO), *tiny_parts.overrides(stopped),
                             *args], env=env, stderr=subprocess.PIPE, text=True)
    metrics = stopped / "metrics.jsonl"
    deadline = time.time() + 120
    while time.time() < deadline and not (metrics.is_file() and len(metrics.read_text().splitlines()) >= 2):
        time.sleep(0.05)
    proc.send_signal(sig)
    sent = time.time()
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err
    assert time.time() - sent < 30  # the rest of one step and a checkpoint
    path = latest_checkpoint(stopped)
    step = read_training_state(path)["step"]
    assert 2 <= step < 30 and sig.name in err
    assert max(_train_rows(stopped)) == step  # the last step was logged before stopping

    train(tiny_parts.config(stopped, *args), resume=True)
    again, reference = _train_rows(stopped), _train_rows(straight)
    for s in range(step + 1, 31):
        assert again[s]["loss"] == pytest.approx(reference[s]["loss"], rel=1e-6, abs=1e-7), s


def _poison(trainer: Trainer, bad_calls: set[int] | None, after: int | None = None) -> None:
    """Make the loss (and so every gradient) NaN on the given forward calls, or on every call after `after`."""
    forward, calls = trainer.strategy.forward, [0]

    def poisoned(inputs, **options):
        calls[0] += 1
        out = forward(inputs, **options)
        if (bad_calls and calls[0] in bad_calls) or (after is not None and calls[0] > after):
            out = {**out, "loss": out["loss"] * math.nan}
        return out

    trainer.strategy.forward = poisoned


def test_nonfinite_steps_are_skipped_and_counted(tiny_parts, tmp_path):
    trainer = Trainer(tiny_parts.config(tmp_path, "train.max_steps=8", "train.log_every=4"))
    _poison(trainer, {3, 4})
    result = trainer.fit()
    rows = _train_rows(tmp_path)
    assert rows[4]["nonfinite_steps"] == 2 and rows[8]["nonfinite_steps"] == 2
    assert all(math.isfinite(r["loss"]) for r in rows.values())  # window means over the finite steps only
    # AdamW stepped 6 times: the two skipped steps touched neither weights nor moments
    steps = {float(s["step"]) for s in trainer.optimizer.state.values()}
    assert steps == {6.0} and result.steps == 8
    assert all(math.isfinite(float(p.detach().sum())) for p in result.objective.parameters())


def test_too_many_nonfinite_steps_stop_with_the_last_good_checkpoint(tiny_parts, tmp_path):
    trainer = Trainer(tiny_parts.config(tmp_path, "train.max_steps=20", "train.save_every=2",
                                        "train.max_nonfinite=3"))
    _poison(trainer, None, after=3)
    with pytest.raises(NonFiniteTraining, match=r"3 steps in a row.*step-0000004"):
        trainer.fit()
    assert latest_checkpoint(tmp_path).name == "step-0000004"  # step 6 was never saved: its step was skipped
    assert read_training_state(latest_checkpoint(tmp_path))["step"] == 4
