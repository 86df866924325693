"""Pass 9: run every cross-field rule (compiler/rules.py) and collect all violations with positions."""

from __future__ import annotations

from tkc.compiler.plan import Plan
from tkc.compiler.rules import RULES
from tkc.schema.diagnostics import Diagnostic
from tkc.schema.yaml_loader import dotted


def check_constraints(plan: Plan) -> Plan:
    diags = []
    recipe = plan.inputs.recipe
    for code, rule in RULES.items():
        for path, message, hint in rule(plan):
            pos = recipe.position(path)
            diags.append(Diagnostic(code, message, dotted(path), pos and pos.file, pos and pos.line,
                                    pos and pos.col, hint))
    return plan.with_diagnostics(diags)
