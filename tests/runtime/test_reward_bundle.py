"""PPO with the reward model of another bundle: compiled recipes, real training on the tiny model, both bundles."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from tkc.runtime.context import EXIT_BUNDLE_CHANGED

RECIPES = Path(__file__).resolve().parents[2] / "recipes"
COMMON = f"""
read_roots: [{RECIPES}]
model: {{path: {RECIPES / 'assets' / 'tiny-qwen2'}, init: scratch}}
data:
  datasets:
    arith_sft: {{path: {RECIPES / 'data' / 'arith_sft.jsonl'}, format: alpaca, max_samples: 16}}
    arith_pref: {{path: {RECIPES / 'data' / 'arith_pref.jsonl'}, format: alpaca, kind: preference, max_samples: 16}}
  cutoff_len: 64
finetuning: {{method: lora, lora: {{rank: 8, targets: auto}}}}
train: {{seed: 42, learning_rate: LR, global_batch_size: 4, max_steps: 2, save_steps: 10}}
hardware: cpu
"""


def _compile(tkc, folder: Path, name: str, stages: str, lr: float = 1e-3) -> Path:
    recipe = folder / f"{name}.yaml"
    recipe.write_text(f"name: {name}\n{COMMON.replace('LR', str(lr))}stages:\n{stages}")
    code, out, err = tkc("compile", str(recipe), "-o", str(folder / name), "--force")
    assert code == 0, out + err
    return folder / name


@pytest.mark.slow
def test_ppo_scores_with_the_rm_stage_of_another_bundle(tkc, tmp_path, capsys):
    from tkc.runtime.reward_model import load_reward_model
    from tkc.runtime.run import run_bundle

    rm = _compile(tkc, tmp_path, "rm_bundle", "  - {kind: rm, name: reward, datasets: [arith_pref]}\n")
    ppo = _compile(tkc, tmp_path, "ppo_bundle",
                   "  - {kind: ppo, datasets: [arith_sft], reward_model: ./rm_bundle, max_new_tokens: 4}\n")
    ref = json.loads((ppo / "resolved.json").read_text())["stages"][0]["options"]["reward_bundle"]
    assert ref["stage"] == "reward" and ref["bundle_hash"] == json.loads((rm / "manifest.json").read_text())["bundle_hash"]

    with pytest.raises(RuntimeError, match="rm stage 'reward' has not finished"):
        run_bundle(ppo)
    assert run_bundle(rm) == 0
    assert (rm / "outputs" / "reward" / "model" / "adapter_config.json").exists()  # LoRA: merged when loaded
    assert run_bundle(ppo) == 0
    out = ppo / "outputs" / "ppo"
    assert (out / "DONE").exists()
    recs = [json.loads(x) for x in (out / "steps.jsonl").read_text().splitlines()]
    assert len(recs) == 2 and all(isinstance(r["reward"], float) for r in recs)

    # the loaded reward model is that bundle's rm output: LoRA merged onto that bundle's seeded base weights
    import torch

    from tkc.runtime.model import load_stage_output, start_weights
    from tkc.runtime.reward_model import reward_bundle_context

    options = _ctx(ppo).stage_by_name("ppo").options  # the typed options `tkc run` hands the stage
    ctx = reward_bundle_context(_ctx(ppo), options.reward_bundle)
    ours = load_reward_model(_ctx(ppo), options)
    theirs = load_stage_output(ctx, "reward", head="seq_cls")
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    assert torch.equal(ours(input_ids=ids).logits, theirs(input_ids=ids).logits)
    base = start_weights(ctx, ctx.stage_by_name("reward"), head="seq_cls")
    assert not torch.equal(ours(input_ids=ids).logits, base(input_ids=ids).logits)  # the adapter was applied

    # the reward bundle recompiled with other settings: a valid bundle, but not the one compiled against -> exit 3
    import shutil

    shutil.rmtree(out)
    _compile(tkc, tmp_path, "rm_bundle", "  - {kind: rm, name: reward, datasets: [arith_pref]}\n", lr=2e-3)
    capsys.readouterr()
    assert run_bundle(ppo) == EXIT_BUNDLE_CHANGED
    assert "recompile this recipe to use the new reward model" in capsys.readouterr().out

    # tampered after compile (resolved.json edited by hand) -> refused as well
    _compile(tkc, tmp_path, "rm_bundle", "  - {kind: rm, name: reward, datasets: [arith_pref]}\n")
    resolved = rm / "resolved.json"
    text = resolved.read_text()
    assert '"learning_rate": 0.001' in text
    resolved.write_text(text.replace('"learning_rate": 0.001', '"learning_rate": 0.5'))
    assert run_bundle(ppo) == EXIT_BUNDLE_CHANGED
    assert "resolved.json: changed since compile" in capsys.readouterr().out
    assert not (out / "DONE").exists()


def _ctx(bundle: Path):
    from tkc.bundle.plan import load_plan
    from tkc.runtime.context import RunContext, load_bundle_hash, resolve_source_root

    return RunContext(bundle, load_plan(bundle), resolve_source_root(bundle, None),
                      load_bundle_hash(bundle))
