"""The training loop, one for every strategy (vlm/train/strategies/): gradient accumulation, warm-up + cosine
schedule, clipping, progress bar, JSONL/TensorBoard metrics, periodic validation loss and benchmark evaluation,
and atomic resumable checkpoints (vlm/train/checkpoint.py).

The benchmark is a callback the caller composes (the CLI evaluates with `eval`): the library knows nothing of
evaluation suites."""

from __future__ import annotations

import logging
import math
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from vlm import distributed
from vlm.config import Config
from vlm.data.bad_samples import BAD_REASONS, REJECTED
from vlm.data.batch import Batch
from vlm.data.features import check_cache
from vlm.data.shards import resolve_shards
from vlm.data.stream import (
    StreamPosition,
    TrainStream,
    fixed_batches,
    make_train_loader,
)
from vlm.model.vision_identity import encoder_identity
from vlm.model.vlm import VisionLLM
from vlm.objective.language_weights import lagging_weights, language_losses
from vlm.objective.objective import Objective
from vlm.train import checkpoint
from vlm.train.lost_ranks import explain_failure
from vlm.train.metrics import MetricsLogger
from vlm.train.preemption import StopRequest, ignore_stop_signals
from vlm.train.schedule import make_scheduler
from vlm.train.strategies import make_strategy

log = logging.getLogger(__name__)
VAL_BATCHES = 8
# Evaluates the model mid-run: (model, step) -> the language means to log (rank 0), None on the other ranks.
Benchmark = Callable[[VisionLLM, int], "dict[str, float] | None"]


@dataclass
class TrainResult:
    objective: Objective  # the trained network (`.model`) with the objective's own parameters
    output_dir: Path
    checkpoint: Path | None
    steps: int
    seconds: float
    last_metrics: dict[str, float]
    stopped_by: str | None = None  # the signal that ended the run early (SIGTERM, SIGUSR1), checkpoint saved

    @property
    def model(self) -> VisionLLM:
        return self.objective.model


class NonFiniteTraining(RuntimeError):
    """`train.max_nonfinite` steps in a row had a non-finite loss or gradient: the run stops without saving."""


