"""Every bad config or command-line input, through the `vlm` console script: exit 2 with one line on stderr naming
the culprit, no traceback, nothing written, before any model is built in memory.

The cases run as subprocesses, two at a time, once per module (`outcomes`); each case is then its own test.
Model-level cases use the tiny parts of conftest.py; hub ids meet an empty Hugging Face cache, offline.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "configs" / "demo.yaml"
VLM = Path(sys.executable).parent / "vlm"  # the venv's console script
OFFLINE = "HF_HUB_OFFLINE"


@dataclass(frozen=True)
class Case:
    name: str
    argv: tuple[str, ...]  # after `vlm`; {placeholders} are filled from the fixture's paths
    culprits: tuple[str, ...]  # each must be in the error line
    base: bool = True  # train/plan: the tiny parts' overrides go first, the case's own last
    untouched: str = "{out}"  # must not exist afterwards ("" for none)


def train(*overrides: str, culprits: tuple[str, ...] | str, name: str, config: str = "{demo}", **kw) -> Case:
    return Case(name, ("train", config, *overrides), (culprits,) if isinstance(culprits, str) else culprits, **kw)


CASES = [
    # --- keys, types, syntax ------------------------------------------------------------------------
    train("train.lrr=1", culprits="train.lrr", name="unknown-key"),
    train("nosuch.key=1", culprits="nosuch", name="unknown-section"),
    train("train.lr", culprits="train.lr", name="override-without-value"),
    train("train.batch_size=abc", culprits="train.batch_size", name="type-int"),
    train("train.progress=maybe", culprits="train.progress", name="type-bool"),
    train("data.languages={{a: 1}}", culprits="data.languages", name="type-list"),
    train("llm.name=[a,b]", culprits="llm.name", name="type-str"),
    train(config="{tmp}/none.yaml", culprits="none.yaml", name="config-missing", base=False),
    train(config="{bad_yaml}", culprits="bad.yaml", name="config-not-yaml", base=False),
    train(config="{list_yaml}", culprits="list.yaml", name="config-not-a-mapping", base=False),
    # --- ranges ---------------------------------------------------------------------------------------
    train("train.lr=-1", culprits="train.lr", name="range-lr"),
    train("bridge.dropout=1.5", culprits="bridge.dropout", name="range-dropout"),
    train("train.max_nonfinite=-1", culprits="train.max_nonfinite", name="range-max-nonfinite"),
    train("train.dist_timeout_s=0", culprits="train.dist_timeout_s", name="range-dist-timeout"),
    train("bridge.hidden_size=33", culprits="bridge.hidden_size", name="range-heads"),
    # --- languages and choices ------------------------------------------------------------------------
    train("data.languages=[en,xx]", culprits="'xx'", name="language-data"),
    train("prep.translate.languages=[de,qq]", culprits="'qq'", name="language-prep"),
    train("train.benchmark_every=2", "eval.languages=[en,zz]", culprits="'zz'", name="language-eval"),
    train("bridge.type=perceiver", culprits="bridge.type", name="choice-bridge"),
    train("train.strategy=zero3", culprits="train.strategy", name="choice-strategy"),
    train("train.strategy=fsdp2", culprits="fsdp2", name="strategy-without-torchrun"),
    train("llm.kind=encoder", culprits="llm.kind", name="choice-kind"),
    train("llm.dtype=int8", culprits="llm.dtype", name="choice-dtype"),
    train("data.tasks=[caption,ocr]", culprits="data.tasks", name="choice-task"),
    train("llm.lora_targets=q_proj,,v_proj", culprits="llm.lora_targets", name="lora-targets-syntax"),
    # --- paths ----------------------------------------------------------------------------------------
    train("llm.name=./no/such/model", culprits="llm.name", name="path-llm"),
    train("vision.name=local-dir:/no/such/clip", culprits="vision.name", name="path-clip"),
    train("vision.pretrained=/no/such/w.safetensors", culprits="vision.pretrained", name="path-clip-weights"),
    train("data.train=[{tmp}/none-*.tar]", culprits="data.train", name="path-shards"),
    train("data.templates=/no/such/templates.yaml", culprits="data.templates", name="path-templates"),
    # --- what the model's own config says ---------------------------------------------------------------
    train("llm.kind=seq2seq", culprits=("llm.kind", "decoder-only"), name="kind-of-causal-model"),
    train("llm.name={t5}", culprits=("llm.kind", "encoder-decoder"), name="kind-of-seq2seq-model"),
    train("llm.name={vit}", culprits=("llm.name", "'vit'"), name="architecture-not-an-lm"),
    train("llm.name={unknown_type}", culprits=("llm.name", "nosuchlm"), name="architecture-unknown"),
    train("llm.name={tokenizer}", culprits=("llm.name", "config.json"), name="folder-without-config"),
    train("llm.lora_targets=q_proj,nosuch", culprits=("llm.lora_targets", "'nosuch'"), name="lora-target-missing"),
    train("llm.lora_targets=norm", culprits=("llm.lora_targets", "'norm'"), name="lora-target-not-linear"),
    train("vision.layer=5", culprits="vision.layer", name="vision-layer-too-deep"),
    train("vision.layer=-3", culprits="vision.layer", name="vision-layer-negative"),
    train("vision.name=NoSuch-ViT", culprits="vision.name", name="vision-unknown-model"),
    # --- hub ids and pretrained tags, offline -------------------------------------------------------------
    train("llm.name=bigscience/bloomz-560m", "llm.tokenizer=", culprits=("llm.name", OFFLINE, "local folder"),
          name="hub-id-offline"),
    train("llm.tokenizer=bigscience/bloomz-560m", culprits=("llm.tokenizer", OFFLINE), name="hub-tokenizer-offline"),
    train("bridge.init_from=Salesforce/blip2-opt-2.7b", culprits=("bridge.init_from", OFFLINE),
          name="hub-init-from-offline"),
    train("vision.name=tiny-test-vit", "vision.pretrained=nosuchtag", culprits=("vision.pretrained", "nosuchtag"),
          name="open-clip-unknown-tag"),
    train("vision.name=ViT-B-16", "vision.pretrained=openai", "vision.model_config_dir=",
          culprits=("vision.pretrained", OFFLINE, "local checkpoint file"), name="open-clip-tag-offline"),
    # --- runs and checkpoints -------------------------------------------------------------------------------
    train("train.output_dir={other_run}", "--resume", culprits=("another architecture", "bridge.type"),
          name="resume-another-architecture", untouched=""),
    train("train.output_dir={same_run}", culprits="--resume", name="checkpoints-without-resume", untouched=""),
    # --- other commands ---------------------------------------------------------------------------------------
    Case("plan-kind", ("plan", "{demo}", "llm.kind=seq2seq"), ("llm.kind",)),
    Case("plan-lora-target", ("plan", "{demo}", "llm.lora_targets=nosuch"), ("'nosuch'",)),
    Case("plan-gpus", ("plan", "{demo}", "--gpus", "0"), ("--gpus",)),
    Case("eval-missing-model", ("eval", "{tmp}/no-such-run", "--out", "{out}"), ("no-such-run",), base=False),
    Case("eval-run-lora-target", ("eval", "{bad_lora_run}", "--out", "{out}"), ("llm.lora_targets",), base=False),
    Case("eval-language", ("eval", "{same_run}", "--langs", "en,xx", "--out", "{out}"), ("xx",), base=False),
    Case("eval-split-unknown", ("eval", "{same_run}", "eval.split=test_2019_flickr", "--suite", "multi30k",
                                "--data-root", "{tmp}", "--out", "{out}"),
         ("eval.split", "'test_2019_flickr'", "test_2016_flickr, test_2017_flickr"), base=False),
    Case("eval-split-single-split-suite", ("eval", "{same_run}", "eval.split=test", "--suite", "maxm",
                                           "--data-root", "{tmp}", "--out", "{out}"),
         ("eval.split", "'maxm' has one split"), base=False),
    Case("eval-split-language", ("eval", "{same_run}", "eval.split=test_2017_flickr", "--suite", "multi30k",
                                 "--data-root", "{tmp}", "--langs", "de,cs", "--out", "{out}"),
         ("test_2017_flickr", "'cs'", "available: en de fr"), base=False),
    Case("export-run-kind", ("export", "{bad_kind_run}", "--out", "{out}"), ("llm.kind",), base=False),
    Case("export-flags", ("export", "{same_run}", "--out", "{out}", "--delta", "--merge-lora"), ("--delta",),
         base=False),
    Case("caption-language", ("caption", "{tmp}/release", "{tmp}/img.png", "--lang", "xx"), ("--lang",), base=False),
    train("eval.alignment_pairs=1", culprits="eval.alignment_pairs", name="range-alignment-pairs"),
    train("train.benchmark_every=2", "eval.alignment_layer=2", culprits=("eval.alignment_layer", "1 layer"),
          name="alignment-layer-too-deep"),
    Case("eval-alignment-layer", ("eval", "{same_run}", "eval.alignment_layer=-2", "--out", "{out}"),
         ("eval.alignment_layer", "(-2)"), base=False),
]


def _write_checkpoint(run: Path, cfg) -> None:
    """A run folder whose latest checkpoint holds `cfg` and a real (empty) tensor index, no weights."""
    import torch
    import torch.distributed.checkpoint as dcp

    step = run / "checkpoints" / "step-0000002"
    step.mkdir(parents=True)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="torch.distributed is disabled", category=UserWarning)
        dcp.save({"unused": torch.zeros(1)}, checkpoint_id=str(step), no_dist=True)
    cfg.save(step / "config.json")
    (run / "checkpoints" / "latest").write_text(step.name + "\n")


@pytest.fixture(scope="module")
def places(tiny_parts, tmp_path_factory) -> dict[str, str]:
    from transformers import ViTConfig

    tmp = tmp_path_factory.mktemp("bad-inputs")
    ViTConfig(hidden_size=32, num_hidden_layers=1, num_attention_heads=2).save_pretrained(tmp / "vit")
    (tmp / "unknown").mkdir()
    (tmp / "unknown" / "config.json").write_text(json.dumps({"model_type": "nosuchlm"}))
    (tmp / "bad.yaml").write_text("train: [unclosed\n")
    (tmp / "list.yaml").write_text("- train\n- eval\n")
    _write_checkpoint(tmp / "other-run", tiny_parts.config(tmp / "other-run", "bridge.type=mlp"))
    _write_checkpoint(tmp / "same-run", tiny_parts.config(tmp / "same-run"))
    _write_checkpoint(tmp / "bad-lora-run", tiny_parts.config(tmp / "bad-lora-run", "llm.lora_targets=nosuch"))
    _write_checkpoint(tmp / "bad-kind-run", tiny_parts.config(tmp / "bad-kind-run", "llm.kind=seq2seq"))
    return {"tmp": str(tmp), "demo": str(DEMO), "t5": str(tiny_parts.seq2seq), "vit": str(tmp / "vit"),
            "unknown_type": str(tmp / "unknown"), "tokenizer": str(tiny_parts.tokenizer),
            "bad_yaml": str(tmp / "bad.yaml"), "list_yaml": str(tmp / "list.yaml"),
            "other_run": str(tmp / "other-run"), "same_run": str(tmp / "same-run"),
            "bad_lora_run": str(tmp / "bad-lora-run"), "bad_kind_run": str(tmp / "bad-kind-run")}


def _listing(folder: Path) -> list[tuple[str, int]]:
    return sorted((str(p.relative_to(folder)), p.stat().st_size) for p in folder.rglob("*"))


def _argv(case: Case, places: dict[str, str], base: list[str]) -> list[str]:
    filled = [part.format(**places, out=f"{places['tmp']}/out-{case.name}") for part in case.argv]
    if case.base:  # overrides after the config (options of the command may follow: main() sorts them out)
        filled = filled[:2] + base + filled[2:]
    return filled


@pytest.fixture(scope="module")
def outcomes(places, tiny_parts) -> dict[str, subprocess.CompletedProcess]:
    runs = {name: _listing(Path(places[name])) for name in ("other_run", "same_run")}
    env = {**os.environ, OFFLINE: "1", "HF_HUB_CACHE": f"{places['tmp']}/empty-hub-cache",
           "TOKENIZERS_PARALLELISM": "false"}
    base = tiny_parts.overrides(Path(places["tmp"]) / "unused")
    base = [item for item in base if not item.startswith("train.output_dir=")]

    def run(case: Case) -> subprocess.CompletedProcess:
        out = f"train.output_dir={places['tmp']}/out-{case.name}"
        argv = _argv(case, places, base + [out] if case.argv[0] == "train" else base)
        return subprocess.run([str(VLM), *argv], capture_output=True, text=True, env=env, cwd=places["tmp"],
                              timeout=300)

    with ThreadPoolExecutor(max_workers=2) as pool:
        results = dict(zip((c.name for c in CASES), pool.map(run, CASES)))
    for name, before in runs.items():  # the run folders the cases point at are left as they were
        assert _listing(Path(places[name])) == before, name
    return results


def test_the_table_is_big_enough():
    assert len(CASES) >= 30 and len({c.name for c in CASES}) == len(CASES)


@pytest.mark.parametrize("case", [pytest.param(case, id=case.name) for case in CASES])
def test_bad_input_is_one_line_and_exit_2(case, outcomes, places):
    result = outcomes[case.name]
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert "Traceback" not in result.stderr, result.stderr
    assert result.returncode == 2, result.stderr
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"vlm {case.argv[0]}: error: "), lines[0]
    for culprit in case.culprits:
        assert culprit in lines[0], lines[0]
    if case.untouched:
        assert not Path(case.untouched.format(out=f"{places['tmp']}/out-{case.name}")).exists()
