"""Our own small training loop: seeded data order, exact loss scaling across accumulation and ranks, exact resume.

Why not transformers.Trainer or TRL's trainers: their resume skips batches through sampler state and
restores RNG approximately. Here the data order is a pure function of (seed, step), the per-step RNG is
reseeded from (seed, step, rank), and a checkpoint holds the trainable weights, the optimizer state and
the step, so a resumed run (after SIGTERM or kill -9, mid-epoch or mid-accumulation) reproduces the
uninterrupted run's per-step losses and final weights bit for bit. Checkpoints are taken only at
optimizer-step boundaries; an interruption mid-accumulation replays that step's micro-batches.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tkc.bundle.plan import ResolvedStage, ResolvedTrain
from tkc.runtime import strategy, tracking
from tkc.runtime.context import EXIT_OK, EXIT_SIGTERM, RunContext
from tkc.runtime.distributed import all_sum, any_rank
from tkc.runtime.progress import Progress

Rows = list[dict[str, Any]]


@dataclass
class Task:
    """What a stage plugs into the loop. The global-batch loss is sum(loss_sum over micro-batches) / units(batch)."""

    loss_sum: Callable[[nn.Module, dict[str, torch.Tensor]], torch.Tensor]  # summed (not averaged) micro-batch loss
    units: Callable[[Rows], int]  # what the global batch's loss is divided by: label tokens, or examples
    tokens: Callable[[Rows], int]  # tokens processed, for tokens/s and tokens_seen
    collate: Callable[[Rows], dict[str, torch.Tensor]]


@dataclass
class LoopResult:
    exit_code: int
    steps: int
    total_steps: int
    tokens_seen: int
    wall_s: float
    resumed_from: int | None
    records: list[dict] = field(default_factory=list)
    eval_loss: float | None = None


def plan_steps(n_rows: int, train: ResolvedTrain) -> tuple[int, int]:
    """(steps per epoch, total steps). An incomplete last global batch is dropped so every step sees G rows."""
    g = train.global_batch_size
    per_epoch = n_rows // g
    if per_epoch == 0:
        raise RuntimeError(f"{n_rows} training rows is fewer than one global batch of {g}")
    total = train.max_steps if train.max_steps and train.max_steps > 0 else math.ceil(train.epochs * per_epoch)
    return per_epoch, total


def batch_indices(n_rows: int, train: ResolvedTrain, step: int, per_epoch: int) -> list[int]:
    """Row indices of global batch `step`: epoch e shuffles with seed + e; the data position is just the step."""
    epoch, b = divmod(step, per_epoch)
    perm = torch.randperm(n_rows, generator=torch.Generator().manual_seed(train.seed + epoch)).tolist()
    g = train.global_batch_size
    return perm[b * g:(b + 1) * g]


def warmup_steps(train: ResolvedTrain, total: int) -> int:
    """ceil(warmup_ratio x total)."""
    return math.ceil(train.warmup_ratio * total)


def lr_factor(train: ResolvedTrain, step: int, total: int) -> float:
    """Linear warmup (reaching 1 at its last step), then cosine / linear / constant decay."""
    warm = warmup_steps(train, total)
    if step < warm:
        return (step + 1) / warm
    progress = (step - warm) / max(1, total - warm)
    kind = train.lr_scheduler
    if kind == "cosine":
        return 0.5 * (1.0 + math.cos(math.pi * progress))
    if kind == "linear":
        return max(0.0, 1.0 - progress)
    if kind == "constant":
        return 1.0
    raise ValueError(f"unknown lr_scheduler {kind!r}")


def micro_batches(ctx: RunContext, rows: Rows, train: ResolvedTrain) -> list[Rows]:
    """This rank's contiguous share of the global batch, cut into micro-batches."""
    w, m = ctx.dist.world_size, train.micro_batch_size
    if len(rows) % (w * m):
        raise RuntimeError(f"global batch {len(rows)} is not a multiple of world_size {w} x micro_batch {m}")
    per = len(rows) // w
    mine = rows[ctx.dist.rank * per:(ctx.dist.rank + 1) * per]
    return [mine[i:i + m] for i in range(0, per, m)]


