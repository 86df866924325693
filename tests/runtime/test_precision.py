"""Mixed precision as practitioners run it, tested on the CPU (whose autocast takes bf16 and fp16): what trains is
fp32 (full fine-tuning's master weights, LoRA adapters, freeze's trained layers), frozen weights load in the compute
dtype, forwards run under torch.autocast on the stage's device, fp16 scales the loss and skips overflowed steps;
fp32 (every CPU bundle the compiler makes) has no autocast and no scaler."""

from __future__ import annotations

import pytest
import torch


def _ctx(rt, tmp_path, method: str, precision: str, **extra):
    freeze = {"trainable_layers": 1, "trainable_modules": [], "layers_path": "model.layers"} if method == "freeze" \
        else None
    st = rt.stage("sft", "sft", 0, ["arith_sft"], method=method, freeze=freeze, precision=precision, max_steps=1,
                  global_batch_size=4, micro_batch_size=4, gradient_accumulation_steps=1, save_steps=0, **extra)
    plan = rt.resolved([st], cutoff_len=48)
    plan["datasets"]["arith_sft"]["max_samples"] = 4
    ctx = rt.make_ctx(rt.write_bundle(tmp_path / f"run_{method}_{precision}", plan))
    return ctx, ctx.stage_by_name("sft")


def _dtypes(model, trainable: bool) -> set[torch.dtype]:
    return {p.dtype for p in model.parameters() if p.requires_grad == trainable}


@pytest.mark.parametrize(("method", "trained", "frozen"), [
    ("full", {torch.float32}, set()),                      # fp32 master weights; autocast computes in bf16
    ("lora", {torch.float32}, {torch.bfloat16}),           # adapters fp32 over a bf16 base
    ("freeze", {torch.float32}, {torch.bfloat16}),         # trained layers fp32, frozen ones bf16
])
def test_bf16_keeps_what_trains_in_fp32(rt, tmp_path, method, trained, frozen):
    from tkc.runtime.model import build_trainable, compute_dtype, dtype_of

    ctx, stage = _ctx(rt, tmp_path, method, "bf16")
    assert compute_dtype(stage) == torch.bfloat16
    assert dtype_of(stage) == (torch.float32 if method == "full" else torch.bfloat16)
    model = build_trainable(ctx, stage)
    assert _dtypes(model, trainable=True) == trained
    assert _dtypes(model, trainable=False) == frozen


def test_fp32_is_as_before(rt, tmp_path):
    from tkc.runtime import strategy
    from tkc.runtime.model import build_trainable, dtype_of

    ctx, stage = _ctx(rt, tmp_path, "lora", "fp32")
    assert dtype_of(stage) == torch.float32
    model = build_trainable(ctx, stage)
    assert {p.dtype for p in model.parameters()} == {torch.float32}
    strat = strategy.for_stage(ctx, stage)
    assert strat.scaler is None
    with strat.autocast():
        assert not torch.is_autocast_enabled("cpu")


def test_bf16_trains_under_autocast_on_the_stage_device(rt, tmp_path):
    """One loop step of LoRA in bf16: the forward under CPU autocast (bf16 logits from fp32 adapters), finite
    loss, adapters changed and still fp32, frozen base unchanged."""
    from tkc.runtime import loop, strategy
    from tkc.runtime.model import build_optimizer
    from tkc.runtime.stages import sft
    from tkc.runtime.stages.common import load_rows

    ctx, stage = _ctx(rt, tmp_path, "lora", "bf16")
    task, model = sft.build_task(ctx, stage)
    strat = strategy.for_stage(ctx, stage)
    with strat.autocast():
        assert torch.is_autocast_enabled("cpu") and torch.get_autocast_dtype("cpu") == torch.bfloat16
        ids = torch.tensor([[1, 2, 3, 4]])
        assert model(input_ids=ids).logits.dtype == torch.bfloat16
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    rows, _ = load_rows(ctx, stage)
    result = loop.train(ctx, stage, model, build_optimizer(model, stage), task, rows, [])
    assert result.exit_code == 0 and torch.isfinite(torch.tensor(result.records[0]["loss"]))
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed and all("lora_" in n for n in changed)
    assert all(p.dtype == torch.float32 for n, p in model.named_parameters() if n in changed)


def test_fp16_scales_the_loss_and_skips_overflowed_steps(rt, tmp_path):
    from tkc.runtime import strategy

    ctx, stage = _ctx(rt, tmp_path, "full", "fp16")
    strat = strategy.for_stage(ctx, stage)
    assert isinstance(strat.scaler, torch.amp.GradScaler)
    with strat.autocast():
        assert torch.get_autocast_dtype("cpu") == torch.float16
    w = torch.nn.Parameter(torch.ones(3))
    strat.model, strat.optimizer = torch.nn.ParameterList([w]), torch.optim.SGD([w], lr=0.1)
    logs: list[str] = []
    ctx.log = logs.append
    scale = strat.scaler.get_scale()
    strat.backward((w * 2.0).sum())
    assert torch.equal(w.grad, torch.full((3,), 2.0 * scale))       # scaled for the backward
    assert strat.step(max_grad_norm=0.0) == pytest.approx(2.0 * 3 ** 0.5)  # unscaled before the norm and the step
    assert torch.allclose(w.detach(), torch.full((3,), 0.8)) and strat.skipped_steps == 0
    strat.backward((w * float("inf")).sum())                         # an overflow: the step is skipped, logged
    strat.step(max_grad_norm=1.0)
    assert torch.allclose(w.detach(), torch.full((3,), 0.8)) and strat.skipped_steps == 1
    assert strat.scaler.get_scale() == scale / 2
    assert any("fp16: gradients overflowed" in line and "step skipped" in line for line in logs)
    state = {"step": 1, "bundle_hash": ctx.bundle_hash}
    strat.save(tmp_path / "ckpt", 1, state, keep=1)                  # the loss scale is part of the checkpoint
    strat.scaler.update(new_scale=7.0)
    assert strat.restore(tmp_path / "ckpt", log=logs.append) is not None and strat.scaler.get_scale() == scale / 2
