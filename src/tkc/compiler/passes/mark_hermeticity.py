"""Pass 11: say whether the bundle pins every input; hub references without a revision do not. Record the read roots.

Remote code is no reason for non-hermeticity any more: a local model's Python files are hashed into the bundle and
checked before they run, and a hub model with trust_remote_code must pin a commit (rule MODEL003).
"""

from __future__ import annotations

from tkc.compiler.passes._util import source_of
from tkc.compiler.plan import Plan


def mark_hermeticity(plan: Plan) -> Plan:
    reasons = []
    if plan.get("model.source") == "hub" and not plan.get("model.revision"):
        reasons.append(f"model {plan.get('model.path')!r} is a hub id without a pinned revision")
    for name in plan.inputs.datasets:
        if plan.get(f"datasets.{name}.source") == "hub" and not plan.get(f"datasets.{name}.revision"):
            reasons.append(f"dataset {name!r} is a hub id without a pinned revision")
    d = "derived:mark_hermeticity"
    roots = list(plan.inputs.paths.recorded)  # relative to the source root: `tkc run` checks paths against them
    return plan.with_values({"hermetic": (not reasons, d), "non_hermetic_reasons": (reasons, d),
                             "read_roots": (roots, source_of(plan, ("read_roots",)))})
