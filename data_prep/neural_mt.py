"""Neural translation backends for `vlm prep translate`: NLLB-200 or M2M100 through transformers, or the same
models converted to CTranslate2 (an optional package; faster on CPUs and GPUs).

Both take our language keys ("zh", "no", "fil"), map them to the model's language tokens (zho_Hans / __zh__),
and check every language against the tokenizer before any weights load. Texts are tokenized once, sorted by
length and batched; each sentence may generate at most 2 x its source tokens + 10 new tokens (max_new_tokens
overrides), cut per sentence, so a greedy translation does not depend on the sentences batched with it.
"""

from __future__ import annotations

import os
from pathlib import Path

from data_prep.languages import get_language, m2m100_code

FAMILIES = ("nllb", "m2m100")


def language_token(family: str, lang: str) -> str:
    """The token that names `lang` to a model of `family`: zho_Hans (nllb), __zh__ (m2m100)."""
    if family == "nllb":
        return get_language(lang).flores
    if family == "m2m100":
        return f"__{m2m100_code(lang)}__"
    raise ValueError(f"unknown translation model family {family!r} (known: {', '.join(FAMILIES)})")


def _source_lang(family: str, lang: str) -> str:
    """What the tokenizer's src_lang takes: NllbTokenizer the Flores code, M2M100Tokenizer the bare code."""
    return language_token(family, lang) if family == "nllb" else m2m100_code(lang)


def _check_path(model: str) -> None:
    """A missing folder fails here in one line; a hub id ("org/name") is left to from_pretrained."""
    looks_local = os.path.isabs(model) or model.startswith((".", "~")) or model.count("/") > 1
    if looks_local and not Path(model).expanduser().is_dir():
        raise FileNotFoundError(f"translation model folder {model} does not exist")


def _import_ctranslate2():
    try:
        import ctranslate2
    except ImportError:  # ValueError, as for every other bad setting: the CLI reports it in one line
        raise ValueError("the ctranslate2 backend needs the ctranslate2 package: pip install ctranslate2") from None
    return ctranslate2


class _Backend:
    """What both backends share: the tokenizer, language tokens, source encoding, length budgets, counters."""

    mixes_languages = False

    def __init__(self, tokenizer: str, family: str, languages: list[str] | None, batch_size: int,
                 max_input_tokens: int, max_new_tokens: int) -> None:
        from transformers import AutoTokenizer

        if family not in ("", *FAMILIES):
            raise ValueError(f"unknown translation model family {family!r} (known: {', '.join(FAMILIES)})")
        self._source = tokenizer = str(tokenizer)
        _check_path(tokenizer)
        try:
            self.tokenizer = AutoTokenizer.from_pretrained(tokenizer)
        except ImportError as err:  # M2M100Tokenizer without sentencepiece: transformers says so in a paragraph
            first_sentence = str(err).strip().split(". ")[0]
            raise ValueError(f"cannot load the tokenizer of {tokenizer}: {first_sentence}") from None
        self.name = family or self._detect_family()
        self.batch_size, self.max_input_tokens, self.max_new_tokens = batch_size, max_input_tokens, max_new_tokens
        self._ids: dict[str, int] = {}
        for lang in languages or []:
            self.language_id(lang)
        # Throughput: sentences translated, their source tokens, the tokens generated (language token included,
        # </s> and padding not); skipped: blank inputs and inputs over max_input_tokens (returned as None).
        self.counts = {"sentences": 0, "skipped": 0, "source_tokens": 0, "output_tokens": 0}

    def _detect_family(self) -> str:
        for family in FAMILIES:
            if self._has_token(language_token(family, "en")):
                return family
        raise ValueError(f"cannot tell the model family of {self._source}: it has neither eng_Latn nor __en__")

    def _has_token(self, token: str) -> bool:
        token_id = self.tokenizer.convert_tokens_to_ids(token)
        return token_id is not None and token_id != self.tokenizer.unk_token_id

    def language_id(self, lang: str) -> int:
        """The id of `lang`'s token; ValueError when the table or the tokenizer lacks it."""
        if lang not in self._ids:
            token = language_token(self.name, lang)
            if not self._has_token(token):
                raise ValueError(f"{self.name} model {self._source} has no language token for {lang!r} ({token})")
            self._ids[lang] = self.tokenizer.convert_tokens_to_ids(token)
        return self._ids[lang]

    def _encode(self, texts: list[str], src: str) -> list[list[int] | None]:
        """Token ids with the source-language markers; None for blank texts and texts over max_input_tokens
        (a truncated source would give a confidently truncated translation)."""
        self.language_id(src)
        if not texts:
            return []
        self.tokenizer.src_lang = _source_lang(self.name, src)
        encoded = self.tokenizer(list(texts))["input_ids"]
        limit = self.max_input_tokens
        kept = [ids if text.strip() and len(ids) <= limit else None for text, ids in zip(texts, encoded)]
        self.counts["skipped"] += kept.count(None)
        return kept

    def _budget(self, ids: list[int]) -> int:
        """New tokens a sentence may generate, its forced language token included."""
        return self.max_new_tokens or 2 * len(ids) + 10

    def _finish(self, generated: list[list[int]]) -> list[str]:
        """Texts of [language token, tokens..., </s>] rows already cut to their budget; counts them."""
        skip = {self.tokenizer.pad_token_id, self.tokenizer.eos_token_id}
        self.counts["sentences"] += len(generated)
        self.counts["output_tokens"] += sum(t not in skip for row in generated for t in row)
        # Decode after the language token: M2M100Tokenizer does not always treat it as special.
        return self.tokenizer.batch_decode([row[1:] for row in generated], skip_special_tokens=True)


