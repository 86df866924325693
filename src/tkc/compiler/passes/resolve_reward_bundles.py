"""Pass 8b: a ppo/grpo reward model taken from another bundle, pinned by that bundle's hash and rm stage.

`reward_model: path/to/bundle[:stage]` (path relative to the source root) becomes
`options.reward_bundle = {"path", "bundle_hash", "stage"}`: the runtime loads that bundle's
outputs/<stage>/model and refuses to if the bundle's hash changed, and recompiling against a changed
reward bundle changes this bundle's hash. A reward model from a stage of this recipe gives `reward_bundle: null`.
"""

from __future__ import annotations

from typing import Any

from tkc.compiler.inputs import is_bundle_ref
from tkc.compiler.plan import Plan
from tkc.schema.diagnostics import Diagnostic

D = "derived:resolve_reward_bundles"


def _check(plan: Plan, i: int, facts: Any) -> list[Diagnostic]:
    at = ("stages", i, "reward_model")
    if facts.problem:
        return [plan.diagnostic("RWD001", f"reward_model: {facts.problem}", at)]
    ours = (plan.get("model.files") or {}).get("tokenizer.json")
    if ours and facts.tokenizer_sha256 and ours != facts.tokenizer_sha256:
        return [plan.diagnostic("RWD002", f"reward bundle {facts.path} was trained with another tokenizer "
                                "(tokenizer.json differs); its scores of this policy's token ids would be "
                                "meaningless", at, "use a reward bundle compiled for the same base model")]
    return []


def resolve_reward_bundles(plan: Plan) -> Plan:
    out: dict[str, tuple[Any, str]] = {}
    diags: list[Diagnostic] = []
    for i in range(plan.stage_count()):
        if plan.get(f"stages.{i}.kind") not in ("ppo", "grpo"):
            continue
        ref = plan.get(f"stages.{i}.options.reward_model")
        facts = plan.inputs.reward_bundles.get(ref) if is_bundle_ref(ref) else None
        if facts is None:
            out[f"stages.{i}.options.reward_bundle"] = (None, D)
            continue
        problems = _check(plan, i, facts)
        diags.extend(problems)
        value = None if problems else {"path": facts.path, "bundle_hash": facts.bundle_hash, "stage": facts.stage}
        out[f"stages.{i}.options.reward_bundle"] = (value, D)
    return plan.with_values(out).with_diagnostics(diags)