def build_optimizer(module: torch.nn.Module, cfg: Config) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for name, param in module.named_parameters():
        if param.requires_grad:
            # Biases, norms, the query tokens and the temperature are not weight-decayed.
            (no_decay if param.ndim < 2 or "query_tokens" in name else decay).append(param)
    groups = [{"params": decay, "weight_decay": cfg.train.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.train.lr, betas=(0.9, 0.98), eps=1e-6)


class Trainer:
    def __init__(self, cfg: Config, resume: bool = False, benchmark: Benchmark | None = None,
                 batches: Iterator[Batch] | None = None):
        """`batches` replaces the training stream (each rank's own batches), for callers that feed the loop
        themselves; by default every rank reads its share of data.train."""
        self.cfg = cfg
        self.device = distributed.init_distributed(cfg.train.dist_timeout_s)
        self.rank, self.world = distributed.rank(), distributed.world_size()
        if cfg.train.threads > 0:
            torch.set_num_threads(cfg.train.threads)
        self.output_dir = Path(cfg.train.output_dir)
        if not resume and checkpoint.latest_checkpoint(self.output_dir) is not None:
            raise FileExistsError(f"{self.output_dir} already holds checkpoints; pass --resume to continue "
                                  f"or choose another train.output_dir")
        # Everything a bad config, layout or checkpoint can fail on is checked before the model is built.
        self.strategy = make_strategy(cfg.train, self.device)
        self.strategy.check(cfg)
        self.layout = checkpoint.Layout.of(cfg, self.world)
        restart = checkpoint.plan_resume(self.output_dir, cfg, self.rank, self.world) if resume else None
        train_urls = resolve_shards(cfg.data.train, "train") if batches is None else []
        val_urls = resolve_shards(cfg.data.val, "val") if cfg.data.val else []
        if cfg.data.features:  # a stale or unfinished feature cache is refused before the model is built
            check_cache(cfg.data.features, encoder_identity(cfg.vision),
                        train_urls + (val_urls if cfg.train.eval_every > 0 else []))
        self.benchmark = benchmark

        torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank
        model = VisionLLM(cfg).load_weights()
        self.objective = Objective(model).to(self.device)
        torch.manual_seed(cfg.train.seed + 1 + self.rank)  # per-rank dropout streams
        self.module = self.strategy.prepare(self.objective)
        self.optimizer = build_optimizer(self.objective, cfg)
        self.scheduler = make_scheduler(self.optimizer, cfg.train.warmup_steps, cfg.train.max_steps,
                                        cfg.train.min_lr_ratio)
        self.step = 0
        self.position = StreamPosition()
        if restart is not None:
            self._restore(restart)
        elif resume and distributed.is_main():
            log.warning("--resume: no checkpoint in %s; starting from scratch", self.output_dir / "checkpoints")

        collator = model.collator()
        transform = model.vision.preprocess
        if batches is None:
            stream = TrainStream(train_urls, cfg.data, transform, collator, cfg.train.batch_size, cfg.train.seed,
                                 self.rank, self.world, self.position)
            batches = iter(make_train_loader(stream, cfg.data.num_workers, worker_init_fn=ignore_stop_signals))
        self.batches = batches
        self.val_batches = []
        if val_urls and cfg.train.eval_every > 0:
            held_out = fixed_batches(val_urls, cfg.data, transform, collator, cfg.train.batch_size,
                                     VAL_BATCHES * self.world, cfg.train.seed)
            usable = len(held_out) // self.world * self.world  # equal counts: the loss gathers across ranks
            self.val_batches = held_out[:usable][self.rank :: self.world]

        self.metrics = MetricsLogger(self.output_dir, cfg.train.tensorboard, enabled=distributed.is_main(),
                                     append=resume)
        if distributed.is_main():
            self.output_dir.mkdir(parents=True, exist_ok=True)
            cfg.save(self.output_dir / "config.json")
            log.info("bridge %s, strategy %s on %d rank(s); training terms %s", cfg.bridge.type, self.strategy.name,
                     self.world, self.objective.weights)

    @property
    def model(self) -> VisionLLM:
        return self.objective.model

    # --- resume --------------------------------------------------------------------------------

    def _restore(self, restart: checkpoint.Resume) -> None:
        checkpoint.load_checkpoint(restart.path, self.strategy, self.optimizer)
        self.scheduler.load_state_dict(restart.scheduler)
        self.step = restart.step
        if restart.rng is not None:
            checkpoint.set_rng_state(restart.rng)
        else:  # a rank the checkpoint did not have
            torch.manual_seed(self.cfg.train.seed + 1 + self.rank + 1000003 * self.step)
        self.position = restart.position
        if distributed.is_main():
            how = "exactly" if restart.same_layout else (
                f"on a new layout ({self.world} ranks): the data stream starts pass {self.position.start_epoch}")
            log.info("resumed from %s at step %d, %s", restart.path, self.step, how)

    def save(self) -> Path | None:
        return checkpoint.save_checkpoint(self.output_dir, self.step, self.strategy, self.optimizer,
                                          self.scheduler.state_dict(), self.position, self.cfg, self.layout)

    # --- loop ----------------------------------------------------------------------------------

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        """Mean validation terms (val_<term>), the LM loss per language (val_lm/<lang>, when the LM computes
        labelled logits) and, with loss.lagging_boost, the language weights this validation sets (lang_weight/<lang>;
        the first validation of a run sets the baseline they follow instead)."""
        self.module.eval()
        by_language = "lm" in self.objective.weights and self.model.llm.computes_labelled_logits
        sums: dict[str, float] = {}
        language_sums = torch.zeros(len(self.objective.languages), 2, dtype=torch.float64)  # token losses, counts
        for inputs in self.val_batches:
            out = self.strategy.forward(inputs, by_language=by_language)
            if by_language:
                language_sums += out.pop("lm_by_language").cpu()
            for name, value in out.items():
                sums[name] = sums.get(name, 0.0) + float(value)
        self.module.train()
        names = sorted(sums)
        totals = distributed.all_reduce_sum(torch.tensor([sums[n] for n in names] + [len(self.val_batches)],
                                                         dtype=torch.float64))
        count = max(float(totals[-1]), 1.0)
        row = {f"val_{n}": float(totals[i]) / count for i, n in enumerate(names)}
        if by_language:
            per_language = language_losses(self.objective.languages, distributed.all_reduce_sum(language_sums))
            row.update({f"val_lm/{lang}": loss for lang, loss in per_language.items()})
            if self.cfg.loss.lagging_boost > 0:
                self._follow_lagging(per_language)
                row.update({f"lang_weight/{lang}": w for lang, w in self.objective.language_weights().items()})
        return row

    def _follow_lagging(self, per_language: dict[str, float]) -> None:
        """Record the baseline losses (the first validation), or set the lagging languages' weights from this
        validation's progress against it (the same on every rank: the sums were all-reduced)."""
        objective, loss = self.objective, self.cfg.loss
        languages = objective.languages
        if not bool(objective.lagging_baseline.any()):
            baseline = torch.tensor([per_language.get(lang, 0.0) for lang in languages])
            objective.lagging_baseline.copy_(baseline.to(objective.lagging_baseline.device))
            return
        baseline = dict(zip(languages, objective.lagging_baseline.tolist()))
        weights = lagging_weights(per_language, baseline, loss.lagging_boost, loss.lagging_max_weight)
        table = torch.tensor([weights.get(lang, 1.0) for lang in languages])
        objective.lagging_weights.copy_(table.to(objective.lagging_weights.device))

    def run_benchmark(self) -> None:
        """The benchmark callback on the current weights, every rank on its share; rank 0 logs the means."""
        with self.strategy.evaluation() as model:
            means = self.benchmark(model, self.step)
        if means is not None:
            self.metrics.log("benchmark", self.step, means)

    def fit(self) -> TrainResult:
        """Train to train.max_steps (or train.max_minutes), then validate, benchmark and save. A stop signal
        (vlm/train/preemption.py) ends the run after the current step with a checkpoint and nothing else."""
        try:
            with StopRequest() as stop:
                stopped_by = self._loop(stop)
            cfg = self.cfg.train
            if stopped_by is None:
                if cfg.eval_every and self.val_batches and self.step % cfg.eval_every != 0:
                    self.metrics.log("eval", self.step, self.validate())
                if self.benchmark is not None and cfg.benchmark_every and self.step % cfg.benchmark_every != 0:
                    self.run_benchmark()
            path = self.save()
        except Exception as err:
            with StopRequest():  # torchrun's SIGTERM to the survivors must not cut the few seconds of reports
                lost = explain_failure(err, self.step) if distributed.is_distributed() else None
            if lost is None:
                raise
            self.metrics.close()
            raise lost from None
        if stopped_by is not None and distributed.is_main():
            log.warning("%s received: stopped after step %d with checkpoint %s; continue with --resume", stopped_by,
                        self.step, path)
        self.metrics.close()
        self.module.eval()
        return TrainResult(self.objective, self.output_dir, path, self.step, time.time() - self.started,
                           self.last_row, stopped_by)

    def _loop(self, stop: StopRequest) -> str | None:
        """Steps until max_steps, max_minutes or a stop signal; returns the signal's name if one ended it."""
        cfg = self.cfg.train
        if self.cfg.loss.lagging_boost > 0 and self.val_batches and not bool(self.objective.lagging_baseline.any()):
            self.metrics.log("eval", self.step, self.validate())  # the baseline the lagging languages' weights follow
        self.module.train()
        self.started = start = time.time()
        window: dict[str, float] = {}
        window_steps, samples = 0, 0
        skipped = dict.fromkeys((*BAD_REASONS, REJECTED), 0)  # samples the stream skipped, per reason, so far
        mix: Counter = Counter()  # languages and tasks of this window's examples
        waited, window_start = 0.0, time.perf_counter()  # seconds blocked on the loader in this window
        nonfinite = NonFiniteCount(cfg.max_nonfinite)
        self.last_row: dict[str, float] = {}
        bar = tqdm(total=cfg.max_steps, initial=self.step, desc="train", dynamic_ncols=True,
                   disable=None if cfg.progress and distributed.is_main() else True)
        stopped_by = None
        while self.step < cfg.max_steps and stopped_by is None:
            terms: dict[str, float] = {}  # this step's loss terms, averaged over its micro-batches
            for micro in range(cfg.grad_accum):
                t = time.perf_counter()
                batch = next(self.batches)
                waited += time.perf_counter() - t
                self.position.advance(batch.telemetry)
                for reason, n in batch.telemetry.bad_samples.items():
                    skipped[reason] += n
                skipped[REJECTED] += batch.telemetry.rejected
                inputs = batch.inputs
                mix.update([f"lang/{lang}" for lang in inputs.langs] + [f"task/{task}" for task in inputs.tasks])
                with self.strategy.accumulating(micro == cfg.grad_accum - 1):
                    out = self.strategy.forward(inputs)
                    (out["loss"] / cfg.grad_accum).backward()
                for name, value in out.items():
                    terms[name] = terms.get(name, 0.0) + float(value.detach()) / cfg.grad_accum
                samples += len(inputs)
            # The norm is taken even without clipping: a non-finite one is how a bad gradient shows.
            grad_norm = self.strategy.clip_grad_norm(cfg.grad_clip if cfg.grad_clip > 0 else math.inf)
            finite = math.isfinite(grad_norm) and all(math.isfinite(v) for v in terms.values())
            # One collective for both flags: every rank skips the same steps and stops after the same one.
            flags = distributed.all_reduce_max(torch.tensor([not finite, stop.requested() is not None],
                                                            dtype=torch.float64))
            if flags[0]:
                self.optimizer.zero_grad(set_to_none=True)  # the step is skipped: weights and moments unchanged
                nonfinite.add(self.step + 1, terms.get("loss", math.nan), grad_norm)
            else:
                self.optimizer.step()
                self.optimizer.zero_grad(set_to_none=True)
                nonfinite.reset()
                for name, value in terms.items():
                    window[name] = window.get(name, 0.0) + value
            self.scheduler.step()  # a skipped step still spends its data and its place in the schedule
            self.step += 1
            window_steps += 1
            bar.update(1)
            if flags[1]:  # as this rank received it, or as another rank did
                stopped_by = stop.requested() or "a stop signal (on another rank)"

            if self.step % cfg.log_every == 0 or self.step == cfg.max_steps or stopped_by or nonfinite.exhausted:
                wait_frac = waited / max(time.perf_counter() - window_start, 1e-9)
                self.last_row = self._log_window(window, window_steps - nonfinite.in_window, wait_frac, grad_norm,
                                                 samples, skipped, mix, start, nonfinite.total)
                if "loss" in self.last_row:
                    bar.set_postfix(loss=f"{self.last_row['loss']:.3f}")
                window, window_steps, mix, waited = {}, 0, Counter(), 0.0
                nonfinite.in_window = 0
            if nonfinite.exhausted:
                bar.close()
                self.metrics.close()
                raise NonFiniteTraining(nonfinite.reason(checkpoint.latest_checkpoint(self.output_dir)))
            if stopped_by:
                break
            if cfg.eval_every and self.val_batches and self.step % cfg.eval_every == 0:
                self.metrics.log("eval", self.step, self.validate())
            if self.benchmark is not None and cfg.benchmark_every and self.step % cfg.benchmark_every == 0:
                self.run_benchmark()
            if cfg.save_every and self.step % cfg.save_every == 0 and self.step < cfg.max_steps:
                self.save()
            if not window_steps:  # a new window starts after this step's evaluation and saving
                window_start = time.perf_counter()
            if cfg.max_minutes and time.time() - start > cfg.max_minutes * 60:
                if distributed.is_main():
                    log.warning("train.max_minutes=%s reached at step %d; stopping", cfg.max_minutes, self.step)
                break
        bar.close()
        return stopped_by

    def _log_window(self, window: dict, steps: int, wait_frac: float, grad_norm, samples: int,
                    skipped: dict[str, int], mix: Counter, start: float, nonfinite_steps: int) -> dict:
        """Means of the loss terms over the window's `steps` finite steps; `data_wait_frac`, the share of the
        window's wall time spent waiting for the loader (0 when it keeps up); skipped samples per reason since the
        start (`bad/<reason>`, their sum `bad_samples`, and `language_rejected`); the window's language and task
        mix (`lang/<code>`, `task/<name>`: shares of its examples); `nonfinite_steps`, the steps skipped for a
        non-finite loss or gradient since the start. All summed over ranks."""
        window = {**window, "data_wait_frac": wait_frac * max(steps, 1)}
        steps = max(steps, 1)  # a window of skipped steps only has no loss terms to average
        names = sorted(window)
        reasons = sorted(skipped)
        shares = [f"lang/{lang}" for lang in self.cfg.data.languages] + [f"task/{t}" for t in self.cfg.data.tasks]
        values = torch.tensor([window[n] / steps for n in names] + [samples] + [skipped[r] for r in reasons]
                              + [mix[s] for s in shares], dtype=torch.float64)
        values = distributed.all_reduce_sum(values)
        row = {n: float(values[i]) / self.world for i, n in enumerate(names)}
        counts = {r: int(values[len(names) + 1 + i]) for i, r in enumerate(reasons)}
        mixed = values[len(names) + 1 + len(reasons):].tolist()
        n_langs = len(self.cfg.data.languages)
        examples = max(sum(mixed[:n_langs]), 1.0)
        elapsed = time.time() - start
        scales = self.objective.logit_scales()
        row.update({
            "lr": self.scheduler.get_last_lr()[0],
            "logit_scale": scales["logit_scale"],
            "samples_per_s": float(values[len(names)]) / max(elapsed, 1e-9),
            "bad_samples": sum(n for r, n in counts.items() if r != REJECTED),
            **{f"bad/{r}": n for r, n in counts.items() if r != REJECTED},
            REJECTED: counts[REJECTED],
            **{s: round(m / examples, 4) for s, m in zip(shares, mixed)},
            "nonfinite_steps": nonfinite_steps,
            "elapsed_s": round(elapsed, 2),
        })
        if "itc_logit_scale" in scales:
            row["itc_logit_scale"] = scales["itc_logit_scale"]
        if grad_norm is not None:
            row["grad_norm"] = float(grad_norm)
        self.metrics.log("train", self.step, row)
        if self.model.bridge.reads_prompt:  # mean routing weight per expert, per language
            self.metrics.log("routing", self.step,
                             self.objective.routing.pop(self.cfg.data.languages, self.cfg.bridge.num_experts))
        return row


class NonFiniteCount:
    """Steps skipped for a non-finite loss or gradient: in total, in the current log window, and in a row (the
    run stops at `limit` in a row; 0: never)."""

    def __init__(self, limit: int):
        self.limit, self.total, self.in_window, self.in_a_row = limit, 0, 0, 0
        self.last: tuple[int, float, float] | None = None  # step, loss, gradient norm

    def add(self, step: int, loss: float, grad_norm: float) -> None:
        self.total, self.in_window, self.in_a_row = self.total + 1, self.in_window + 1, self.in_a_row + 1
        self.last = (step, loss, grad_norm)
        if distributed.is_main():
            log.warning("step %d skipped: loss %s, gradient norm %s (%d in a row)", step, loss, grad_norm,
                        self.in_a_row)

    def reset(self) -> None:
        self.in_a_row = 0

    @property
    def exhausted(self) -> bool:
        return 0 < self.limit <= self.in_a_row

    def reason(self, last_good: Path | None) -> str:
        step, loss, norm = self.last
        kept = f"the last good checkpoint is {last_good}" if last_good else "no checkpoint was written"
        return (f"{self.in_a_row} steps in a row had a non-finite loss or gradient (train.max_nonfinite="
                f"{self.limit}; the last at step {step}: loss {loss}, gradient norm {norm}); {kept}")


def train(cfg: Config, resume: bool = False, benchmark: Benchmark | None = None,
          batches: Iterator[Batch] | None = None) -> TrainResult:
    return Trainer(cfg, resume=resume, benchmark=benchmark, batches=batches).fit()
