"""`vlm prep translate`: add translations of the English captions and QA of webdataset shards.

A record gets translations only into the target languages it lacks (data_prep.records): its native captions
and QA are kept, unless `retranslate`. A record without English text is written through as it is (counted as
untranslated/no_english). The manifest's filters.per_language counts, per target language, the items that
were native and those translated, kept or dropped by reason.

The unit of work is one input shard, written to out_dir under the same name with the translations added to
each sample's json (images and other members pass through untouched). Under torchrun rank r takes shards
r, r + world_size, ...; rank 0 writes manifest.json once every rank is done.

Resuming after a kill redoes nothing and duplicates nothing:
- translations are appended to a journal per shard and target language (`.translate/work/`) after every
  chunk of `chunk_size` texts, so a kill loses at most the chunk in flight;
- a finished shard is renamed into place, then marked done (`.translate/done/<shard>.json`, its counts);
  a rerun skips done shards and translates only what a shard's journals lack.
Every dropped translation is logged with its reason in `rejected/<shard>.jsonl`.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import webdataset as wds
from tqdm import tqdm

from data_prep.filters import FilterConfig
from data_prep.manifest import (
    IMAGE_MEMBERS,
    MANIFEST,
    CaptionSample,
    SplitCounter,
    TokenizerProbe,
    expand_pattern,
    read_manifest,
    write_json,
    write_manifest,
)
from data_prep.records import (
    NATIVE,
    SOURCE,
    Verdicts,
    apply_verdicts,
    judge,
    summary_table,
    wanted_texts,
)
from data_prep.translate import Translator

log = logging.getLogger(__name__)
STATE = ".translate"
CACHE_SIZE = 1 << 20  # translations remembered across shards, per target language
SAMPLE_STATS = ("skipped/", "untranslated/")  # per-sample stats keys; the others are "<lang>/<reason>" per item


@dataclass(frozen=True)
class ShardJob:
    split: str
    url: str
    name: str  # the output shard's file name

    @property
    def stem(self) -> str:
        return self.name.removesuffix(".tar")


def plan_jobs(inputs: list[str], split: str = "train") -> list[ShardJob]:
    """The shards to translate: every split of a `vlm prep` folder (its manifest), or tar files/globs as `split`."""
    jobs: list[ShardJob] = []
    for item in inputs:
        if Path(item).is_dir():
            manifest = read_manifest(item)
            splits = [key for key, value in manifest.items() if key != "counts" and isinstance(value, list)
                      and all(isinstance(v, str) and v.endswith(".tar") for v in value)]
            jobs += [ShardJob(s, str(Path(item) / name), name) for s in splits for name in manifest[s]]
        else:
            jobs += [ShardJob(split, url, Path(url).name) for url in expand_pattern(item, "input ")]
    names = Counter(job.name for job in jobs)
    if clash := [name for name, n in names.items() if n > 1]:
        raise ValueError(f"two input shards are both named {clash[0]}: outputs keep input names, rename one")
    if not jobs:
        raise FileNotFoundError("no input shards given")
    return jobs


# --- the journal ---------------------------------------------------------------------------------


class Journal:
    """Append-only JSONL of finished translations {"src", "out"}; a torn last line (a kill mid-write) is ignored."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.done: dict[str, str | None] = {}
        if path.is_file():
            for line in path.read_text(encoding="utf-8").splitlines():
                try:
                    entry = json.loads(line)
                    self.done[entry["src"]] = entry["out"]
                except (ValueError, KeyError, TypeError):
                    continue

    def add(self, texts: list[str], outputs: list[str | None]) -> None:
        if len(outputs) != len(texts):
            raise ValueError(f"the translator returned {len(outputs)} outputs for {len(texts)} texts")
        lines = "".join(json.dumps({"src": s, "out": o}, ensure_ascii=False) + "\n" for s, o in zip(texts, outputs))
        self.path.parent.mkdir(parents=True, exist_ok=True)
        with self.path.open("a", encoding="utf-8") as f:
            if f.tell() and not self.path.read_bytes().endswith(b"\n"):
                f.write("\n")  # end a torn line, so the new entries parse
            f.write(lines)
            f.flush()
            os.fsync(f.fileno())
        self.done.update(zip(texts, outputs))


