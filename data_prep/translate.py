"""The translation stage's interface, the phrase-table backend, and the backend factory."""

from __future__ import annotations

from collections.abc import Mapping
from functools import lru_cache
from typing import Protocol

from data_prep.phrase_grammar import EnglishParser, Renderer
from data_prep.phrase_tables import TABLES


class Translator(Protocol):
    name: str

    def translate(self, texts: list[str], src: str, tgt: str) -> list[str | None]:
        """One output per input; None where the text could not be translated (the caller drops it)."""
        ...


class PhraseTableTranslator:
    """Exact translation of the synthetic domain's English (captions, questions, answers) via phrase tables.

    Anything outside that grammar comes back as None.
    """

    name = "phrase_table"

    def __init__(self, tables: Mapping[str, Mapping] = TABLES) -> None:
        self._renderers = {lang: Renderer(table) for lang, table in tables.items()}
        # Synthetic data repeats the same sentences in every language: parse each once (bounded cache).
        self._parse = lru_cache(maxsize=1 << 18)(EnglishParser(tables["en"]).parse)

    def translate(self, texts: list[str], src: str, tgt: str) -> list[str | None]:
        if src != "en":
            raise ValueError(f"phrase_table translator reads English only, got source language {src!r}")
        if tgt not in self._renderers:
            raise ValueError(
                f"phrase_table translator has no table for {tgt!r} (known: {', '.join(self._renderers)})"
            )
        if tgt == "en":
            return list(texts)
        renderer = self._renderers[tgt]
        return [None if (meaning := self._parse(text)) is None else renderer.render(meaning) for text in texts]


def make_translator(backend: str, **kwargs) -> Translator:
    backends = {"phrase_table": PhraseTableTranslator}
    if backend not in backends:
        raise ValueError(f"unknown translation backend {backend!r} (known: {', '.join(backends)})")
    return backends[backend](**kwargs)
