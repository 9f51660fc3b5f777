"""Config loading: overrides, strict validation with one-line errors, exit code 2 from the CLI."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from vlm.cli import main
from vlm.config import Config, ConfigError, check_paths, config_from_dict, load_config

ROOT = Path(__file__).resolve().parent.parent
DEMO = ROOT / "configs" / "demo.yaml"


def test_demo_config_loads_and_overrides_apply():
    cfg = load_config(DEMO, ["train.lr=3e-4", "data.languages=[en,de]", "llm.lora_r=0", "bridge.num_queries=8"])
    assert cfg.train.lr == pytest.approx(3e-4)
    assert cfg.data.languages == ["en", "de"]
    assert cfg.llm.lora_r == 0 and cfg.bridge.num_queries == 8
    assert cfg.train.batch_size == 32  # untouched keys keep the file's value


@pytest.mark.parametrize("bridge", ["qformer", "moe", "mlp"])
def test_bridge_type_alone_switches_the_bridge(tiny_parts, tmp_path, bridge):
    """The demo config trains BLIP-2's stage-1 terms; another bridge leaves them inactive, no other key changes."""
    from vlm.model.vlm import VisionLLM
    from vlm.objective.objective import active_loss_weights

    def active(cfg) -> set[str]:  # the structure is enough: built on the meta device, no parts read
        return set(active_loss_weights(cfg, VisionLLM(cfg, device="meta").bridge))

    expected = {"qformer": {"lm", "contrastive", "itc", "itm", "itg"}, "moe": {"lm", "contrastive"},
                "mlp": {"lm", "contrastive"}}[bridge]
    assert active(tiny_parts.config(tmp_path, f"bridge.type={bridge}")) == expected
    balanced = tiny_parts.config(tmp_path, f"bridge.type={bridge}", "loss.moe_balance_weight=0.01")
    assert ("moe_balance" in active(balanced)) == (bridge == "moe")


def test_round_trip_through_dict():
    cfg = load_config(DEMO)
    assert config_from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg


@pytest.mark.parametrize(
    "override, culprit",
    [
        ("train.lrr=1", "train.lrr"),  # unknown key
        ("nosuch.key=1", "nosuch"),  # unknown section
        ("train.batch_size=abc", "train.batch_size"),  # wrong type
        ("train.batch_size=1.5", "train.batch_size"),
        ("train.progress=maybe", "train.progress"),
        ("train.batch_size=0", "train.batch_size"),  # impossible values
        ("train.lr=-1", "train.lr"),
        ("bridge.hidden_size=130", "bridge.hidden_size"),
        ("bridge.type=perceiver", "bridge.type"),  # unknown bridge type
        ("data.languages=[en,xx]", "xx"),  # unknown language
        ("data.tasks=[caption,ocr]", "data.tasks"),  # unknown task
        ("data.task_weights=[1.0]", "data.task_weights"),
        ("llm.kind=encoder", "llm.kind"),
        ("loss.init_temperature=2", "loss.init_temperature"),
        ("bridge.top_k=9", "bridge.top_k"),  # more than num_experts
        ("bridge.moe_init=zeros", "bridge.moe_init"),
        ("loss.itm_weight=-1", "loss.itm_weight"),
        ("bridge.text_branch=false", "loss.itc_weight"),  # the demo's Q-Former trains ITC on its text branch
        ("loss.itc_weight=0", "loss.itm_weight"),  # ITM negatives come from the ITC similarities
        ("loss.itc_label_smoothing=1.0", "loss.itc_label_smoothing"),
        ("eval.retrieval_captions=some", "eval.retrieval_captions"),
    ],
)
def test_bad_values_fail_with_one_line_naming_the_key(override, culprit):
    with pytest.raises(ConfigError) as err:
        load_config(DEMO, [override])
    message = str(err.value)
    assert culprit in message and "\n" not in message


# Hub ids and built-in names: left to the loaders (they may be in the local cache).
HUB = ["llm.name=bigscience/bloomz-560m", "llm.tokenizer=", "vision.name=ViT-B-16", "vision.model_config_dir="]


def test_missing_file_and_paths():
    with pytest.raises(ConfigError, match="config file not found"):
        load_config("no/such/config.yaml")
    check_paths(load_config(DEMO, HUB))
    for override, culprit in (("llm.name=./no/such/model", "llm.name"),
                              ("llm.tokenizer=/no/such/tokenizer", "llm.tokenizer"),
                              ("vision.name=local-dir:/no/such/clip", "vision.name"),
                              ("vision.pretrained=/no/such/weights.safetensors", "vision.pretrained"),
                              ("bridge.init_from=/no/such/blip2", "bridge.init_from"),
                              ("bridge.tokenizer=./no/such/tokenizer", "bridge.tokenizer")):
        with pytest.raises(ConfigError, match=culprit):
            check_paths(load_config(DEMO, HUB + [override]))


def test_not_yaml(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("train: [unclosed\n")
    with pytest.raises(ConfigError, match="bad.yaml"):
        load_config(bad)


def test_cli_exits_2_before_building_anything(tmp_path, capsys):
    code = main(["train", str(DEMO), "train.batch_size=-3"])
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "train.batch_size" in err[0]
    assert main(["train", str(tmp_path / "missing.yaml")]) == 2
    # data shards that do not exist also stop the run before the model is built
    code = main(["train", str(DEMO), f"data.train=[{tmp_path}/none-*.tar]", *HUB])
    assert code == 2
    assert "data.train" in capsys.readouterr().err


def test_console_script_exit_code(tmp_path):
    out = subprocess.run([sys.executable, "-m", "vlm.cli", "train", str(DEMO), "bridge.type=perceiver"],
                         capture_output=True, text=True, cwd=tmp_path)
    assert out.returncode == 2
    assert "bridge.type" in out.stderr and len(out.stderr.strip().splitlines()) == 1


def test_defaults_are_valid():
    config_from_dict(Config().to_dict())


@pytest.mark.parametrize("path", sorted((ROOT / "configs").glob("*.yaml")), ids=lambda p: p.name)
def test_every_shipped_config_is_valid(path):
    cfg = load_config(path)
    assert cfg.data.languages and cfg.train.max_steps > 0
