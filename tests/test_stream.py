"""The training stream without a model: rank/worker splitting through the environment, resampling, bad samples
counted by reason, temperature language sampling, templates from a data file, and the caption-matching task."""

from __future__ import annotations

import io
import json
import logging
import random
from collections import Counter
from pathlib import Path

import pytest
import torch
import webdataset as wds
from PIL import Image

from data_prep.manifest import SplitCounter, write_manifest
from vlm.config import ConfigError, DataConfig, config_from_dict
from vlm.data.bad_samples import BadSamples
from vlm.data.examples import MATCH_POOL, ExampleMaker, image_id, sample_rng
from vlm.data.language_sampling import LanguageSampler
from vlm.data.shards import manifest_language_counts, resolve_shards, stream_shards
from vlm.data.stream import StreamPosition, TrainStream, fixed_batches
from vlm.data.templates import (
    TASK_FIELDS,
    TemplateError,
    caption_prompt,
    load_templates,
    packaged_templates,
    vqa_prompt,
)

LANGS = ["en", "de", "fr"]


def _image(fmt: str = "PNG", size: int = 4, colour: int = 0) -> bytes:
    out = io.BytesIO()
    Image.new("RGB", (size, size), (colour % 256, 40, 80)).save(out, format=fmt)
    return out.getvalue()


PNG = _image()


def _sample(key: str, record: dict | bytes | None, image: bytes | None = PNG, ext: str = "png") -> dict:
    sample: dict = {"__key__": key}
    if image is not None:
        sample[ext] = image
    if record is not None:
        sample["json"] = record if isinstance(record, bytes) else json.dumps(record, ensure_ascii=False).encode()
    return sample


def _record(i: int, langs: list[str], qa: bool = True) -> dict:
    return {"captions": {lang: [f"{lang} caption {i}.", f"{lang} other words {i}."] for lang in langs},
            "qa": [{"lang": lang, "question": f"{lang} question {i}?", "answers": [f"{lang} answer {i}"]}
                   for lang in langs] if qa else []}


def _write(path: Path, samples: list[dict]) -> str:
    with wds.TarWriter(str(path), encoder=False) as sink:
        for sample in samples:
            sink.write(sample)
    return str(path)


def _collate(examples: list) -> dict:
    return {"examples": examples, "langs": [e.lang for e in examples], "tasks": [e.task for e in examples]}


def _transform(image: Image.Image) -> torch.Tensor:
    return torch.tensor(image.size)


def _cfg(**kw) -> DataConfig:
    base = dict(languages=list(LANGS), tasks=["caption", "vqa"], task_weights=[0.5, 0.5], num_workers=0,
                shuffle_buffer=32, language_alpha=1.0)
    return DataConfig(**(base | kw))


def _stream(urls, cfg, batch_size=8, position=None, counts=None, **kw) -> TrainStream:
    return TrainStream(urls, cfg, _transform, _collate, batch_size, seed=0, position=position,
                       language_counts=counts, **kw)


def _take(stream: TrainStream, n: int) -> list[dict]:
    it = iter(stream)
    return [next(it) for _ in range(n)]


def _signature(batches: list) -> list[tuple]:
    """What the examples of stream batches (or of collated inputs) teach, in order."""
    return [(e.image_id, e.lang, e.task, e.prompt, e.target, e.caption)
            for b in batches for e in getattr(b, "inputs", b)["examples"]]


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> list[str]:
    """Eight shards of ten all-language samples."""
    root = tmp_path_factory.mktemp("shards")
    return [_write(root / f"s{s}.tar", [_sample(f"{s:02d}{i:03d}", _record(s * 10 + i, LANGS)) for i in range(10)])
            for s in range(8)]


# --- rank and worker splitting -------------------------------------------------------------------------


@pytest.mark.parametrize("n_shards, world, roles", [(8, 2, 2), (8, 2, 4), (11, 3, 2), (4, 1, 1)])
def test_ranks_and_workers_partition_the_shards_every_epoch(n_shards, world, roles):
    urls = [f"shard-{i}.tar" for i in range(n_shards)]
    for epoch in range(3):
        parts = [stream_shards(urls, 7, epoch, rank, world, role, roles)
                 for rank in range(world) for role in range(roles)]
        flat = [u for part in parts for u in part]
        assert sorted(flat) == sorted(urls)  # complete and disjoint
        assert all(parts)
    # every epoch reshuffles which worker reads which shard
    assert len({tuple(stream_shards(urls, 7, epoch, 0, world, 0, roles)) for epoch in range(6)}) > 1
    with pytest.raises(ValueError, match="set data.resampled=true"):
        stream_shards(urls, 7, 0, 0, n_shards, 0, 2)


