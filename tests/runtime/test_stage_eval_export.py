"""eval (exact match, printed and saved) and export (adapter merged into full safetensors weights)."""

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
    for s in stages[1:]:
        del s["train"], s["finetuning"]
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
