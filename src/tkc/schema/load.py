"""Load a recipe: YAML with positions, `extends:` bases, `--set` overrides, migration, validation."""

from __future__ import annotations

import re
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

from pydantic import ValidationError

from tkc.schema.diagnostics import CompileError, Diagnostic
from tkc.schema.errors import diagnostics_from_validation
from tkc.schema.migrate import migrate
from tkc.schema.top import RecipeSpec
from tkc.schema.yaml_loader import (
    Budget,
    KeyPath,
    LoadedYaml,
    Position,
    decode_recipe,
    dotted,
    load_yaml,
    read_recipe_bytes,
)


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


MAX_RECIPE_FILES = 32   # recipe files read per compile, the entry and every `extends:` base (repeats counted)
_FATAL = ("YAML001", "YAML005", "YAML006", "YAML007", "YAML008", "YAML009", "RECIPE001", "RECIPE004")


@dataclass
class _Chain:
    """What reading a recipe and its bases has gathered so far."""

    files: dict[Path, bytes] = field(default_factory=dict)
    diags: list[Diagnostic] = field(default_factory=list)
    budget: Budget = field(default_factory=Budget)
    voided: set[KeyPath] = field(default_factory=set)
    incomplete: set[KeyPath] = field(default_factory=set)
    reads: int = 0
    roots: list[Path] = field(default_factory=list)   # folders a base may be read from (the compiler re-checks)


def _refuse(chain: _Chain, code: str, msg: str, where: Position | None) -> tuple[dict, dict]:
    pos = (where.file, where.line, where.col) if where else (None, None, None)
    chain.diags.append(Diagnostic(code, msg, "extends" if where else "", *pos))
    return {}, {}


def _read_chain(path: Path, seen: tuple[Path, ...], chain: _Chain,
                where: Position | None = None) -> tuple[dict, dict[KeyPath, Position]]:
    """Read a recipe and its bases depth-first; bases first, so later files win. `where`: the extends entry."""
    try:
        path = path.resolve()
        found = path.is_file()
    except (OSError, ValueError, RuntimeError):  # a name too long for the file system, a symlink loop
        found = False
    if path in seen:
        return _refuse(chain, "RECIPE002", f"extends cycle: {' -> '.join(p.name for p in (*seen, path))}", where)
    if where is not None and chain.roots and not any(path.is_relative_to(r) for r in chain.roots):
        # never read (so never echoed) a base outside the recipe's folder, --source-root and read_roots
        chain.incomplete.add(())  # its keys are unknown: no missing-key noise
        return _refuse(chain, "PATH001", f"extends base {_short_path(path)} is outside the folders this recipe "
                       f"may read ({', '.join(map(str, chain.roots))}) (keep it inside the recipe's folder, or "
                       "list the folder it is in under top-level `read_roots:` (relative to the recipe's folder))",
                       where)
    if not found:
        return _refuse(chain, "RECIPE001", f"recipe file not found: {_short_path(path)}", where)
    chain.reads += 1
    if chain.reads > MAX_RECIPE_FILES:
        return _refuse(chain, "RECIPE004", f"more than {MAX_RECIPE_FILES} recipe files through extends:", where)
    data, positions = _read_one(path, chain, where)
    if not chain.roots:
        chain.roots.append(path.parent)
    extra = data.get("read_roots")
    for r in extra if isinstance(extra, list) else []:
        chain.roots.append(_resolved(chain.roots[0] / str(r)))
    merged: dict = {}
    base_positions: dict[KeyPath, Position] = {}
    bases = data.get("extends") or []
    for i, base in enumerate(bases if isinstance(bases, list) else []):
        at = positions.get(("extends", i)) or positions.get(("extends",))
        base_data, base_pos = _read_chain(path.parent / str(base), (*seen, path), chain, at)
        merged = _merge(merged, base_data)
        base_positions.update(base_pos)
    return _merge(merged, data), {**base_positions, **positions}


def _read_one(path: Path, chain: _Chain, where: Position | None) -> tuple[dict, dict[KeyPath, Position]]:
    """One recipe file: its bytes kept verbatim (within the size limit), its YAML loaded within the budget."""
    file = _display(path)
    raw, problem = read_recipe_bytes(path, file)
    if raw is None and problem and problem.code == "RECIPE001" and where:  # unreadable: at its extends entry
        return _refuse(chain, problem.code, f"{problem.message}: {_short_path(path)}", where)
    if raw is None:
        chain.diags.extend([problem] if problem else [])
        return {}, {}
    chain.files[path] = raw
    text, problem = decode_recipe(raw, file)
    loaded = load_yaml(text, file, chain.budget) if text is not None else LoadedYaml(None, {}, [])
    chain.diags.extend([*loaded.problems, *([problem] if problem else [])])
    chain.voided |= loaded.voided
    chain.incomplete |= loaded.incomplete
    if loaded.data is not None and not isinstance(loaded.data, dict):
        chain.diags.append(Diagnostic("RECIPE003", "a recipe must be a mapping", "", file, 1, 1))
    return (loaded.data if isinstance(loaded.data, dict) else {}), loaded.positions


