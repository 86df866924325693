"""Workspace confinement of what a recipe or a bundle would read: checked by the board BEFORE the compiler or
`tkc run` reads anything, so the board never reads (or starts a run that reads) a file outside its workspace.

The compiler's own rule (tkc.compiler.paths) lets a recipe read its folder and any `read_roots:` it lists, and
`tkc run` reads relative to the bundle's recorded source root; both may lie anywhere. Here every `extends:` base,
`read_roots` entry, model folder, dataset (and registry entry), media root, benchmark folder and reward bundle
must resolve (symlinks followed) inside the workspace, hold no symlink out of it and no FIFO/device/socket.
A refusal is 400 `code: "path"` naming the recipe key (`field`), with `file` and `line` where known.
"""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path
from typing import Any

from tkc.board.security import BoardError, relative
from tkc.bundle.io import recorded_source_root

MAX_CHAIN = 32              # recipe files followed through extends: (the loader's own limit)
MAX_SCAN = 20_000           # entries of one folder checked for links out and special files
MAX_BUNDLE_DEPTH = 4        # reward bundles of reward bundles


class _Where:
    """The recipe file a key is in (workspace-relative), and its key positions."""

    def __init__(self, workspace: Path, file: Path, shown: str | None, positions: dict[Any, Any]):
        self.workspace, self.positions = workspace, positions
        self.file = shown or relative(workspace, file)

    def refuse(self, key: tuple[Any, ...], what: str, text: str, why: str) -> BoardError:
        pos, probe = None, key
        while probe and pos is None:
            pos, probe = self.positions.get(probe), probe[:-1]
        field, file = ".".join(str(k) for k in key), self._file(pos)
        return BoardError(400, "path", f"{file}: {field}: {what} {text!r} {why}; the board reads nothing "
                          "outside its workspace", field=field, file=file, line=pos.line if pos else None,
                          column=pos.col if pos else None)

    def _file(self, pos: Any) -> str:
        """The file the key was set in (a base, for a key `extends:` brought), workspace-relative."""
        if pos is None or not pos.file:
            return self.file
        real = (Path.cwd() / pos.file).resolve()
        inside = real.is_relative_to(self.workspace.resolve()) and ".tkc-board-" not in real.name
        return relative(self.workspace, real) if inside else self.file


def _special(path: Path) -> bool:
    try:
        mode = path.lstat().st_mode
    except OSError:
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode) or stat.S_ISLNK(mode))


def problem(workspace: Path, path: Path, scan: bool = True) -> str | None:
    """Why reading `path` (a file, or a folder and everything under it) would leave the workspace, or None.
    `scan=False` for a folder that is only allowed (a read root, the source root), not read whole."""
    root = workspace.resolve()
    try:
        real = path.resolve()
    except (OSError, RuntimeError, ValueError):
        return "cannot be resolved"
    if not real.is_relative_to(root):
        return "resolves outside the workspace"
    if _special(real):
        return "is not a regular file or folder (a FIFO, device or socket)"
    return _scan(root, real) if scan and real.is_dir() else None


def _scan(root: Path, folder: Path) -> str | None:
    """The first entry under `folder` that is a symlink out of the workspace or a special file."""
    seen = 0
    for here, dirs, names in os.walk(folder):
        for name in [*dirs, *names]:
            seen += 1
            entry = Path(here) / name
            if seen > MAX_SCAN:
                return f"holds more than {MAX_SCAN} entries (not checked)"
            if entry.is_symlink() and not entry.resolve().is_relative_to(root):
                return f"holds {entry.relative_to(folder).as_posix()!r}, a symlink out of the workspace"
            if _special(entry):
                return f"holds {entry.relative_to(folder).as_posix()!r}, a FIFO, device or socket"
    return None


def _check(where: _Where, key: tuple[Any, ...], what: str, text: Any, base: Path, scan: bool = True) -> None:
    if not isinstance(text, str) or not text:
        return  # the schema reports it
    why = problem(where.workspace, base / text, scan)
    if why is not None:
        raise where.refuse(key, what, text, why)


# ---- recipes: the extends: chain (before the loader reads it), then the loaded spec ----

def check_recipe_chain(workspace: Path, entry: Path, shown: str | None = None) -> None:
    """`extends:` bases and `read_roots:` of the entry recipe and every base, as the loader would follow them:
    a base or root outside the workspace is refused before any of it is read."""
    from tkc.schema.yaml_loader import load_yaml_file

    todo: list[tuple[Path, str | None]] = [(entry, shown)]
    seen: set[Path] = set()
    while todo and len(seen) < MAX_CHAIN:
        path, name = todo.pop()
        if path in seen or not path.is_file():
            continue  # the loader reports cycles and missing files
        seen.add(path)
        loaded = load_yaml_file(path, str(path))
        data = loaded.data if isinstance(loaded.data, dict) else {}
        where = _Where(workspace, path, name, loaded.positions)
        for i, r in enumerate(_strings(data.get("read_roots"))):
            _check(where, ("read_roots", i), "read root", r, entry.parent, scan=False)
        for i, base in enumerate(_strings(data.get("extends"))):
            _check(where, ("extends", i), "extends base", base, path.parent)
            todo.append(((path.parent / base).resolve(), None))


def _strings(value: Any) -> list[str]:
    return [str(v) for v in value] if isinstance(value, list) else []