def test_rank_and_worker_come_from_the_environment(shards, monkeypatch):
    monkeypatch.setenv("RANK", "1")
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("WORKER", "1")
    monkeypatch.setenv("NUM_WORKERS", "2")
    stream = _stream(shards, _cfg())
    assert (stream.rank, stream.world_size, stream.num_roles) == (1, 2, 2)
    mine = stream.shards(0, 1)  # worker 1 plays role 1 at batch 0
    assert len(mine) == 2 and mine == stream_shards(shards, 0, 0, 1, 2, 1, 2)
    ids = {image_id(f"{Path(u).stem[1:]:0>2}{i:03d}") for u in mine for i in range(10)}
    batches = _take(stream, 2)  # 16 of the epoch's 20 samples
    assert {e.image_id for b in batches for e in b.inputs["examples"]} <= ids
    # explicit arguments win over the environment
    assert _stream(shards, _cfg(), rank=0, world_size=1).rank == 0


def test_too_few_shards_without_resampling_is_a_clear_error(shards):
    with pytest.raises(ValueError, match="1 shards for 2 ranks x 2 workers"):
        _stream(shards[:1], _cfg(num_workers=2), rank=0, world_size=2)


def test_resampled_stream_serves_2_ranks_x_2_workers_from_one_shard(shards, monkeypatch):
    cfg = _cfg(resampled=True, num_workers=2)
    seen = {}
    for rank in range(2):
        for worker in range(2):
            monkeypatch.setenv("WORKER", str(worker))
            monkeypatch.setenv("NUM_WORKERS", "2")
            stream = _stream(shards[:1], cfg, rank=rank, world_size=2)
            batches = _take(stream, 4)  # 32 samples: more than the shard holds
            assert all(len(b.inputs["examples"]) == 8 for b in batches)
            assert _signature(batches) == _signature(_take(_stream(shards[:1], cfg, rank=rank, world_size=2), 4))
            seen[rank, worker] = _signature(batches)
    assert len({tuple(s) for s in seen.values()}) == 4  # each rank and worker reads its own order and choices
    # resampling draws with replacement from every shard, by seed, epoch, rank and role
    draws = [u for epoch in range(20) for u in stream_shards(shards, 0, epoch, 1, 2, 1, 2, resampled=True)]
    assert set(draws) == set(shards) and len(draws) == 40


def test_resampled_stream_resumes_exactly(shards):
    cfg = _cfg(resampled=True, tasks=["caption", "vqa", "match"], task_weights=[1, 1, 1])
    straight = _take(_stream(shards[:3], cfg), 12)
    at = 5
    position = StreamPosition(batches=at, consumed={0: straight[at - 1].telemetry.consumed})
    assert _signature(_take(_stream(shards[:3], cfg, position=position), 12 - at)) == _signature(straight[at:])


