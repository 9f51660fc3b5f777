"""LLaVA's MLP projector (`mlp2x_gelu`), the baseline bridge: every image token through Linear, GELU, Linear."""

from __future__ import annotations

from torch import Tensor, nn

from vlm.config import BridgeConfig
from vlm.model.bridge import Bridge, BridgeOutput


class MLPProjector(Bridge):
    """LLaVA's `mlp2x_gelu`: Linear, GELU, Linear on every image token (CLS included); ignores the text."""

    def __init__(self, cfg: BridgeConfig, vision_width: int, llm_width: int, text_vocab_size: int = 0):
        super().__init__()
        hidden = cfg.projector_hidden or llm_width
        # LLaVA's nn.Sequential layout, so its `mm_projector.*` weights load into `layers.*`.
        self.layers = nn.Sequential(nn.Linear(vision_width, hidden), nn.GELU(), nn.Linear(hidden, llm_width))

    def forward(self, image_tokens: Tensor, text_embeds: Tensor | None = None,
                text_mask: Tensor | None = None) -> BridgeOutput:
        out = self.layers(image_tokens)
        return BridgeOutput(visual_tokens=out, hidden=out)

    @staticmethod
    def describe(cfg: BridgeConfig) -> str:
        return "MLP projector (LLaVA mlp2x_gelu)"


BRIDGE = MLPProjector
