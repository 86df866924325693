"""Pass 4: every dataset fully described: source, files with hashes, format, kind, columns, tags."""

from __future__ import annotations

from typing import Any

from tkc.compiler.passes._util import source_of
from tkc.compiler.plan import Plan
from tkc.schema.diagnostics import Diagnostic


def _columns_source(plan: Plan, facts: Any, at: tuple, layout_src: str) -> str:
    base = source_of(plan, (*at, "columns")) if plan.inputs.recipe.spec.data.datasets[at[-1]].columns else layout_src
    # columns the data has and the recipe left unnamed (a chat file's `tools`) are mapped by the loading step
    return f"{base}+derived:load_inputs({','.join(facts.auto_columns)})" if facts.auto_columns else base


def resolve_datasets(plan: Plan) -> Plan:
    spec = plan.inputs.recipe.spec.data
    out: dict[str, tuple[Any, str]] = {}
    diags: list[Diagnostic] = []
    for name, facts in plan.inputs.datasets.items():
        ds = spec.datasets[name]
        p, at = f"datasets.{name}.", ("data", "datasets", name)
        layout_src = "registry" if facts.from_registry else "derived:dataset_formats"
        out.update({
            p + "name": (name, "recipe"),
            p + "source": ("local" if facts.local else "hub", "derived:load_inputs"),
            p + "path": (facts.path, source_of(plan, (*at, "path"), (*at, "registry"))),
            p + "revision": (ds.revision, source_of(plan, (*at, "revision"))),
            p + "file_type": (facts.file_type, "derived:load_inputs"),
            p + "files": ([dict(f) for f in facts.files], "derived:load_inputs"),
            p + "format": (facts.format, source_of(plan, (*at, "format")) if ds.format else layout_src),
            p + "kind": (facts.kind, source_of(plan, (*at, "kind")) if ds.kind else layout_src),
            p + "columns": (dict(facts.columns), _columns_source(plan, facts, at, layout_src)),
            p + "tags": (dict(facts.tags), source_of(plan, (*at, "tags")) if ds.tags else layout_src),
            p + "split": (facts.split, source_of(plan, (*at, "split"))),
            p + "max_samples": (ds.max_samples, source_of(plan, (*at, "max_samples"))),
            p + "weight": (ds.weight, source_of(plan, (*at, "weight"))),
            p + "on_bad_record": (ds.on_bad_record, source_of(plan, (*at, "on_bad_record"))),
        })
        diags.extend(facts.problems)
    return plan.with_values(out).with_diagnostics(diags)
