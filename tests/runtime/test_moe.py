"""MoE training: tkc's SFT loss on a tiny Qwen3-MoE equals transformers' own loss with the router's auxiliary
(load-balancing) loss, the coefficient comes from the model's config with its provenance, and the aux loss
reaches the router's gradient."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "tests" / "catalog"))

RECIPE = """\
schema_version: 1
name: moe
model: {{path: model, init: pretrained{moe}}}
template: auto
data:
  datasets:
    rows: {{path: rows.jsonl, format: alpaca}}
  cutoff_len: 64
stages:
  - kind: sft
    name: sft
    datasets: [rows]
    train: {{learning_rate: 1.0e-3, max_steps: 1, global_batch_size: 4, micro_batch_size: 4, padding: {padding}}}
finetuning: {finetuning}
train: {{seed: 0}}
hardware: cpu
"""


def _bundle(tmp_path: Path, tkc, padding: str = "unpadded", moe: str = "",
            finetuning: str = "{method: full}") -> Path:
    import tiny_family

    from tkc.catalog.registry import families

    model = tiny_family.build(families()["qwen3_moe"], tmp_path / "model")
    model.config.router_aux_loss_coef = 0.25  # large enough to matter, read from config.json by the compiler
    model.config.save_pretrained(tmp_path / "model")
    rows = (REPO / "recipes/data/arith_sft.jsonl").read_text(encoding="utf-8").splitlines()[:4]
    (tmp_path / "rows.jsonl").write_text("\n".join(rows) + "\n", encoding="utf-8")
    (tmp_path / "moe.yaml").write_text(RECIPE.format(padding=padding, moe=moe, finetuning=finetuning), encoding="utf-8")
    code, out, err = tkc("compile", tmp_path / "moe.yaml", "-o", tmp_path / "run")
    assert code == 0, out + err
    return tmp_path / "run"


def _task(bundle: Path):
    from tkc.bundle.plan import load_plan
    from tkc.runtime.context import RunContext, load_bundle_hash, resolve_source_root
    from tkc.runtime.stages import sft
    from tkc.runtime.stages.common import load_rows

    ctx = RunContext(bundle, load_plan(bundle), resolve_source_root(bundle, None), load_bundle_hash(bundle))
    stage = ctx.stage_by_name("sft")
    task, model = sft.build_task(ctx, stage)
    rows, _ = load_rows(ctx, stage)
    return ctx, task, model, rows


def _hf_loss(model, rows, pad_id: int) -> torch.Tensor:
    """transformers' own loss on the same rows, right-padded with an attention mask."""
    n = max(len(r["input_ids"]) for r in rows)
    ids = torch.tensor([r["input_ids"] + [pad_id] * (n - len(r["input_ids"])) for r in rows])
    labels = torch.tensor([r["labels"] + [-100] * (n - len(r["labels"])) for r in rows])
    mask = torch.tensor([[1] * len(r["input_ids"]) + [0] * (n - len(r["input_ids"])) for r in rows])
    return model(input_ids=ids, attention_mask=mask, labels=labels, output_router_logits=True).loss


def test_moe_plan_records_the_config_coefficient(tmp_path, tkc):
    bundle = _bundle(tmp_path, tkc)
    plan = json.loads((bundle / "resolved.json").read_text(encoding="utf-8"))
    prov = json.loads((bundle / "provenance.json").read_text(encoding="utf-8"))
    assert plan["model"]["moe"] == {"aux_loss_coef": 0.25, "lora_experts": False, "experts_path": "mlp.experts"}
    assert prov["model.moe.aux_loss_coef"] == "derived:resolve_model_family(config.json router_aux_loss_coef)"
    assert "experts frozen" in prov["model.moe.lora_experts"]


@pytest.mark.parametrize("padding", ["unpadded", "longest"])
def test_moe_sft_loss_equals_transformers(tmp_path, tkc, padding):
    bundle = _bundle(tmp_path, tkc, padding)
    ctx, task, model, rows = _task(bundle)
    batch = rows[:4]
    ours = task.loss_sum(model, task.collate(batch)) / task.units(batch)
    theirs = _hf_loss(model, batch, ctx.tokenizer().pad_token_id)
    assert torch.allclose(ours.double(), theirs.double(), rtol=1e-6, atol=0)
    model.router_aux_loss_coef = 0.0  # transformers without the aux loss: a different number
    assert not torch.allclose(ours, _hf_loss(model, batch, ctx.tokenizer().pad_token_id), rtol=1e-4)


def test_moe_aux_loss_reaches_the_router_gradient(tmp_path, tkc):
    from tkc.runtime.stages.common import lm_loss_sum

    ctx, task, model, rows = _task(_bundle(tmp_path, tkc))
    gate = model.get_submodule("model.layers.0.mlp.gate").weight
    grads = []
    for loss_sum in (task.loss_sum, lm_loss_sum):
        model.zero_grad()
        loss_sum(model, task.collate(rows[:4])).backward()
        grads.append(gate.grad.clone())
    assert grads[0].abs().sum() > 0 and grads[1].abs().sum() > 0
    assert not torch.allclose(grads[0], grads[1], rtol=1e-4, atol=0)


def test_recipe_sets_moe_and_dense_models_refuse_it(tmp_path, tkc, demo_copy):
    bundle = _bundle(tmp_path, tkc, moe=", moe: {aux_loss_coef: 0.5}")
    prov = json.loads((bundle / "provenance.json").read_text(encoding="utf-8"))
    assert prov["model.moe.aux_loss_coef"] == "recipe"
    recipe = demo_copy / "demo.yaml"
    recipe.write_text(recipe.read_text(encoding="utf-8").replace(
        "  init: scratch\n", "  init: scratch\n  moe: {lora_experts: true}\n"), encoding="utf-8")
    code, out, err = tkc("compile", recipe, "-o", tmp_path / "dense")
    assert code == 2 and "MOE001" in out + err and "demo.yaml" in out + err
    assert not (tmp_path / "dense").exists()


def test_lora_experts_trains_the_experts_adapter(tmp_path, tkc):
    from tkc.runtime.run import run_bundle

    bundle = _bundle(tmp_path, tkc, moe=", moe: {lora_experts: true}",
                     finetuning="{method: lora, lora: {rank: 4, targets: auto}}")
    prov = json.loads((bundle / "provenance.json").read_text(encoding="utf-8"))
    assert prov["model.moe.lora_experts"].startswith("recipe (LoRA adapts the experts")
    assert run_bundle(bundle) == 0
    from safetensors.torch import load_file

    adapter = load_file(bundle / "outputs/sft/model/adapter_model.safetensors")
    experts = {k: v for k, v in adapter.items() if ".mlp.experts." in k and "lora_B" in k}
    assert experts and all(v.abs().sum() > 0 for v in experts.values())  # B starts at zero: one step moved it
    ctx, _, _, _ = _task(bundle)
    from tkc.runtime.model import load_stage_output

    merged = load_stage_output(ctx, "sft")
    assert not any("lora" in n for n, _ in merged.named_parameters())
