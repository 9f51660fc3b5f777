"""data_prep.neural_mt on tiny random NLLB/M2M100 models (tests/mt_models.py), loaded by path like hub ids."""

from __future__ import annotations

import sys

import pytest
import torch
import transformers
from mt_models import SENTENCES, build_m2m100, build_nllb

from data_prep.languages import LANGUAGES, M2M100_CODES
from data_prep.neural_mt import CT2Translator, Seq2SeqTranslator, convert_to_ct2, language_token

FAMILIES = ("nllb", "m2m100")
BUILDERS = {"nllb": build_nllb, "m2m100": build_m2m100}


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Models this small gain nothing from intra-op threads, and on a busy 2-core machine two threads
    spinning against another process make generate 10x slower."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def mt_model_dirs(tmp_path_factory):
    """family -> folder of a tiny random model with its real tokenizer class."""
    root = tmp_path_factory.mktemp("mt_models")
    return {family: build(root / family) for family, build in BUILDERS.items()}


@pytest.fixture(scope="session")
def translators(mt_model_dirs):
    """family -> Seq2SeqTranslator in fp32 on the CPU, greedy (deterministic, comparable with CTranslate2)."""
    return {family: Seq2SeqTranslator(str(path), family, device="cpu", dtype="float32", batch_size=3)
            for family, path in mt_model_dirs.items()}


@pytest.fixture(scope="session")
def ct2_dirs(mt_model_dirs, tmp_path_factory):
    pytest.importorskip("ctranslate2", reason="ctranslate2 is not installed (pip install ctranslate2)")
    root = tmp_path_factory.mktemp("ct2")
    return {family: convert_to_ct2(path, root / family) for family, path in mt_model_dirs.items()}


class GenerateSpy:
    """Wraps model.generate to keep each call's input ids and generated ids."""

    def __init__(self, model):
        self.generate, self.calls = model.generate, []

    def __call__(self, **kwargs):
        out = self.generate(**kwargs)
        self.calls.append((kwargs["input_ids"], kwargs["attention_mask"], out))
        return out


@pytest.fixture
def spy(monkeypatch):
    def attach(translator):
        wrapper = GenerateSpy(translator.model)
        monkeypatch.setattr(translator.model, "generate", wrapper)
        return wrapper
    return attach


def test_language_tokens():
    assert [language_token("nllb", c) for c in ("zh", "no", "fil", "quz", "en")] == [
        "zho_Hans", "nob_Latn", "tgl_Latn", "quy_Latn", "eng_Latn"]
    assert [language_token("m2m100", c) for c in ("zh", "no", "fil", "he", "en")] == [
        "__zh__", "__no__", "__tl__", "__he__", "__en__"]
    for lang in ("quz", "mi", "te"):  # not among M2M100's 100 languages
        with pytest.raises(ValueError, match=f"M2M100 has no language code for '{lang}'"):
            language_token("m2m100", lang)
    with pytest.raises(ValueError, match="unknown language code 'xx'"):
        language_token("nllb", "xx")
    with pytest.raises(ValueError, match="unknown translation model family 'marian'"):
        language_token("marian", "de")


def test_language_tables_match_the_tokenizers(translators):
    """Our Flores column is spelled as NllbTokenizer spells its 202 language tokens; M2M100_CODES is
    M2M100Tokenizer's list."""
    from transformers.models.m2m_100.tokenization_m2m_100 import FAIRSEQ_LANGUAGE_CODES

    tokenizer = translators["nllb"].tokenizer
    missing = [c for c in LANGUAGES if tokenizer.convert_tokens_to_ids(language_token("nllb", c))
               == tokenizer.unk_token_id]
    assert not missing
    assert M2M100_CODES == set(FAIRSEQ_LANGUAGE_CODES["m2m100"])


@pytest.mark.parametrize("family", FAMILIES)
def test_source_and_forced_target_language_tokens(translators, spy, family):
    translator = translators[family]
    calls = spy(translator).calls
    outputs = translator.translate(SENTENCES[:4], "de", "zh")
    assert len(outputs) == 4 and all(isinstance(o, str) for o in outputs)
    tokenizer = translator.tokenizer
    src_id, tgt_id = (tokenizer.convert_tokens_to_ids(language_token(family, c)) for c in ("de", "zh"))
    for input_ids, mask, out in calls:
        # source: <de token> text </s> (then padding); target: decoder start, then the forced <zh token>
        assert (input_ids[:, 0] == src_id).all()
        assert (input_ids.gather(1, mask.sum(1, keepdim=True) - 1) == tokenizer.eos_token_id).all()
        assert (out[:, 0] == translator.model.config.decoder_start_token_id).all()
        assert (out[:, 1] == tgt_id).all()


@pytest.mark.parametrize("family", FAMILIES)
def test_batches_are_length_sorted_and_results_in_input_order(translators, spy, family):
    translator = translators[family]
    one_by_one = [translator.translate([text], "en", "fr")[0] for text in SENTENCES]
    calls = spy(translator).calls
    batched = translator.translate(SENTENCES, "en", "fr")
    assert batched == one_by_one
    # The comparison only proves the order if the random model gives different outputs for most inputs.
    assert len(set(batched)) > len(SENTENCES) // 2
    widths = [input_ids.shape[1] for input_ids, _, _ in calls]
    assert [len(ids) for ids, _, _ in calls] == [3, 3, 2] and widths == sorted(widths, reverse=True)
    longest = translator.tokenizer(SENTENCES)["input_ids"]
    assert widths[0] == max(map(len, longest))


