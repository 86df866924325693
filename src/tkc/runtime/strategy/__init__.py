"""How one training stage's model is spread over ranks and devices: the only thing the loop asks about it.

A Strategy places the model and every batch on the rank's device (tkc.runtime.device), runs forward under the
stage's precision, reduces gradients across ranks, steps the optimizer, and writes and reads the stage's
checkpoints inside tkc's atomic format (tkc.runtime.checkpoint). The loop (tkc.runtime.loop) is written against
this class alone, so data order, learning-rate schedule, loss scaling and exact resume are the same whatever the
strategy:

- `Strategy`: one process (cpu, one GPU or NPU);
- `DDPStrategy`: several processes, gradients all-reduced (torch DDP);
- tkc.runtime.strategy.deepspeed: `launch.kind: deepspeed`, ZeRO 1/2/3 through `deepspeed.initialize`;
- tkc.runtime.strategy.fsdp: `launch.kind: fsdp`, FSDP2 (`fully_shard` per decoder layer).

`for_stage(ctx, stage)` gives the stage's strategy, one per stage and run, so the model builder (init_context,
for ZeRO-3's sharded construction), the loop and the model saver (full_state_dict) share it.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tkc.bundle.plan import ResolvedStage
from tkc.runtime import checkpoint
from tkc.runtime.context import RunContext
from tkc.runtime.device import stage_device, to_device
from tkc.runtime.distributed import barrier
from tkc.runtime.model import DTYPES


class Strategy:
    """One process: the model on the stage's device, plain backward, clip, step."""

    name = "single"
    sharded = False  # whether each rank holds only part of the trainable state (checkpoints per rank)
    precision = "fp32"  # the stage's train.precision (set in __init__)
    scaler: torch.amp.GradScaler | None = None  # fp16 only
    skipped_steps = 0  # fp16 steps skipped for inf/nan gradients

    def __init__(self, ctx: RunContext, stage: ResolvedStage):
        self.ctx, self.stage = ctx, stage
        self.device = stage_device(ctx.plan, stage, ctx.dist)
        self.model: nn.Module | None = None
        self.optimizer: Any = None
        self.precision = stage.train.precision if stage.train is not None else "fp32"
        # fp16's 5 exponent bits underflow small gradients: the loss is scaled up, steps with inf/nan skipped
        self.scaler = torch.amp.GradScaler(self.device.type) if self.precision == "fp16" else None

    # -- building the model -------------------------------------------------------------------------------------
    def init_context(self) -> AbstractContextManager:
        """Entered while the stage's model is constructed (ZeRO-3: parameters born sharded)."""
        return nullcontext()

    def place(self, model: nn.Module) -> nn.Module:
        """A model (policy, reference, reward, value) on this rank's device; a no-op on the CPU."""
        return model if self.device.type == "cpu" else model.to(self.device)

    def batch(self, batch: Any) -> Any:
        """A collated batch (a dict of tensors, or a list of them) on this rank's device."""
        return to_device(batch, self.device)

    # -- training ------------------------------------------------------------------------------------------------
    def prepare(self, model: nn.Module, optimizer) -> nn.Module:
        """Take the model and its optimizer for training; returns what forwards go through (the runner)."""
        self.model, self.optimizer = self.place(model), optimizer
        return self.model

    def autocast(self) -> AbstractContextManager:
        """The forward's compute precision: bf16/fp16 through torch.autocast on the stage's device (the weights
        that train stay fp32: tkc.runtime.model.dtype_of); fp32 (every CPU stage): nothing."""
        if self.precision == "fp32":
            return nullcontext()
        return torch.autocast(self.device.type, dtype=DTYPES[self.precision])

    def accumulate(self, runner: nn.Module, last: bool) -> AbstractContextManager:
        """Around one micro-batch's forward and backward; `last`: the global batch's final micro-batch."""
        return nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        (loss if self.scaler is None else self.scaler.scale(loss)).backward()

    def step(self, max_grad_norm: float) -> float:
        """Clip (max_grad_norm <= 0: no clipping), step, zero the gradients; returns the pre-clip grad norm.
        fp16: gradients unscaled before clipping; a step whose gradients overflowed is skipped and logged."""
        params = [p for p in self.model.parameters() if p.requires_grad]
        max_norm = max_grad_norm if max_grad_norm and max_grad_norm > 0 else float("inf")
        if self.scaler is None:
            norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
            self.optimizer.step()
        else:
            self.scaler.unscale_(self.optimizer)
            norm = torch.nn.utils.clip_grad_norm_(params, max_norm)
            scale = self.scaler.get_scale()
            self.scaler.step(self.optimizer)  # skipped when the unscaled gradients hold inf/nan
            self.scaler.update()
            if self.scaler.get_scale() < scale:
                self.skipped_steps += 1
                self.ctx.log(f"[{self.stage.name}] fp16: gradients overflowed (grad norm {float(norm)}): optimizer "
                             f"step skipped ({self.skipped_steps} so far), loss scale {scale:g} -> "
                             f"{self.scaler.get_scale():g}")
        self.optimizer.zero_grad(set_to_none=True)
        return float(norm)

    @property
    def param_groups(self) -> list[dict]:
        """The optimizer's groups, where the loop sets each step's learning rate."""
        return self.optimizer.param_groups

    # -- checkpoints -----------------------------------------------------------------------------------------------
    def save(self, root: Path, step: int, state: dict[str, Any], keep: int) -> None:
        """Checkpoint `step` under root (every rank calls; returns when it is published)."""
        if self.scaler is not None:  # fp16's loss scale resumes where it was
            state = {**state, "grad_scaler": self.scaler.state_dict()}
        if self.ctx.dist.is_main:
            checkpoint.save_checkpoint(root, step, tensors=trainable_state(self.model),
                                       optimizer_state=self.optimizer.state_dict(), state=state, keep=keep)
        barrier(self.ctx.dist)

    def restore(self, root: Path, log: Callable[[str], None]) -> tuple[Path, dict[str, Any]] | None:
        """Load the newest whole checkpoint into the model and optimizer: (its path, its state) or None."""
        found = checkpoint.load_latest(root, bundle_hash=self.ctx.bundle_hash, log=log,
                                       set_aside_corrupt=self.ctx.dist.is_main)
        if found is None:
            return None
        path, tensors, opt_state, state = found
        params = dict(self.model.named_parameters())
        with torch.no_grad():
            for name, value in tensors.items():
                params[name].copy_(value)
        self.optimizer.load_state_dict(opt_state)  # torch moves the state to each parameter's device
        if self.scaler is not None and "grad_scaler" in state:
            self.scaler.load_state_dict(state["grad_scaler"])
        return path, state

    # -- export --------------------------------------------------------------------------------------------------
    def full_state_dict(self, model: nn.Module) -> dict[str, torch.Tensor] | None:
        """The whole model's weights on the main rank for save_pretrained (every rank calls: gathering is a
        collective under sharding); None: the model's own (nothing is sharded)."""
        return None


