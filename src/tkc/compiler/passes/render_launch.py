"""Pass 12: one launch script per stage, plus the launcher's own config files (compiler/launch.py)."""

from __future__ import annotations

from tkc.compiler.plan import FILES, Plan, unflatten


def render_launch(plan: Plan) -> Plan:
    from tkc.compiler.launch import LaunchError
    from tkc.compiler.launch import render_launch as render

    if plan.diagnostics or plan.inputs.recipe.problems:
        return plan  # scripts from an invalid plan (or a recipe with bad keys dropped) would only repeat its errors
    try:
        files = render(unflatten(plan.values))
    except LaunchError as exc:
        return plan.with_diagnostics([plan.diagnostic("LAUNCH001", str(exc), ("launch",))])
    return plan.with_values({FILES + path: (text, "derived:render_launch") for path, text in sorted(files.items())})
