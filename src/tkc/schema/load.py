"""Load a recipe: YAML with positions, `extends:` bases, `--set` overrides, migration, validation."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from pydantic import ValidationError

from tkc.schema.diagnostics import CompileError, Diagnostic
from tkc.schema.errors import diagnostics_from_validation
from tkc.schema.migrate import migrate
from tkc.schema.top import RecipeSpec
from tkc.schema.yaml_loader import KeyPath, Position, dotted, load_yaml_file


@dataclass
class LoadedRecipe:
    """A validated recipe plus everything needed to explain and reproduce it."""

    spec: RecipeSpec
    entry: Path                                  # the top-level recipe file
    files: dict[Path, bytes]                     # every recipe file read (top + bases), verbatim
    overrides: list[str]                         # the --set strings, in order
    positions: dict[KeyPath, Position] = field(default_factory=dict)
    raw: dict[str, Any] = field(default_factory=dict)
    problems: list[Diagnostic] = field(default_factory=list)   # found while loading (tolerant mode only)

    def position(self, path: KeyPath) -> Position | None:
        while path and path not in self.positions:
            path = path[:-1]
        return self.positions.get(path)

    def user_set(self, path: KeyPath) -> bool:
        return path in self.positions


def _merge(base: dict, over: dict) -> dict:
    """Deep-merge `over` onto `base`: mappings merge, everything else (lists included) is replaced."""
    out = dict(base)
    for key, value in over.items():
        if isinstance(value, dict) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = value
    return out


def _read_chain(path: Path, seen: tuple[Path, ...], acc: dict[Path, bytes],
                diags: list[Diagnostic]) -> tuple[dict, dict[KeyPath, Position]]:
    """Read a recipe and its bases depth-first; bases first, so later files win."""
    path = path.resolve()
    if path in seen:
        diags.append(Diagnostic("RECIPE002", f"extends cycle: {' -> '.join(p.name for p in (*seen, path))}",
                                "extends", str(seen[-1])))
        return {}, {}
    if not path.is_file():
        where = str(seen[-1]) if seen else None
        diags.append(Diagnostic("RECIPE001", f"recipe file not found: {path}", "extends" if seen else "", where))
        return {}, {}
    acc[path] = path.read_bytes()
    loaded = load_yaml_file(path, _display(path))
    diags.extend(loaded.problems)
    data = loaded.data if isinstance(loaded.data, dict) else {}
    if loaded.data is not None and not isinstance(loaded.data, dict):
        diags.append(Diagnostic("RECIPE003", "a recipe must be a mapping", "", _display(path), 1, 1))
    merged: dict = {}
    positions: dict[KeyPath, Position] = {}
    bases = data.get("extends") or []
    for base in bases if isinstance(bases, list) else []:
        base_data, base_pos = _read_chain(path.parent / str(base), (*seen, path), acc, diags)
        merged = _merge(merged, base_data)
        positions.update(base_pos)
    positions.update(loaded.positions)
    return _merge(merged, data), positions


def _display(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def parse_override(text: str) -> tuple[KeyPath, Any]:
    """'stages.0.beta=0.2' -> (('stages', 0, 'beta'), 0.2); the value is read as a YAML scalar."""
    if "=" not in text:
        raise CompileError([Diagnostic("SET001", f"--set expects key=value, got {text!r}", "", "--set")])
    key, value = text.split("=", 1)
    parts: KeyPath = tuple(int(p) if p.isdigit() else p for p in key.strip().split("."))
    return parts, yaml.safe_load(value) if value.strip() else ""


def _apply_override(data: dict, path: KeyPath, value: Any) -> None:
    node: Any = data
    for part in path[:-1]:
        if isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
        elif isinstance(node, dict):
            node = node.setdefault(part, {})
        else:
            raise CompileError([Diagnostic("SET002", "no such key to override", dotted(path), "--set")])
    if isinstance(node, list) and isinstance(path[-1], int) and path[-1] < len(node):
        node[path[-1]] = value
    elif isinstance(node, dict):
        node[path[-1]] = value
    else:
        raise CompileError([Diagnostic("SET002", "no such key to override", dotted(path), "--set")])


def _without(data: Any, paths: list[KeyPath]) -> Any:
    """A copy of `data` with the values at `paths` removed, so schema defaults stand in for bad values."""
    import copy

    out = copy.deepcopy(data)
    for path in paths:
        node = out
        for part in path[:-1]:
            node = node[part] if _has(node, part) else None  # type: ignore[index]  # _has: an int for a list
        if isinstance(node, dict) and path and path[-1] in node:
            del node[path[-1]]
    return out


def _has(node: Any, part: Any) -> bool:
    return (isinstance(node, dict) and part in node) or (isinstance(node, list) and isinstance(part, int)
                                                         and part < len(node))


def _repair(data: dict, diags: list[Diagnostic], positions: dict[KeyPath, Position]) -> RecipeSpec | None:
    """Validate again without the offending keys: the compiler can then still report cross-field problems."""
    bad = [path for path, pos in positions.items() if any(
        d.line == pos.line and d.col == pos.col and d.file == pos.file for d in diags) and path]
    if any(d.code == "SCHEMA003" for d in diags) or not bad:
        return None
    try:
        return RecipeSpec.model_validate(_without(data, bad))
    except ValidationError:
        return None


def load_recipe(path: Path, overrides: list[str] | tuple[str, ...] = (), tolerant: bool = False) -> LoadedRecipe:
    """Read, merge, override, migrate and validate; raise CompileError with every problem found.

    With `tolerant`, a recipe whose only problems are bad or unknown keys comes back with those keys dropped
    and the problems in `.problems`, so one compile run reports schema and cross-field mistakes together.
    """
    diags: list[Diagnostic] = []
    files: dict[Path, bytes] = {}
    data, positions = _read_chain(Path(path), (), files, diags)
    if any(d.code in ("YAML001", "RECIPE001") for d in diags):
        raise CompileError(_sorted(diags))  # unreadable input: schema errors would only be noise
    for i, text in enumerate(overrides):
        key, value = parse_override(text)
        _apply_override(data, key, value)
        positions[key] = Position("--set", i + 1, 1)
    data, _ = migrate(data)
    spec = None
    try:
        spec = RecipeSpec.model_validate(data)
    except ValidationError as exc:
        diags.extend(diagnostics_from_validation(exc, data, positions))
    if (diags or spec is None) and tolerant and not any(d.code.startswith("YAML") for d in diags):
        spec = spec or _repair(data, diags, positions)
        if spec is not None:
            return LoadedRecipe(spec, Path(path).resolve(), files, list(overrides), positions, data, diags)
    if diags or spec is None:
        raise CompileError(_sorted(diags))
    return LoadedRecipe(spec, Path(path).resolve(), files, list(overrides), positions, data)


def _sorted(diags: list[Diagnostic]) -> list[Diagnostic]:
    return sorted(diags, key=lambda d: (d.file or "", d.line or 0, d.col or 0, d.code))