class DDPStrategy(Strategy):
    """Several processes, each with the whole model; gradients averaged by torch DDP at the last micro-batch."""

    name = "ddp"

    def prepare(self, model: nn.Module, optimizer) -> nn.Module:
        from torch.nn.parallel import DistributedDataParallel

        super().prepare(model, optimizer)
        # no per-forward buffer sync: unpadded micro-batches make a rank-dependent number of forwards, and a
        # collective per forward would then hang (decoder buffers such as rotary inv_freq never change anyway).
        # Buffers are still broadcast once here, as every rank builds the wrapper (torch 2.13's name for this;
        # `broadcast_buffers=False` is deprecated and warned on every launch)
        device_ids = None if self.device.type == "cpu" else [self.device.index]
        return DistributedDataParallel(self.model, device_ids=device_ids, find_unused_parameters=False,
                                       forward_sync_buffers=False)

    def accumulate(self, runner: nn.Module, last: bool) -> AbstractContextManager:
        return nullcontext() if last else runner.no_sync()


def trainable_state(model: nn.Module) -> dict[str, torch.Tensor]:
    return {n: p.detach() for n, p in model.named_parameters() if p.requires_grad}


def _choose(ctx: RunContext, stage: ResolvedStage) -> type[Strategy]:
    kind = ctx.plan.launch.kind
    if kind == "deepspeed" and stage.train is not None:
        from tkc.runtime.strategy.deepspeed import DeepSpeedStrategy

        return DeepSpeedStrategy
    if kind == "fsdp" and stage.train is not None and ctx.dist.enabled:
        from tkc.runtime.strategy.fsdp import FSDPStrategy

        return FSDPStrategy
    return DDPStrategy if ctx.dist.enabled else Strategy


def for_stage(ctx: RunContext, stage: ResolvedStage) -> Strategy:
    """The stage's strategy, made once per run and stage (model builder, loop and saver share it)."""
    if stage.name not in ctx.strategies:
        ctx.strategies[stage.name] = _choose(ctx, stage)(ctx, stage)
    return ctx.strategies[stage.name]

