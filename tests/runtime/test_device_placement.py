"""Placement without a GPU: every model, reference, reward model, value head, batch, optimizer state and tensor a loss
makes goes to the stage's device, taken from the plan through tkc.runtime.device.stage_device.

The test's accelerator is simulated: the stage device is forced to `meta`, and a dispatch mode (SimulatedDevice)
runs every op on real CPU data wrapped in tensors that report device `meta` (OnDevice). An op that mixes such a
tensor with a plain CPU tensor of one or more dimensions raises DeviceMismatch, as CUDA would ("expected all
tensors to be on the same device"); a 0-dim CPU tensor mixes, as CUDA allows. So a model, batch or tensor that
placement misses fails the test. (Plain `meta` alone cannot run these stages: transformers' masks and tkc's losses
read tensor values, which meta tensors do not have.)
"""

from __future__ import annotations

import importlib

import pytest
import torch
from torch.overrides import TorchFunctionMode
from torch.utils._python_dispatch import TorchDispatchMode
from torch.utils._pytree import tree_flatten, tree_map

SIM = torch.device("meta")
_SKELETON = [0]  # inside `with torch.device("meta")` (transformers builds a model's skeleton there before loading)


class DeviceMismatch(RuntimeError):
    pass


class OnDevice(torch.Tensor):
    """Real CPU data (`.cpu_data`) reporting device `meta`: a tensor on the simulated accelerator."""

    @staticmethod
    def __new__(cls, data: torch.Tensor):
        r = torch.Tensor._make_wrapper_subclass(cls, data.shape, strides=data.stride(), dtype=data.dtype,
                                                storage_offset=data.storage_offset(), device=SIM)
        r.cpu_data = data
        return r

    def __repr__(self) -> str:
        return f"OnDevice({self.cpu_data!r})"

    @classmethod
    def __torch_dispatch__(cls, func, types, args=(), kwargs=None):
        raise AssertionError("OnDevice tensors exist only under SimulatedDevice (a thread-local mode)")


def _is_sim(x) -> bool:
    return (isinstance(x, torch.device) and x.type == SIM.type) or x == SIM.type


class SimulatedDevice(TorchDispatchMode):
    """Every aten op: device checks as on an accelerator, then the op on the CPU data."""

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        flat, _ = tree_flatten((args, kwargs))
        on_dev = {id(t.cpu_data): t for t in flat if isinstance(t, OnDevice)}
        plain = [t for t in flat if isinstance(t, torch.Tensor) and not isinstance(t, OnDevice)]
        if not on_dev and any(t.device.type == "meta" for t in plain):  # transformers' skeleton, not placement
            return func(*args, **kwargs)
        if func is torch.ops.aten._to_copy.default:
            target = kwargs.get("device")
            src = args[0].cpu_data if isinstance(args[0], OnDevice) else args[0]
            out = func(src, **{**kwargs, "device": torch.device("cpu")})
            to_sim = (_is_sim(target) and not _SKELETON[0]) if target is not None else isinstance(args[0], OnDevice)
            return OnDevice(out) if to_sim else out
        if on_dev and func is not torch.ops.aten.copy_.default and any(t.dim() > 0 for t in plain):  # copy_
            # crosses devices, on CUDA too
            bad = next(t for t in plain if t.dim() > 0)
            raise DeviceMismatch(f"{func}: a {bad.device.type} tensor of shape {tuple(bad.shape)} meets tensors on "
                                 "the stage's device")
        factory = not _SKELETON[0] and any(_is_sim(x) for x in flat if isinstance(x, (torch.device, str)))
        if not on_dev and not factory:
            return func(*args, **kwargs)

        def unwrap(x):
            if isinstance(x, OnDevice):
                return x.cpu_data
            return torch.device("cpu") if isinstance(x, torch.device) and _is_sim(x) else x

        out = func(*tree_map(unwrap, args), **tree_map(unwrap, kwargs))
        # an in-place op returns its input: the same OnDevice object
        return tree_map(lambda x: _rewrap(x, on_dev), out)


def _rewrap(x, on_dev: dict):
    if not isinstance(x, torch.Tensor):
        return x
    same = on_dev.get(id(x))
    return same if same is not None else OnDevice(x)


