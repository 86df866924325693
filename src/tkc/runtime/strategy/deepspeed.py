"""DeepSpeed ZeRO 1/2/3 for `launch.kind: deepspeed`: the stage trains through `deepspeed.initialize` with the
DeepSpeed JSON the compiler wrote into the bundle (launch/deepspeed*.json, part of the hashed bundle).

- Joining: the ranks torchrun started have already joined the process group (tkc.runtime.dist);
  `deepspeed.init_distributed` wraps that group (no mpi discovery, no hostfile). A single process (`tkc run`
  without torchrun) gets a group of one over an in-memory store.
- Building: under ZeRO-3 transformers' own integration (HfDeepSpeedConfig, set in init_context) constructs the
  model inside `deepspeed.zero.Init`, so each rank only ever holds its shard of a pretrained model; peft's
  LoRA layers added after it are partitioned by `deepspeed.initialize`.
- Training: tkc's optimizer (AdamW with LoRA+ groups) goes to the engine as is. The loop already scales each
  micro-batch's loss by world_size / label tokens of the global batch, so the engine must not divide by
  gradient_accumulation_steps again (`backward(..., scale_wrt_gas=False)`); the loop says which micro-batch
  ends the global batch (`set_gradient_accumulation_boundary`), where ZeRO reduces and averages over ranks.
  Clipping is the config's gradient_clipping (train.max_grad_norm); the grad norm is the engine's.
- Checkpoints: `engine.save_checkpoint` writes every rank's shard of weights and optimizer state into tkc's
  staging folder (checkpoint.save_sharded: one COMPLETE over every rank's files, published atomically);
  resume loads the newest whole one with `engine.load_checkpoint`.
- Export: ZeRO-3 gathers the weights (fp32 when training fp32) to the main rank one parameter at a time; LoRA
  gathers only the adapter. ZeRO 0-2 keep whole weights on every rank: the model's own.
"""

from __future__ import annotations

import json
import os
import warnings
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager, nullcontext
from pathlib import Path
from typing import Any

import torch
from torch import nn

from tkc.bundle.plan import ResolvedStage
from tkc.runtime import checkpoint
from tkc.runtime.context import RunContext
from tkc.runtime.strategy import Strategy

TAG = "deepspeed"  # the engine's own folder inside each tkc checkpoint


def config_path(bundle_dir: Path, stage: ResolvedStage) -> Path:
    """The stage's DeepSpeed JSON: launch/deepspeed-NN-<stage>.json when stages differ, else launch/deepspeed.json
    (tkc.compiler.launch names them so)."""
    own = sorted((bundle_dir / "launch").glob(f"deepspeed-{stage.index:02d}-*.json"))
    return own[0] if own else bundle_dir / "launch" / "deepspeed.json"


def load_config(ctx: RunContext, stage: ResolvedStage) -> dict[str, Any]:
    """The bundle's DeepSpeed config for the stage, checked against the ranks this run has."""
    path = config_path(ctx.bundle_dir, stage)
    if not path.is_file():
        raise RuntimeError(f"stage {stage.name!r} trains with DeepSpeed but the bundle has no {path.name} "
                           f"(launch/): recompile the recipe with this tkc")
    config = json.loads(path.read_text(encoding="utf-8"))
    per_rank = int(config["train_micro_batch_size_per_gpu"]) * int(config["gradient_accumulation_steps"])
    world = int(config["train_batch_size"]) // per_rank
    if world != ctx.dist.world_size:
        raise RuntimeError(f"stage {stage.name!r}: the bundle's DeepSpeed config ({path.name}) is for {world} "
                           f"rank(s), but this run has {ctx.dist.world_size}: start it with the bundle's own "
                           f"launch script ({stage.name}'s launch/*.sh), or recompile for this hardware")
    return config


