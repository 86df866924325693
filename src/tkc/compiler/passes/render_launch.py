"""Pass 12: one launch script per stage, plus the launcher's own config files (compiler/launch.py)."""

from __future__ import annotations

from tkc.compiler.plan import FILES, Plan, unflatten


def render_launch(plan: Plan) -> Plan:
    from tkc.compiler.launch import render_launch as render

    files = render(unflatten(plan.values))
    return plan.with_values({FILES + path: (text, "derived:render_launch") for path, text in sorted(files.items())})
