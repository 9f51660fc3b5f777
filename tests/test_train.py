"""Training: the loss falls, checkpoints resume exactly, bad samples are skipped and counted."""

from __future__ import annotations

import io
import json
import shutil
import tarfile
from pathlib import Path

import pytest
import torch
from torch.distributed.checkpoint import FileSystemReader

from vlm.cli import main
from vlm.data.collate import Collator
from vlm.data.shards import resolve_shards
from vlm.data.stream import StreamPosition, TrainStream
from vlm.model.llm import load_tokenizer
from vlm.model.vision import create_open_clip
from vlm.train.checkpoint import LATEST, latest_checkpoint, read_training_state
from vlm.train.metrics import read_metrics
from vlm.train.trainer import train


def _train_losses(output_dir: Path) -> dict[int, float]:
    return {row["step"]: row["loss"] for row in read_metrics(output_dir / "metrics.jsonl") if row["kind"] == "train"}


def test_short_run_loss_falls(tiny_parts, tmp_path):
    cfg = tiny_parts.config(tmp_path, "train.max_steps=40", "train.lr=3e-3", "train.warmup_steps=2",
                            "train.eval_every=20")
    result = train(cfg)
    losses = _train_losses(tmp_path)
    first = sum(losses[s] for s in range(1, 6)) / 5
    last = sum(losses[s] for s in range(36, 41)) / 5
    assert last < 0.85 * first, (first, last)
    rows = read_metrics(tmp_path / "metrics.jsonl")
    assert [r["step"] for r in rows if r["kind"] == "eval"] == [20, 40]
    assert all({"lm", "contrastive", "itc", "itm", "itg", "lr", "grad_norm", "bad_samples"} <= set(r) for r in rows if r["kind"] == "train")
    # skipped samples per reason, and the realised language and task mix of each window
    train_rows = [r for r in rows if r["kind"] == "train"]
    assert all({"bad/corrupt_image", "bad/tar_error", "language_rejected"} <= set(r) for r in train_rows)
    assert all(0 <= r["data_wait_frac"] <= 1 for r in train_rows)  # the share of wall time spent waiting on data
    assert all(sum(r[f"lang/{lang}"] for lang in cfg.data.languages) == pytest.approx(1.0, abs=1e-3) for r in train_rows)
    assert all(sum(r[f"task/{task}"] for task in cfg.data.tasks) == pytest.approx(1.0, abs=1e-3) for r in train_rows)
    # the checkpoint holds only trainable weights (DCP shards, keyed by parameter name), and the resolved config
    # sits next to it
    saved_tensors = FileSystemReader(str(result.checkpoint)).read_metadata().state_dict_metadata
    weights = {k[len("model."):] for k in saved_tensors if k.startswith("model.")}
    assert weights == {n for n, p in result.objective.named_parameters(remove_duplicate=False) if p.requires_grad}
    assert not any(k.startswith("model.vision.") for k in weights)
    assert {"contrastive_loss.logit_scale", "itc_loss.logit_scale"} <= weights
    assert any(k.startswith("optim.state.") for k in saved_tensors)  # and the optimizer state
    state = read_training_state(result.checkpoint)
    assert state["step"] == 40 and state["layout"] == {"world_size": 1, "num_roles": 1, "global_batch": 8}
    saved = json.loads((result.checkpoint / "config.json").read_text())
    assert saved["train"]["max_steps"] == 40 and saved["llm"]["name"] == str(tiny_parts.lm)


def test_resume_continues_exactly(tiny_parts, tmp_path):
    """Resuming from the step-3 checkpoint reproduces the next steps' losses of the uninterrupted run."""
    # dropout on, so the restored RNG state matters too
    args = ["train.max_steps=6", "train.save_every=3", "data.num_workers=2", "train.lr=3e-3",
            "bridge.dropout=0.1", "llm.lora_dropout=0.1"]
    straight = tmp_path / "straight"
    train(tiny_parts.config(straight, *args))
    reference = _train_losses(straight)

    resumed = tmp_path / "resumed"
    (resumed / "checkpoints").mkdir(parents=True)
    step3 = straight / "checkpoints" / "step-0000003"
    assert step3.is_dir()
    shutil.copytree(step3, resumed / "checkpoints" / step3.name)
    (resumed / "checkpoints" / LATEST).write_text(step3.name + "\n")
    cfg_overrides = tiny_parts.overrides(resumed) + args
    assert main(["train", str(Path(__file__).parent.parent / "configs" / "demo.yaml"), *cfg_overrides,
                 "--resume"]) == 0
    again = _train_losses(resumed)
    assert sorted(again) == [4, 5, 6]
    for step in (4, 5, 6):
        assert again[step] == pytest.approx(reference[step], rel=1e-5, abs=1e-6), step
    assert latest_checkpoint(resumed).name == "step-0000006"


def test_checkpoints_are_pruned_and_latest_is_valid(tiny_parts, tmp_path):
    train(tiny_parts.config(tmp_path, "train.max_steps=6", "train.save_every=2", "train.keep_checkpoints=2"))
    names = sorted(p.name for p in (tmp_path / "checkpoints").iterdir() if not p.name.startswith("."))
    assert names == ["latest", "step-0000004", "step-0000006"]
    assert latest_checkpoint(tmp_path).name == "step-0000006"