def test_counters_skips_and_identity(mt_model_dirs):
    translator = Seq2SeqTranslator(str(mt_model_dirs["nllb"]), "nllb", device="cpu", max_input_tokens=12)
    texts = ["", SENTENCES[2], SENTENCES[1], "  "]  # blank, over 12 tokens, translatable, blank
    source = translator.tokenizer(SENTENCES[1])["input_ids"]
    assert len(translator.tokenizer(SENTENCES[2])["input_ids"]) > 12 >= len(source)
    outputs = translator.translate(texts, "en", "de")
    assert outputs[0] is None and outputs[1] is None and outputs[3] is None and isinstance(outputs[2], str)
    counts = translator.counts
    assert counts["sentences"] == 1 and counts["skipped"] == 3 and counts["source_tokens"] == len(source)
    # Random weights rarely emit </s>: the sentence uses its budget, 2 x source tokens + 10, language token included.
    assert 1 <= counts["output_tokens"] <= 2 * len(source) + 10
    assert translator.translate(texts, "de", "de") == texts  # nothing to translate
    assert translator.translate([], "en", "de") == []


def test_dtype_and_device(mt_model_dirs):
    auto = Seq2SeqTranslator(str(mt_model_dirs["m2m100"]), "m2m100", device="cpu")
    assert auto.model.dtype == torch.float32 and auto.device.type == "cpu"
    bf16 = Seq2SeqTranslator(str(mt_model_dirs["m2m100"]), "m2m100", device="cpu", dtype="bfloat16")
    assert bf16.model.dtype == torch.bfloat16
    assert all(isinstance(o, str) for o in bf16.translate(SENTENCES[:2], "en", "de"))
    with pytest.raises(ValueError, match="unknown dtype 'int4'"):
        Seq2SeqTranslator(str(mt_model_dirs["m2m100"]), "m2m100", dtype="int4")


def test_bad_languages_fail_before_weights_load(mt_model_dirs, monkeypatch, tmp_path):
    loads, load = [], transformers.AutoModelForSeq2SeqLM.from_pretrained
    monkeypatch.setattr(transformers.AutoModelForSeq2SeqLM, "from_pretrained",
                        lambda *args, **kwargs: loads.append(args) or load(*args, **kwargs))
    nllb, m2m100 = str(mt_model_dirs["nllb"]), str(mt_model_dirs["m2m100"])
    cases = [
        ((m2m100, "m2m100", ["de", "quz"]), ValueError, "M2M100 has no language code for 'quz'"),
        ((nllb, "m2m100", ["zh"]), ValueError, rf"m2m100 model {nllb} has no language token for 'zh' \(__zh__\)"),
        ((m2m100, "nllb", ["zh"]), ValueError, r"nllb model .* has no language token for 'zh' \(zho_Hans\)"),
        ((nllb, "nllb", ["xx"]), ValueError, "unknown language code 'xx'"),
        ((nllb, "marian", ["de"]), ValueError, "unknown translation model family 'marian'"),
        ((str(tmp_path / "missing"), "nllb", ["de"]), FileNotFoundError, "missing does not exist"),
    ]
    for args, error, message in cases:
        with pytest.raises(error, match=message):
            Seq2SeqTranslator(*args)
    assert not loads
    # Languages not given up front are checked when first used.
    translator = Seq2SeqTranslator(m2m100, "m2m100", languages=["de"])
    assert len(loads) == 1
    with pytest.raises(ValueError, match="M2M100 has no language code for 'mi'"):
        translator.translate(["a red circle"], "en", "mi")


def test_missing_tokenizer_package_is_one_line(mt_model_dirs, monkeypatch):
    def no_sentencepiece(*args, **kwargs):  # what transformers raises for M2M100Tokenizer without sentencepiece
        raise ImportError("\nM2M100Tokenizer requires the SentencePiece library but it was not found in your "
                          "environment. Check out the instructions on the\ninstallation page of its repo")
    monkeypatch.setattr(transformers.AutoTokenizer, "from_pretrained", no_sentencepiece)
    with pytest.raises(ValueError, match=r"M2M100Tokenizer requires the SentencePiece library .* environment$"):
        Seq2SeqTranslator(str(mt_model_dirs["m2m100"]), "m2m100")


@pytest.mark.parametrize("family", FAMILIES)
def test_ct2_matches_transformers(translators, ct2_dirs, family):
    """Same weights, greedy, fp32: CTranslate2 must produce what transformers' generate produces."""
    # family "" is read from the language tokens; one thread, as for torch (see one_thread)
    ct2 = CT2Translator(str(ct2_dirs[family]), family="", device="cpu", batch_size=3, intra_threads=1)
    assert ct2.name == family
    for tgt in ("de", "zh"):
        assert ct2.translate(SENTENCES, "en", tgt) == translators[family].translate(SENTENCES, "en", tgt)
    # One call with a target per text gives what per-language calls give.
    tgts = ["de", "zh", "en", "fr"] * 2
    mixed = ct2.translate_mixed(SENTENCES, "en", tgts)
    assert mixed == [ct2.translate([text], "en", tgt)[0] for text, tgt in zip(SENTENCES, tgts)]
    assert mixed[2] == SENTENCES[2] and ct2.counts["sentences"] > 0 and ct2.counts["output_tokens"] > 0


def test_ct2_errors(ct2_dirs, monkeypatch, tmp_path):
    with pytest.raises(ValueError, match=r"m2m100 model .* has no language token for 'de' \(__de__\)"):
        CT2Translator(str(ct2_dirs["nllb"]), family="m2m100", languages=["de"])
    with pytest.raises(FileNotFoundError, match="has no model.bin"):
        CT2Translator(str(tmp_path), family="nllb")
    monkeypatch.setitem(sys.modules, "ctranslate2", None)  # as if not installed
    with pytest.raises(ValueError, match="pip install ctranslate2"):
        CT2Translator(str(ct2_dirs["nllb"]), family="nllb")
