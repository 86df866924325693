"""Pretraining stage (kind: pt): next-token loss over every token of raw text rows.

The rows already carry labels == input_ids, so the task is sft's (loss on labelled tokens): one builder.
"""

from __future__ import annotations

from tkc.bundle.plan import ResolvedStage
from tkc.runtime.context import RunContext
from tkc.runtime.stages.common import train_stage
from tkc.runtime.stages.sft import build_task

__all__ = ["build_task", "run"]


def run(ctx: RunContext, stage: ResolvedStage) -> int:
    task, model = build_task(ctx, stage)
    return train_stage(ctx, stage, model, task, describe=f"pt ({stage.finetuning.method})")
