"""Files the stack loads never run code: a pickle crafted to create a marker file when unpickled is refused in one
line (exit 2), and the marker never appears; every torch.load reads weights only; transformers runs a model's own
code only when the config's llm.trust_remote_code says so."""

from __future__ import annotations

import ast
import os
import pickle
import subprocess
import sys
import warnings
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "configs" / "demo.yaml"
VLM = Path(sys.executable).parent / "vlm"
SOURCES = ("vlm", "eval", "data_prep", "scripts", "benchmarks")


class Payload:
    """Unpickled, it would run `touch MARKER`."""

    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def _vlm(*argv: str, cwd: Path) -> subprocess.CompletedProcess:
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
    return subprocess.run([str(VLM), *argv], capture_output=True, text=True, env=env, cwd=cwd, timeout=300)


def _one_line_exit_2(result: subprocess.CompletedProcess, culprit: str) -> None:
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert "Traceback" not in result.stderr and result.returncode == 2, result.stderr
    assert len(lines) == 1 and culprit in lines[0], result.stderr


def _checkpoint(run: Path, cfg) -> Path:
    """A run folder whose latest checkpoint holds `cfg`, a real tensor index and a real training state."""
    import torch.distributed.checkpoint as dcp

    step = run / "checkpoints" / "step-0000002"
    step.mkdir(parents=True)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled", category=UserWarning)
        dcp.save({"unused": torch.zeros(1)}, checkpoint_id=str(step), no_dist=True)
    cfg.save(step / "config.json")
    torch.save({"step": 2}, step / "training_state.pt")
    (run / "checkpoints" / "latest").write_text(step.name + "\n")
    return step


@pytest.fixture
def marker(tmp_path) -> Path:
    return tmp_path / "pwned"


def test_a_crafted_training_state_is_never_unpickled(tiny_parts, tmp_path, marker):
    run = tmp_path / "run"
    step = _checkpoint(run, tiny_parts.config(run))
    torch.save({"step": Payload(marker)}, step / "training_state.pt")
    result = _vlm("train", str(DEMO), *tiny_parts.overrides(run), "--resume", cwd=tmp_path)
    assert not marker.exists() and result.returncode != 0  # refused; how it is reported: the next test


def test_a_crafted_training_state_is_one_line_exit_2(tiny_parts, tmp_path, marker):
    run = tmp_path / "run"
    step = _checkpoint(run, tiny_parts.config(run))
    torch.save({"step": Payload(marker)}, step / "training_state.pt")
    result = _vlm("train", str(DEMO), *tiny_parts.overrides(run), "--resume", cwd=tmp_path)
    _one_line_exit_2(result, "training_state.pt")
    assert not (run / "metrics.jsonl").exists()


def test_a_crafted_checkpoint_index_is_never_unpickled(tiny_parts, tmp_path, marker):
    run = tmp_path / "run"
    step = _checkpoint(run, tiny_parts.config(run))
    (step / ".metadata").write_bytes(pickle.dumps(Payload(marker)))
    result = _vlm("eval", str(run), "--out", str(tmp_path / "eval"), cwd=tmp_path)
    assert not marker.exists()
    _one_line_exit_2(result, ".metadata")


def _dcp_with_object(step: Path, obj) -> None:
    """A DCP checkpoint holding a non-tensor entry (as an optimizer's param_groups are), pickled by DCP itself."""
    import torch.distributed.checkpoint as dcp

    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled", category=UserWarning)
        dcp.save({"weight": torch.ones(2), "extra": obj}, checkpoint_id=str(step), no_dist=True)


def _dcp_load(step: Path, extra=None, **reading) -> dict:
    import torch.distributed.checkpoint as dcp

    state = {"weight": torch.zeros(2), "extra": extra}  # `extra` as saved: DCP flattens nested dicts
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled", category=UserWarning)
        dcp.load(state, checkpoint_id=str(step), no_dist=True, **reading)
    return state


def test_a_crafted_non_tensor_entry_of_a_checkpoint_is_never_unpickled(tmp_path, marker):
    from torch.distributed.checkpoint.api import CheckpointException

    from vlm.train.safe_dcp import SafeLoadPlanner, SafeReader

    _dcp_with_object(tmp_path / "plain", {"lr": 1e-3, "betas": (0.9, 0.99), "params": ["a.b"]})
    state = _dcp_load(tmp_path / "plain", {"lr": 0.0, "betas": None, "params": None},
                      storage_reader=SafeReader(str(tmp_path / "plain")), planner=SafeLoadPlanner())
    assert state["extra"] == {"lr": 1e-3, "betas": (0.9, 0.99), "params": ["a.b"]}
    assert torch.equal(state["weight"], torch.ones(2))

    _dcp_with_object(tmp_path / "crafted", Payload(marker))
    _dcp_load(tmp_path / "crafted")  # DCP's own planner runs the payload: the threat is real
    assert marker.exists()
    marker.unlink()
    with pytest.raises(CheckpointException, match="posix.system"):  # DCP's wrapping of the UnpicklingError
        _dcp_load(tmp_path / "crafted", storage_reader=SafeReader(str(tmp_path / "crafted")),
                  planner=SafeLoadPlanner())
    assert not marker.exists()


