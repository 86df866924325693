"""`tkc explain` (every resolved value and where it came from) and `tkc schema` (JSON Schema)."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Any

from tkc.cli._common import report
from tkc.cli.params import Arg, Opt
from tkc.schema.diagnostics import CompileError


def _matches(key: str, query: str | None) -> bool:
    if not query:
        return True
    return key == query or key.startswith(query + ".") or key.endswith("." + query) or f".{query}." in key


def _where(compiled: Any, key: str, source: str) -> str:
    """For recipe-set values, the file:line the value came from."""
    if not source.startswith(("recipe", "override")):
        return ""
    path = tuple(int(p) if p.isdigit() else p for p in key.split("."))
    candidates = [path]
    if path[0] == "datasets":
        candidates = [("data", *path)]
    elif path[0] == "stages" and len(path) > 3 and path[2] in ("train", "finetuning"):
        candidates.append(path[2:])          # inherited from the top-level block
    elif path[0] == "stages" and len(path) > 3 and path[2] == "options":
        candidates = [(*path[:2], *path[3:])]
    positions = compiled.plan.inputs.recipe.positions
    pos = next((positions[c] for c in candidates if c in positions), None)
    return f" ({pos.file}:{pos.line})" if pos else ""


def _print_dead(compiled: Any, key: str | None) -> None:
    """The DEAD001 notes (values the recipe sets that no stage uses) for the keys shown, as `tkc compile` prints."""
    from tkc.compiler.dead_settings import dead_settings
    from tkc.compiler.passes.resolve_chat_template import template_clock_notes
    from tkc.compiler.passes.resolve_model_family import family_fallback_notes

    plan = compiled.plan
    for note in [*family_fallback_notes(plan), *template_clock_notes(plan), *dead_settings(plan)]:
        if _matches(note.path, key):
            print(note.render(), file=sys.stderr)


_PARTS = ("weights", "gradients", "optimizer", "activations", "buffers", "overhead")


def _estimate_lines(stage: dict[str, Any]) -> list[str]:
    """One training stage's compile-time estimate, memory in GiB (compiler/estimate.py says how it is computed)."""
    e = stage.get("estimate")
    if not e:
        return []
    head = f"estimate for stage {stage['name']!r}"
    if e["memory"] is None:
        return [f"{head}: none ({e['missing']})"]
    lines = [f"{head} (shape from {e['basis']}): {e['params']:,} params, {e['trainable_params']:,} trainable"]
    m, gib = e["memory"], 1 << 30
    lines.append("  memory per device: " + ", ".join(f"{p} {m[p + '_bytes'] / gib:.2f}" for p in _PARTS)
                 + f" GiB; total {m['total_bytes'] / gib:.2f} GiB")
    offloaded = f", {m['offloaded_bytes'] / gib:.2f} GiB offloaded to the host" if m["offloaded_bytes"] else ""
    lines.append(f"  needs {m['needed_bytes'] / gib:.2f} GiB of {m['available_bytes'] / gib:.2f} GiB usable"
                 f"{offloaded}: {'fits' if m['fits'] else 'does NOT fit'}")
    t = e["time"]
    if t is None:
        lines.append(f"  time: none ({e['missing']})")
        return lines
    total = f"; {t['steps']} steps: {t['total_seconds']:.4g} s" if t["total_seconds"] is not None else \
        "; total: steps depend on the data (no max_steps)"
    lines.append(f"  time: {t['flops_per_step']:.3g} FLOPs a step at {t['peak_tflops']:g} TFLOPS peak x "
                 f"{t['efficiency']:g} efficiency per device: {t['step_seconds']:.4g} s a step{total}")
    return lines


def _print_estimates(resolved: dict[str, Any]) -> None:
    lines = [line for stage in resolved.get("stages", []) for line in _estimate_lines(stage)]
    if lines:
        print("\n".join(["", *lines]))


def explain(
    recipe: Annotated[Path, Arg("Recipe YAML.")],
    key: Annotated[str | None, Arg("Only keys matching this, e.g. train.learning_rate.")] = None,
    set_: Annotated[list[str] | None, Opt("Override a key: a.b=value.", "--set")] = None,
    passes: Annotated[bool, Opt("Also print, pass by pass, which values each one set.")] = False,
) -> int:
    """Print every resolved value with its provenance (recipe, default, family:x, profile:x, derived:pass)."""
    from tkc.compiler.pipeline import compile_loaded
    from tkc.schema.load import load_recipe

    trace_lines: list[str] = []
    seen: dict[str, Any] = {}

    def trace(name: str, plan: Any) -> None:
        changed = sorted(k for k, v in plan.values.items() if seen.get(k, object()) != v)
        seen.update(plan.values)
        trace_lines.append(f"pass {name}: set {len(changed)} value(s)"
                           + "".join(f"\n    {k}" for k in changed if _matches(k, key) and not k.startswith("_files.")))

    try:
        compiled = compile_loaded(load_recipe(recipe, list(set_ or []), tolerant=True), trace=trace)
    except CompileError as exc:
        return report(exc)
    prov = compiled.plan.provenance
    shown = 0
    for k in sorted(compiled.plan.values):
        if k.startswith("_files.") or not _matches(k, key):
            continue
        value = json.dumps(compiled.plan.values[k], ensure_ascii=False, sort_keys=True)
        print(f"{k} = {value}    [{prov.get(k, '?')}{_where(compiled, k, prov.get(k, ''))}]")
        shown += 1
    if passes:
        print("\n".join(trace_lines))
    _print_dead(compiled, key)
    if not key or "estimate" in key:
        _print_estimates(compiled.resolved)
    if not shown:
        print(f"tkc: no resolved key matches {key!r}", file=sys.stderr)
        return 1
    return 0


def schema() -> None:
    """Print the recipe JSON Schema (for the YAML language server)."""
    from tkc.schema.top import json_schema

    print(json.dumps(json_schema(), indent=2, sort_keys=True))