class Seq2SeqTranslator(_Backend):
    """NLLB-200 or M2M100 through transformers (AutoTokenizer + AutoModelForSeq2SeqLM, generate)."""

    def __init__(self, model: str, family: str, languages: list[str] | None = None, device: str = "auto",
                 dtype: str = "auto", batch_size: int = 32, num_beams: int = 1, max_input_tokens: int = 256,
                 max_new_tokens: int = 0) -> None:
        import torch
        from transformers import AutoModelForSeq2SeqLM

        super().__init__(model, family, languages, batch_size, max_input_tokens, max_new_tokens)
        dtypes = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}
        if dtype != "auto" and dtype not in dtypes:
            raise ValueError(f"unknown dtype {dtype!r} (known: auto, {', '.join(dtypes)})")
        # "cuda" is the current device, which a multi-GPU driver sets per rank.
        self.device = torch.device(("cuda" if torch.cuda.is_available() else "cpu") if device == "auto" else device)
        if dtype == "auto":
            dtype = "bfloat16" if self.device.type == "cuda" else "float32"
        self.num_beams = num_beams
        self.model = AutoModelForSeq2SeqLM.from_pretrained(model, dtype=dtypes[dtype]).to(self.device).eval()

    def translate(self, texts: list[str], src: str, tgt: str) -> list[str | None]:
        if src == tgt:
            return list(texts)
        target = self.language_id(tgt)
        encoded = self._encode(texts, src)
        results: list[str | None] = [None] * len(texts)
        # Longest first: similar lengths share a batch (little padding), and an OOM shows on the first batch.
        order = sorted((i for i, ids in enumerate(encoded) if ids is not None), key=lambda i: -len(encoded[i]))
        for start in range(0, len(order), self.batch_size):
            batch = order[start:start + self.batch_size]
            for i, text in zip(batch, self._generate([encoded[i] for i in batch], target)):
                results[i] = text
        return results

    def _generate(self, batch: list[list[int]], target: int) -> list[str]:
        import torch

        budgets = [self._budget(ids) for ids in batch]
        inputs = self.tokenizer.pad({"input_ids": batch}, return_tensors="pt").to(self.device)
        with torch.inference_mode():
            out = self.model.generate(**inputs, forced_bos_token_id=target, max_new_tokens=max(budgets),
                                      num_beams=self.num_beams, do_sample=False)
        self.counts["source_tokens"] += sum(map(len, batch))
        # Column 0 is the decoder start token (</s>); each row keeps its own budget of new tokens.
        return self._finish([row[1:1 + budget] for row, budget in zip(out.tolist(), budgets)])


