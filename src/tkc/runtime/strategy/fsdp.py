"""FSDP2 (`launch.kind: fsdp`): each decoder layer, then the whole model, sharded with `fully_shard` over the ranks.

- Units: every module of the plan's decoder layer class (model.decoder_layer, from the model family's data) is one
  FSDP unit, the root (embeddings, final norm, LM head, a value head) another. A family that names no class: the
  decoder layer list (tkc.runtime.model.decoder_layers), said so in the run log.
- Precision: on an accelerator, bf16/fp16 compute through a MixedPrecisionPolicy (params gathered in the plan's
  precision, gradients reduced in fp32) over fp32 trainable weights (upcast before sharding; a LoRA run's frozen base
  stays as loaded: FSDP2 needs one dtype among a unit's trainable parameters only). fp32 on the CPU: no policy.
- Gradients: reduce-scattered after every micro-batch's backward (FSDP2's default), so a rank never holds the whole
  model's gradients; the loop's loss scaling (x world_size / units, averaged over ranks) makes the sum exact.
- One forward per micro-batch on every rank: FSDP2 gathers a unit's weights in each forward, a collective, so the
  ranks must run the same forwards. An unpadded micro-batch (runs of equal-length rows, a rank-dependent number of
  pieces) is padded into one batch here (`one_piece`); a packed (varlen) micro-batch is one forward already.
- Checkpoints: torch.distributed.checkpoint, every rank writing its shard of the trainable weights and of the
  optimizer state into tkc's atomic checkpoint (checkpoint.save_sharded / load_sharded), so resume is exact.
- Export: the whole weights (a LoRA run: its adapter) gathered to the main rank on the CPU for save_pretrained.
- Settings the compiler wrote into the bundle (launch/accelerate_fsdp*.yaml): reshard after forward, CPU offload.
"""

from __future__ import annotations

from collections.abc import Callable
from contextlib import AbstractContextManager, nullcontext
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from tkc.bundle.plan import ResolvedStage
from tkc.runtime import checkpoint
from tkc.runtime.context import RunContext
from tkc.runtime.strategy import Strategy

_LOW = {"bf16": torch.bfloat16, "fp16": torch.float16}


def read_settings(bundle_dir: Path, stage: ResolvedStage) -> dict[str, Any]:
    """The stage's fsdp_config from the bundle: launch/accelerate_fsdp-NN-<stage>.yaml when the stages' settings
    differ, else the shared launch/accelerate_fsdp.yaml (tkc.compiler.launch writes them; part of the hash)."""
    import yaml

    launch = bundle_dir / "launch"
    own = sorted(launch.glob(f"accelerate_fsdp-{stage.index:02d}-*.yaml"))
    path = own[0] if own else launch / "accelerate_fsdp.yaml"
    if not path.is_file():
        raise RuntimeError(f"launch.kind fsdp, but the bundle has no {path.relative_to(bundle_dir)}: "
                           "recompile it with `tkc compile`")
    return dict(yaml.safe_load(path.read_text(encoding="utf-8"))["fsdp_config"])


def sharded_units(model: nn.Module, layer_class: str | None) -> tuple[list[nn.Module], str | None]:
    """The modules to shard one by one (decoder layers, in order), and a note for the run log when they were not
    found by the plan's class name."""
    if layer_class:
        units = [m for m in model.modules() if type(m).__name__ == layer_class]
        if units:
            return units, None
        what = f"the model has no {layer_class} (the family's decoder_layer)"
    else:
        what = "the model's family names no decoder_layer"
    from tkc.runtime.model import decoder_layers

    layers = list(decoder_layers(model))
    name = type(layers[0]).__name__ if layers else "?"
    return layers, f"fsdp: {what}; sharding the {len(layers)} modules ({name}) of its decoder layer list instead"


