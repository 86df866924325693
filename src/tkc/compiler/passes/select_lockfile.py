"""Pass 10: the pinned environment for the hardware profile (lockfiles/<name>.txt), copied into the bundle."""

from __future__ import annotations

from tkc.compiler.plan import FILES, Plan
from tkc.schema.diagnostics import Diagnostic

ENV_FILE = "env/requirements.lock"


def select_lockfile(plan: Plan) -> Plan:
    from tkc.compiler.launch import read_lock_pins

    name = plan.get("hardware.lockfile", "cpu")
    text = plan.inputs.lockfiles.get(name)
    if text is None:
        return plan.with_diagnostics([Diagnostic("ENV001", f"no lockfile lockfiles/{name}.txt for this profile",
                                                 "hardware", hint=f"known: {', '.join(plan.inputs.lockfiles)}")])
    src = f"lockfile:{name}"
    return plan.with_values({
        "environment.lockfile": (name, src), "environment.file": (ENV_FILE, src),
        "environment.pins": (read_lock_pins(text), src), FILES + ENV_FILE: (text, src),
    })
