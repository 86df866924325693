"""Pass 4b: an eval stage's multiple-choice benchmark, fully described: split, shots, prompt, and per subject its
title and category (catalog/benchmark_subjects) with the hashes of the files the loading step read.

`metric: mmlu | cmmlu | ceval` needs a `benchmark:` block and reads no datasets (BENCH001); a `benchmark:` block under
another metric is refused too (it would be ignored). Every eval stage gets `options.benchmark` (null unless scored).
"""

from __future__ import annotations

from typing import Any

from tkc.bundle.benchmarks import BENCHMARKS
from tkc.compiler.passes._util import source_of
from tkc.compiler.plan import Plan
from tkc.schema.diagnostics import Diagnostic

D = "derived:resolve_benchmarks"


def _consistency(plan: Plan, i: int, metric: str, stage: Any) -> list[Diagnostic]:
    scored = metric in BENCHMARKS
    if scored and stage.benchmark is None:
        return [plan.diagnostic("BENCH001", f"metric {metric} scores benchmark files: the stage needs a "
                                "`benchmark:` block", ("stages", i, "metric"), "add benchmark: {path: <folder>}")]
    if not scored and stage.benchmark is not None:
        return [plan.diagnostic("BENCH001", f"a `benchmark:` block is read only by metric mmlu, cmmlu or ceval, "
                                f"not {metric}", ("stages", i, "benchmark"), "set metric to the benchmark's name")]
    if scored and stage.datasets is not None:
        return [plan.diagnostic("BENCH001", f"metric {metric} scores the benchmark files and reads no datasets",
                                ("stages", i, "datasets"), "leave `datasets` out of this stage")]
    return []


def _resolved(plan: Plan, i: int, stage: Any, facts: Any) -> dict[str, Any]:
    from tkc.catalog.benchmarks import benchmarks

    catalog, spec = benchmarks()[facts.name], stage.benchmark
    subjects = []
    for s in facts.subjects:
        known = catalog.subjects.get(s["id"])
        subjects.append({**s, "name": known.name if known else s["id"].replace("_", " "),
                         "category": known.category if known else None})
    return {"name": facts.name, "path": facts.path, "split": facts.split, "n_shot": spec.n_shot,
            "lang": spec.lang or catalog.lang, "prompt": spec.prompt, "batch_size": spec.batch_size,
            "subjects": subjects}


def resolve_benchmarks(plan: Plan) -> Plan:
    out: dict[str, tuple[Any, str]] = {}
    diags: list[Diagnostic] = []
    for i, stage in enumerate(plan.inputs.recipe.spec.stages):
        if stage.kind != "eval":
            continue
        found = _consistency(plan, i, stage.metric, stage)
        facts = plan.inputs.benchmarks.get(i)
        found += list(facts.problems) if facts else []
        diags.extend(found)
        value = _resolved(plan, i, stage, facts) if facts and not found else None
        out[f"stages.{i}.options.benchmark"] = (value, D if value else source_of(plan, ("stages", i, "benchmark")))
        if stage.metric in BENCHMARKS and stage.datasets is None:
            out[f"stages.{i}.datasets"] = ([], D)   # plan_stages leaves a set list alone
    return plan.with_values(out).with_diagnostics(diags)
