"""Tiny random NLLB- and M2M100-style translation models with their real tokenizer classes, built offline.

Each builder writes a folder with save_pretrained, so AutoTokenizer / AutoModelForSeq2SeqLM.from_pretrained(folder)
load it the way they load facebook/nllb-200-* or facebook/m2m100_* from the hub. The tokenizers are trained here
on SENTENCES (a `tokenizers` BPE for NLLB, a sentencepiece BPE for M2M100, as the originals use); the weights are
random, so the translations are gibberish, but deterministic: enough to test batching, ordering, language forcing
and CTranslate2 parity.
"""

from __future__ import annotations

import io
import json
from pathlib import Path

import torch
from transformers import M2M100Config, M2M100ForConditionalGeneration

# Several scripts, so the vocabularies hold more than ASCII; different lengths, so length-sorting reorders them.
SENTENCES = [
    "a red circle above a blue square",
    "two green triangles",
    "three small yellow stars on the left of a large purple circle near the top",
    "Ein roter Kreis über einem blauen Quadrat",
    "un cercle rouge",
    "красный круг над синим квадратом",
    "红色的圆圈在蓝色方块上面",
    "एक लाल वृत्त",
]

_SPECIALS = ["<s>", "<pad>", "</s>", "<unk>"]  # fairseq's ids 0-3, which both families keep
_M2M100_MADEUP_WORDS = 8  # M2M100 checkpoints reserve 8 "madeupword" rows after the language tokens


def _save_model(tokenizer, vocab_size: int, out_dir: Path, seed: int) -> Path:
    # NLLB and M2M100 share one architecture; ids follow the fairseq checkpoints (decoder starts from </s>).
    config = M2M100Config(
        vocab_size=vocab_size, d_model=16, encoder_layers=1, decoder_layers=1,
        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32, decoder_ffn_dim=32,
        max_position_embeddings=128, bos_token_id=0, pad_token_id=1, eos_token_id=2, decoder_start_token_id=2,
        init_std=0.5,  # large random weights: outputs differ per input and greedy argmaxes are far from ties
    )
    torch.manual_seed(seed)
    M2M100ForConditionalGeneration(config).save_pretrained(out_dir)
    tokenizer.save_pretrained(out_dir)
    return out_dir


def build_nllb(out_dir: Path | str, seed: int = 0) -> Path:
    """NllbTokenizer (a BPE in tokenizer.json, with the 202 Flores-200 language tokens) + a random model."""
    from tokenizers import Tokenizer, models, pre_tokenizers, trainers
    from transformers import NllbTokenizer

    bpe = Tokenizer(models.BPE(unk_token="<unk>"))
    bpe.pre_tokenizer = pre_tokenizers.Metaspace()  # NllbTokenizer's own pre-tokenizer: vocabularies must agree
    bpe.train_from_iterator(SENTENCES, trainers.BpeTrainer(vocab_size=150, special_tokens=_SPECIALS))
    trained = json.loads(bpe.to_str())["model"]
    tokenizer = NllbTokenizer(vocab=trained["vocab"], merges=[tuple(merge) for merge in trained["merges"]])
    return _save_model(tokenizer, len(tokenizer), Path(out_dir), seed)


def build_m2m100(out_dir: Path | str, seed: int = 0) -> Path:
    """M2M100Tokenizer (sentencepiece BPE + vocab.json, with the 100 `__xx__` language tokens) + a random model."""
    import sentencepiece as spm
    from transformers import M2M100Tokenizer
    from transformers.models.m2m_100.tokenization_m2m_100 import FAIRSEQ_LANGUAGE_CODES

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    proto = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(SENTENCES), model_writer=proto, vocab_size=100, model_type="bpe",
        character_coverage=1.0, minloglevel=2,
    )
    spm_file = out_dir / "sentencepiece.bpe.model"
    spm_file.write_bytes(proto.getvalue())
    sp = spm.SentencePieceProcessor(model_proto=proto.getvalue())
    # vocab.json: fairseq's specials first, then the pieces (sentencepiece's own control/unk pieces are dropped).
    vocab = {token: i for i, token in enumerate(_SPECIALS)}
    for i in range(sp.get_piece_size()):
        if not (sp.is_control(i) or sp.is_unknown(i)):
            vocab.setdefault(sp.id_to_piece(i), len(vocab))
    vocab_file = out_dir / "vocab.json"
    vocab_file.write_text(json.dumps(vocab, ensure_ascii=False))
    # The hub's tokenizer_config.json lists the language tokens as special tokens; without them transformers 5
    # neither skips them when decoding nor reports them to CTranslate2's converter.
    languages = [f"__{code}__" for code in FAIRSEQ_LANGUAGE_CODES["m2m100"]]
    tokenizer = M2M100Tokenizer(str(vocab_file), str(spm_file), additional_special_tokens=languages)
    return _save_model(tokenizer, len(vocab) + len(languages) + _M2M100_MADEUP_WORDS, out_dir, seed)
