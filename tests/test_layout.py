"""The layout's promises: dependencies point one way (only vlm/cli composes `vlm`, `eval` and `data_prep`), a new
bridge is one module plus its config name, and a batch may carry the encoder's tokens instead of pixels."""

from __future__ import annotations

import ast
import sys
import types
from pathlib import Path

import pytest
import torch
from torch import nn

from vlm import config as vlm_config
from vlm.config import BridgeConfig
from vlm.model.bridge import Bridge, BridgeOutput
from vlm.model.vlm import VisionLLM
from vlm.objective.objective import Objective

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("vlm", "eval", "data_prep")


def _imports(path: Path) -> set[str]:
    """Every module a file imports, at the top or inside functions (absolute names)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names |= {node.module} | {f"{node.module}.{alias.name}" for alias in node.names}
    return names


def _package_graph() -> dict[str, set[str]]:
    """Top-level package -> the packages it imports, with vlm/cli (the composition root) left out."""
    graph: dict[str, set[str]] = {p: set() for p in PACKAGES}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            if path.is_relative_to(ROOT / "vlm" / "cli"):
                continue
            for name in _imports(path):
                top = name.split(".")[0]
                assert not name.startswith("vlm.cli"), f"{path.relative_to(ROOT)} imports the CLI ({name})"
                if top in PACKAGES and top != package:
                    graph[package].add(top)
    return graph


def test_dependencies_point_one_way():
    graph = _package_graph()
    assert graph == {"data_prep": set(), "vlm": {"data_prep"}, "eval": {"vlm", "data_prep"}}
    cli = set().union(*(_imports(p) for p in (ROOT / "vlm" / "cli").rglob("*.py")))
    assert {name.split(".")[0] for name in cli} >= set(PACKAGES)  # ... and the CLI composes all three


class MeanPool(Bridge):
    """A fourth bridge in a dozen lines: the mean image token, projected, as a one-token prefix."""

    def __init__(self, cfg: BridgeConfig, vision_width: int, llm_width: int, text_vocab_size: int = 0):
        super().__init__()
        self.proj = nn.Linear(vision_width, llm_width)

    def forward(self, image_tokens, text_embeds=None, text_mask=None) -> BridgeOutput:
        out = self.proj(image_tokens.mean(dim=1, keepdim=True))
        return BridgeOutput(visual_tokens=out, hidden=out)

    @staticmethod
    def describe(cfg: BridgeConfig) -> str:
        return "mean-pool projector"


def test_a_new_bridge_is_one_module_plus_its_config_name(tiny_parts, tmp_path, monkeypatch):
    module = types.ModuleType("vlm.model.bridges.meanpool")
    module.BRIDGE = MeanPool
    monkeypatch.setitem(sys.modules, "vlm.model.bridges.meanpool", module)  # as if the file were there
    monkeypatch.setattr(vlm_config, "BRIDGE_TYPES", (*vlm_config.BRIDGE_TYPES, "meanpool"))
    from vlm.train.trainer import train

    result = train(tiny_parts.config(tmp_path, "bridge.type=meanpool", "train.max_steps=2"))
    assert isinstance(result.model.bridge, MeanPool) and set(result.objective.weights) == {"lm", "contrastive"}
    features = result.model.encode_image(torch.randn(2, 3, 32, 32))
    assert features.shape == (2, 16)  # retrieval through the contrastive head, as for every bridge
    from vlm.release.card import model_card

    assert "mean-pool projector" in model_card(result.model.cfg, None)


def test_a_batch_may_carry_the_encoders_tokens_instead_of_pixels(tiny_parts, tmp_path):
    """What a frozen-feature cache feeds: the objective gives the same terms from the tokens as from the pixels."""
    from vlm.data.collate import Example

    torch.manual_seed(0)
    model = VisionLLM(tiny_parts.config(tmp_path)).load_weights().eval()
    objective = Objective(model).eval()
    examples = [Example(torch.randn(3, 32, 32), "Caption in English:", "a red circle", "a red circle", "en",
                        "caption", image_id=i) for i in range(4)]
    pixels = model.collator()(examples)
    tokens = model.collator()(examples)
    tokens.image_tokens, tokens.images = model.vision(pixels.images), None
    with torch.no_grad():
        torch.manual_seed(1)
        from_pixels = objective(pixels)
        torch.manual_seed(1)
        from_tokens = objective(tokens)
    assert set(from_pixels) == {"loss", "lm", "contrastive", "itc", "itm", "itg"}
    assert all(torch.equal(from_pixels[k], from_tokens[k]) for k in from_pixels)
    with pytest.raises(ValueError, match="exactly one of images"):
        type(pixels)(**{**vars(pixels), "image_tokens": tokens.image_tokens})