def _key_paths(value: Any, at: KeyPath) -> list[KeyPath]:
    """`at` and the path of every value nested in `value` (mapping keys and list items)."""
    if isinstance(value, dict):
        return [at, *(p for k, v in value.items() for p in _key_paths(v, (*at, str(k))))]
    if isinstance(value, list):
        return [at, *(p for j, v in enumerate(value) for p in _key_paths(v, (*at, j)))]
    return [at]


def _resolved(path: Path) -> Path:
    try:
        return path.expanduser().resolve()
    except (OSError, ValueError, RuntimeError):
        return path


def _short_path(path: Path) -> str:
    text = str(path)
    return text if len(text) <= 200 else text[:200] + "..."


def _display(path: Path) -> str:
    try:
        return str(path.relative_to(Path.cwd()))
    except ValueError:
        return str(path)


def parse_override(text: str, index: int = 1, budget: Budget | None = None) -> tuple[KeyPath, Any]:
    """'stages.0.beta=0.2' -> (('stages', 0, 'beta'), 0.2); the value is read as YAML, within the recipe limits.

    `index`: which --set this is (1-based), the line its diagnostics name.
    """
    if "=" not in text:
        raise CompileError([Diagnostic("SET001", f"--set expects key=value, got {text!r}", "", "--set", index)])
    key, value = text.split("=", 1)
    parts: KeyPath = tuple(int(p) if p.isascii() and p.isdigit() else p for p in key.strip().split("."))
    if not value.strip():
        return parts, ""
    loaded = load_yaml(value, "--set", budget)
    if loaded.problems:
        raise CompileError([replace(d, path=dotted(parts), line=index, col=len(key) + 1 + (d.col or 1))
                            for d in loaded.problems])
    return parts, loaded.data


def _apply_override(data: dict, path: KeyPath, value: Any, index: int = 1) -> None:
    node: Any = data
    for part in path[:-1]:
        if isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
        elif isinstance(node, dict):
            node = node.setdefault(part, {})
        else:
            raise CompileError([Diagnostic("SET002", "no such key to override", dotted(path), "--set", index)])
    if isinstance(node, list) and isinstance(path[-1], int) and path[-1] < len(node):
        node[path[-1]] = value
    elif isinstance(node, dict):
        node[path[-1]] = value
    else:
        raise CompileError([Diagnostic("SET002", "no such key to override", dotted(path), "--set", index)])


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


def load_recipe(path: Path, overrides: list[str] | tuple[str, ...] = (), tolerant: bool = False,
                source_root: Path | None = None) -> LoadedRecipe:
    """Read, merge, override, migrate and validate; raise CompileError with every problem found.

    With `tolerant`, a recipe whose only problems are bad or unknown keys comes back with those keys dropped
    and the problems in `.problems`, so one compile run reports schema and cross-field mistakes together.
    """
    chain = _Chain()
    if source_root is not None:
        chain.roots = [_resolved(Path(path).parent), _resolved(Path(source_root))]
    data, positions = _read_chain(Path(path), (), chain)
    diags = chain.diags
    if any(d.code in _FATAL for d in diags):
        raise CompileError(_sorted(diags))  # unreadable input: schema errors would only be noise
    for i, text in enumerate(overrides):
        key, value = parse_override(text, i + 1, chain.budget)
        _apply_override(data, key, value, i + 1)
        for stale in [k for k in positions if k[:len(key)] == key]:  # the replaced value's file lines
            del positions[stale]
        for sub in _key_paths(value, key):  # every key the --set wrote is the user's, at the --set
            positions[sub] = Position("--set", i + 1, 1)
    data, _ = migrate(data)
    spec = None
    try:
        spec = RecipeSpec.model_validate(data)
    except ValidationError as exc:
        diags.extend(d for d in diagnostics_from_validation(exc, data, positions) if not _echo(d, chain))
    files = chain.files
    if (diags or spec is None) and tolerant and not any(d.code.startswith("YAML") for d in diags):
        spec = spec or _repair(data, diags, positions)
        if spec is not None:
            return LoadedRecipe(spec, Path(path).resolve(), files, list(overrides), positions, data, diags)
    if diags or spec is None:
        raise CompileError(_sorted(diags))
    return LoadedRecipe(spec, Path(path).resolve(), files, list(overrides), positions, data)


def _echo(diag: Diagnostic, chain: _Chain) -> bool:
    """A schema error that only repeats a YAML problem: about a value the YAML layer dropped (read as None,
    e.g. after an unsafe tag), or a key reported missing from a mapping that lost keys to a YAML problem."""
    if not diag.code.startswith("SCHEMA"):
        return False
    if any(_under(diag.path, dotted(p)) for p in chain.voided):
        return True
    return diag.code == "SCHEMA003" and _parent(diag.path) in {dotted(p) for p in chain.incomplete}


def _under(path: str, prefix: str) -> bool:
    return not prefix or path == prefix or path.startswith((f"{prefix}.", f"{prefix}["))


def _parent(path: str) -> str:
    return re.sub(r"(\.[^.\[]*|\[\d+\])$", "", path) if re.search(r"[.\[]", path) else ""


def _sorted(diags: list[Diagnostic]) -> list[Diagnostic]:
    return sorted(diags, key=lambda d: (d.file or "", d.line or 0, d.col or 0, d.code))
