"""`tkc compile`: validate and resolve a recipe (or recompile a bundle's own recipe) into a bundle."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated

from tkc.cli._common import EXIT_INVALID, report
from tkc.cli.params import Arg, Opt
from tkc.schema.diagnostics import CompileError


def _from_bundle(bundle: Path) -> tuple[Path, list[str], Path | None]:
    """A bundle as input: its recipe copy, its --set overrides and the source root it was compiled from."""
    from tkc.compiler.pipeline import SOURCE_FILE

    source = json.loads((bundle / SOURCE_FILE).read_text(encoding="utf-8"))
    volatile_path = bundle / "volatile.json"
    volatile = json.loads(volatile_path.read_text(encoding="utf-8")) if volatile_path.is_file() else {}
    root = Path(volatile["source_root"]) if "source_root" in volatile else None
    return bundle / source["entry"], list(source["overrides"]), root


def _print_notes(compiled) -> int:
    """Print the DEAD001 notes (values the recipe sets that no stage uses) to stderr; how many there were."""
    from tkc.compiler.dead_settings import dead_settings
    from tkc.compiler.passes.resolve_chat_template import template_clock_notes
    from tkc.compiler.passes.resolve_model_family import family_fallback_notes

    for note in [*family_fallback_notes(compiled.plan), *template_clock_notes(compiled.plan)]:   # MODEL004, TMPL004
        print(note.render(), file=sys.stderr)
    notes = dead_settings(compiled.plan)
    for note in notes:
        print(note.render(), file=sys.stderr)
    return len(notes)


def compile_(
    recipe: Annotated[Path, Arg("Recipe YAML, or a bundle directory to recompile.")],
    out: Annotated[Path | None, Opt("Bundle directory to write.", "-o", "--out")] = None,
    set_: Annotated[list[str] | None, Opt("Override a key: a.b=value.", "--set")] = None,
    source_root: Annotated[Path | None, Opt("Where relative paths resolve (default: the recipe's folder).")] = None,
    strict: Annotated[bool, Opt("Refuse a non-hermetic bundle (unpinned hub inputs) or settings no stage uses.")] = False,
    force: Annotated[bool, Opt("Replace a different bundle at --out.")] = False,
    check: Annotated[bool, Opt("Validate and resolve only; write nothing.")] = False,
) -> int:
    """Validate, resolve and write a bundle; print its hash."""
    from tkc.bundle.io import BundleExists, build_manifest, volatile_facts, write_bundle_at
    from tkc.compiler.pipeline import compile_recipe

    overrides = list(set_ or [])
    if recipe.is_dir():
        recipe, stored, stored_root = _from_bundle(recipe)
        overrides, source_root = stored + overrides, source_root or stored_root
    try:
        compiled = compile_recipe(recipe, overrides, source_root)
    except CompileError as exc:
        return report(exc)
    reasons = compiled.resolved.get("non_hermetic_reasons", [])
    for reason in reasons:
        print(f"tkc: non-hermetic: {reason}", file=sys.stderr)
    if strict and reasons:
        print("tkc: --strict refuses a non-hermetic bundle; nothing was written", file=sys.stderr)
        return EXIT_INVALID
    if _print_notes(compiled) and strict:
        print("tkc: --strict refuses a recipe with settings no stage uses (DEAD001); nothing was written",
              file=sys.stderr)
        return EXIT_INVALID
    if check or out is None:
        print(build_manifest(compiled.files, compiled.plan.inputs.tkc_version)["bundle_hash"])
        return 0
    try:
        written = write_bundle_at(out, compiled.files, volatile_facts(compiled.source_root),
                                  compiled.plan.inputs.tkc_version, force,
                                  compiled.sources)
    except BundleExists as exc:
        print(f"tkc: {exc}", file=sys.stderr)
        return EXIT_INVALID
    if written.aside is not None:
        why = "with its outputs" if (written.aside / "outputs").exists() else "it holds files tkc did not compile"
        print(f"tkc: moved the previous bundle at {out} (bundle {(written.aside_hash or '?')[:12]}; {why}) "
              f"aside to {written.aside}; nothing was deleted", file=sys.stderr)
    print(written.manifest["bundle_hash"])
    return 0
