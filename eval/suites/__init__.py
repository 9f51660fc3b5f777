"""Evaluation suites: loaders that read published benchmark files into one `Benchmark` shape.

Each loader takes the folder the user downloaded (`--data-root`) and the languages asked for, checks every
file and field it needs before any image is decoded, and raises `BenchmarkDataError` with one line that
names the file and the field on a missing file or a schema mismatch.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image

from vlm.config import ConfigError


class BenchmarkDataError(ConfigError):
    """A benchmark file is missing or does not follow its published schema (one line: file and field).
    A ConfigError, so `vlm eval` and `vlm train` report it in one line and exit 2 before any model is built."""


@dataclass
class BenchmarkImage:
    key: str
    image: Path | Image.Image  # a file on disk (opened lazily), or an already decoded image (demo shards)
    captions: dict[str, list[str]] = field(default_factory=dict)  # language -> reference captions
    # One dict per question: {"question_id", "lang", "question", "answers": [...], "type"}.
    qa: list[dict] = field(default_factory=list)

    @property
    def record(self) -> dict:
        """The per-image record shape the evaluator reads (the same as a training shard's json)."""
        return {"captions": self.captions, "qa": self.qa}


@dataclass
class Benchmark:
    name: str
    languages: list[str]
    images: list[BenchmarkImage]
    tasks: tuple[str, ...]  # which of "retrieval", "captioning", "vqa" the benchmark scores
    # The suite's reference retrieval protocol: "first" caption per image (CLIP_benchmark's XM3600) or "all".
    retrieval_captions: str = "all"
    # The language VQA answers are asked in and scored in: "en" for xGQA (English answers to translated
    # questions); None for the question's own language (MaXM).
    answer_language: str | None = None
    source: str = ""  # which published files were read, recorded in results.json
    # Training records for the majority baselines (demo only: published suites have no train split here).
    train_records: list[dict] = field(default_factory=list)
    # Images the loader left out (undecodable shard samples: "key in shard (reason)"), named in results.json.
    skipped: list[str] = field(default_factory=list)
    # Whether an image's captions in different languages translate each other (Multi30K task 1, `vlm prep
    # translate` output): cross-lingual alignment and parallel tokenizer fertility need it. XM3600's and
    # xFlickr&CO's captions were written afresh per language.
    parallel_captions: bool = False