def check_recipe_inputs(workspace: Path, recipe: Any, shown: str | None = None) -> None:
    """Every local path the loaded recipe (tkc.schema.load.LoadedRecipe) names, relative to its folder."""
    base = recipe.entry.parent
    where = _Where(workspace, recipe.entry, shown, recipe.positions)
    spec = recipe.spec
    for i, r in enumerate(spec.read_roots):
        _check(where, ("read_roots", i), "read root", r, base, scan=False)
    _check(where, ("model", "path"), "model", spec.model.path, base)
    _check(where, ("data", "registry"), "dataset registry", spec.data.registry, base)
    # a media root is only allowed, not read whole: the compiler reads the media files records name, each
    # resolved inside its roots (now inside the workspace) before it is opened
    _check(where, ("data", "media", "root"), "media root", spec.data.media.root, base, scan=False)
    for name, ds in spec.data.datasets.items():
        _check(where, ("data", "datasets", name, "path"), "dataset", ds.path, base)
    _registry_entries(where, spec, base)
    for i, st in enumerate(spec.stages):
        bench = getattr(st, "benchmark", None)
        _check(where, ("stages", i, "benchmark", "path"), "benchmark", getattr(bench, "path", None), base)
        _reward_ref(where, ("stages", i, "reward_model"), getattr(st, "reward_model", None), base)


def _registry_entries(where: _Where, spec: Any, base: Path) -> None:
    """Registry entries the recipe uses: their files are relative to the registry's folder (dataset_info.json)."""
    names = {n: ds.registry for n, ds in spec.data.datasets.items() if ds.registry}
    if not names or not spec.data.registry or not (base / spec.data.registry).is_file():
        return
    from tkc.compiler.datasets_probe import load_registry

    try:
        entries = load_registry(base / spec.data.registry)
    except (OSError, ValueError, TypeError, AttributeError):
        return  # the compiler reports it
    folder = (base / spec.data.registry).parent
    for name, entry_name in names.items():
        entry = entries.get(entry_name) or {}
        if entry.get("source") != "hub":
            _check(where, ("data", "datasets", name, "registry"), "registry file", entry.get("path"), folder)


def _reward_ref(where: _Where, key: tuple[Any, ...], ref: Any, base: Path) -> None:
    from tkc.compiler.inputs import is_bundle_ref, split_bundle_ref

    if isinstance(ref, str) and is_bundle_ref(ref):
        text = split_bundle_ref(ref)[0]
        _check(where, key, "reward bundle", text, base)
        if (base / text / "resolved.json").is_file():
            check_bundle_inputs(where.workspace, (base / text).resolve(), depth=1)


# ---- bundles: what `tkc run`, chat and export would read ----

def source_root(bundle: Path) -> Path:
    """The source root `tkc run` uses (tkc.runtime.context.resolve_source_root, without an override)."""
    try:
        root = recorded_source_root(bundle)
    except (OSError, ValueError):
        root = None
    return root or bundle.resolve()


def _bundle_paths(tree: dict[str, Any]) -> list[tuple[str, Any]]:
    """(key, path relative to the source root) of every local path resolved.json makes the runtime read."""
    out: list[tuple[str, Any]] = [(f"read_roots.{i}", r) for i, r in enumerate(tree.get("read_roots") or [])]
    model = tree.get("model") or {}
    if model.get("source") == "local":
        out.append(("model.path", model.get("path")))
    media = (tree.get("data") or {}).get("media") or {}
    out.append(("data.media.root", media.get("root")))
    for name, ds in (tree.get("datasets") or {}).items():
        if isinstance(ds, dict) and ds.get("source") == "local":
            out += [(f"datasets.{name}.path", ds.get("path")), (f"datasets.{name}.media_root", ds.get("media_root"))]
            out += [(f"datasets.{name}.files", f.get("path")) for f in [*ds.get("files", []),
                                                                         *ds.get("media_files", [])]]
    for i, st in enumerate(tree.get("stages") or []):
        opts = (st or {}).get("options") or {}
        bench = opts.get("benchmark") or {}
        out.append((f"stages.{i}.options.benchmark.path", bench.get("path")))
        out.append((f"stages.{i}.options.reward_bundle.path", (opts.get("reward_bundle") or {}).get("path")))
    return [(k, v) for k, v in out if isinstance(v, str) and v]


def check_bundle_inputs(workspace: Path, bundle: Path, depth: int = 0, field: str = "bundle") -> None:
    """The bundle's source root and every local path its resolved.json names (reward bundles too, recursively)
    lie inside the workspace; 400 `path` naming the resolved.json key otherwise."""
    shown = relative(workspace, bundle)

    def refuse(key: str, why: str) -> BoardError:
        return BoardError(400, "path", f"{field}: {shown}: {key} {why}; the board runs, chats with and exports "
                          "only bundles that read nothing outside its workspace", field=field, key=key)

    root = source_root(bundle)
    if (why := problem(workspace, root, scan=False) if root.is_absolute() else "is not absolute") is not None:
        raise refuse("volatile.json source_root", why)
    try:
        tree = json.loads((bundle / "resolved.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return  # verification reports it
    for key, text in _bundle_paths(tree if isinstance(tree, dict) else {}):
        scan = not key.startswith("read_roots") and "media" not in key
        if (why := problem(workspace, root / text, scan)) is not None:
            raise refuse(key, why)
        if key.endswith("reward_bundle.path") and depth < MAX_BUNDLE_DEPTH and (root / text).is_dir():
            check_bundle_inputs(workspace, (root / text).resolve(), depth + 1, field)
