"""Experiment tracking: send each step record to the tracker the bundle asks for (`tracking.kind`).

Each stage gets its own tracker, opened before the stage's first step and closed after its last; only the
main rank writes. TensorBoard events go to outputs/<stage>/tensorboard/; wandb and mlflow, when asked for,
write offline inside outputs/<stage>/ too (nothing leaves the machine).

Resume: a tracker's directory is a function of steps.jsonl. When a stage (re)starts, the loop has already cut
steps.jsonl back to the checkpoint's step; the tracker's old directory is deleted and those kept records are
replayed into a fresh one, so the event files hold exactly one value per step and tag, for every reader (not
only for TensorBoard's purge-on-restart logic). Replayed events carry the replay's wall time.

Tags: `loss` -> train/loss, `lr` -> train/learning_rate, `eval_loss` -> eval/loss, any other number `x`
(grad_norm, tokens_seen, tokens_per_s, epoch, reward, kl, ...) -> train/x. Non-numbers are skipped.
"""

from __future__ import annotations

import math
import os
import shutil
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any, Protocol

from tkc.bundle.plan import ResolvedStage
from tkc.runtime.context import RunContext

KINDS = ("none", "tensorboard", "wandb", "mlflow")
_RENAME = {"loss": "train/loss", "lr": "train/learning_rate", "eval_loss": "eval/loss"}
_NOT_SCALARS = {"step"}


class Tracker(Protocol):
    def log(self, step: int, record: Mapping[str, Any]) -> None: ...

    def close(self) -> None: ...


def scalars(record: Mapping[str, Any]) -> dict[str, float]:
    """The record's numbers under their tracker tags (bools, None, strings and the step itself skipped)."""
    out: dict[str, float] = {}
    for key, value in record.items():
        if key in _NOT_SCALARS or isinstance(value, bool) or not isinstance(value, (int, float)):
            continue
        if isinstance(value, float) and math.isnan(value):
            continue
        out[_RENAME.get(key, f"train/{key}")] = float(value)
    return out


class NullTracker:
    """tracking.kind: none, and every rank but the main one."""

    def log(self, step: int, record: Mapping[str, Any]) -> None:
        pass

    def close(self) -> None:
        pass


class TensorBoardTracker:
    """Scalars to outputs/<stage>/tensorboard/ with torch.utils.tensorboard, flushed every step (a kill -9
    loses nothing a checkpoint covers)."""

    def __init__(self, log_dir: Path):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError as e:
            raise RuntimeError(_missing("tensorboard", "tensorboard")) from e
        self.writer = SummaryWriter(log_dir=str(log_dir), flush_secs=3600)

    def log(self, step: int, record: Mapping[str, Any]) -> None:
        for tag, value in scalars(record).items():
            self.writer.add_scalar(tag, value, global_step=step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class WandbTracker:
    """Weights & Biases in offline mode: runs land in outputs/<stage>/wandb/ (`wandb sync` uploads them)."""

    def __init__(self, stage_dir: Path, project: str, name: str):
        try:
            import wandb
        except ImportError as e:
            raise RuntimeError(_missing("wandb", "wandb")) from e
        self.run = wandb.init(project=project, name=name, dir=str(stage_dir), mode="offline")

    def log(self, step: int, record: Mapping[str, Any]) -> None:
        self.run.log(scalars(record), step=step)

    def close(self) -> None:
        self.run.finish()


class MlflowTracker:
    """MLflow with a file store inside outputs/<stage>/mlruns/ (`mlflow ui --backend-store-uri` reads it)."""

    def __init__(self, store: Path, project: str, name: str):
        try:
            from mlflow.tracking import MlflowClient
        except ImportError as e:
            raise RuntimeError(_missing("mlflow", "mlflow")) from e
        self.client = MlflowClient(tracking_uri=store.resolve().as_uri())
        experiment = self.client.create_experiment(project)
        self.run_id = self.client.create_run(experiment, run_name=name).info.run_id

    def log(self, step: int, record: Mapping[str, Any]) -> None:
        for key, value in scalars(record).items():
            self.client.log_metric(self.run_id, key, value, step=step)

    def close(self) -> None:
        self.client.set_terminated(self.run_id)


def _missing(kind: str, package: str) -> str:
    return (f"tracking.kind is {kind!r} but the {package} package is not installed here; install it "
            f"(pip install {package}) or set tracking.kind to none (the stage stops before its first step rather "
            "than train without the tracking the recipe asked for)")


TRACKER_DIRS = {"tensorboard": "tensorboard", "wandb": "wandb", "mlflow": "mlruns"}


def open_tracker(ctx: RunContext, stage: ResolvedStage, replay: Iterable[Mapping[str, Any]] = ()) -> Tracker:
    """The stage's tracker, its directory rebuilt from `replay` (the step records kept on resume)."""
    tracking = ctx.plan.tracking
    kind = tracking.kind
    if kind not in KINDS:
        raise RuntimeError(f"unknown tracking.kind {kind!r} (known: {', '.join(KINDS)})")
    if kind == "none" or not ctx.dist.is_main:
        return NullTracker()
    stage_dir = ctx.stage_dir(stage)
    target = stage_dir / TRACKER_DIRS[kind]
    if target.exists():
        shutil.rmtree(target)
    target.mkdir(parents=True)
    project = tracking.project  # the compiler's default is the run's name
    tracker: Tracker
    if kind == "tensorboard":
        tracker = TensorBoardTracker(target)
    elif kind == "wandb":
        os.environ.setdefault("WANDB_MODE", "offline")
        tracker = WandbTracker(stage_dir, project, stage.name)
    else:
        tracker = MlflowTracker(target, project, stage.name)
    for record in replay:
        tracker.log(int(record["step"]), record)
    return tracker
