"""The training loop: one process or torchrun (DDP), gradient accumulation, warm-up + cosine schedule,
clipping, progress bar, JSONL/TensorBoard metrics, periodic validation loss and benchmark evaluation, and
atomic resumable checkpoints."""

from __future__ import annotations

import contextlib
import json
import logging
import time
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

import torch
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

from eval.report import write_report
from eval.runner import evaluate
from eval.suites.loading import load_suite
from vlm.config import Config
from vlm.data.pipeline import (
    BAD_REASONS,
    REJECTED,
    StreamPosition,
    TrainStream,
    fixed_batches,
    make_train_loader,
    resolve_shards,
)
from vlm.model.projectors import MoEProjector
from vlm.model.vlm import VisionLLM
from vlm.train import checkpoint, distributed
from vlm.train.metrics import MetricsLogger
from vlm.train.schedule import make_scheduler

log = logging.getLogger(__name__)
VAL_BATCHES = 8
# Language means logged after each benchmark evaluation (all of them stay in that step's results.json).
BENCHMARK_CURVES = frozenset({"i2t_r1", "t2i_r1", "cider", "chrf", "fidelity", "overall", "exact"})


@dataclass
class TrainResult:
    model: VisionLLM
    output_dir: Path
    checkpoint: Path | None
    steps: int
    seconds: float
    last_metrics: dict[str, float]


def use_bf16(cfg: Config, device: torch.device) -> bool:
    if cfg.train.precision == "auto":
        return device.type == "cuda"  # bf16 matmuls are about 2x slower than fp32 on CPUs
    return cfg.train.precision == "bf16"


def build_optimizer(model: VisionLLM, cfg: Config) -> torch.optim.Optimizer:
    decay, no_decay = [], []
    for name, param in model.named_parameters():
        if param.requires_grad:
            # Biases, norms, the query tokens and the temperature are not weight-decayed.
            (no_decay if param.ndim < 2 or "query_tokens" in name else decay).append(param)
    groups = [{"params": decay, "weight_decay": cfg.train.weight_decay}, {"params": no_decay, "weight_decay": 0.0}]
    return torch.optim.AdamW(groups, lr=cfg.train.lr, betas=(0.9, 0.98), eps=1e-6)


def to_device(batch: dict, device: torch.device) -> dict:
    return {k: (v.to(device, non_blocking=True) if isinstance(v, torch.Tensor) else v) for k, v in batch.items()}


