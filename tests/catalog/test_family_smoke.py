"""Every catalog family whose verified.smoke names a transformers class: a tiny random instance built from its
config class (no hub) has the module tree the family's data names, compiles to this family, trains 2 LoRA steps,
saves, and its adapter reloaded with peft gives the logits of tkc's own merged model (tests/catalog/tiny_family.py
builds the models; tests/catalog/smoke/<family>.yaml holds per-family config overrides)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest

from tkc.catalog.registry import Family, families

REPO = Path(__file__).resolve().parents[2]
SMOKED = sorted(fid for fid, f in families().items() if f.verified.smoke)
RECIPE = """\
schema_version: 1
name: smoke-{fid}
model: {{path: model, init: pretrained}}
template: auto
data:
  datasets:
    rows: {{path: rows.jsonl, format: alpaca}}
  cutoff_len: 64
stages:
  - kind: sft
    name: sft
    datasets: [rows]
    train: {{learning_rate: 1.0e-2, max_steps: 2, global_batch_size: 4, micro_batch_size: 4}}
finetuning: {{method: lora, lora: {{rank: 4, targets: auto}}}}
train: {{seed: 0, save_steps: 100}}
hardware: cpu
"""


def test_every_family_says_how_it_is_verified():
    """A family without a smoke class (remote code) says why in its note."""
    unverified = [fid for fid, f in families().items() if not f.verified.smoke and not f.verified.note]
    assert not unverified, f"families with neither verified.smoke nor verified.note: {unverified}"


def _module_names(model) -> set[str]:
    return {name for name, _ in model.named_modules()}


def check_module_tree(fam: Family, model, variants: list) -> None:
    """LoRA targets (in this tree or a variant's), experts_path, layers_path and its class, tied embeddings."""
    import tiny_family

    leaves = {n.rsplit(".", 1)[-1] for names in [_module_names(model), *variants] for n in names}
    missing = [t for t in fam.lora_targets if t not in leaves]
    assert not missing, f"lora_targets {missing} name no module of {type(model).__name__}"
    layers = model.get_submodule(fam.layers_path)
    assert len(layers) == tiny_family.TEXT["num_hidden_layers"], f"{fam.layers_path} is not the decoder layers"
    if fam.decoder_layer:
        assert {type(layer).__name__ for layer in layers} == {fam.decoder_layer}
    if fam.moe and fam.moe.experts_path:
        moe_layers = [layer for layer in layers if _has(layer, fam.moe.experts_path)]
        assert moe_layers, f"moe.experts_path {fam.moe.experts_path} names no module of any decoder layer"
    if fam.tied_embeddings is not None:
        tied = model.get_output_embeddings().weight is model.get_input_embeddings().weight
        assert tied == fam.tied_embeddings


def _has(module, path: str) -> bool:
    try:
        module.get_submodule(path)
    except AttributeError:
        return False
    return True


def _write_recipe(root: Path, fid: str) -> Path:
    rows = (REPO / "recipes" / "data" / "arith_sft.jsonl").read_text(encoding="utf-8").splitlines()[:8]
    (root / "rows.jsonl").write_text("\n".join(rows) + "\n", encoding="utf-8")
    recipe = root / "smoke.yaml"
    recipe.write_text(RECIPE.format(fid=fid), encoding="utf-8")
    return recipe


def _logits(model, ids):
    import torch

    model.eval()
    with torch.no_grad():
        return model(input_ids=ids).logits


def _check_reload(bundle: Path) -> None:
    """The saved adapter on the start weights (peft) gives the logits of tkc's merged stage output, and differs
    from the base model's (the 2 steps trained it)."""
    import torch
    from peft import PeftModel

    from tkc.bundle.plan import load_plan
    from tkc.runtime.context import RunContext, load_bundle_hash, resolve_source_root
    from tkc.runtime.model import load_stage_output, start_weights

    ctx = RunContext(bundle, load_plan(bundle), resolve_source_root(bundle, None), load_bundle_hash(bundle))
    st = ctx.stage_by_name("sft")
    ids = torch.tensor([ctx.tokenizer()("Sort 87394")["input_ids"]])
    reloaded = _logits(PeftModel.from_pretrained(start_weights(ctx, st), str(bundle / "outputs/sft/model")), ids)
    merged = load_stage_output(ctx, "sft")
    assert torch.allclose(_logits(merged, ids), reloaded, atol=1e-5)
    if getattr(merged.config, "tie_word_embeddings", False):  # merging kept the LM head tied to the embeddings
        assert merged.get_output_embeddings().weight is merged.get_input_embeddings().weight
    assert not torch.allclose(_logits(start_weights(ctx, st), ids), reloaded, atol=1e-5)


@pytest.mark.slow   # ~1-3 s a family (hybrid Mamba ones up to ~15 s on CPU); ~60 families together
@pytest.mark.parametrize("fid", SMOKED)
def test_family_smoke(fid: str, tmp_path: Path, tkc, monkeypatch):
    import tiny_family

    from tkc.runtime.run import run_bundle

    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    fam = families()[fid]
    model = tiny_family.build(fam, tmp_path / "model")
    check_module_tree(fam, model, tiny_family.variant_trees(fam))
    code, out, err = tkc("compile", _write_recipe(tmp_path, fid), "-o", tmp_path / "run")
    assert code == 0, out + err
    plan = json.loads((tmp_path / "run" / "resolved.json").read_text(encoding="utf-8"))
    assert plan["model"]["family"] == fid
    assert run_bundle(tmp_path / "run") == 0
    metrics = json.loads((tmp_path / "run/outputs/sft/metrics.json").read_text(encoding="utf-8"))
    assert math.isfinite(metrics["train_loss_first"]) and math.isfinite(metrics["train_loss_last"])
    _check_reload(tmp_path / "run")