class CT2Translator(_Backend):
    """A CTranslate2-converted NLLB/M2M100 model (see convert_to_ct2); the ctranslate2 package is optional.

    family "" reads it from the tokenizer (eng_Latn: nllb, __en__: m2m100); tokenizer "" is the model folder,
    where convert_to_ct2 puts it. intra_threads: CPU threads per translation (0: CTranslate2's default).
    """

    mixes_languages = True  # the target language is a per-example prefix, so one batch may mix targets

    def __init__(self, model: str, family: str, tokenizer: str = "", languages: list[str] | None = None,
                 device: str = "auto", compute_type: str = "default", batch_size: int = 32, beam_size: int = 1,
                 max_input_tokens: int = 256, intra_threads: int = 0) -> None:
        ctranslate2 = _import_ctranslate2()
        model = str(model)
        if not Path(model, "model.bin").is_file():
            raise FileNotFoundError(f"CTranslate2 model folder {model} has no model.bin")
        super().__init__(tokenizer or model, family, languages, batch_size, max_input_tokens, 0)
        device_index = 0
        if device == "auto":
            device = "cuda" if ctranslate2.get_cuda_device_count() else "cpu"
            # One process per GPU: take the launcher's rank (torchrun sets LOCAL_RANK).
            device_index = int(os.environ.get("LOCAL_RANK", 0)) if device == "cuda" else 0
        self.beam_size = beam_size
        self.translator = ctranslate2.Translator(model, device=device, device_index=device_index,
                                                 compute_type=compute_type, intra_threads=intra_threads)

    def translate(self, texts: list[str], src: str, tgt: str) -> list[str | None]:
        return self.translate_mixed(texts, src, [tgt] * len(texts))

    def translate_mixed(self, texts: list[str], src: str, tgts: list[str]) -> list[str | None]:
        """One target language per text."""
        if len(tgts) != len(texts):
            raise ValueError(f"translate_mixed got {len(texts)} texts but {len(tgts)} target languages")
        for tgt in set(tgts) - {src}:
            self.language_id(tgt)
        results: list[str | None] = [text if tgt == src else None for text, tgt in zip(texts, tgts)]
        todo = [i for i, tgt in enumerate(tgts) if tgt != src]
        encoded = dict(zip(todo, self._encode([texts[i] for i in todo], src)))
        todo = [i for i in todo if encoded[i] is not None]
        if not todo:
            return results
        budgets = [self._budget(encoded[i]) for i in todo]
        # CTranslate2 sorts by length and splits into max_batch_size batches itself.
        found = self.translator.translate_batch(
            [self.tokenizer.convert_ids_to_tokens(encoded[i]) for i in todo],
            target_prefix=[[language_token(self.name, tgts[i])] for i in todo],
            max_batch_size=self.batch_size, beam_size=self.beam_size, max_decoding_length=max(budgets),
        )
        self.counts["source_tokens"] += sum(len(encoded[i]) for i in todo)
        # A hypothesis starts with its target prefix (the language token) and lacks </s>.
        rows = [self.tokenizer.convert_tokens_to_ids(r.hypotheses[0][:budget]) for r, budget in zip(found, budgets)]
        for i, text in zip(todo, self._finish(rows)):
            results[i] = text
        return results


def convert_to_ct2(hf_model_dir: str | Path, out_dir: str | Path, quantization: str | None = None) -> Path:
    """Convert an NLLB/M2M100 hub id or folder to CTranslate2 in out_dir, with its tokenizer saved beside it
    (what CT2Translator loads when given no tokenizer). quantization: int8, float16, ... (None: as saved)."""
    _import_ctranslate2()
    from ctranslate2.converters import TransformersConverter
    from transformers import AutoTokenizer

    _check_path(str(hf_model_dir))
    out_dir = Path(out_dir)
    TransformersConverter(str(hf_model_dir)).convert(str(out_dir), quantization=quantization)
    AutoTokenizer.from_pretrained(str(hf_model_dir)).save_pretrained(out_dir)
    return out_dir
