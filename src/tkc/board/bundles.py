"""Bundles in the workspace: compile a recipe into one, read one with provenance (`tkc explain`), diff two."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from tkc.board.security import BoardError, relative, scrub, workspace_path
from tkc.board.workspace import (
    BOARD_DIR,
    _diag_json,
    _shown_names,
    compile_confined,
    inside_bundle,
    is_bundle,
    recipe_path,
    text_field,
    write_recipe,
)


def bundle_dir(workspace: Path, value: Any, field: str = "bundle") -> Path:
    path = workspace_path(workspace, value, field)
    if not is_bundle(path):
        raise BoardError(404, "not_found", f"{field}: {value} is not a tkc bundle (no manifest.json/resolved.json)",
                         field=field)
    return path


def runnable_bundle(workspace: Path, value: Any, field: str = "bundle") -> Path:
    """bundle_dir, and every path `tkc run` would read from it inside the workspace (board.confine)."""
    from tkc.board.confine import check_bundle_inputs

    bundle = bundle_dir(workspace, value, field)
    check_bundle_inputs(workspace, bundle, field=field)
    return bundle


def stage_names(bundle: Path) -> list[str]:
    try:
        resolved = json.loads((bundle / "resolved.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return []
    return [str(s.get("name")) for s in resolved.get("stages", []) if isinstance(s, dict)]


def stage_names_or_404(bundle: Path, stage: Any) -> str:
    if not isinstance(stage, str) or stage not in stage_names(bundle):
        raise BoardError(404, "not_found", f"stage: the bundle has no stage {stage!r}", field="stage")
    return stage


def verify_problems(bundle: Path) -> list[str]:
    """What `tkc verify` reports: the bundle's files against its manifest, and each finished stage's outputs."""
    from tkc.bundle.io import check_bundle, read_manifest
    from tkc.bundle.stage_outputs import check_stage_outputs, finished_stages

    problems = [p.render() for p in check_bundle(bundle)]
    bundle_hash = None if problems else read_manifest(bundle)["bundle_hash"]
    for stage_dir in finished_stages(bundle):
        problems += [f"outputs/{stage_dir.name}: {p.render()}" for p in check_stage_outputs(stage_dir, bundle_hash)]
    return problems


def _out_dir(workspace: Path, body: dict[str, Any], recipe: Path) -> Path:
    out = body.get("out")
    if out in (None, ""):
        out = f"runs/{recipe.stem}"
    path = workspace_path(workspace, out, "out")
    if inside_bundle(workspace, path) or BOARD_DIR in Path(relative(workspace, path)).parts:
        raise BoardError(400, "bad_request", f"out: {out} is inside a bundle or {BOARD_DIR}/; a bundle is compiled "
                         "to a folder of its own", field="out")
    return path


def _check_target(workspace: Path, out: Path, new_hash: str) -> None:
    """Never replace a bundle that has run outputs (unless it is this very bundle: its outputs stay)."""
    if not out.exists() or not (out / "manifest.json").is_file():
        return
    try:
        old = json.loads((out / "manifest.json").read_text(encoding="utf-8")).get("bundle_hash")
    except (OSError, ValueError):
        old = None
    if old != new_hash and (out / "outputs").exists():
        raise BoardError(409, "conflict", f"out: {relative(workspace, out)} holds another bundle that has run "
                         "outputs; the board never replaces it (choose another out)", field="out")


def compile_bundle(workspace: Path, body: dict[str, Any]) -> dict[str, Any]:
    from tkc.bundle.io import BundleExists, build_manifest, volatile_facts, write_bundle_at
    from tkc.compiler.dead_settings import dead_settings
    from tkc.schema.diagnostics import CompileError

    recipe = recipe_path(workspace, body.get("path"))
    if body.get("text") is not None:
        write_recipe(workspace, body.get("path"), text_field(body))
    out = _out_dir(workspace, body, recipe)
    if not recipe.is_file():
        raise BoardError(404, "not_found", f"path: no recipe at {body.get('path')}", field="path")
    try:
        compiled = compile_confined(workspace, recipe, relative(workspace, recipe))
    except CompileError as exc:
        shown = _shown_names(workspace, [d.file for d in exc.diagnostics], recipe, recipe)
        raise BoardError(400, "invalid", f"{len(exc.diagnostics)} problem(s) found; nothing was written",
                         diagnostics=[_diag_json(workspace, d, shown, "error") for d in exc.diagnostics]) from None
    version = compiled.plan.inputs.tkc_version
    _check_target(workspace, out, build_manifest(compiled.files, version, compiled.sources)["bundle_hash"])
    try:
        written = write_bundle_at(out, compiled.files, volatile_facts(compiled.source_root), version,
                                  bool(body.get("force")), compiled.sources)
    except BundleExists as exc:
        raise BoardError(409, "conflict", f"out: {exc}".replace("--force", '"force": true'), field="out") from None
    notes = dead_settings(compiled.plan)
    shown = _shown_names(workspace, [d.file for d in notes], recipe, recipe)
    return {"ok": True, "bundle": relative(workspace, out), "hash": written.manifest["bundle_hash"],
            "diagnostics": [_diag_json(workspace, d, shown, "note") for d in notes]}


def _read_json(path: Path) -> Any:
    if path.is_symlink():
        return None  # a bundle's own files are files, never links (to anything outside)
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _scripts(bundle: Path) -> dict[str, str]:
    launch = bundle / "launch"
    files = sorted(p for p in launch.rglob("*") if p.is_file() and not p.is_symlink()) \
        if launch.is_dir() and not launch.is_symlink() else []
    return {p.relative_to(bundle).as_posix(): p.read_text(encoding="utf-8", errors="replace") for p in files}


def bundle_view(workspace: Path, value: Any) -> dict[str, Any]:
    from tkc.bundle.diff import flatten

    bundle = bundle_dir(workspace, value, "path")
    manifest = _read_json(bundle / "manifest.json") or {}
    resolved = _read_json(bundle / "resolved.json") or {}
    prov = _read_json(bundle / "provenance.json") or {}
    sections: dict[str, list[dict[str, Any]]] = {}
    for key, v in flatten(resolved).items():
        sections.setdefault(key.split(".")[0], []).append({"key": key, "value": v, "source": prov.get(key, "?")})
    stages = [s for s in resolved.get("stages", []) if isinstance(s, dict)]
    estimate = {s["name"]: s["estimate"] for s in stages if s.get("estimate")}
    problems = verify_problems(bundle)
    return {"hash": manifest.get("bundle_hash"), "name": resolved.get("name"), "sections": sections,
            "estimate": estimate or None, "scripts": _scripts(bundle),
            "stages": [{"name": s.get("name"), "kind": s.get("kind"),
                        "done": (bundle / "outputs" / str(s.get("name")) / "DONE").is_file()} for s in stages],
            "verified": not problems, "problems": scrub(problems, workspace)}


def bundle_diff(workspace: Path, a: Any, b: Any) -> dict[str, Any]:
    from tkc.bundle.diff import diff_bundles, render_diff

    pa, pb = bundle_dir(workspace, a, "a"), bundle_dir(workspace, b, "b")
    try:
        result = diff_bundles(pa, pb)
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BoardError(400, "bad_request", f"cannot read a bundle: {exc}; run `tkc verify` on each") from None
    changes = [{"key": k, "a": va, "b": vb, "source_a": sa, "source_b": sb} for k, va, vb, sa, sb in result.values]
    return {"same": result.same, "text": render_diff(result), "changes": changes}