def test_the_index_allowlist_reads_a_real_index_and_refuses_anything_else(tmp_path, marker):
    from vlm.train.safe_dcp import SafeReader

    _dcp_with_object(tmp_path / "step", {"lr": 1.0})
    index = SafeReader(str(tmp_path / "step")).read_metadata().state_dict_metadata
    assert tuple(index["weight"].size) == (2,)
    (tmp_path / "step" / ".metadata").write_bytes(pickle.dumps(Payload(marker)))
    with pytest.raises(pickle.UnpicklingError, match="posix.system|os.system"):
        SafeReader(str(tmp_path / "step")).read_metadata()
    assert not marker.exists()


def test_a_crafted_encoder_checkpoint_is_never_unpickled(tiny_parts, tmp_path, marker):
    weights = tmp_path / "clip.pt"
    torch.save({"state_dict": Payload(marker)}, weights)
    configs = ROOT / "configs" / "open_clip"
    result = _vlm("train", str(DEMO), *tiny_parts.overrides(tmp_path / "run"), "vision.name=tiny-test-vit",
                  f"vision.model_config_dir={configs}", f"vision.pretrained={weights}", cwd=tmp_path)
    assert not marker.exists()
    _one_line_exit_2(result, "'vision.pretrained'")
    assert not (tmp_path / "run").exists()


# --- the source tree ---------------------------------------------------------------------------------


def _calls(attribute: str) -> list[tuple[str, ast.Call]]:
    """Every call `<something>.<attribute>(...)` in the stack's Python sources, with its file:line."""
    found = []
    for folder in SOURCES:
        for path in sorted((ROOT / folder).rglob("*.py")):
            for node in ast.walk(ast.parse(path.read_text(), str(path))):
                if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == attribute:
                    found.append((f"{path.relative_to(ROOT)}:{node.lineno}", node))
    return found


def _keyword(call: ast.Call, name: str) -> ast.expr | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def test_every_torch_load_reads_weights_only():
    loads = [(where, call) for where, call in _calls("load")
             if isinstance(call.func.value, ast.Name) and call.func.value.id == "torch"]
    assert loads, "no torch.load found: the search is broken"
    for where, call in loads:
        value = _keyword(call, "weights_only")
        assert isinstance(value, ast.Constant) and value.value is True, f"{where}: torch.load without weights_only=True"
    unpickled = [where for name in ("load", "loads", "Unpickler") for where, call in _calls(name)
                 if isinstance(call.func.value, ast.Name) and call.func.value.id in ("pickle", "dill", "cloudpickle")]
    assert not unpickled, f"unpickling outside torch.load(weights_only=True): {unpickled}"


def test_trust_remote_code_comes_only_from_the_config():
    calls = _calls("from_pretrained")
    assert len(calls) >= 5, "too few from_pretrained calls found: the search is broken"
    for where, call in calls:
        value = _keyword(call, "trust_remote_code")
        assert value is None or (isinstance(value, ast.Attribute) and value.attr == "trust_remote_code"), \
            f"{where}: trust_remote_code is set from something other than the config"
    from vlm.config import LLMConfig

    assert LLMConfig().trust_remote_code is False


@pytest.mark.parametrize("trusted", [False, True])
def test_the_lm_loaders_get_the_configs_trust_remote_code(tiny_parts, tmp_path, monkeypatch, trusted):
    from vlm.model import llm

    seen = []

    def recording(cls):
        original = cls.from_pretrained

        def from_pretrained(*args, **kwargs):
            seen.append((cls.__name__, kwargs.get("trust_remote_code", False)))
            return original(*args, **kwargs)

        monkeypatch.setattr(cls, "from_pretrained", from_pretrained)

    for cls in (llm.AutoConfig, llm.AutoTokenizer, llm.AutoModelForCausalLM):
        recording(cls)
    cfg = tiny_parts.config(tmp_path, f"llm.trust_remote_code={str(trusted).lower()}").llm
    llm.LanguageModel(cfg).load_weights()
    llm.load_tokenizer(cfg)
    assert {name for name, _ in seen} == {"AutoConfig", "AutoTokenizer", "AutoModelForCausalLM"}
    assert all(flag is trusted for _, flag in seen), seen
