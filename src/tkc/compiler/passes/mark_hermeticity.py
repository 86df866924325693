"""Pass 11: say whether the bundle pins every input; hub references without a revision do not."""

from __future__ import annotations

from tkc.compiler.plan import Plan


def mark_hermeticity(plan: Plan) -> Plan:
    reasons = []
    if plan.get("model.source") == "hub" and not plan.get("model.revision"):
        reasons.append(f"model {plan.get('model.path')!r} is a hub id without a pinned revision")
    if plan.get("model.trust_remote_code"):
        reasons.append("trust_remote_code runs model code that the bundle does not pin")
    for name in plan.inputs.datasets:
        if plan.get(f"datasets.{name}.source") == "hub" and not plan.get(f"datasets.{name}.revision"):
            reasons.append(f"dataset {name!r} is a hub id without a pinned revision")
    d = "derived:mark_hermeticity"
    return plan.with_values({"hermetic": (not reasons, d), "non_hermetic_reasons": (reasons, d)})
