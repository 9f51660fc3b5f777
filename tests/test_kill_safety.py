"""Kill at any point: a SIGKILL during a checkpoint write, an export or `vlm prep translate` leaves the previous
state whole and loadable and nothing that looks complete; what is renamed into place is fsynced first; a
`latest` naming a missing checkpoint is a one-line error, never a fresh start."""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import webdataset as wds
from PIL import Image

from data_prep.shards import write_shards
from data_prep.synthetic import english_caption, english_qa, generate_scenes
from data_prep.translate_job import STATE
from vlm.cli import main
from vlm.cli.models import is_release
from vlm.data.shards import resolve_shards
from vlm.folders import atomic_file, publish_folder, staging_folder
from vlm.release import from_pretrained
from vlm.train.checkpoint import LATEST, METADATA, latest_checkpoint, load_trained_model
from vlm.train.trainer import train

ROOT = Path(__file__).resolve().parent.parent
DEMO = str(ROOT / "configs" / "demo.yaml")
ENV = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(ROOT)}

# Runs `vlm ARGS...` with MODULE's ATTR (dotted: a class's method) wrapped to SIGKILL the process right after
# its CALLS-th call returns: the kill lands at a chosen point of a real write, with no hook in library code.
_KILL_AFTER = textwrap.dedent("""
    import functools, importlib, os, signal, sys
    module, attr, calls, *args = sys.argv[1:]
    owner = importlib.import_module(module)
    *path, name = attr.split(".")
    for part in path:
        owner = getattr(owner, part)
    real, seen = getattr(owner, name), []

    @functools.wraps(real)
    def killing(*a, **k):
        result = real(*a, **k)
        seen.append(1)
        if len(seen) == int(calls):
            os.kill(os.getpid(), signal.SIGKILL)
        return result

    setattr(owner, name, killing)
    from vlm.cli import main
    sys.exit(main(args))
""")


