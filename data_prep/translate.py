"""The translation stage's interface and config, the phrase-table backend, and the backend factory.

Backends: nllb and m2m100 (transformers), ctranslate2 (a converted NLLB/M2M100 model; optional package),
phrase-table (exact translation of the synthetic domain, what the demo uses).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import lru_cache
from typing import Protocol

from data_prep.phrase_grammar import EnglishParser, Renderer
from data_prep.phrase_tables import TABLES

BACKENDS = ("nllb", "m2m100", "ctranslate2", "phrase-table")
DEVICES = ("auto", "cpu", "cuda")
DTYPES = ("auto", "float32", "bfloat16", "float16")


@dataclass
class TranslateConfig:
    """`vlm prep translate` settings (config section `prep.translate`; its command-line flags override them)."""

    backend: str = "nllb"
    # A hub id or local folder (nllb, m2m100); a CTranslate2 model folder (ctranslate2); unused by phrase-table.
    # NLLB-200 weights are CC-BY-NC-4.0; M2M100 (facebook/m2m100_418M) is MIT.
    model: str = "facebook/nllb-200-distilled-600M"
    family: str = ""  # ctranslate2 only: nllb | m2m100 ("": read from the tokenizer's language tokens)
    tokenizer: str = ""  # ctranslate2 only: the HF tokenizer folder or id ("": the model folder)
    languages: list[str] = field(default_factory=list)  # targets; English is the source and always kept
    device: str = "auto"  # auto: this rank's GPU when there is one, else the CPU
    dtype: str = "auto"  # auto: bfloat16 on GPUs, float32 on CPUs (transformers backends)
    batch_size: int = 64  # sentences per generate call, after sorting by length
    num_beams: int = 1  # NLLB's own generation config decodes greedily, as mBLIP used it
    max_input_tokens: int = 256
    # Texts translated between two journal writes: the most work a kill can lose. Larger chunks give the
    # length sort more to work with.
    chunk_size: int = 2048


def validate_translate(cfg: TranslateConfig, key: str = "prep.translate") -> None:
    checks = (
        (cfg.backend in BACKENDS, "backend", f"is '{cfg.backend}'; choose one of: {', '.join(BACKENDS)}"),
        (cfg.device in DEVICES, "device", f"is '{cfg.device}'; choose one of: {', '.join(DEVICES)}"),
        (cfg.dtype in DTYPES, "dtype", f"is '{cfg.dtype}'; choose one of: {', '.join(DTYPES)}"),
        (cfg.family in ("", "nllb", "m2m100"), "family", f"is '{cfg.family}'; choose nllb, m2m100 or '' (detect)"),
        (cfg.backend == "phrase-table" or bool(cfg.model), "model", "is empty; name a hub id or a local folder"),
        *((getattr(cfg, name) >= 1, name, "must be >= 1")
          for name in ("batch_size", "num_beams", "max_input_tokens", "chunk_size")),
    )
    for ok, name, message in checks:
        if not ok:
            raise ValueError(f"'{key}.{name}' {message}")


class Translator(Protocol):
    name: str

    def translate(self, texts: list[str], src: str, tgt: str) -> list[str | None]:
        """One output per input; None where the text could not be translated (the caller drops it)."""
        ...


class PhraseTableTranslator:
    """Exact translation of the synthetic domain's English (captions, questions, answers) via phrase tables.

    Anything outside that grammar comes back as None.
    """

    name = "phrase-table"

    def __init__(self, tables: Mapping[str, Mapping] = TABLES) -> None:
        self._renderers = {lang: Renderer(table) for lang, table in tables.items()}
        # Synthetic data repeats the same sentences in every language: parse each once (bounded cache).
        self._parse = lru_cache(maxsize=1 << 18)(EnglishParser(tables["en"]).parse)

    def translate(self, texts: list[str], src: str, tgt: str) -> list[str | None]:
        if src != "en":
            raise ValueError(f"phrase-table translator reads English only, got source language {src!r}")
        if tgt not in self._renderers:
            raise ValueError(
                f"phrase-table translator has no table for {tgt!r} (known: {', '.join(self._renderers)})"
            )
        if tgt == "en":
            return list(texts)
        renderer = self._renderers[tgt]
        return [None if (meaning := self._parse(text)) is None else renderer.render(meaning) for text in texts]


def make_translator(cfg: TranslateConfig, languages: list[str] | None = None) -> Translator:
    """The backend `cfg` names, loaded from `cfg.model`; `languages` (targets) are checked against its
    language tokens before any weights load."""
    validate_translate(cfg)
    if cfg.backend == "phrase-table":
        return PhraseTableTranslator()
    from data_prep.neural_mt import CT2Translator, Seq2SeqTranslator  # torch and transformers: only when needed

    if cfg.backend == "ctranslate2":
        return CT2Translator(cfg.model, family=cfg.family, tokenizer=cfg.tokenizer, languages=languages,
                             device=cfg.device, batch_size=cfg.batch_size, beam_size=cfg.num_beams,
                             max_input_tokens=cfg.max_input_tokens)
    return Seq2SeqTranslator(cfg.model, family=cfg.backend, languages=languages, device=cfg.device, dtype=cfg.dtype,
                             batch_size=cfg.batch_size, num_beams=cfg.num_beams,
                             max_input_tokens=cfg.max_input_tokens)