# --- reading input samples -----------------------------------------------------------------------


def _samples(url: str, skipped: Counter) -> Iterator[tuple[dict, dict]]:
    """(raw sample, record) for each usable sample of a shard; unusable ones are counted by reason, and those
    without English text (nothing to translate) as untranslated/no_english. The English captions come from
    the json (captions.en, or img2dataset's "caption") or an img2dataset .txt."""

    def on_error(exc: Exception) -> bool:
        skipped["skipped/tar_error"] += 1
        log.warning("%s: %s", url, exc)
        return True

    for raw in wds.tariterators.tarfile_samples([{"url": url}], handler=on_error):
        if not any(key in raw for key in IMAGE_MEMBERS):
            skipped["skipped/no_image"] += 1
            continue
        try:
            meta = json.loads(raw["json"]) if "json" in raw else {}
        except (UnicodeDecodeError, ValueError):
            meta = None
        if not isinstance(meta, dict):
            skipped["skipped/bad_json"] += 1
            continue
        captions = meta.get("captions") if isinstance(meta.get("captions"), dict) else {}
        english = captions.get(SOURCE) or meta.get("caption") or raw.get("txt", b"").decode("utf-8", "replace")
        english = [english] if isinstance(english, str) else english if isinstance(english, list) else []
        english = [c.strip() for c in english if isinstance(c, str) and c.strip()]
        qa = [q for q in meta.get("qa", []) if isinstance(q, dict) and q.get("question") and q.get("answers")]
        if not english and not any(q.get("lang") == SOURCE for q in qa):
            skipped["untranslated/no_english"] += 1
        record = {k: v for k, v in meta.items() if k != "caption"}
        yield raw, {**record, "captions": {**captions, SOURCE: english} if english else captions, "qa": qa}


# --- one shard -----------------------------------------------------------------------------------


@dataclass
class ShardResult:
    split: str
    name: str
    counts: dict  # SplitCounter.to_dict() of this shard
    stats: dict  # "<lang>/<reason>" per caption/QA item, "skipped/<reason>" and "untranslated/<reason>" per sample
    texts: int  # texts sent to the translator by this run (0 when the journals had them all)
    translate_seconds: float