# --- bad samples ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def bad_shards(tmp_path_factory) -> list[str]:
    root = tmp_path_factory.mktemp("bad")
    jpeg = _image("JPEG", size=64)
    good = [_sample(f"a{i:03d}", _record(i, ["en"])) for i in range(20)]
    broken = [
        _sample("b-corrupt", _record(100, ["en"]), image=jpeg[: len(jpeg) // 2], ext="jpg"),  # truncated JPEG
        _sample("b-nojson", None),
        _sample("b-noimage", _record(101, ["en"]), image=None),
        _sample("b-badjson", b"{not json"),
        _sample("b-empty", {"captions": {"en": [""]}}),
        _sample("b-nolang", _record(102, ["ja"])),
    ]
    first = _write(root / "bad.tar", good[:10] + broken + good[10:])
    whole = _write(root / "whole.tar", [_sample(f"c{i:03d}", _record(200 + i, ["en"])) for i in range(20)])
    data = Path(whole).read_bytes()
    cut = root / "truncated.tar"
    cut.write_bytes(data[: len(data) // 2])  # a shard cut off mid-way, as by a failed copy
    return [first, str(cut)]


def test_each_bad_sample_is_skipped_and_counted_by_reason(bad_shards):
    stream = _stream(bad_shards, _cfg(languages=["en"], num_workers=0))
    batches = _take(stream, 12)  # about 3 epochs: the stream goes on past every bad sample and the cut shard
    assert all(len(b.inputs["examples"]) == 8 for b in batches)
    counts = Counter()
    for b in batches:
        counts.update(b.telemetry.bad_samples)
    for reason in ("corrupt_image", "missing_json", "no_image", "bad_json", "empty_caption", "no_language",
                   "tar_error"):
        assert counts[reason] >= 1, (reason, counts)
    consumed = batches[-1].telemetry.consumed
    assert consumed == 12 * 8 + sum(sum(b.telemetry.bad_samples.values()) - b.telemetry.bad_samples.get("tar_error", 0)
                                     for b in batches)
    assert not any(b.telemetry.rejected for b in batches)


def test_bad_sample_warnings_are_rate_limited_without_sleeping(caplog):
    now = [0.0]
    bad = BadSamples(interval_s=60, clock=lambda: now[0])
    with caplog.at_level(logging.WARNING, logger="vlm.data.pipeline"):
        for t, reason in [(0, "corrupt_image"), (1, "corrupt_image"), (2, "corrupt_image"), (3, "bad_json"),
                          (30, "corrupt_image"), (64, "corrupt_image"), (65, "bad_json")]:
            now[0] = t
            bad.add(reason)
        assert bad.handler(OSError("unexpected end of data")) is True
    warned = [r.getMessage() for r in caplog.records]
    # first corrupt_image, first bad_json, the next after 60 s (with the running counts), first tar_error
    assert len(warned) == 4, warned
    assert "'corrupt_image': 5" in warned[2] and "'bad_json': 1" in warned[2]
    assert bad.take() == {"corrupt_image": 5, "bad_json": 2, "tar_error": 1} and bad.take() == {}


# --- language sampling ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def skewed(tmp_path_factory) -> Path:
    """1000 single-language samples, 70/20/10% en/de/fr, in a folder whose manifest counts them."""
    root = tmp_path_factory.mktemp("skewed")
    langs = ["en"] * 700 + ["de"] * 200 + ["fr"] * 100
    random.Random(0).shuffle(langs)
    counter = SplitCounter()
    for s in range(2):
        samples = []
        for i in range(500):
            record = _record(s * 500 + i, [langs[s * 500 + i]], qa=False)
            counter.add(f"train-{s}.tar", record)
            samples.append(_sample(f"{s}{i:04d}", record))
        _write(root / f"train-{s}.tar", samples)
    write_manifest(root, {"train": counter})
    return root


@pytest.mark.parametrize("alpha", [1.0, 0.5, 0.0])
def test_single_language_samples_reach_the_target_mix(skewed, alpha):
    cfg = _cfg(train=[str(skewed)], language_alpha=alpha, tasks=["caption"], task_weights=[1.0])
    assert manifest_language_counts(cfg.train, "train") == {"en": 700, "de": 200, "fr": 100}
    stream = _stream(resolve_shards(cfg.train, "train"), cfg, batch_size=25)  # counts read from the manifest
    natural = {"en": 0.7, "de": 0.2, "fr": 0.1}
    powered = {lang: share**alpha for lang, share in natural.items()}
    target = {lang: p / sum(powered.values()) for lang, p in powered.items()}
    assert stream.sampler.target == pytest.approx(target)
    n = 2400
    batches = _take(stream, n // 25)
    realised = Counter(lang for b in batches for lang in b.inputs["langs"])
    assert {lang: realised[lang] / n for lang in LANGS} == pytest.approx(target, abs=0.03)
    rejected = sum(b.telemetry.rejected for b in batches)
    assert rejected / (rejected + n) == pytest.approx(1 - stream.sampler.single_language_acceptance, abs=0.03)
    assert (rejected == 0) == (alpha == 1.0)


@pytest.mark.parametrize("alpha", [1.0, 0.3, 0.0])
def test_samples_holding_every_language_reach_the_target_mix_without_rejection(alpha):
    counts = {"en": 1000, "de": 1000, "fr": 1000}
    sampler = LanguageSampler(LANGS, counts, alpha)
    maker = ExampleMaker(_cfg(tasks=["caption"], task_weights=[1.0]), _transform, sampler=sampler)
    plans = [maker.plan(f"k{i}", _record(i, LANGS), sample_rng(0, 0, f"k{i}")) for i in range(3000)]
    assert all(not isinstance(p, str) for p in plans)  # none rejected
    realised = Counter(p.lang for p in plans)
    assert {lang: realised[lang] / 3000 for lang in LANGS} == pytest.approx(sampler.target, abs=0.03)


def test_temperature_reweights_languages_shared_unevenly():
    """Every sample holds en, 40% also de: with alpha 0 the choice among a sample's languages leans to de."""
    sampler = LanguageSampler(["en", "de"], {"en": 1000, "de": 400}, alpha=0.0)
    maker = ExampleMaker(_cfg(languages=["en", "de"], tasks=["caption"], task_weights=[1.0]), _transform,
                         sampler=sampler)
    plans = [maker.plan(f"k{i}", _record(i, ["en", "de"] if i % 5 < 2 else ["en"]), sample_rng(0, 0, f"k{i}"))
             for i in range(5000)]
    langs = Counter(p.lang for p in plans if not isinstance(p, str))
    assert sampler.target == pytest.approx({"en": 0.5, "de": 0.5})
    assert langs["de"] / sum(langs.values()) > 0.4  # natural share of de among language choices: 2/7


def test_without_manifest_counts_every_sample_keeps_a_uniform_choice(shards, caplog):
    with caplog.at_level(logging.WARNING, logger="vlm.data.pipeline"):
        stream = _stream(shards, _cfg(train=list(shards), language_alpha=0.0))
    assert sum("no per-language sample counts" in r.getMessage() for r in caplog.records) == 1
    assert stream.sampler.target == pytest.approx({lang: 1 / 3 for lang in LANGS})
    batches = _take(stream, 6)
    assert not any(b.telemetry.rejected for b in batches)


# --- templates -----------------------------------------------------------------------------------------


def test_packaged_templates_cover_every_language_and_task():
    templates = packaged_templates()
    assert len(templates.languages()) == 11
    for lang in templates.languages():
        for task in TASK_FIELDS:
            assert len(templates.get(lang, task)) >= 3, (lang, task)
        assert set(templates.answers[lang]) == {"yes", "no"}
        assert caption_prompt(lang) == templates.get(lang, "caption")[0]
        assert vqa_prompt("Q?", lang) == templates.get(lang, "vqa")[0].format(question="Q?")
    assert caption_prompt("de") == "Bildunterschrift auf Deutsch:"  # evaluation prompts are unchanged
    assert vqa_prompt("wie viele?", "de") == "Frage: wie viele? Antwort:"
    assert caption_prompt("ko") == "Caption in Korean:"  # a language without templates
    assert vqa_prompt("q?", "ko") == "Question: q? Answer in Korean:"
    assert caption_prompt("de", "en") == "Caption in German:"


def test_training_prompts_vary_unless_template_variants_is_off():
    records = [_record(i, LANGS) for i in range(300)]
    for variants in (True, False):
        maker = ExampleMaker(_cfg(template_variants=variants), _transform)
        plans = [maker.plan(f"k{i}", r, sample_rng(0, 0, f"k{i}")) for i, r in enumerate(records)]
        prompts = {p.prompt for p in plans if p.task == "caption" and p.lang == "de"}
        if variants:
            assert prompts == set(packaged_templates().get("de", "caption"))
        else:
            assert prompts == {caption_prompt("de")}  # evaluation's prompt


KOREAN = """\
ko:
  caption: ["한국어로 이미지를 설명하세요:", "이 사진의 짧은 한국어 설명:"]
  vqa: ["질문: {question} 답:"]
  match: ["캡션 \\"{caption}\\"이 이미지를 설명합니까? 예 또는 아니오로 답하세요:"]
  yes: 예
  no: 아니오
de:
  caption: ["Beschreibe das Bild auf Deutsch:"]
"""


def test_a_users_templates_file_adds_a_language_without_code(tmp_path):
    path = tmp_path / "templates.yaml"
    path.write_text(KOREAN, encoding="utf-8")
    cfg = config_from_dict({"data": {"languages": ["ko", "de"], "templates": str(path), "tasks": ["caption", "vqa"],
                                     "task_weights": [1, 1]}}).data
    templates = load_templates(cfg.templates)
    assert templates.answers["ko"] == {"yes": "예", "no": "아니오"}  # unquoted yes/no keys are read as words
    assert templates.get("de", "vqa") == packaged_templates().get("de", "vqa")  # laid over the packaged file
    maker = ExampleMaker(cfg, _transform)
    records = [{"captions": {"ko": [f"빨간 원 {i}"], "de": [f"ein roter Kreis {i}"]},
                "qa": [{"lang": "ko", "question": f"몇 개? {i}", "answers": ["셋"]}]} for i in range(200)]
    plans = [maker.plan(f"k{i}", r, sample_rng(0, 0, f"k{i}")) for i, r in enumerate(records)]
    korean = [p for p in plans if p.lang == "ko"]
    assert {p.prompt for p in korean if p.task == "caption"} == set(templates.get("ko", "caption"))
    assert all(p.prompt.startswith("질문: ") for p in korean if p.task == "vqa")
    assert {p.prompt for p in plans if p.lang == "de" and p.task == "caption"} == {"Beschreibe das Bild auf Deutsch:"}
    assert caption_prompt("ko", templates=templates) == "한국어로 이미지를 설명하세요:"  # what evaluation asks


@pytest.mark.parametrize("text, culprit", [
    ("ko:\n  vqa: ['질문: 답:']\n", "'ko': vqa[0] lacks the {question} placeholder"),
    ("ko:\n  captions: ['x']\n", "'ko': unknown key 'captions'"),
    ("ko:\n  caption: []\n", "'ko': 'caption' must be a non-empty list"),
    ("ko:\n  match: ['{caption}?']\n", "'ko': 'match' templates need the answer words"),
    ("ko:\n  caption: ['{question}']\n", "'ko': caption[0] has unknown placeholder(s) {question}"),
    ("xx:\n  caption: ['x']\n", "'xx'"),
])
def test_a_malformed_templates_file_is_a_one_line_config_error(tmp_path, text, culprit):
    path = tmp_path / "bad.yaml"
    path.write_text(text, encoding="utf-8")
    with pytest.raises(ConfigError, match="data.templates") as err:
        config_from_dict({"data": {"templates": str(path)}})
    assert culprit in str(err.value) and "\n" not in str(err.value)
    with pytest.raises(TemplateError):
        load_templates(path)


# --- caption matching ----------------------------------------------------------------------------------


def test_match_task_is_balanced_and_negatives_are_other_captions():
    cfg = _cfg(tasks=["match"], task_weights=[1.0])
    maker = ExampleMaker(cfg, _transform)
    answers = packaged_templates().answers
    plans = []
    for i in range(1500):
        record = _record(i, LANGS)
        plan = maker.plan(f"k{i}", record, sample_rng(0, 0, f"k{i}"))
        maker.remember(f"k{i}", record)
        if i == 0:
            assert plan == "no_task"  # no negative yet
            continue
        plans.append((plan, record))
    yes = [p for p, _ in plans if p.target == answers[p.lang]["yes"]]
    no = [(p, r) for p, r in plans if p.target == answers[p.lang]["no"]]
    assert len(yes) + len(no) == len(plans)
    assert len(yes) / len(plans) == pytest.approx(0.5, abs=0.04)
    for plan, record in no:
        own = record["captions"][plan.lang]
        assert plan.caption in own  # the contrastive caption stays the true one
        assert not any(c in plan.prompt for c in own)  # the shown caption is another image's...
        assert f"{plan.lang} caption" in plan.prompt or f"{plan.lang} other words" in plan.prompt  # ...in L
    for plan in yes:
        assert plan.caption in plan.prompt


def test_stream_with_every_task_and_bad_samples_resumes_exactly(skewed, bad_shards):
    """Resuming mid-stream (past the matching pool's window) gives the batches an uninterrupted run gives:
    language sampling, templates, tasks and match negatives included."""
    cfg = _cfg(train=[str(skewed)], tasks=["caption", "vqa", "match"], task_weights=[1, 1, 2], language_alpha=0.5,
               languages=["en", "de", "fr"])
    urls = resolve_shards(cfg.train, "train") + bad_shards[:1]
    straight = _take(_stream(urls, cfg, batch_size=16), 30)
    tasks = Counter(t for b in straight for t in b.inputs["tasks"])
    assert {"caption", "match"} <= set(tasks)
    for at in (3, 26):
        consumed = straight[at - 1].telemetry.consumed
        assert (consumed > MATCH_POOL) == (at == 26)
        position = StreamPosition(batches=at, consumed={0: consumed})
        again = _take(_stream(urls, cfg, batch_size=16, position=position), 30 - at)
        assert _signature(again) == _signature(straight[at:]), at
        assert [b.telemetry.consumed for b in again] == [b.telemetry.consumed for b in straight[at:]]


class _LengthCollator:
    """The test collation, plus the lengths length-grouping sorts by (characters here, tokens in the real one)."""

    def __call__(self, examples: list) -> dict:
        return _collate(examples)

    def lengths(self, examples: list) -> list[int]:
        return [len(e.prompt) + len(e.target) for e in examples]


def _length_spread(batches: list) -> int:
    lengths = [[len(e.prompt) + len(e.target) for e in b.inputs["examples"]] for b in batches]
    return sum(max(row) - min(row) for row in lengths)


def test_length_grouping_regroups_each_window_and_resumes_mid_window(shards):
    """Each window of 4 batches holds the samples an ungrouped stream's 4 batches hold, in batches of neighbours;
    a run resumed after any batch of a window continues as the uninterrupted one."""
    plain_cfg = _cfg(tasks=["caption", "vqa", "match"], task_weights=[1, 1, 1])
    cfg = _cfg(tasks=["caption", "vqa", "match"], task_weights=[1, 1, 1], group_by_length=4)

    def stream(config, position=None):
        return TrainStream(shards, config, _transform, _LengthCollator(), 8, seed=0, position=position)

    plain, grouped = _take(stream(plain_cfg), 12), _take(stream(cfg), 12)
    for w in range(0, 12, 4):
        assert sorted(_signature(grouped[w: w + 4])) == sorted(_signature(plain[w: w + 4]))
        assert _length_spread(grouped[w: w + 4]) < _length_spread(plain[w: w + 4])
    assert [b.telemetry.window_batches for b in grouped[:4]] == [1, 2, 3, 0]
    for at in (4, 5, 6, 7):
        done = grouped[at - 1].telemetry
        position = StreamPosition(batches=at, consumed={0: done.consumed}, window_batches={0: done.window_batches})
        position = StreamPosition.from_dict(position.to_dict())  # as a checkpoint keeps it
        again = _take(stream(cfg, position), 12 - at)
        assert _signature(again) == _signature(grouped[at:]), at
        assert [b.telemetry for b in again][1:] == [b.telemetry for b in grouped[at + 1:]]


def test_validation_batches_are_fixed(shards):
    cfg = _cfg(tasks=["caption", "vqa", "match"], task_weights=[1, 1, 1])
    first = fixed_batches(shards, cfg, _transform, _collate, 8, 4, seed=0)
    assert len(first) == 4
    assert _signature(first) == _signature(fixed_batches(shards, cfg, _transform, _collate, 8, 4, seed=0))
    assert {"caption", "vqa", "match"} == {t for b in first for t in b["tasks"]}


def test_stream_config_keys_are_validated():
    cfg = config_from_dict({"data": {"tasks": ["caption", "vqa", "match"], "task_weights": [1, 1, 1],
                                     "resampled": True, "language_alpha": 0.0}}).data
    assert cfg.resampled and cfg.language_alpha == 0.0 and cfg.template_variants
    assert DataConfig().language_alpha == 0.3 and DataConfig().templates == "" and not DataConfig().resampled
    for bad, culprit in [({"language_alpha": 1.5}, "data.language_alpha"),
                         ({"shuffle_buffer": 0}, "data.shuffle_buffer"),
                         ({"group_by_length": -1}, "data.group_by_length"),
                         ({"tasks": ["caption", "matching"], "task_weights": [1, 1]}, "data.tasks")]:
        with pytest.raises(ConfigError, match=culprit):
            config_from_dict({"data": bad})


def test_qa_only_samples_teach_vqa_with_the_answer_as_contrastive_text():
    """LLaVA conversations become QA without captions (`vlm prep shards --format llava`): such a language
    teaches VQA only; with VQA off the sample has nothing to teach."""
    record = {"captions": {}, "qa": [{"lang": "en", "question": "What is in the picture?",
                                      "answers": ["A red bus parked by the road."]}]}
    maker = ExampleMaker(_cfg(), _transform)
    plans = [maker.plan(f"k{i}", record, sample_rng(0, 0, f"k{i}")) for i in range(50)]
    assert {(p.lang, p.task, p.target, p.caption) for p in plans} == {
        ("en", "vqa", "A red bus parked by the road.", "A red bus parked by the road.")}
    assert all("What is in the picture?" in p.prompt for p in plans)
    captions_only = ExampleMaker(_cfg(tasks=["caption"], task_weights=[1.0]), _transform)
    assert captions_only.plan("k", record, sample_rng(0, 0, "k")) == "no_language"
    mixed = {"captions": {"de": ["ein roter Bus"]}, "qa": record["qa"]}
    langs = Counter(maker.plan(f"k{i}", mixed, sample_rng(0, 0, f"k{i}")).lang for i in range(400))
    assert set(langs) == {"en", "de"}  # en from its QA, de from its caption