class MadeOnCpu(TorchFunctionMode):
    """torch.tensor(data, device=meta) builds its tensor below the dispatcher: build it on the CPU, then place it;
    .tolist() of a wrapper reads its CPU data (as .tolist() of a CUDA tensor copies to the host)."""

    def __torch_function__(self, func, types, args=(), kwargs=None):
        kwargs = kwargs or {}
        if func in (torch.tensor, torch.as_tensor) and kwargs.get("device") is not None \
                and _is_sim(torch.device(kwargs["device"])) and not _SKELETON[0]:
            return func(*args, **{**kwargs, "device": "cpu"}).to(SIM)
        if func is torch.Tensor.tolist and isinstance(args[0], OnDevice):
            return args[0].cpu_data.tolist()
        return func(*args, **kwargs)


def _force_simulated(monkeypatch) -> None:
    """The plan's device function answers `meta` (in this test only), wherever the runtime calls it."""
    from tkc.runtime import device, strategy
    from tkc.runtime.stages import eval as eval_stage

    for module in (strategy, device, eval_stage):
        monkeypatch.setattr(module, "stage_device", lambda plan, stage, dist: SIM)
    monkeypatch.setattr(device, "device_problem", lambda kind, local_rank=0: None)
    autocast_on = torch.is_autocast_enabled  # meta is no autocast device type; fp32 stages never autocast
    monkeypatch.setattr(torch, "is_autocast_enabled", lambda *a: False if a and a[0] == "meta" else autocast_on(*a))
    from torch.utils._device import DeviceContext as context  # noqa: I001  (real meta inside transformers' skeleton)

    enter, leave = context.__enter__, context.__exit__

    def entered(self):
        _SKELETON[0] += self.device.type == "meta"
        return enter(self)

    def left(self, *exc):
        _SKELETON[0] -= self.device.type == "meta"
        return leave(self, *exc)

    monkeypatch.setattr(context, "__enter__", entered)
    monkeypatch.setattr(context, "__exit__", left)


@pytest.fixture
def simulated(monkeypatch):
    _force_simulated(monkeypatch)
    with SimulatedDevice(), MadeOnCpu():
        yield


def test_the_simulated_device_catches_a_missed_tensor(simulated):
    """The harness fails where an accelerator would: a CPU batch into a placed module, a CPU tensor into a loss."""
    layer = torch.nn.Linear(4, 2).to(SIM)
    assert isinstance(layer.weight, OnDevice) and layer.weight.device == SIM
    with pytest.raises(DeviceMismatch):
        layer(torch.ones(3, 4))
    out = layer(torch.ones(3, 4).to(SIM))
    with pytest.raises(DeviceMismatch):
        out + torch.zeros(3, 2)
    assert isinstance(out + torch.tensor(1.0), OnDevice)  # a 0-dim CPU tensor mixes, as on CUDA
    assert torch.tensor([1, 2], device=SIM).tolist() == [1, 2]


PPO = {"reward_model": "rm", "ppo_epochs": 1, "kl_coef": 0.05, "clip_range": 0.2, "max_new_tokens": 4,
       "temperature": 1.0}


def _bundle(rt, tmp_path, tiny_pretrained):
    one = {"max_steps": 1, "global_batch_size": 2, "micro_batch_size": 2, "gradient_accumulation_steps": 1,
           "save_steps": 0, "padding": "longest"}
    kinds = [("eval", "eval", ["arith_sft"], {"options": {"metric": "loss"}}),  # exact_match: another thread
             ("rm", "rm", ["arith_pref"], one),  # eval first: no earlier stage model, so it tests the base
             ("rm_placed", "rm", ["arith_pref"], one),  # trained here ("rm" stays as it finished, for ppo)
             ("sft", "sft", ["arith_sft"], one),
             ("dpo", "dpo", ["arith_pref"], one),  # full: the frozen reference is a copy
             ("kto", "kto", ["kto"], {**one, "method": "lora"}),
             ("ppo", "ppo", ["arith_sft"], {**one, "options": PPO}),  # full: a frozen copy, a value head
             ("sft_unpadded", "sft", ["arith_sft"], {**one, "padding": "unpadded"}),
             ("dpo_unpadded", "dpo", ["arith_pref"], {**one, "padding": "unpadded"})]
    stages = [rt.stage(name, kind, i, data, **kw) for i, (name, kind, data, kw) in enumerate(kinds)]
    plan = rt.resolved(stages, model_path=str(tiny_pretrained), init="pretrained", cutoff_len=48)
    for name in ("arith_sft", "arith_pref"):
        plan["datasets"][name]["max_samples"] = 4
    return rt.write_bundle(tmp_path / "run", plan)