class Trainer:
    def __init__(self, cfg: Config, model: VisionLLM | None = None, resume: bool = False):
        self.cfg = cfg
        self.device = distributed.init_distributed()
        self.rank, self.world = distributed.rank(), distributed.world_size()
        if cfg.train.threads > 0:
            torch.set_num_threads(cfg.train.threads)
        self.output_dir = Path(cfg.train.output_dir)
        if not resume and checkpoint.latest_checkpoint(self.output_dir) is not None:
            raise FileExistsError(f"{self.output_dir} already holds checkpoints; pass --resume to continue "
                                  f"or choose another train.output_dir")
        train_urls = resolve_shards(cfg.data.train, "train")
        val_urls = resolve_shards(cfg.data.val, "val") if cfg.data.val else []
        # The benchmark is read (and its files checked) before the model is built, not when it is first due.
        self.benchmark = load_suite(cfg.eval, cfg.data) if cfg.train.benchmark_every else None

        torch.manual_seed(cfg.train.seed)  # identical initial weights on every rank
        self.model = (model if model is not None else VisionLLM(cfg)).to(self.device)
        torch.manual_seed(cfg.train.seed + 1 + self.rank)  # per-rank dropout streams
        self.optimizer = build_optimizer(self.model, cfg)
        self.scheduler = make_scheduler(self.optimizer, cfg.train.warmup_steps, cfg.train.max_steps,
                                        cfg.train.min_lr_ratio)
        self.step = 0
        position = StreamPosition()
        if resume:
            position = self._restore()

        self.collator = self.model.collator()
        transform = self.model.vision.preprocess
        self.stream = TrainStream(train_urls, cfg.data, transform, self.collator, cfg.train.batch_size,
                                  cfg.train.seed, self.rank, self.world, position)
        self.position = position
        self.val_batches = []
        if val_urls and cfg.train.eval_every > 0:
            batches = fixed_batches(val_urls, cfg.data, transform, self.collator, cfg.train.batch_size,
                                    VAL_BATCHES * self.world, cfg.train.seed)
            usable = len(batches) // self.world * self.world  # equal counts: the loss gathers across ranks
            self.val_batches = batches[:usable][self.rank :: self.world]

        self.ddp = self.model
        if distributed.is_distributed():
            self.ddp = DistributedDataParallel(self.model, find_unused_parameters=may_skip_parameters(self.model))
        self.bf16 = use_bf16(cfg, self.device)
        self.metrics = MetricsLogger(self.output_dir, cfg.train.tensorboard, enabled=distributed.is_main(),
                                     append=resume)
        if distributed.is_main():
            self.output_dir.mkdir(parents=True, exist_ok=True)
            cfg.save(self.output_dir / "config.json")
            log.info("bridge %s; training terms %s", cfg.bridge.type, self.model.loss_weights)

    # --- resume --------------------------------------------------------------------------------

    def _restore(self) -> StreamPosition:
        path = checkpoint.latest_checkpoint(self.output_dir)
        if path is None:
            if distributed.is_main():
                log.warning("--resume: no checkpoint in %s; starting from scratch", self.output_dir / "checkpoints")
            return StreamPosition()
        weights, state = checkpoint.load_checkpoint(path)
        self.model.load_trainable_state_dict(weights)
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        self.step = int(state["step"])
        ranks = state["ranks"]
        if len(ranks) != self.world:
            raise ValueError(f"{path} was written by {len(ranks)} ranks; resuming with {self.world} is not supported")
        mine = ranks[self.rank]
        checkpoint.set_rng_state(mine["rng"])
        if distributed.is_main():
            log.info("resumed from %s at step %d", path, self.step)
        return checkpoint.position_from_dict(mine["data"])

    def save(self) -> Path | None:
        mine = {"rng": checkpoint.rng_state(), "data": checkpoint.position_to_dict(self.position)}
        per_rank = [mine]
        if distributed.is_distributed():
            per_rank = [None] * self.world
            torch.distributed.all_gather_object(per_rank, mine)
        path = None
        if distributed.is_main():
            path = checkpoint.save_checkpoint(
                self.output_dir, self.step, self.model.trainable_state_dict(), self.optimizer.state_dict(),
                self.scheduler.state_dict(), per_rank, self.cfg.to_dict(), self.cfg.train.keep_checkpoints,
            )
        distributed.barrier()
        return path

    # --- loop ----------------------------------------------------------------------------------

    def _forward(self, batch: dict) -> dict[str, torch.Tensor]:
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.bf16):
            return self.ddp(to_device(batch, self.device))

    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        self.model.eval()
        sums: dict[str, float] = {}
        for batch in self.val_batches:
            out = self._forward(batch)
            for name, value in out.items():
                sums[name] = sums.get(name, 0.0) + float(value)
        self.model.train()
        names = sorted(sums)
        totals = distributed.all_reduce_sum(torch.tensor([sums[n] for n in names] + [len(self.val_batches)],
                                                         dtype=torch.float64))
        count = max(float(totals[-1]), 1.0)
        return {f"val_{n}": float(totals[i]) / count for i, n in enumerate(names)}

    def run_benchmark(self) -> None:
        """The `eval` section's benchmark on the current weights, split over the ranks: results.json and a
        report under output_dir/eval/step-N, and the language means in the metrics log (kind "benchmark")."""
        results = evaluate(self.model, self.benchmark, self.cfg.eval, progress=False)
        if results is None:  # not rank 0
            return
        out = self.output_dir / "eval" / f"step-{self.step}"
        out.mkdir(parents=True, exist_ok=True)
        (out / "results.json").write_text(json.dumps(results, indent=2, ensure_ascii=False) + "\n")
        write_report(results, out)
        means = {f"{section}_{name}": value for section, scores in results["mean"].items()
                 for name, value in scores.items() if name in BENCHMARK_CURVES}
        self.metrics.log("benchmark", self.step, means)

    def fit(self) -> TrainResult:
        cfg = self.cfg.train
        loader = iter(make_train_loader(self.stream, self.cfg.data.num_workers))
        self.model.train()
        start = time.time()
        window: dict[str, float] = {}
        window_steps, samples = 0, 0
        skipped = dict.fromkeys((*BAD_REASONS, REJECTED), 0)  # samples the stream skipped, per reason, so far
        mix: Counter = Counter()  # languages and tasks of this window's examples
        waited, window_start = 0.0, time.perf_counter()  # seconds blocked on the loader in this window
        last: dict[str, float] = {}
        bar = tqdm(total=cfg.max_steps, initial=self.step, disable=None if cfg.progress and distributed.is_main() else True,
                   desc="train", dynamic_ncols=True)
        while self.step < cfg.max_steps:
            for micro in range(cfg.grad_accum):
                t = time.perf_counter()
                batch = next(loader)
                waited += time.perf_counter() - t
                self.position.batches += 1
                self.position.consumed[batch["stream_role"]] = batch["stream_consumed"]
                for reason, n in batch["bad_samples"].items():
                    skipped[reason] += n
                skipped[REJECTED] += batch[REJECTED]
                mix.update([f"lang/{lang}" for lang in batch["langs"]] + [f"task/{task}" for task in batch["tasks"]])
                sync = micro == cfg.grad_accum - 1 or not isinstance(self.ddp, DistributedDataParallel)
                with contextlib.nullcontext() if sync else self.ddp.no_sync():
                    out = self._forward(batch)
                    (out["loss"] / cfg.grad_accum).backward()
                for name, value in out.items():
                    window[name] = window.get(name, 0.0) + float(value.detach()) / cfg.grad_accum
                samples += batch["images"].shape[0]
            grad_norm = None
            if cfg.grad_clip > 0:
                grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), cfg.grad_clip)
            self.optimizer.step()
            self.scheduler.step()
            self.optimizer.zero_grad(set_to_none=True)
            self.step += 1
            window_steps += 1
            bar.update(1)

            if self.step % cfg.log_every == 0 or self.step == cfg.max_steps:
                window["data_wait_frac"] = waited / max(time.perf_counter() - window_start, 1e-9) * window_steps
                last = self._log_window(window, window_steps, grad_norm, samples, skipped, mix, start)
                bar.set_postfix(loss=f"{last['loss']:.3f}")
                window, window_steps, mix, waited = {}, 0, Counter(), 0.0
            if cfg.eval_every and self.val_batches and self.step % cfg.eval_every == 0:
                self.metrics.log("eval", self.step, self.validate())
            if self.benchmark is not None and self.step % cfg.benchmark_every == 0:
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
        if cfg.eval_every and self.val_batches and self.step % cfg.eval_every != 0:
            self.metrics.log("eval", self.step, self.validate())
        if self.benchmark is not None and self.step % cfg.benchmark_every != 0:
            self.run_benchmark()
        path = self.save()
        self.metrics.close()
        self.model.eval()
        return TrainResult(self.model, self.output_dir, path, self.step, time.time() - start, last)

    def _log_window(self, window: dict, steps: int, grad_norm, samples: int, skipped: dict[str, int], mix: Counter,
                    start: float) -> dict:
        """Window means of the loss terms (and `data_wait_frac`: the share of the window's wall time spent waiting
        for the loader, 0 when it keeps up); skipped samples per reason since the start (`bad/<reason>`, their
        sum `bad_samples`, and `language_rejected`); the window's language and task mix (`lang/<code>`,
        `task/<name>`: shares of its examples). All summed over ranks."""
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
        row.update({
            "lr": self.scheduler.get_last_lr()[0],
            "logit_scale": float(self.model.contrastive_loss.scale().detach()),
            "samples_per_s": float(values[len(names)]) / max(elapsed, 1e-9),
            "bad_samples": sum(n for r, n in counts.items() if r != REJECTED),
            **{f"bad/{r}": n for r, n in counts.items() if r != REJECTED},
            REJECTED: counts[REJECTED],
            **{s: round(m / examples, 4) for s, m in zip(shares, mixed)},
            "elapsed_s": round(elapsed, 2),
        })
        if "itc" in self.model.loss_weights:
            row["itc_logit_scale"] = float(self.model.itc_loss.scale().detach())
        if grad_norm is not None:
            row["grad_norm"] = float(grad_norm)
        self.metrics.log("train", self.step, row)
        if isinstance(self.model.bridge, MoEProjector):  # mean routing weight per expert, per language
            self.metrics.log("routing", self.step,
                             self.model.routing.pop(self.cfg.data.languages, self.cfg.bridge.num_experts))
        return row


def may_skip_parameters(model: VisionLLM) -> bool:
    """Whether a step can leave trainable parameters without a gradient (DDP must then look for them):
    an inactive loss term's head, or experts that top-k routing did not pick."""
    terms = set(model.loss_weights)
    if not {"lm", "contrastive"} <= terms:
        return True
    if model.has_text_branch and not {"itc", "itm", "itg"} <= terms:
        return True
    return isinstance(model.bridge, MoEProjector) and model.cfg.bridge.top_k > 0


def train(cfg: Config, resume: bool = False, model: VisionLLM | None = None) -> TrainResult:
    return Trainer(cfg, model=model, resume=resume).fit()