class StepLog:
    """steps.jsonl: one record per optimizer step; on resume, records after the checkpoint's step are dropped.
    Every record also goes to the stage's tracker (tracking.kind), which is rebuilt from the kept records."""

    def __init__(self, path: Path, keep_through: int, enabled: bool, tracker: tracking.Tracker | None = None):
        self.path, self.enabled, self.records = path, enabled, []
        if path.exists():
            self.records = [r for r in map(json.loads, path.read_text().splitlines()) if r["step"] <= keep_through]
        if enabled:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text("".join(json.dumps(r, sort_keys=True) + "\n" for r in self.records))
        self.tracker = tracker or tracking.NullTracker()

    @classmethod
    def open(cls, ctx: RunContext, stage: ResolvedStage, keep_through: int) -> StepLog:
        """The stage's steps.jsonl (written by the main rank) with its tracker opened and replayed."""
        log = cls(ctx.stage_dir(stage) / "steps.jsonl", keep_through, enabled=ctx.dist.is_main)
        log.tracker = tracking.open_tracker(ctx, stage, replay=log.records)
        return log

    def add(self, record: dict) -> None:
        """The tracker first, then steps.jsonl: whoever sees step N in steps.jsonl finds it in the tracker too
        (a run killed in between has it in the tracker only, which resume replaces like any step after the
        checkpoint)."""
        self.records.append(record)
        self.tracker.log(int(record["step"]), record)
        if self.enabled:
            with open(self.path, "a", encoding="utf-8") as f:
                f.write(json.dumps(record, sort_keys=True) + "\n")

    def close(self) -> None:
        self.tracker.close()


