"""The compile-time memory/time estimate's arithmetic (tkc.compiler.estimate): known byte counts per parameter."""

from __future__ import annotations

import pytest

from tkc.catalog.shapes import model_shapes
from tkc.compiler import estimate as est

LLAMA3_8B = model_shapes()["meta-llama/Meta-Llama-3-8B"]
QWEN2_5_7B = model_shapes()["Qwen/Qwen2.5-7B"]


def _shape(config: dict) -> est.ModelShape:
    shape, why = est.shape_from_config(config)
    assert shape is not None, why
    return shape


@pytest.mark.parametrize(("config", "billions"), [
    (QWEN2_5_7B, 7.62), (LLAMA3_8B, 8.03), (model_shapes()["meta-llama/Llama-3.1-70B"], 70.55),
    (model_shapes()["Qwen/Qwen3-8B"], 8.19), (model_shapes()["Qwen/Qwen2.5-0.5B"], 0.49)])
def test_parameter_counts_match_the_vendors(config, billions):
    assert _shape(config).params() / 1e9 == pytest.approx(billions, abs=0.01)


def test_full_fp32_adam_is_16_bytes_a_parameter():
    shape = _shape(QWEN2_5_7B)
    mem = est.estimate_memory(shape, est.Setup("sft", "full", "fp32", micro=1, cutoff=1))
    n = shape.params()
    assert (mem.weights, mem.gradients, mem.optimizer) == (4 * n, 4 * n, 8 * n)
    assert mem.weights + mem.gradients + mem.optimizer == 16 * n


def test_mixed_precision_and_zero_stages_follow_the_zero_paper():
    shape = _shape(LLAMA3_8B)
    n = shape.params()
    base = est.Setup("sft", "full", "bf16", micro=1, cutoff=1, accelerator="cuda", world=8)
    for stage, per_param in ((1, 2 + 2 + 12 / 8), (2, 2 + (2 + 12) / 8), (3, (2 + 2 + 12) / 8)):
        mem = est.estimate_memory(shape, base.but(sharding=stage))
        assert (mem.weights + mem.gradients + mem.optimizer) / n == pytest.approx(per_param, rel=1e-6)
    offload = est.estimate_memory(shape, base.but(sharding=3, offload=True))
    assert offload.weights == offload.optimizer == offload.gradients == 0 and offload.offloaded > 12 * n / 8


def test_unsharded_bf16_keeps_fp32_trainable_weights():
    shape = _shape(LLAMA3_8B)
    n = shape.params()
    full = est.estimate_memory(shape, est.Setup("sft", "full", "bf16", micro=1, cutoff=1, accelerator="cuda"))
    assert full.weights == 6 * n and full.gradients == 4 * n and full.optimizer == 8 * n
    lora = est.Setup("sft", "lora", "bf16", micro=1, cutoff=1, lora_rank=16, lora_targets=("q_proj", "v_proj"))
    nt = est.trainable_params(shape, lora)
    assert nt == 32 * 16 * ((4096 + 4096) + (4096 + 1024))          # layers x rank x (in + out) per target
    assert est.estimate_memory(shape, lora).weights == 2 * n + 6 * nt   # bf16 base, fp32 adapters + bf16 copy


def test_qlora_stores_decoder_linears_in_4_bits():
    shape = _shape(LLAMA3_8B)
    setup = est.Setup("sft", "lora", "bf16", micro=1, cutoff=1, bits=4, lora_targets=("q_proj",))
    linear = shape.layers * shape.layer_linear()
    rest = shape.params() - linear
    nt = est.trainable_params(shape, setup)
    assert est.estimate_memory(shape, setup).weights == linear // 2 + linear // 64 * 4 + 4 * rest + 4 * nt


def test_activations_grow_with_micro_batch_and_shrink_with_checkpointing():
    shape = _shape(LLAMA3_8B)
    one = est.Setup("sft", "full", "bf16", micro=1, cutoff=2048)
    assert est.activations(shape, one.but(micro=4)) == 4 * est.activations(shape, one)
    assert est.activations(shape, one.but(checkpointing=True)) < est.activations(shape, one) / 3
    assert est.activations(shape, one.but(kind="dpo")) == 2 * est.activations(shape, one)   # chosen + rejected


def test_reference_models_by_method():
    shape = _shape(LLAMA3_8B)
    sft = est.Setup("sft", "lora", "bf16", micro=1, cutoff=1, lora_targets=("q_proj",))
    assert est.estimate_memory(shape, sft.but(kind="dpo")).weights == est.estimate_memory(shape, sft).weights
    full = sft.but(method="full")
    extra = est.estimate_memory(shape, full.but(kind="dpo")).weights - est.estimate_memory(shape, full).weights
    assert extra == 2 * shape.params()                                # a frozen bf16 copy


def test_frozen_parameters_cost_4n_flops_trainable_6n():
    shape = _shape(LLAMA3_8B)
    full = est.Setup("sft", "full", "bf16", micro=1, cutoff=1)
    lora = est.Setup("sft", "lora", "bf16", micro=1, cutoff=1, lora_rank=1, lora_targets=("q_proj",))
    matmul = shape.layers * shape.layer_linear() + shape.vocab * shape.hidden
    attention = 3 * shape.layers * 4 * shape.heads * shape.head_dim
    assert est.step_flops(shape, full, 1) == 6 * matmul + attention
    assert est.step_flops(shape, lora, 1) == 4 * matmul + 2 * est.trainable_params(shape, lora) + attention


@pytest.mark.parametrize(("config", "why"), [
    ({"model_type": "x"}, "no num_hidden_layers"), ({**LLAMA3_8B, "num_local_experts": 8}, "mixture-of-experts")])
def test_unknown_shapes_say_why(config, why):
    shape, reason = est.shape_from_config(config)
    assert shape is None and why in (reason or "")


def test_cpu_processes_share_the_node_memory():
    mem = est.Memory(GIB_4 := 4 << 30, 0, 0, 0, 0, 0, 0)
    assert est.needed_bytes(mem, 4, "cpu") == 4 * GIB_4 and est.needed_bytes(mem, 4, "cuda") == GIB_4