def _killed_at(module: str, attr: str, calls: int, *args: str) -> None:
    proc = subprocess.run([sys.executable, "-c", _KILL_AFTER, module, attr, str(calls), *args], env=ENV,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == -signal.SIGKILL, proc.stderr[-2000:]


def _record_fsyncs(monkeypatch) -> list[str]:
    """os.fsync still syncs, and records the path of every descriptor it was given."""
    synced, real = [], os.fsync

    def fsync(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        real(fd)

    monkeypatch.setattr(os, "fsync", fsync)
    return synced


def _snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


# --- checkpoints -----------------------------------------------------------------------------------


def test_a_kill_during_a_checkpoint_write_keeps_the_previous_one(tiny_parts, tmp_path, monkeypatch):
    run, steps = tmp_path / "run", ["train.max_steps=4", "train.save_every=2"]
    # The second dcp.save (step 4's) has written its shards into the staging folder when the kill lands.
    _killed_at("torch.distributed.checkpoint", "save", 2, "train", DEMO, *tiny_parts.overrides(run), *steps)
    root = run / "checkpoints"
    staging = root / ".step-0000004.tmp"
    assert (staging / METADATA).is_file() and not (staging / "training_state.pt").exists()
    assert not (root / "step-0000004").exists()
    assert (root / LATEST).read_text() == "step-0000002\n" and latest_checkpoint(run) == root / "step-0000002"
    assert load_trained_model(run) is not None

    synced = _record_fsyncs(monkeypatch)
    train(tiny_parts.config(run, *steps), resume=True)  # the next save ignores and removes the half-written one
    assert latest_checkpoint(run) == root / "step-0000004"
    assert sorted(p.name for p in root.iterdir()) == ["latest", "step-0000002", "step-0000004"]
    assert str(root.resolve() / f".{LATEST}.tmp") in synced  # the pointer is flushed before it replaces `latest`


# --- exports ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def trained_run(tiny_parts, tmp_path_factory) -> Path:
    run = tmp_path_factory.mktemp("run")
    train(tiny_parts.config(run, "train.max_steps=2"))
    return run


def test_a_kill_during_an_export_leaves_no_release_and_keeps_an_earlier_one(trained_run, tmp_path):
    out = tmp_path / "release"
    staging = tmp_path / ".release.tmp"
    export = ("export", str(trained_run), "--out", str(out))
    # The weights are written, config.json is not, when the kill lands.
    _killed_at("vlm.release.native", "_save_weights", 1, *export)
    assert not out.exists() and not is_release(out)
    assert (staging / "model.safetensors").is_file() and not (staging / "config.json").exists()

    assert main(list(export)) == 0
    assert not staging.exists()  # the next export to the same place starts from a clean staging folder
    before = _snapshot(out)
    _killed_at("vlm.release.native", "_save_weights", 1, *export)
    assert (staging / "model.safetensors").is_file()
    assert _snapshot(out) == before
    assert from_pretrained(out) is not None


# --- vlm prep translate ----------------------------------------------------------------------------

PER_SHARD = 6


@pytest.fixture(scope="module")
def english(tmp_path_factory) -> list[str]:
    folder = tmp_path_factory.mktemp("english")
    samples = []
    for i, scene in enumerate(generate_scenes(3 * PER_SHARD, seed=5)):
        png = io.BytesIO()
        Image.new("RGB", (8, 8), (i * 13 % 256, 0, 0)).save(png, format="PNG")
        record = {"captions": {"en": [english_caption(scene)]}, "qa": [{"lang": "en", **q} for q in english_qa(scene)]}
        samples.append({"__key__": f"s{i:04d}", "png": png.getvalue(), "json": record})
    return [str(p) for p in write_shards(samples, folder, "train", maxcount=PER_SHARD)]


def _translate(inputs: list[str], out: Path) -> tuple[str, ...]:
    return ("prep", "translate", *inputs, "--out", str(out), "--backend", "phrase-table", "--langs", "de,zh")


def _samples(*urls: Path) -> dict[str, tuple]:
    return {s["__key__"]: (s["png"], json.loads(s["json"]))
            for s in wds.WebDataset([str(u) for u in urls], shardshuffle=False)}


def test_a_killed_translation_keeps_finished_shards_and_resumes_to_the_same_output(english, tmp_path):
    reference, out = tmp_path / "reference", tmp_path / "out"
    assert main(list(_translate(english, reference))) == 0
    # Killed two samples into the second shard's tar: the first shard is renamed into place and marked done.
    _killed_at("webdataset.writer", "TarWriter.write", PER_SHARD + 2, *_translate(english, out))
    first, second = Path(english[0]).name, Path(english[1]).name
    assert sorted(p.name for p in (out / STATE / "done").iterdir()) == [first.replace(".tar", ".json")]
    assert _samples(out / first) == _samples(reference / first)  # whole
    assert (out / STATE / "work" / second.removesuffix(".tar") / second).is_file()  # the partial one stays aside
    assert not (out / second).exists() and not (out / "manifest.json").exists()
    with pytest.raises(FileNotFoundError, match="no manifest.json"):  # training cannot take the folder as done
        resolve_shards([str(out)], "train")

    assert main(list(_translate(english, out))) == 0
    names = [Path(u).name for u in english]
    assert _samples(*(out / n for n in names)) == _samples(*(reference / n for n in names))
    ours, theirs = (json.loads((d / "manifest.json").read_text()) for d in (out, reference))
    assert ours["counts"] == theirs["counts"] and ours["stats"] == theirs["stats"]
    assert not (out / STATE / "work").exists()


# --- a broken `latest` -----------------------------------------------------------------------------


def test_latest_naming_a_missing_checkpoint_is_a_one_line_error(tiny_parts, tmp_path, capsys):
    run = tmp_path / "run"
    (run / "checkpoints").mkdir(parents=True)
    (run / "checkpoints" / LATEST).write_text("step-0000009\n")
    vlm = Path(sys.executable).parent / "vlm"  # the console script, as a user runs it
    proc = subprocess.run([str(vlm), "train", DEMO, *tiny_parts.overrides(run), "--resume"], env=ENV,
                          capture_output=True, text=True, timeout=120)
    err = proc.stderr.strip().splitlines()
    assert proc.returncode == 2 and len(err) == 1, proc.stderr
    assert f"{run / 'checkpoints' / LATEST} names {run / 'checkpoints' / 'step-0000009'}, which is missing" in err[0]
    assert "point it at an existing step-* folder or remove it" in err[0]

    (run / "checkpoints" / "step-0000009").mkdir()  # a folder, but no checkpoint in it
    for args in (["train", DEMO, *tiny_parts.overrides(run)], ["export", str(run), "--out", str(tmp_path / "r")]):
        assert main(args) == 2  # a fresh run, and a command reading the run's checkpoint
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"which is not a checkpoint (no {METADATA})" in err[0], err
    assert not (run / "metrics.jsonl").exists()


# --- fsync -----------------------------------------------------------------------------------------


def test_publish_folder_and_atomic_file_fsync_before_and_after_the_rename(tmp_path, monkeypatch):
    synced = _record_fsyncs(monkeypatch)
    base = tmp_path.resolve()
    folder = base / "release"
    for attempt in range(2):  # a new folder, then one replacing it
        tmp = staging_folder(folder)
        (tmp / "sub").mkdir(parents=True)
        (tmp / "sub" / "weights.bin").write_bytes(b"w" * attempt)
        publish_folder(tmp, folder, {"README.md": "card"})
        expected = {str(tmp / "sub" / "weights.bin"), str(tmp / "README.md"), str(tmp / "sub"), str(tmp)}
        assert set(synced[:-1]) == expected and synced[-1] == str(base), synced  # the contents, then the rename
        assert (folder / "sub" / "weights.bin").read_bytes() == b"w" * attempt
        synced.clear()
    assert sorted(p.name for p in base.iterdir()) == ["release"]

    with atomic_file(base / "cache.bin") as tmp:
        tmp.write_bytes(b"features")
    assert synced == [str(tmp), str(base)]
    assert (base / "cache.bin").read_bytes() == b"features"