def save_checkpoint(ctx: RunContext, stage: ResolvedStage, step: int, per_epoch: int, tokens: int) -> None:
    """The stage's checkpoint at this optimizer step, written by its strategy, which holds the model and optimizer
    (every rank calls); public for ppo."""
    state = {"bundle_hash": ctx.bundle_hash, "stage": stage.name, "step": step, "tokens_seen": tokens,
             "epoch": step // per_epoch, "batch_in_epoch": step % per_epoch, "seed": stage.train.seed}
    strategy.for_stage(ctx, stage).save(ctx.stage_dir(stage) / "checkpoints", step, state,
                                        keep=stage.train.save_total_limit)


def restore_checkpoint(ctx: RunContext, stage: ResolvedStage) -> tuple[int, int, int | None]:
    """Load the newest whole checkpoint into the model and optimizer the stage's strategy holds: (step,
    tokens_seen, resumed_from or None)."""
    strat = strategy.for_stage(ctx, stage)
    found = strat.restore(ctx.stage_dir(stage) / "checkpoints", log=lambda msg: ctx.log(f"[{stage.name}] {msg}"))
    if found is None:
        return 0, 0, None
    path, state = found
    ctx.log(f"[{stage.name}] resuming from {path.name} (step {state['step']})")
    return state["step"], state["tokens_seen"], state["step"]


def set_lr(optimizer, train: ResolvedTrain, step: int, total: int) -> float:
    """Set this step's learning rate (lr_factor; LoRA+ groups keep their lr_mult) and return it. `optimizer`: a
    torch optimizer or a strategy (whose param_groups are its wrapped optimizer's)."""
    lr = train.learning_rate * lr_factor(train, step, total)
    for group in optimizer.param_groups:
        group["lr"] = lr * group.get("lr_mult", 1.0)
    return lr


def _one_step(ctx, strat: strategy.Strategy, runner, task: Task, rows: Rows, train: ResolvedTrain) -> float:
    """Forward/backward every micro-batch of one global batch (gradients reduced over ranks); the global-batch
    loss. The optimizer step is the strategy's (Strategy.step)."""
    units = max(1, task.units(rows))
    parts = micro_batches(ctx, rows, train)
    total = torch.zeros((), dtype=torch.float64)
    for k, mb in enumerate(parts):
        with strat.accumulate(runner, last=k == len(parts) - 1):
            with strat.autocast():
                loss_sum = task.loss_sum(runner, strat.batch(task.collate(mb)))
            # gradients are averaged over ranks; scaling by world_size makes the sum exact.
            strat.backward(loss_sum * (ctx.dist.world_size / units))
        total += loss_sum.detach().double().cpu()
    return all_sum(ctx.dist, total).item() / units


@torch.no_grad()
def evaluate(ctx: RunContext, strat: strategy.Strategy, runner: nn.Module, task: Task, rows: Rows, micro: int
             ) -> float | None:
    """Mean eval loss over all eval rows (each rank takes every world_size-th row)."""
    if not rows:
        return None
    runner.eval()
    mine = rows[ctx.dist.rank::ctx.dist.world_size]
    total = torch.zeros(2, dtype=torch.float64)
    # a sharded model (FSDP, ZeRO-3) gathers its weights in every forward, a collective: then every rank runs as
    # many micro-batches as rank 0 (which has the most rows), one out of rows rerunning rows[:micro], not counted
    most = len(rows[::ctx.dist.world_size]) if strat.sharded else len(mine)
    for i in range(0, most, micro):
        mb = mine[i:i + micro]
        with strat.autocast():
            loss_sum = task.loss_sum(runner, strat.batch(task.collate(mb or rows[:micro])))
        if mb:
            total[0] += loss_sum.double().cpu()
            total[1] += task.units(mb)
    runner.train()
    total = all_sum(ctx.dist, total)
    return (total[0] / total[1].clamp(min=1)).item()


def train(ctx: RunContext, stage: ResolvedStage, model: nn.Module, optimizer, task: Task, train_rows: Rows,
          eval_rows: Rows) -> LoopResult:
    """Run (or resume) the stage's optimizer steps; on SIGTERM checkpoint and return EXIT_SIGTERM."""
    t = stage.train
    per_epoch, total = plan_steps(len(train_rows), t)
    strat = strategy.for_stage(ctx, stage)
    runner = strat.prepare(model, optimizer)
    step, tokens_seen, resumed_from = restore_checkpoint(ctx, stage)
    log = StepLog.open(ctx, stage, keep_through=step)
    bar = Progress(stage.name, total, start=step, enabled=ctx.dist.is_main, every=t.logging_steps)
    t0, eval_loss = time.perf_counter(), None
    try:
        while step < total:
            ts = time.perf_counter()
            torch.manual_seed(t.seed * 1_000_003 + step * 1_009 + ctx.dist.rank)  # dropout/NEFTune per step
            rows = [train_rows[i] for i in batch_indices(len(train_rows), t, step, per_epoch)]
            lr = set_lr(strat, t, step, total)
            loss = _one_step(ctx, strat, runner, task, rows, t)
            grad_norm = strat.step(t.max_grad_norm)
            step += 1
            ntok = task.tokens(rows)
            tokens_seen += ntok
            tps = ntok / max(1e-9, time.perf_counter() - ts)
            log.add({"step": step, "epoch": round(step / per_epoch, 4), "loss": loss, "lr": lr,
                     "grad_norm": grad_norm, "tokens_seen": tokens_seen})
            bar.update(step, loss=loss, lr=lr, tokens_per_s=tps)
            if t.eval_steps and step % t.eval_steps == 0 and eval_rows:
                eval_loss = evaluate(ctx, strat, runner, task, eval_rows, t.micro_batch_size)
                log.add({"step": step, "eval_loss": eval_loss})
                bar.note(f"[{stage.name}] step {step} eval_loss {eval_loss:.4f}")
            stop = any_rank(ctx.dist, ctx.stop_requested)
            if stop or (t.save_steps and step % t.save_steps == 0 and step < total):
                save_checkpoint(ctx, stage, step, per_epoch, tokens_seen)
            if stop:
                bar.note(f"[{stage.name}] stop requested: checkpoint at step {step} written; run again to resume")
                return LoopResult(EXIT_SIGTERM, step, total, tokens_seen, time.perf_counter() - t0, resumed_from,
                                  log.records, eval_loss)
    finally:
        bar.close()
        log.close()
    if eval_rows:
        eval_loss = evaluate(ctx, strat, runner, task, eval_rows, t.micro_batch_size)
    return LoopResult(EXIT_OK, step, total, tokens_seen, time.perf_counter() - t0, resumed_from, log.records, eval_loss)
