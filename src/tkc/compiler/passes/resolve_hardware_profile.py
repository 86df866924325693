"""Pass 5: the hardware the run targets, from a catalog profile or an inline description."""

from __future__ import annotations

from typing import Any

from tkc.catalog.registry import profiles
from tkc.compiler.passes._util import source_of
from tkc.compiler.plan import Plan
from tkc.schema.diagnostics import did_you_mean

_KEYS = ("accelerator", "devices_per_node", "nodes", "memory_gb", "supports_bf16", "supports_fp16", "interconnect")
_LOCKFILE_FOR = {"cpu": "cpu", "cuda": "cuda", "rocm": "rocm", "npu": "npu"}


def resolve_hardware_profile(plan: Plan) -> Plan:
    hw = plan.inputs.recipe.spec.hardware
    if isinstance(hw, str):
        if hw not in profiles():
            hint = did_you_mean(hw, profiles()) or "see `tkc catalog profiles`"
            return plan.with_diagnostics([plan.diagnostic("HW001", f"unknown hardware profile {hw!r}",
                                                          ("hardware",), hint)])
        prof = profiles()[hw]
        src = f"profile:{hw}"
        out: dict[str, tuple[Any, str]] = {f"hardware.{k}": (getattr(prof, k), src) for k in _KEYS}
        out["hardware.profile"] = (hw, source_of(plan, ("hardware",)))
        out["hardware.lockfile"] = (prof.lockfile, src)
        out["hardware.default_launch"] = (prof.default_launch, src)
        out["hardware.cpu_threads"] = (prof.cpu_threads, src)
        return plan.with_values(out)
    out = {f"hardware.{k}": (getattr(hw, k), source_of(plan, ("hardware", k))) for k in _KEYS}
    out["hardware.profile"] = ("inline", "recipe")
    out["hardware.lockfile"] = (_LOCKFILE_FOR[hw.accelerator], "derived:resolve_hardware_profile")
    multi = hw.devices_per_node * hw.nodes > 1
    out["hardware.default_launch"] = ("torchrun" if multi else "local", "derived:resolve_hardware_profile")
    out["hardware.cpu_threads"] = (1, "default")
    return plan.with_values(out)