class DeepSpeedStrategy(Strategy):
    """ZeRO stage 0-3 (with optional CPU offload) through one DeepSpeed engine per stage."""

    name = "deepspeed"

    def __init__(self, ctx: RunContext, stage: ResolvedStage):
        super().__init__(ctx, stage)
        self.config = load_config(ctx, stage)
        self.zero_stage = int(self.config["zero_optimization"]["stage"])
        self.sharded = self.zero_stage > 0
        self.engine: Any = None
        self._hf_config: Any = None  # transformers' ZeRO-3 switch: alive from init_context until the engine exists

    # -- joining ---------------------------------------------------------------------------------------------------
    def _join(self) -> None:
        """DeepSpeed's comm layer over the process group tkc.runtime.dist joined (a group of one when alone)."""
        import torch.distributed as dist

        if self.device.type == "cpu":
            os.environ.setdefault("DS_ACCELERATOR", "cpu")  # the launch script sets it; `tkc run` alone too
        os.environ.setdefault("LOCAL_RANK", str(self.ctx.dist.local_rank))  # deepspeed.initialize asserts it
        if not dist.is_initialized():
            dist.init_process_group(self.ctx.plan.launch.backend, store=dist.HashStore(), rank=0, world_size=1)
        import deepspeed
        import deepspeed.ops

        if self.device.type == "cpu":
            # the CPU comm layer JIT-compiles a shared-memory all-reduce (minutes, a C++ compiler) that only
            # deepspeed's inference_all_reduce uses; training collectives go through torch.distributed (gloo).
            # deepspeed documents __compatible_ops__ as one dict whose edits persist
            deepspeed.ops.__compatible_ops__["deepspeed_shm_comm"] = False
        deepspeed.init_distributed(dist_backend=self.ctx.plan.launch.backend, auto_mpi_discovery=False)
        # ZeRO calls torch's old collective names every step: a FutureWarning addressed to deepspeed's authors,
        # printed by every rank on every step. Silenced by its exact text
        warnings.filterwarnings("ignore", category=FutureWarning,
                                message=r"`torch\.distributed\.(all_gather_into_tensor|reduce_scatter_tensor)` is")

    # -- building the model ------------------------------------------------------------------------------------------
    def init_context(self) -> AbstractContextManager:
        return self._zero3_construction() if self.zero_stage == 3 else nullcontext()

    @contextmanager
    def _zero3_construction(self) -> Iterator[None]:
        # torch 2.13's dynamo checks torch.nn.Parameter.__new__'s signature when first imported; zero.Init
        # replaces it, so an import of dynamo inside (transformers does one lazily) fails: import it first
        import torch._dynamo  # noqa: F401
        from transformers.integrations.deepspeed import HfDeepSpeedConfig

        self._join()
        # from_pretrained / from_config build under deepspeed.zero.Init and load each shard where it lives;
        # kept set through peft's wrapping (peft gathers base weights for e.g. PiSSA), dropped in prepare
        self._hf_config = HfDeepSpeedConfig(self.config)
        yield

    def place(self, model: nn.Module) -> nn.Module:
        if any(hasattr(p, "ds_id") for p in model.parameters()):
            return model  # ZeRO-3 shards already live on this rank's device (zero.Init put them there)
        return super().place(model)

    # -- training ------------------------------------------------------------------------------------------------
    def prepare(self, model: nn.Module, optimizer) -> nn.Module:
        import deepspeed
        from transformers.integrations.deepspeed import unset_hf_deepspeed_config

        self._join()
        self.model = model
        self.engine, self.optimizer, _, _ = deepspeed.initialize(model=model, optimizer=optimizer,
                                                                 config=self.config)
        unset_hf_deepspeed_config()  # models built later (a later stage, a reference) are whole again
        self._hf_config = None
        return self.engine

    def autocast(self) -> AbstractContextManager:
        return nullcontext()  # the engine holds the module in the config's bf16/fp16, fp32 master weights

    def accumulate(self, runner: nn.Module, last: bool) -> AbstractContextManager:
        self.engine.set_gradient_accumulation_boundary(last)  # ZeRO reduces over ranks at the boundary
        return nullcontext()

    def backward(self, loss: torch.Tensor) -> None:
        self.engine.backward(loss, scale_wrt_gas=False)  # the loop's scaling is already exact

    def step(self, max_grad_norm: float) -> float:
        """The engine clips at the config's gradient_clipping (the plan's max_grad_norm), steps and zeroes."""
        before = _grad_norm(self.engine.module) if self.zero_stage == 0 else None  # no ZeRO: no engine norm
        self.engine.step()
        norm = self.engine.get_global_grad_norm()
        return float(norm) if norm is not None else float(before or 0.0)

    @property
    def param_groups(self) -> list[dict]:
        return self.engine.optimizer.param_groups  # ZeRO keeps the client optimizer's groups (lr_mult too)

    # -- checkpoints -------------------------------------------------------------------------------------------------
    def save(self, root: Path, step: int, state: dict[str, Any], keep: int) -> None:
        def write(folder: Path) -> None:  # every rank: its own shard files (names carry the rank)
            self.engine.save_checkpoint(str(folder), tag=TAG, client_state={}, save_latest=False,
                                        exclude_frozen_parameters=True)

        checkpoint.save_sharded(root, step, write, state=state, keep=keep, dist=self.ctx.dist)

    def restore(self, root: Path, log: Callable[[str], None]) -> tuple[Path, dict[str, Any]] | None:
        def read(path: Path) -> None:
            # frozen weights are not in the checkpoint (they are the start weights, loaded again): not strict
            loaded, _ = self.engine.load_checkpoint(str(path), tag=TAG, load_module_strict=False,
                                                    load_optimizer_states=True, load_lr_scheduler_states=False)
            if loaded is None:
                raise RuntimeError(f"DeepSpeed could not load checkpoint {path} (its log above says why)")

        found = checkpoint.load_sharded(root, read, bundle_hash=self.ctx.bundle_hash, log=log, dist=self.ctx.dist)
        return None if found is None else (found[0], found[1])

    # -- export --------------------------------------------------------------------------------------------------
    def full_state_dict(self, model: nn.Module) -> dict[str, torch.Tensor] | None:
        if self.zero_stage < 3:
            return None  # ZeRO 0-2 update whole weights on every rank
        adapter = hasattr(model, "peft_config")
        return gathered_state_dict(model, trainable_only=adapter, is_main=self.ctx.dist.is_main)


def gathered_state_dict(model: nn.Module, *, trainable_only: bool, is_main: bool) -> dict[str, torch.Tensor] | None:
    """Whole ZeRO-3 weights (dtype as trained) on the main rank, one parameter gathered at a time; every rank
    calls. Tied weights appear once (named_parameters), as save_pretrained expects; persistent buffers too."""
    from deepspeed import zero

    state: dict[str, torch.Tensor] = {}
    for name, param in model.named_parameters():
        if trainable_only and not param.requires_grad:
            continue
        with zero.GatheredParameters([param], modifier_rank=None):
            if is_main:
                state[name] = param.detach().cpu().clone()
    if not trainable_only:
        for prefix, module in model.named_modules():
            for name, buf in module.named_buffers(recurse=False):
                if buf is not None and name not in module._non_persistent_buffers_set:
                    state[f"{prefix}.{name}" if prefix else name] = buf.detach().cpu().clone()
    return state if is_main else None


def _grad_norm(module: nn.Module) -> float:
    grads = [p.grad for p in module.parameters() if p.grad is not None]
    return float(torch.nn.utils.get_total_norm(grads)) if grads else 0.0