class ShardTranslator:
    """Translates shards one at a time for one rank, with journals, filters and a progress bar."""

    def __init__(self, out_dir: Path, targets: list[str], translator: Translator, filters: FilterConfig,
                 chunk_size: int, progress: tqdm, retranslate: bool = False) -> None:
        self.out_dir, self.targets, self.translator = out_dir, targets, translator
        self.filters, self.chunk_size, self.progress = filters, chunk_size, progress
        self.retranslate = retranslate
        # Texts that recur across shards (VQA answers, frequent questions) are translated once per run.
        self.cache: dict[str, dict[str, str | None]] = {tgt: {} for tgt in targets}

    def _remember(self, tgt: str, texts: list[str], outputs: list[str | None]) -> None:
        cache = self.cache[tgt]
        if len(cache) + len(texts) > CACHE_SIZE:
            cache.clear()  # bounded memory; a cleared cache only costs repeated translations
        cache.update(zip(texts, outputs))

    def run(self, job: ShardJob) -> ShardResult:
        work = self.out_dir / STATE / "work" / job.stem
        skipped: Counter = Counter()
        wanted: dict[str, dict[str, None]] = {tgt: {} for tgt in self.targets}  # ordered sets of English texts
        for _, record in _samples(job.url, skipped):
            for tgt in self.targets:
                wanted[tgt].update(dict.fromkeys(wanted_texts(record, tgt, self.retranslate)))
        texts = {tgt: list(todo) for tgt, todo in wanted.items()}
        start = time.perf_counter()
        verdicts: Verdicts = {}
        journals = {tgt: Journal(work / f"{tgt}.jsonl") for tgt in self.targets}
        sent = self._translate(texts, journals, SOURCE)
        for tgt in self.targets:
            back = self._back_translator(work, tgt)
            outputs = [journals[tgt].done[t] for t in texts[tgt]]
            verdicts[tgt] = judge(texts[tgt], outputs, tgt, self.filters, back)
        seconds = time.perf_counter() - start
        counter, stats = SplitCounter(), Counter()
        tmp = work / job.name
        tmp.parent.mkdir(parents=True, exist_ok=True)  # no journal made it when the shard has nothing to translate
        rejected = []
        with wds.TarWriter(str(tmp), mtime=int(time.time())) as writer:
            for raw, record in _samples(job.url, Counter()):  # skips were counted in the first pass
                new, events = apply_verdicts(record, verdicts, self.retranslate)
                stats.update(event.stats_key() for event in events)
                rejected += [{"key": raw["__key__"], **asdict(e)} for e in events if e.dropped]
                members = {k: v for k, v in raw.items() if not k.startswith("__") or k == "__key__"}
                writer.write({**members, "json": json.dumps(new, ensure_ascii=False).encode("utf-8")})
                counter.add(job.name, new)
        _replace_durably(tmp, self.out_dir / job.name)
        if rejected:
            _write_jsonl(self.out_dir / "rejected" / f"{job.stem}.jsonl", rejected)
        result = ShardResult(job.split, job.name, counter.to_dict(), dict(stats + skipped), sent, seconds)
        write_json(self.out_dir / STATE / "done" / f"{job.stem}.json", asdict(result))
        shutil.rmtree(work, ignore_errors=True)
        return result

    def _translate(self, texts: dict[str, list[str]], journals: dict[str, Journal], src: str) -> int:
        """Translate the texts of each target language that its journal and the cache lack, chunk by chunk,
        longest first (least padding)."""
        pending = {}
        for tgt, journal in journals.items():
            self._remember(tgt, list(journal.done), list(journal.done.values()))
            missing = [t for t in texts[tgt] if t not in journal.done]
            known = [t for t in missing if t in self.cache[tgt]]
            if known:
                journal.add(known, [self.cache[tgt][t] for t in known])
            pending[tgt] = sorted((t for t in missing if t not in journal.done), key=len, reverse=True)
        self.progress.total = (self.progress.total or 0) + sum(map(len, pending.values()))
        self.progress.refresh()
        if getattr(self.translator, "mixes_languages", False):
            jobs = sorted(((t, tgt) for tgt, ts in pending.items() for t in ts), key=lambda j: len(j[0]), reverse=True)
            for i in range(0, len(jobs), self.chunk_size):
                chunk = jobs[i : i + self.chunk_size]
                outputs = self.translator.translate_mixed([t for t, _ in chunk], src, [tgt for _, tgt in chunk])
                for tgt in dict.fromkeys(tgt for _, tgt in chunk):
                    picked = [(t, o) for (t, g), o in zip(chunk, outputs) if g == tgt]
                    journals[tgt].add([t for t, _ in picked], [o for _, o in picked])
                    self._remember(tgt, [t for t, _ in picked], [o for _, o in picked])
                self.progress.update(len(chunk))
        else:
            for tgt, todo in pending.items():
                for i in range(0, len(todo), self.chunk_size):
                    chunk = todo[i : i + self.chunk_size]
                    outputs = self.translator.translate(chunk, src, tgt)
                    journals[tgt].add(chunk, outputs)
                    self._remember(tgt, chunk, outputs)
                    self.progress.update(len(chunk))
        return sum(map(len, pending.values()))

    def _back_translator(self, work: Path, tgt: str) -> Callable[[list[str]], list[str | None]] | None:
        if self.filters.back_translation_chrf <= 0:
            return None

        def back(outputs: list[str]) -> list[str | None]:
            journal = Journal(work / f"{tgt}.back.jsonl")
            todo = sorted(set(outputs) - set(journal.done), key=len, reverse=True)
            for i in range(0, len(todo), self.chunk_size):
                chunk = todo[i : i + self.chunk_size]
                journal.add(chunk, self.translator.translate(chunk, tgt, SOURCE))
            return [journal.done[o] for o in outputs]

        return back