def one_piece(batch: Any, pad_id: int) -> Any:
    """A micro-batch as one padded forward (pieces right-padded to the longest, attention masks added), so every
    rank runs the same number of forwards; a packed micro-batch (cu_seq_lens) and a dict are kept as they are."""
    if isinstance(batch, dict) or any("cu_seq_lens" in p for p in batch):
        return batch
    out: dict[str, torch.Tensor] = {}
    for key in batch[0]:
        parts = [p[key] for p in batch]
        if parts[0].dim() < 2:
            out[key] = torch.cat(parts)
            continue
        width = max(t.size(1) for t in parts)
        fill = -100 if key.endswith("labels") else pad_id if key.endswith("input_ids") else 0
        out[key] = torch.cat([F.pad(t, (0, width - t.size(1)), value=fill) for t in parts])
        mask = key.removesuffix("input_ids") + "attention_mask"
        if key.endswith("input_ids") and mask not in batch[0]:
            out[mask] = torch.cat([F.pad(torch.ones_like(t), (0, width - t.size(1))) for t in parts])
    return [out]


class FSDPStrategy(Strategy):
    """Several processes, each holding 1/world of every weight, gradient and optimizer state (FSDP2)."""

    name = "fsdp"
    sharded = True

    def __init__(self, ctx: RunContext, stage: ResolvedStage):
        super().__init__(ctx, stage)
        self.settings = read_settings(ctx.bundle_dir, stage)
        self.lora = stage.finetuning is not None and stage.finetuning.method == "lora"
        self.prepared = False

    # -- training ------------------------------------------------------------------------------------------------
    def prepare(self, model: nn.Module, optimizer) -> nn.Module:
        """Shard the model (decoder layers, then the root) and point its optimizer at the sharded parameters
        (fully_shard replaces each parameter with a DTensor: the optimizer the stage built holds the old ones)."""
        from torch.distributed.fsdp import CPUOffloadPolicy, MixedPrecisionPolicy, fully_shard

        names = {id(p): n for n, p in model.named_parameters()}
        groups = [[names[id(p)] for p in g["params"]] for g in optimizer.param_groups]
        model = self.place(model)
        units, note = sharded_units(model, self.ctx.plan.model.decoder_layer)
        if note:
            self.ctx.log(f"[{self.stage.name}] {note}")
        assert self.stage.train is not None, "only training stages are sharded"
        low = _LOW.get(self.stage.train.precision) if self.device.type != "cpu" else None
        kwargs: dict[str, Any] = {}
        if low is not None:
            kwargs["mp_policy"] = MixedPrecisionPolicy(param_dtype=low, reduce_dtype=torch.float32)
        if self.settings.get("fsdp_offload_params") and self.device.type != "cpu":
            kwargs["offload_policy"] = CPUOffloadPolicy()
        reshard = bool(self.settings.get("fsdp_reshard_after_forward", True))
        for unit in units:
            if low is not None:
                _upcast_trainable(unit)  # fp32 master weights, one layer at a time (peak: one fp32 layer)
            fully_shard(unit, reshard_after_forward=reshard, **kwargs)
        if low is not None:
            _upcast_trainable(model)
        fully_shard(model, reshard_after_forward=False, **kwargs)  # the root's weights are needed again at once
        params = dict(model.named_parameters())
        assert not optimizer.state, "the optimizer is taken before its first step"
        for group, group_names in zip(optimizer.param_groups, groups, strict=True):
            group["params"] = [params[n] for n in group_names]  # same groups and settings, sharded parameters
        self.model, self.optimizer, self.prepared = model, optimizer, True
        return model

    def batch(self, batch: Any) -> Any:
        return super().batch(one_piece(batch, self._pad_id()))

    def _pad_id(self) -> int:
        pad = self.ctx.tokenizer().pad_token_id
        return int(pad) if pad is not None else 0

    def autocast(self) -> AbstractContextManager:
        """Compute precision is the MixedPrecisionPolicy's (weights gathered in bf16/fp16): no autocast."""
        return nullcontext()

    def accumulate(self, runner: nn.Module, last: bool) -> AbstractContextManager:
        """Every backward reduce-scatters (gradients stay sharded between micro-batches)."""
        return nullcontext()

    def step(self, max_grad_norm: float) -> float:
        from torch.distributed.tensor import DTensor

        params = [p for p in self._model().parameters() if p.requires_grad]
        max_norm = max_grad_norm if max_grad_norm and max_grad_norm > 0 else float("inf")
        norm = torch.nn.utils.clip_grad_norm_(params, max_norm)  # over the shards: a DTensor, reduced on read
        self.optimizer.step()
        self.optimizer.zero_grad(set_to_none=True)
        return float(norm.full_tensor() if isinstance(norm, DTensor) else norm)

    def _model(self) -> nn.Module:
        assert self.model is not None, "the strategy has taken the model (prepare)"
        return self.model

    # -- checkpoints -----------------------------------------------------------------------------------------------
    def _options(self, **kwargs):
        from torch.distributed.checkpoint.state_dict import StateDictOptions

        # frozen weights (a LoRA run's base, freeze's frozen layers) are the start weights: not checkpointed
        return StateDictOptions(ignore_frozen_params=True, **kwargs)

    def _state(self) -> dict[str, Any]:
        from torch.distributed.checkpoint.state_dict import get_state_dict

        model_sd, optim_sd = get_state_dict(self._model(), self.optimizer, options=self._options())
        return {"model": model_sd, "optimizer": optim_sd}

    def save(self, root: Path, step: int, state: dict[str, Any], keep: int) -> None:
        """Every rank writes its shard (torch.distributed.checkpoint) into the one staging folder; published once."""
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.api import CheckpointException

        tensors = self._state()

        def write(folder: Path) -> None:
            try:
                dcp.save(tensors, checkpoint_id=str(folder / "sharded"))
            except CheckpointException as e:  # a BaseException: as an OSError, save_sharded fails every rank
                raise OSError(f"torch.distributed.checkpoint could not write: {e}") from None

        checkpoint.save_sharded(root, step, write, state=state, keep=keep, dist=self.ctx.dist)

    def restore(self, root: Path, log: Callable[[str], None]) -> tuple[Path, dict[str, Any]] | None:
        import torch.distributed.checkpoint as dcp
        from torch.distributed.checkpoint.state_dict import set_state_dict

        def read(path: Path) -> None:
            tensors = self._state()  # the layout to read into (shards of this rank)
            dcp.load(tensors, checkpoint_id=str(path / "sharded"))
            set_state_dict(self._model(), self.optimizer, model_state_dict=tensors["model"],
                           optim_state_dict=tensors["optimizer"], options=self._options())

        found = checkpoint.load_sharded(root, read, bundle_hash=self.ctx.bundle_hash, log=log, dist=self.ctx.dist)
        return None if found is None else (found[0], found[1])

    # -- export --------------------------------------------------------------------------------------------------
    def full_state_dict(self, model: nn.Module) -> dict[str, torch.Tensor] | None:
        """The whole weights (LoRA: the trainable adapter weights) on the main rank's CPU; every rank calls."""
        if not self.prepared:
            return None
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        options = StateDictOptions(full_state_dict=True, cpu_offload=True, ignore_frozen_params=self.lora)
        state: dict[str, Any] = get_model_state_dict(self._model(), options=options)
        if not self.ctx.dist.is_main:
            return None
        # a tied weight (lm_head = embed_tokens) is gathered under each of its names, as two tensors: keep the first
        # name only, as save_pretrained does for the model's own (shared) tensors
        seen: set[int] = set()
        for name, p in self._model().named_parameters(remove_duplicate=False):
            if id(p) in seen:
                state.pop(name, None)
            seen.add(id(p))
        return state


def _upcast_trainable(module: nn.Module) -> None:
    """Trainable parameters of `module` not yet sharded, in fp32 (the optimizer's master weights)."""
    with torch.no_grad():
        for p in module.parameters(recurse=True):
            if p.requires_grad and p.dtype != torch.float32 and not _is_dtensor(p):
                p.data = p.data.float()


def _is_dtensor(t: torch.Tensor) -> bool:
    from torch.distributed.tensor import DTensor

    return isinstance(t, DTensor)
