"""SFT (and pt) on the tiny Qwen2: every fine-tuning method trains what it should and nothing else."""

from __future__ import annotations

import json

import pytest
import torch

from tkc.runtime.run import run_bundle

SMALL = {"max_steps": 6, "global_batch_size": 8, "micro_batch_size": 4, "save_steps": 0}
METHODS = {
    "full": {"method": "full"},
    "freeze": {"method": "freeze", "freeze": {"trainable_layers": 1, "trainable_modules": [], "layers_path": "model.layers"}},
    "freeze_mlp": {"method": "freeze", "freeze": {"trainable_layers": 2, "trainable_modules": ["mlp"], "layers_path": "model.layers"}},
    "lora": {"method": "lora", "learning_rate": 1e-2},
    "dora": {"method": "lora", "lora": {"variant": "dora"}, "learning_rate": 1e-2},
    # rsLoRA scales by alpha/sqrt(r), sqrt(r) times LoRA's alpha/r: the same step needs a smaller rate.
    "rslora": {"method": "lora", "lora": {"variant": "rslora"}, "learning_rate": 3e-3},
    "pissa": {"method": "lora", "lora": {"init": "pissa"}, "learning_rate": 5e-3},
    "loraplus": {"method": "lora", "lora": {"plus_ratio": 4.0}, "learning_rate": 5e-3},
    "neftune": {"method": "full", "neftune_alpha": 5.0},
}


def _bundle(rt, tmp_path, tiny_pretrained, kind="sft", datasets=("arith_sft",), **kw):
    kw = {**SMALL, **kw}
    st = rt.stage(kind, kind, 0, list(datasets), **kw)
    plan = rt.resolved([st], model_path=str(tiny_pretrained), init="pretrained")
    for d in plan["datasets"].values():
        d["max_samples"] = 16
    return rt.write_bundle(tmp_path / "run", plan)


@pytest.mark.parametrize("name", list(METHODS))
def test_sft_method_trains_only_what_it_should(rt, tmp_path, tiny_pretrained, name):
    bundle = _bundle(rt, tmp_path, tiny_pretrained, **METHODS[name])
    before, after, trainable, model, losses = rt.train_and_compare(bundle, "sft")
    rt.assert_trained(before, after, trainable, losses)
    if name.startswith("freeze"):
        assert all(".layers.3." in n or ".layers.2." in n for n in trainable)
        assert not any("embed_tokens" in n for n in trainable)
    if name in ("lora", "dora", "rslora", "pissa", "loraplus"):
        assert all("lora_" in n for n in trainable)
    if name == "loraplus":
        from tkc.runtime.model import build_optimizer

        st = rt.make_ctx(bundle).stage_by_name("sft")
        mults = sorted({g["lr_mult"] for g in build_optimizer(model, st).param_groups})
        assert mults == [1.0, 4.0]


def test_pt_from_scratch_is_seeded(rt, tmp_path):
    st = rt.stage("pt", "pt", 0, ["arith_text"], **SMALL)
    plan = rt.resolved([st])
    plan["datasets"]["arith_text"]["max_samples"] = 256  # short lines: 256 records give enough 64-token chunks
    bundle = rt.write_bundle(tmp_path / "run", plan)
    from tkc.runtime.model import start_weights

    ctx = rt.make_ctx(bundle)
    pt = ctx.stage_by_name("pt")
    a, b = start_weights(ctx, pt), start_weights(ctx, pt)
    assert all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values(), strict=True))
    before, after, trainable, _, losses = rt.train_and_compare(bundle, "pt")
    rt.assert_trained(before, after, trainable, losses)


def _logits(model, ids):
    model.eval()
    with torch.no_grad():
        return model(input_ids=ids).logits


def test_lora_adapter_save_reload_gives_identical_logits(rt, tmp_path, tiny_pretrained):
    from peft import PeftModel

    from tkc.runtime.model import load_stage_output, start_weights

    bundle = _bundle(rt, tmp_path, tiny_pretrained, method="lora", learning_rate=1e-2)
    assert run_bundle(bundle) == 0
    out = bundle / "outputs" / "sft"
    assert (out / "model" / "adapter_model.safetensors").exists() and (out / "DONE").exists()
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["train_loss_last"] < metrics["train_loss_first"]
    assert (out / "loss.png").stat().st_size > 1000
    record = json.loads((out / "run_record.json").read_text())
    assert record["bundle_hash"] and record["versions"]["torch"] and record["tokens_seen"] > 0

    ctx = rt.make_ctx(bundle)
    st = ctx.stage_by_name("sft")
    ids = torch.tensor([ctx.tokenizer()("What is 12+34?")["input_ids"]])
    # reference: rebuild the trained model exactly as the loop left it, from the last optimizer step's weights
    reloaded = PeftModel.from_pretrained(start_weights(ctx, st), str(out / "model"))
    again = PeftModel.from_pretrained(start_weights(ctx, st), str(out / "model"))
    assert torch.equal(_logits(reloaded, ids), _logits(again, ids))
    merged = load_stage_output(ctx, "sft")
    assert torch.allclose(_logits(merged, ids), _logits(reloaded, ids), atol=1e-5)
    base = start_weights(ctx, st)
    assert not torch.allclose(_logits(base, ids), _logits(reloaded, ids), atol=1e-4)  # the adapter did something


def test_trained_lora_in_memory_matches_saved_adapter(rt, tmp_path, tiny_pretrained):
    from peft import PeftModel

    from tkc.runtime.model import start_weights

    bundle = _bundle(rt, tmp_path, tiny_pretrained, method="lora", learning_rate=1e-2)
    _, _, _, model, _ = rt.train_and_compare(bundle, "sft")
    model.save_pretrained(str(tmp_path / "adapter"))
    ctx = rt.make_ctx(bundle)
    ids = torch.tensor([ctx.tokenizer()("What is 12+34?")["input_ids"]])
    reloaded = PeftModel.from_pretrained(start_weights(ctx, ctx.stage_by_name("sft")), str(tmp_path / "adapter"))
    assert torch.equal(_logits(model, ids), _logits(reloaded, ids))


def test_qlora_4bit_trains_adapter_only(rt, tmp_path, tiny_pretrained):
    pytest.importorskip("bitsandbytes")
    bundle = _bundle(rt, tmp_path, tiny_pretrained, method="lora", learning_rate=1e-2)
    plan = json.loads((bundle / "resolved.json").read_text())
    plan["stages"][0]["finetuning"]["quantization"] = {"bits": 4, "quant_type": "nf4", "double_quant": True}
    bundle = rt.write_bundle(tmp_path / "qlora", plan)
    before, after, trainable, model, losses = rt.train_and_compare(bundle, "sft")
    rt.assert_trained(before, after, trainable, losses)
    assert any(type(m).__name__ == "Linear4bit" for m in model.modules())
