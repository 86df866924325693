"""Workspace files: listing, recipe read/write (atomic), validation as the CLI reports it, YAML, dataset preview."""

from __future__ import annotations

import json
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import Any

from tkc.board.security import BoardError, relative, scrub, workspace_path

BOARD_DIR = ".tkc-board"
RECIPE_SUFFIXES = (".yaml", ".yml")
DATASET_SUFFIXES = (".json", ".jsonl", ".parquet", ".csv")
MAX_RECIPE_BYTES = 1 << 20
MAX_FILES = 5000


def is_bundle(path: Path) -> bool:
    return (path / "manifest.json").is_file() and (path / "resolved.json").is_file()


def _walk(root: Path) -> tuple[list[Path], list[Path]]:
    """(bundle folders, files outside bundles), skipping hidden folders and never following symlinked folders."""
    bundles: list[Path] = []
    files: list[Path] = []
    for folder, dirs, names in os.walk(root):
        here = Path(folder)
        if is_bundle(here):
            bundles.append(here)
            dirs[:] = []
            continue
        dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d not in ("node_modules", "__pycache__"))
        files.extend(here / n for n in sorted(names) if not n.startswith("."))
        if len(files) > MAX_FILES:
            break
    return bundles, files


def list_files(workspace: Path, kind: str) -> list[str]:
    bundles, files = _walk(workspace.resolve())
    if kind == "bundles":
        return sorted(relative(workspace, b) for b in bundles)
    suffixes = {"recipes": RECIPE_SUFFIXES, "datasets": DATASET_SUFFIXES}.get(kind)
    if suffixes is None:
        raise BoardError(400, "bad_request", "kind must be recipes, datasets or bundles", field="kind")
    return sorted(relative(workspace, f) for f in files if f.suffix.lower() in suffixes and f.is_file()
                  and f.resolve().is_relative_to(workspace.resolve()))


def inside_bundle(workspace: Path, path: Path) -> bool:
    root = workspace.resolve()
    return any(is_bundle(p) for p in path.parents if p.is_relative_to(root))


def recipe_path(workspace: Path, value: Any, field: str = "path") -> Path:
    path = workspace_path(workspace, value, field)
    if path.suffix.lower() not in RECIPE_SUFFIXES:
        raise BoardError(400, "bad_request", f"{field}: a recipe is a .yaml or .yml file", field=field)
    if inside_bundle(workspace, path) or BOARD_DIR in Path(relative(workspace, path)).parts:
        raise BoardError(400, "bad_request", f"{field}: recipes inside a bundle or {BOARD_DIR}/ are not edited "
                         "here (recompile the bundle from its recipe instead)", field=field)
    return path


def read_recipe(workspace: Path, value: Any) -> dict[str, Any]:
    path = recipe_path(workspace, value)
    if not path.is_file():
        raise BoardError(404, "not_found", f"path: no recipe at {value}", field="path")
    data = path.read_bytes()[:MAX_RECIPE_BYTES + 1]
    if len(data) > MAX_RECIPE_BYTES:
        raise BoardError(400, "bad_request", "path: the recipe is larger than 1 MiB", field="path")
    return {"path": relative(workspace, path), "text": data.decode("utf-8", "replace")}


def text_field(body: dict[str, Any], field: str = "text") -> str:
    text = body.get(field)
    if not isinstance(text, str):
        raise BoardError(400, "bad_request", f"{field}: a string is required", field=field)
    if len(text.encode("utf-8", "surrogatepass")) > MAX_RECIPE_BYTES:
        raise BoardError(400, "bad_request", f"{field}: a recipe is at most 1 MiB", field=field)
    return text


def _looks_like_recipe(path: Path) -> bool:
    import yaml

    try:
        return isinstance(yaml.safe_load(path.read_text(encoding="utf-8")), dict | None)
    except (OSError, UnicodeDecodeError, yaml.YAMLError):
        return False


def open_dir(workspace: Path, folder: Path, create: bool = False) -> int:
    """A descriptor of `folder` (a resolved path inside the workspace), walked from the workspace one name at a
    time with O_NOFOLLOW: a folder swapped for a symlink after the path was checked fails (ELOOP/ENOTDIR) instead
    of leading the write out of the workspace."""
    root = workspace.resolve()
    fd = os.open(root, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for name in folder.relative_to(root).parts:
            if create:
                try:
                    os.mkdir(name, 0o777, dir_fd=fd)
                except FileExistsError:
                    pass
            inner = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = inner
    except BaseException:
        os.close(fd)
        raise
    return fd


def write_atomic(path: Path, data: bytes, workspace: Path) -> None:
    """`data` into `path` (inside the workspace) through a temp file in the same folder (O_EXCL|O_NOFOLLOW), then
    one rename, all relative to a descriptor of the folder: never through a symlink swapped in meanwhile."""
    try:
        fd = open_dir(workspace, path.parent, create=True)
    except OSError as exc:
        raise BoardError(409, "conflict", f"path: the folder of {path.name} changed or cannot be "
                         f"opened ({exc.strerror}); nothing was written", field="path") from None
    tmp = f".{path.name}.{secrets.token_hex(6)}.tmp"
    try:
        try:
            mode = os.stat(path.name, dir_fd=fd, follow_symlinks=False).st_mode & 0o777
        except FileNotFoundError:
            mode = 0o666
        out = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode, dir_fd=fd)
        with os.fdopen(out, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path.name, src_dir_fd=fd, dst_dir_fd=fd)
        os.fsync(fd)
    except BaseException:
        with suppress(FileNotFoundError):
            os.unlink(tmp, dir_fd=fd)
        raise
    finally:
        os.close(fd)


