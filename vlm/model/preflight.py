"""What `vlm train` checks before it builds the model in memory: the network builds on the meta device from the
configs its parts name (each builder checks its own part: the LM's kind and architecture, the LoRA targets against
its layers, the encoder's layer against its depth), the LM's tokenizer loads, and the weights of an open_clip
pretrained tag are at hand. A problem is one ConfigError naming the key; no tensor is allocated."""

from __future__ import annotations

from vlm.config import Config
from vlm.model.llm import load_tokenizer
from vlm.model.vision import fetch_pretrained
from vlm.model.vlm import VisionLLM


def check_model(cfg: Config) -> None:
    VisionLLM(cfg, device="meta")  # reads every part's config (and the Q-Former text branch's tokenizer)
    load_tokenizer(cfg.llm)  # otherwise first read after the weights
    fetch_pretrained(cfg.vision)  # a tag's weights download now, as training would, or are named offline
