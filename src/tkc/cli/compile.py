"""`tkc compile`: validate and resolve a recipe (or recompile a bundle's own recipe) into a bundle."""

from __future__ import annotations

import json
import platform
import sys
import time
from pathlib import Path
from typing import Annotated

import typer

from tkc.cli._common import EXIT_INVALID, report
from tkc.schema.diagnostics import CompileError


def _from_bundle(bundle: Path) -> tuple[Path, list[str], Path | None]:
    """A bundle as input: its recipe copy, its --set overrides and the source root it was compiled from."""
    from tkc.compiler.pipeline import SOURCE_FILE

    source = json.loads((bundle / SOURCE_FILE).read_text(encoding="utf-8"))
    volatile_path = bundle / "volatile.json"
    volatile = json.loads(volatile_path.read_text(encoding="utf-8")) if volatile_path.is_file() else {}
    root = Path(volatile["source_root"]) if "source_root" in volatile else None
    return bundle / source["entry"], list(source["overrides"]), root


def compile_(
    recipe: Annotated[Path, typer.Argument(help="Recipe YAML, or a bundle directory to recompile.")],
    out: Annotated[Path | None, typer.Option("-o", "--out", help="Bundle directory to write.")] = None,
    set_: Annotated[list[str] | None, typer.Option("--set", help="Override a key: a.b=value.")] = None,
    source_root: Annotated[Path | None, typer.Option(help="Where relative paths resolve (default: the "
                                                           "recipe's folder).")] = None,
    strict: Annotated[bool, typer.Option(help="Refuse a non-hermetic bundle (unpinned hub inputs).")] = False,
    force: Annotated[bool, typer.Option(help="Replace a different bundle at --out.")] = False,
    check: Annotated[bool, typer.Option(help="Validate and resolve only; write nothing.")] = False,
) -> None:
    """Validate, resolve and write a bundle; print its hash."""
    from tkc.bundle.io import BundleExists, write_bundle
    from tkc.compiler.pipeline import compile_recipe

    overrides = list(set_ or [])
    if recipe.is_dir():
        recipe, stored, stored_root = _from_bundle(recipe)
        overrides, source_root = stored + overrides, source_root or stored_root
    try:
        compiled = compile_recipe(recipe, overrides, source_root)
    except CompileError as exc:
        raise typer.Exit(report(exc)) from None
    reasons = compiled.resolved.get("non_hermetic_reasons", [])
    for reason in reasons:
        print(f"tkc: non-hermetic: {reason}", file=sys.stderr)
    if strict and reasons:
        print("tkc: --strict refuses a non-hermetic bundle; nothing was written", file=sys.stderr)
        raise typer.Exit(EXIT_INVALID)
    if check or out is None:
        from tkc.bundle.io import build_manifest

        print(build_manifest(compiled.files, compiled.plan.inputs.tkc_version)["bundle_hash"])
        return
    volatile = {"compiled_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "host": platform.node(),
                "source_root": str(compiled.source_root), "python": platform.python_version()}
    try:
        manifest = write_bundle(out, compiled.files, volatile, compiled.plan.inputs.tkc_version, force,
                                compiled.sources)
    except BundleExists as exc:
        print(f"tkc: {exc}", file=sys.stderr)
        raise typer.Exit(EXIT_INVALID) from None
    print(manifest["bundle_hash"])
