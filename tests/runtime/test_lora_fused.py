"""tkc.runtime.lora: plain LoRA layers add their adapter product in one addmm, with peft's values and gradients;
every other case runs peft's own forward."""

from __future__ import annotations

import pytest
import torch
from peft.tuners.lora.layer import Linear as PeftLinear

from tkc.bundle.plan import ResolvedLora
from tkc.runtime import lora
from tkc.runtime.model import apply_lora, quiet_checkpointing_alias
from tkc.runtime.stages import common

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _model(rank=8, alpha=16.0, dropout=0.0, variant="lora"):
    from transformers import AutoModelForCausalLM, Qwen2Config

    config = Qwen2Config(vocab_size=640, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    torch.manual_seed(0)
    base = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa", dtype=torch.float32)
    lora_plan = ResolvedLora(rank=rank, alpha=alpha, dropout=dropout, targets=tuple(TARGETS), variant=variant,
                             init="default", plus_ratio=None, modules_to_save=())
    model = apply_lora(base, lora_plan, task_type="CAUSAL_LM", quantized=False)
    torch.manual_seed(1)
    for m in model.modules():  # B starts at zero: give the adapters something to add
        if isinstance(m, PeftLinear):
            for b in m.lora_B.values():
                torch.nn.init.normal_(b.weight, std=0.05)
    return model.train()


def _batch():
    g = torch.Generator().manual_seed(3)
    ids = torch.randint(1, 640, (2, 24), generator=g)
    labels = ids.clone()
    labels[:, :5] = -100
    return {"input_ids": ids, "labels": labels, "attention_mask": torch.ones_like(ids)}


def _loss_and_grads(model, seed=7):
    torch.manual_seed(seed)  # dropout draws
    model.zero_grad(set_to_none=True)
    loss = common.lm_loss_sum(model, _batch())
    loss.backward()
    return loss.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


def _as_peft(model):
    for m in model.modules():
        if type(m) is lora.FusedLinear:
            m.__class__ = PeftLinear


def _layers(model):
    return [m for m in model.modules() if isinstance(m, PeftLinear)]


def _fused_call(layer, x) -> bool:
    """Whether this call's output came from the addmm (its autograd graph ends view <- addmm)."""
    fn = layer(x).grad_fn
    return fn is not None and fn.name() == "ViewBackward0" and fn.next_functions[0][0].name() == "AddmmBackward0"


@pytest.mark.parametrize("alpha,exact", [(16.0, True), (12.0, False)])  # scaling 2 (a power of two), 1.5
def test_fused_layers_give_peft_loss_and_gradients(alpha, exact):
    model = _model(alpha=alpha)
    layers = _layers(model)
    assert len(layers) == 2 * len(TARGETS) and all(type(m) is lora.FusedLinear for m in layers)
    assert _fused_call(layers[0], torch.randn(3, 64))
    fused = _loss_and_grads(model)
    _as_peft(model)
    assert not _fused_call(layers[0], torch.randn(3, 64))
    plain = _loss_and_grads(model)
    assert any(n.endswith("lora_A.default.weight") for n in fused[1]) and fused[1].keys() == plain[1].keys()
    for a, b in [(fused[0], plain[0]), *((fused[1][n], plain[1][n]) for n in plain[1])]:
        if exact:
            assert torch.equal(a, b)
        else:
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_dropout_draws_the_same_noise_as_peft():
    model = _model(dropout=0.3)
    fused = _loss_and_grads(model)
    _as_peft(model)
    plain = _loss_and_grads(model)
    assert torch.equal(fused[0], plain[0])
    assert not torch.equal(fused[0], _loss_and_grads(model, seed=8)[0])  # the noise does reach the loss


def test_other_cases_run_peft_forward():
    model = _model()
    layer = _layers(model)[0]
    x = torch.randn(3, 64)
    with model.disable_adapter():  # the DPO reference: base weights only
        assert not _fused_call(layer, x)
        torch.testing.assert_close(layer(x), layer.base_layer(x), rtol=0, atol=0)
    seen = []
    handle = layer.lora_B["default"].register_forward_hook(lambda *a: seen.append(1))  # e.g. ZeRO-3's gathering
    assert not _fused_call(layer, x) and seen
    handle.remove()
    assert _fused_call(layer, x)
    dora = _model(variant="dora")
    d = _layers(dora)[0]
    assert type(d) is lora.FusedLinear and not _fused_call(d, x)


def test_saved_adapter_is_peft_format(tmp_path):
    from peft import PeftModel

    model = _model(alpha=12.0).eval()
    ids = _batch()["input_ids"]
    with torch.no_grad():
        before = model(input_ids=ids).logits
    model.save_pretrained(str(tmp_path))
    with quiet_checkpointing_alias():  # same seed: the same base weights
        fresh = PeftModel.from_pretrained(_model().unload(), str(tmp_path)).eval()
    assert not any(type(m) is lora.FusedLinear for m in fresh.modules())
    with torch.no_grad():
        torch.testing.assert_close(fresh(input_ids=ids).logits, before, rtol=1e-5, atol=1e-6)