def _corrupt_copy(src: Path, dst: Path) -> int:
    """Copy a shard, replacing every third image with garbage bytes; returns how many were broken."""
    broken = images = 0
    with tarfile.open(src) as tin, tarfile.open(dst, "w") as tout:
        for member in tin.getmembers():
            data = tin.extractfile(member).read()
            if member.name.endswith((".png", ".jpg")):
                images += 1
                if images % 3 == 0:
                    data, broken = b"not an image", broken + 1
            member.size = len(data)
            tout.addfile(member, io.BytesIO(data))
    return broken


def test_bad_samples_are_skipped_and_counted(tiny_parts, tmp_path):
    urls = resolve_shards([str(tiny_parts.data)], "train")
    broken = sum(_corrupt_copy(Path(u), tmp_path / Path(u).name) for u in urls)
    assert broken > 0
    bad_urls = [str(tmp_path / Path(u).name) for u in urls]
    cfg = tiny_parts.config(tmp_path / "run")
    _, transform = create_open_clip(cfg.vision, load_weights=False)
    collator = Collator(load_tokenizer(cfg.llm), "causal", 48)
    stream = TrainStream(bad_urls, cfg.data, transform, collator, batch_size=8, seed=0, rank=0, world_size=1,
                         position=StreamPosition())
    it = iter(stream)
    good = 96 - broken
    # one epoch of good samples: every broken one in it was skipped and counted, none was fatal
    batches = [next(it) for _ in range(good // 8)]
    consumed = batches[-1].telemetry.consumed
    assert consumed >= 96 - 2  # the epoch's last samples may be broken ones
    skipped = sum(sum(b.telemetry.bad_samples.values()) + b.telemetry.rejected for b in batches)
    assert skipped == consumed - len(batches) * 8
    assert sum(b.telemetry.bad_samples.get("corrupt_image", 0) for b in batches) >= broken - 2
    assert all(b.inputs.images.shape == (8, 3, 32, 32) and torch.isfinite(b.inputs.images).all() for b in batches)


def test_too_few_shards_is_a_clear_error(tiny_parts, tmp_path):
    cfg = tiny_parts.config(tmp_path, "data.num_workers=8")
    with pytest.raises(ValueError, match="shards for 1 ranks x 8 workers"):
        train(cfg)


def test_fresh_run_refuses_to_overwrite_checkpoints(tiny_parts, tmp_path, capsys):
    train(tiny_parts.config(tmp_path, "train.max_steps=2"))
    before = (tmp_path / "checkpoints" / "step-0000002" / "__0_0.distcp").read_bytes()
    demo = Path(__file__).parent.parent / "configs" / "demo.yaml"
    assert main(["train", str(demo), *tiny_parts.overrides(tmp_path), "train.max_steps=2"]) == 2
    assert "--resume" in capsys.readouterr().err
    assert (tmp_path / "checkpoints" / "step-0000002" / "__0_0.distcp").read_bytes() == before


def test_resume_refuses_a_checkpoint_of_another_architecture(tiny_parts, tmp_path, capsys):
    demo = Path(__file__).parent.parent / "configs" / "demo.yaml"
    train(tiny_parts.config(tmp_path, "train.max_steps=2"))
    metrics = (tmp_path / "metrics.jsonl").read_text()
    for override, culprit in (("bridge.type=mlp", "bridge.type is 'qformer' there and 'mlp' here"),
                              ("llm.lora_r=8", "llm.lora_r is 4 there and 8 here"),
                              ("loss.itm_weight=0", "trained the loss terms")):
        capsys.readouterr()
        assert main(["train", str(demo), *tiny_parts.overrides(tmp_path), "train.max_steps=4", override,
                     "--resume"]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and culprit in err[0] and str(tmp_path / "checkpoints") in err[0], err
    assert (tmp_path / "metrics.jsonl").read_text() == metrics  # nothing written
    assert latest_checkpoint(tmp_path).name == "step-0000002"


def test_activation_checkpointing_recomputes_and_changes_no_number(tiny_parts, tmp_path, monkeypatch):
    """Each bridge unit (and LM block) runs its forward again in the backward pass, and with dropout on, the
    replayed RNG makes the recomputation the same: the losses are those of a run without it, bit for bit."""
    from vlm.model.bridges.qformer import QFormerLayer

    calls = []
    forward = QFormerLayer.forward
    monkeypatch.setattr(QFormerLayer, "forward", lambda self, *a, **k: calls.append(1) or forward(self, *a, **k))
    args = ["train.max_steps=3", "train.lr=3e-3", "bridge.dropout=0.1", "llm.lora_dropout=0.1"]
    forwards = {}
    for name, extra in (("plain", []), ("ac", ["train.activation_checkpointing=true"])):
        calls.clear()
        train(tiny_parts.config(tmp_path / name, *args, *extra))
        forwards[name] = len(calls)
    assert forwards["ac"] == 2 * forwards["plain"] > 0
    assert _train_losses(tmp_path / "ac") == _train_losses(tmp_path / "plain")
