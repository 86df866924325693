"""Pass 9: run every cross-field rule (compiler/rules.py) and collect all violations with positions."""

from __future__ import annotations

from tkc.compiler.plan import Plan
from tkc.compiler.rules import RULES


def check_constraints(plan: Plan) -> Plan:
    diags = [plan.diagnostic(code, message, path, hint)
             for code, rule in RULES.items() for path, message, hint in rule(plan)]
    return plan.with_diagnostics(diags)