def _train_one_step(ctx, stage):
    """The stage's model, reference and task as its module builds them, then one optimizer step of the loop."""
    from tkc.runtime import loop
    from tkc.runtime.model import build_optimizer
    from tkc.runtime.stages.common import load_rows

    module = importlib.import_module(f"tkc.runtime.stages.{stage.kind}")
    task, model = module.build_task(ctx, stage)
    optimizer = build_optimizer(model, stage)
    rows, _ = load_rows(ctx, stage)
    result = loop.train(ctx, stage, model, optimizer, task, rows, rows[:2])  # eval rows: evaluate() too
    return model, optimizer, result


def _all_placed(model, optimizer) -> None:
    leftovers = [n for n, t in [*model.named_parameters(), *model.named_buffers()] if not isinstance(t, OnDevice)]
    assert not leftovers, f"left on the cpu: {leftovers[:5]}"
    state = [t for s in optimizer.state.values() for t in s.values() if isinstance(t, torch.Tensor) and t.dim()]
    assert state and all(isinstance(t, OnDevice) for t in state)  # Adam's moments made beside their parameters


@pytest.mark.slow
def test_every_stage_places_models_batches_and_optimizer_state(rt, tmp_path, tiny_pretrained, monkeypatch):
    """rm, sft and dpo (full: the reference is a frozen copy), kto (LoRA), sft and dpo unpadded (packed rows, shared
    prompts), ppo (full: frozen copy, value head, reward model from the rm stage), eval and HFEngine: one step each
    through the loop (forward, backward, optimizer step, evaluate) with the stage device simulated."""
    from tkc.runtime.run import run_bundle

    bundle = _bundle(rt, tmp_path, tiny_pretrained)
    assert run_bundle(bundle, stage="rm") == 0  # ppo's reward model: a finished rm stage, trained on the CPU
    ctx = rt.make_ctx(bundle)
    from tkc.runtime.infer.hf import HFEngine
    from tkc.runtime.stages import eval as eval_stage
    from tkc.runtime.stages import ppo

    saved: list[str] = []
    monkeypatch.setattr(ppo, "save_model", lambda ctx, stage, model: saved.append(stage.name))  # writes bytes:
    monkeypatch.setattr(ppo, "finish", lambda *a, **k: None)  # not this test's business
    monkeypatch.setattr("safetensors.torch.save_file", lambda *a, **k: None)
    _force_simulated(monkeypatch)
    with SimulatedDevice(), MadeOnCpu():
        for name in ("rm_placed", "sft", "dpo", "kto", "sft_unpadded", "dpo_unpadded"):
            model, optimizer, result = _train_one_step(ctx, ctx.stage_by_name(name))
            assert result.exit_code == 0 and result.steps == 1, name
            assert all(torch.isfinite(torch.tensor(r["loss"])) for r in result.records if "loss" in r), name
            _all_placed(model, optimizer)
        assert ppo.run(ctx, ctx.stage_by_name("ppo")) == 0 and saved == ["ppo"]
        strat = ctx.strategies["ppo"]
        _all_placed(strat.model, strat.optimizer)  # policy and value head, and the optimizer made after them
        assert eval_stage.run(ctx, ctx.stage_by_name("eval")) == 0
        # inference: the model on the device the plan names (its generation runs in the batcher's own thread,
        # where this test's thread-local modes do not reach, as exact_match's; eval's loss ran on the device)
        engine = HFEngine.from_bundle(ctx, None)
        assert all(isinstance(p, OnDevice) for p in engine.model.parameters())