def write_recipe(workspace: Path, value: Any, text: str) -> Path:
    path = recipe_path(workspace, value)
    if path.exists() and (not path.is_file() or not _looks_like_recipe(path)):
        raise BoardError(409, "conflict", f"path: {value} exists and is not a recipe (a YAML mapping); "
                         "refusing to overwrite it", field="path")
    write_atomic(path, text.encode("utf-8", "surrogatepass"), workspace)
    return path


def _diag_json(workspace: Path, d: Any, shown: dict[str, str], severity: str) -> dict[str, Any]:
    return scrub({"code": d.code, "message": d.message, "file": shown.get(d.file or "", d.file), "line": d.line,
                  "column": d.col, "key": d.path, "hint": d.hint, "severity": severity}, workspace)


def _shown_names(workspace: Path, files: list[str | None], tmp: Path, path: Path) -> dict[str, str]:
    """Diagnostic file names as the user knows them: the temp copy is `path`, others workspace-relative."""
    shown = {}
    for f in filter(None, files):
        p = Path(f) if Path(f).is_absolute() else Path.cwd() / f
        if p.resolve() == tmp.resolve():
            shown[f] = relative(workspace, path)
        elif p.resolve().is_relative_to(workspace.resolve()):
            shown[f] = relative(workspace, p)
    return shown


def _parsed(text: str) -> Any:
    from tkc.schema.yaml_loader import load_yaml

    data = load_yaml(text, "recipe").data
    return json.loads(json.dumps(data, default=str)) if isinstance(data, dict) else None


@contextmanager
def temp_copy(path: Path, text: str) -> Iterator[Path]:
    """`text` in a hidden file beside `path` (so relative paths and `extends:` resolve from its folder), removed after."""
    if not path.parent.is_dir():
        raise BoardError(400, "bad_request", "path: its folder does not exist", field="path")
    tmp = path.parent / f".{path.stem}.tkc-board-{secrets.token_hex(4)}{path.suffix}"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "wb") as f:
        f.write(text.encode("utf-8", "surrogatepass"))
    try:
        yield tmp
    finally:
        tmp.unlink(missing_ok=True)


def compile_confined(workspace: Path, path: Path, shown: str) -> Any:
    """compile_recipe(path) as `tkc compile` does it, after refusing (400 `path`) a recipe that would make the
    compiler read outside the workspace: its extends:/read_roots: first, then every path the loaded spec names."""
    from tkc.board.confine import check_recipe_chain, check_recipe_inputs
    from tkc.compiler.pipeline import compile_loaded
    from tkc.schema.load import load_recipe

    check_recipe_chain(workspace, path, shown)
    loaded = load_recipe(path, (), tolerant=True)
    check_recipe_inputs(workspace, loaded, shown)
    return compile_loaded(loaded)


def validate(workspace: Path, value: Any, text: str) -> dict[str, Any]:
    """The CLI's diagnostics for `text` read as if it were the file at `value`."""
    from tkc.compiler.dead_settings import dead_settings
    from tkc.schema.diagnostics import CompileError

    path = recipe_path(workspace, value)
    with temp_copy(path, text) as tmp:
        try:
            compiled = compile_confined(workspace, tmp, relative(workspace, path))
            found, notes = [], dead_settings(compiled.plan)
        except CompileError as exc:
            found, notes = exc.diagnostics, []
    shown = _shown_names(workspace, [d.file for d in [*found, *notes]], tmp, path)
    diags = [_diag_json(workspace, d, shown, "error") for d in found]
    diags += [_diag_json(workspace, d, shown, "note") for d in notes]
    return {"ok": not found, "diagnostics": diags, "data": _parsed(text)}


def to_yaml(data: Any) -> str:
    import yaml

    if not isinstance(data, dict):
        raise BoardError(400, "bad_request", "data: a JSON object is required", field="data")
    return yaml.safe_dump(data, sort_keys=False, allow_unicode=True, default_flow_style=False)


def preview(workspace: Path, value: Any, n: int) -> dict[str, Any]:
    from tkc.dataio import BadJson, iter_file

    path = workspace_path(workspace, value, "path")
    fmt = path.suffix.lower().lstrip(".")
    if fmt not in ("json", "jsonl", "csv", "parquet") or not path.is_file():
        raise BoardError(404, "not_found", f"path: no dataset file (.json/.jsonl/.csv/.parquet) at {value}",
                         field="path")
    if not 1 <= n <= 100:
        raise BoardError(400, "bad_request", "n: between 1 and 100", field="n")
    rows = []
    try:
        for _, rec in iter_file(path, fmt, limit=n):
            rows.append({"_error": rec.msg} if isinstance(rec, BadJson) else rec)
            if len(rows) >= n:
                break
    except (OSError, ValueError, ImportError) as exc:
        raise BoardError(400, "bad_request", f"path: cannot read {value}: {exc}", field="path") from None
    total = _count_lines(path) if fmt == "jsonl" else None
    return {"rows": json.loads(json.dumps(rows, default=str)), "total": total, "format": fmt}


def _count_lines(path: Path) -> int:
    with path.open("rb") as f:
        return sum(1 for line in f if line.strip())
