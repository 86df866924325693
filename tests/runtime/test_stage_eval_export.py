"""eval (exact match, loss, perplexity; printed and saved) and export (adapter merged into full weights, or the adapter as it is)."""

from __future__ import annotations

import json

import torch


def test_sft_then_eval_then_export(rt, tmp_path, tiny_pretrained, capsys):
    from transformers import AutoModelForCausalLM

    from tkc.runtime.model import load_stage_output
    from tkc.runtime.run import run_bundle

    stages = [
        rt.stage("sft", "sft", 0, ["arith_sft"], method="lora", max_steps=2, global_batch_size=8, micro_batch_size=8,
                 save_steps=0),
        rt.stage("eval", "eval", 1, ["arith_eval"], init_from="sft", options={"metric": "exact_match",
                                                                            "max_new_tokens": 4}),
        rt.stage("export", "export", 2, [], init_from="sft", options={"merge_adapter": True, "dtype": "fp32"}),
    ]
    plan = rt.resolved(stages, model_path=str(tiny_pretrained), init="pretrained")
    plan["datasets"]["arith_sft"]["max_samples"] = 16
    plan["datasets"]["arith_eval"]["max_samples"] = 20
    bundle = rt.write_bundle(tmp_path / "run", plan)
    assert run_bundle(bundle) == 0
    assert "exact_match" in capsys.readouterr().out
    ev = json.loads((bundle / "outputs" / "eval" / "metrics.json").read_text())
    assert ev["total"] == 20 and ev["correct"] == round(ev["exact_match"] * 20)
    preds = [json.loads(x) for x in (bundle / "outputs" / "eval" / "predictions.jsonl").read_text().splitlines()]
    assert len(preds) == 20 and all(set(p) == {"prompt", "reference", "prediction"} for p in preds)
    exported = bundle / "outputs" / "export" / "model"
    assert (exported / "model.safetensors").exists() and not (exported / "adapter_config.json").exists()
    ctx = rt.make_ctx(bundle)
    ids = torch.tensor([ctx.tokenizer()("What is 1+2?")["input_ids"]])
    with torch.no_grad():
        a = AutoModelForCausalLM.from_pretrained(str(exported)).eval()(input_ids=ids).logits
        b = load_stage_output(ctx, "sft").eval()(input_ids=ids).logits
    torch.testing.assert_close(a, b)


def test_loss_perplexity_and_unmerged_export(rt, tmp_path, tiny_pretrained):
    """loss/perplexity are finite and fall with training; merge_adapter: false saves an adapter that, on the weights
    its stage started from, gives the merged export's logits."""
    import math

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    from tkc.runtime.model import start_weights
    from tkc.runtime.run import run_bundle

    ev = {"max_new_tokens": 4}
    stages = [
        rt.stage("before", "eval", 0, ["arith_eval"], options={**ev, "metric": "perplexity"}),
        rt.stage("sft", "sft", 1, ["arith_sft"], method="lora", max_steps=6, global_batch_size=8, micro_batch_size=8,
                 save_steps=0, learning_rate=3e-3),
        rt.stage("after", "eval", 2, ["arith_eval"], init_from="sft", options={**ev, "metric": "perplexity"}),
        rt.stage("loss", "eval", 3, ["arith_eval"], init_from="sft", options={**ev, "metric": "loss"}),
        rt.stage("merged", "export", 4, [], init_from="sft", options={"merge_adapter": True, "dtype": "fp32"}),
        rt.stage("adapter", "export", 5, [], init_from="sft", options={"merge_adapter": False, "dtype": "fp32"}),
    ]
    plan = rt.resolved(stages, model_path=str(tiny_pretrained), init="pretrained")
    plan["datasets"]["arith_sft"]["max_samples"] = 48
    plan["datasets"]["arith_eval"]["max_samples"] = 20
    bundle = rt.write_bundle(tmp_path / "run", plan)
    assert run_bundle(bundle) == 0
    out = bundle / "outputs"
    before, after, loss = (json.loads((out / n / "metrics.json").read_text()) for n in ("before", "after", "loss"))
    assert before["metric"] == "perplexity" and before["model"] == "base" and after["model"] == "sft"
    assert all(math.isfinite(m["loss"]) and m["loss"] > 0 and m["tokens"] > 20 for m in (before, after, loss))
    assert after["perplexity"] < before["perplexity"]
    assert after["perplexity"] == math.exp(after["loss"]) and loss == {**after, "metric": "loss"}
    assert not (out / "after" / "predictions.jsonl").exists()
    unmerged = out / "adapter" / "model"
    assert {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "chat_template.jinja"} <= \
        {p.name for p in unmerged.iterdir()}
    assert not (unmerged / "model.safetensors").exists()
    assert json.loads((out / "adapter" / "metrics.json").read_text())["merged"] is False
    ctx = rt.make_ctx(bundle)
    ids = torch.tensor([ctx.tokenizer()("What is 1+2?")["input_ids"]])
    with torch.no_grad():
        merged = AutoModelForCausalLM.from_pretrained(str(out / "merged" / "model")).eval()(input_ids=ids).logits
        peft = PeftModel.from_pretrained(start_weights(ctx, ctx.stage_by_name("sft")), str(unmerged)).eval()
        torch.testing.assert_close(peft(input_ids=ids).logits, merged)