def _write_jsonl(path: Path, rows: list[dict]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")
    _replace_durably(tmp, path)


def _replace_durably(tmp: Path, path: Path) -> None:
    """Rename `tmp` to `path` with its bytes flushed first and the rename after: the done marker written next
    never outlives, on a power loss, the shard it vouches for."""
    _fsync(tmp)
    os.replace(tmp, path)
    _fsync(path.parent)


def _fsync(path: Path) -> None:
    fd = os.open(path, os.O_RDONLY)  # a folder too: fsyncing it makes a rename in it durable
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


# --- the whole job -------------------------------------------------------------------------------


def job_settings(settings: dict, targets: list[str], filters: FilterConfig, retranslate: bool = False) -> dict:
    """What a resumed job must share with the run that started it, or its shards would mix two."""
    return {**settings, "languages": [t for t in targets if t != SOURCE], "filters": asdict(filters),
            "retranslate": retranslate}


def check_settings(out_dir: Path, settings: dict) -> None:
    """Refuse to resume a job in out_dir that was started with other `job_settings`."""
    path = Path(out_dir) / STATE / "settings.json"
    if path.is_file():
        before = json.loads(path.read_text(encoding="utf-8"))
        changed = sorted(k for k in settings.keys() | before.keys() if settings.get(k) != before.get(k))
        if changed:
            raise ValueError(f"{out_dir} holds a translation started with other settings ({', '.join(changed)}): "
                             f"resume with the same ones, or write to a new --out")


def translate_dataset(
    inputs: list[str],
    out_dir: str | Path,
    langs: list[str],
    translator: Translator,
    filters: FilterConfig | None = None,
    split: str = "train",
    chunk_size: int = 2048,
    rank: int = 0,
    world_size: int = 1,
    barrier: Callable[[], None] = lambda: None,
    settings: dict | None = None,
    extra: dict | None = None,
    progress: bool = True,
    retranslate: bool = False,
    tokenizer: TokenizerProbe | None = None,
) -> dict | None:
    """Translate `inputs` (see `plan_jobs`) into `langs` and write out_dir; return the manifest on rank 0.

    `settings` (backend, model, ...) are recorded with the job; a resume with other ones is refused.
    `retranslate` replaces native captions and QA of the target languages by translations (by default they
    are kept and nothing is translated into their language). `extra` keys are added to the manifest, and with
    `tokenizer` its fertility table over the English and target-language captions written.
    `barrier` waits for every rank (torch.distributed.barrier under torchrun).
    """
    filters = filters or FilterConfig()
    out_dir = Path(out_dir)
    jobs = plan_jobs(inputs, split)
    targets = [lang for lang in langs if lang != SOURCE]
    if not targets:
        raise ValueError("no target languages: name at least one besides English")
    if rank == 0:
        out_dir.mkdir(parents=True, exist_ok=True)
        (out_dir / MANIFEST).unlink(missing_ok=True)
        full = job_settings(settings or {}, targets, filters, retranslate)
        check_settings(out_dir, full)
        write_json(out_dir / STATE / "settings.json", full)
    barrier()
    done_dir = out_dir / STATE / "done"
    mine = [job for job in jobs[rank::world_size] if not (done_dir / f"{job.stem}.json").is_file()]
    if skipped := len(jobs[rank::world_size]) - len(mine):
        log.info("rank %d: %d shards already done, %d to go", rank, skipped, len(mine))
    start = time.perf_counter()
    texts, seconds = 0, 0.0
    with tqdm(total=0, unit="text", desc="translate", disable=None if progress and rank == 0 else True) as bar:
        worker = ShardTranslator(out_dir, targets, translator, filters, chunk_size, bar, retranslate)
        for job in mine:
            result = worker.run(job)
            texts, seconds = texts + result.texts, seconds + result.translate_seconds
            log.info("rank %d: %s: %d texts in %.1f s", rank, job.name, result.texts, result.translate_seconds)
    write_json(out_dir / STATE / f"rank-{rank}.json",
                {"texts": texts, "seconds": round(seconds, 3), "wall_seconds": round(time.perf_counter() - start, 3)})
    barrier()
    if rank != 0:
        return None
    shutil.rmtree(out_dir / STATE / "work", ignore_errors=True)  # only finished shards' (empty) folders remain
    settings = {**(settings or {}), "retranslate": retranslate}
    if tokenizer is not None:
        extra = {**(extra or {}), "fertility": tokenizer.table(_caption_sample(out_dir, jobs, targets), parallel=True)}
    return _finish(out_dir, jobs, world_size, settings, targets, filters, extra or {})


def _caption_sample(out_dir: Path, jobs: list[ShardJob], targets: list[str]) -> CaptionSample:
    """The first captions of English and each target language in the output shards, read until each language
    has enough (the translations of a record's English captions are what a parallel fertility table compares)."""
    languages = [SOURCE, *targets]
    captions = CaptionSample()
    for job in jobs:
        for _, record in _samples(str(out_dir / job.name), Counter()):
            captions.add(record, languages)
        if captions.full(languages):
            break
    return captions


def _finish(out_dir: Path, jobs: list[ShardJob], world_size: int, settings: dict, targets: list[str],
            filters: FilterConfig, extra: dict) -> dict:
    splits: dict[str, SplitCounter] = {}
    stats: Counter = Counter()
    for job in jobs:
        result = json.loads((out_dir / STATE / "done" / f"{job.stem}.json").read_text(encoding="utf-8"))
        splits.setdefault(job.split, SplitCounter()).merge(result["counts"])
        stats.update(result["stats"])
    ranks = [json.loads((out_dir / STATE / f"rank-{r}.json").read_text()) for r in range(world_size)]
    # Throughput of this run: every rank translates at once, so rates add up.
    rate = sum(r["texts"] / r["seconds"] for r in ranks if r["seconds"] > 0)
    table = summary_table(Counter({k: v for k, v in stats.items() if not k.startswith(SAMPLE_STATS)}))
    return write_manifest(
        out_dir, splits,
        languages=[SOURCE, *targets],
        translation={**settings, "texts_this_run": sum(r["texts"] for r in ranks),
                     "texts_per_second": round(rate, 2), "world_size": world_size},
        filters={"config": asdict(filters), "per_language": table},
        stats=dict(sorted(stats.items())),
        **extra,
    )


def format_table(rows: list[dict]) -> str:
    """The per-language summary as a Markdown table: native items kept as they were, then translated items
    (total), kept and dropped by reason."""
    reasons = sorted({k for row in rows for k in row} - {"lang", NATIVE, "total", "kept"})
    head = ["lang", NATIVE, "total", "kept", "kept %", *reasons]
    lines = ["| " + " | ".join(head) + " |", "|" + "---|" * len(head)]
    for row in rows:
        kept = row.get("kept", 0)
        cells = [row["lang"], row.get(NATIVE, 0), row["total"], kept, f"{100 * kept / max(row['total'], 1):.1f}",
                 *(row.get(r, 0) for r in reasons)]
        lines.append("| " + " | ".join(map(str, cells)) + " |")
    return "\n".join(lines)
