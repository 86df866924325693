"""Check the bundle's model before anything loads it: the local folder against `model.files`, inside the read roots.

`tkc compile` records every file of a local model folder (`resolved.model.files`: the sha256, or `size:N` for a
weight file over 64 MiB; hidden files skipped; Python files always hashed). Before transformers sees the folder,
the runtime compares it: a changed, added, removed or size-changed file, or a symlink out of the folder, stops the
run with exit code 2, naming each file. Remote code (`trust_remote_code`) therefore only ever runs from files whose
hashes are in the bundle. A hub model is read from the local Hugging Face cache only, at the bundle's revision.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from tkc.bundle.canonical import sha256_file
from tkc.bundle.plan import ResolvedModel, ResolvedPlan


class ModelFilesChanged(RuntimeError):
    """The model folder differs from what the bundle recorded, or lies outside the folders the recipe may read."""


class PathOutsideRoots(RuntimeError):
    """A local path the bundle reads resolves (after symlinks) outside the source root and the recipe's read_roots."""


def read_roots(extra: Sequence[str] | None, source_root: Path) -> list[Path] | None:
    """The folders a bundle may read: the source root and the plan's `read_roots` (relative to it); None (not
    checked) only for the data pipeline's tests, whose plan subsets have no `read_roots`."""
    if extra is None:
        return None
    root = Path(source_root).resolve()
    return [root, *((root / r).resolve() for r in extra)]


def check_inside_roots(path: Path, extra_roots: Sequence[str] | None, source_root: Path, what: str) -> Path:
    """`path` with its symlinks followed; PathOutsideRoots unless it lies inside one of the bundle's read roots
    (`extra_roots`: the plan's `read_roots`)."""
    real = Path(path).resolve()
    roots = read_roots(extra_roots, source_root)
    if roots is not None and not any(real.is_relative_to(r) for r in roots):
        shown = ", ".join(str(r) for r in roots)
        raise PathOutsideRoots(f"{what} {path} resolves to {real}, outside the folders this bundle may read "
                               f"({shown}); list its folder under `read_roots:` in the recipe and recompile")
    return real


def _actual_files(model_dir: Path) -> tuple[dict[str, Path], list[str]]:
    """{relative path: file} as the compiler lists them (hidden parts skipped), and symlinks that leave the folder."""
    root, files, escaping = model_dir.resolve(), {}, []
    for path in sorted(model_dir.rglob("*")):
        rel = path.relative_to(model_dir)
        if any(p.startswith(".") for p in rel.parts):
            continue
        if path.is_symlink() and not path.resolve().is_relative_to(root):
            escaping.append(f"  {rel.as_posix()}: a symlink out of the model folder (to {os.path.realpath(path)})")
        elif path.is_file():
            files[rel.as_posix()] = path
    return files, escaping


def _compare(rel: str, path: Path, expected: str) -> str | None:
    if expected.startswith("size:"):
        size = path.stat().st_size
        return None if f"size:{size}" == expected else f"  {rel}: size {size} bytes, the bundle recorded " \
                                                       f"{expected[5:]}"
    actual = sha256_file(path)
    return None if actual == expected else f"  {rel}: sha256 {actual}, the bundle recorded {expected}"


def model_dir_problems(model_dir: Path, recorded: dict[str, str]) -> list[str]:
    """One line per difference between the folder and the recorded files (empty: the folder is as compiled)."""
    if not model_dir.is_dir():
        return [f"  {model_dir}: not a folder (the bundle recorded {len(recorded)} model files)"]
    actual, problems = _actual_files(model_dir)
    problems += [f"  {rel}: missing (the bundle recorded it)" for rel in sorted(recorded.keys() - actual.keys())]
    problems += [f"  {rel}: added since compile ({actual[rel].stat().st_size} bytes; not in the bundle)"
                 for rel in sorted(actual.keys() - recorded.keys())]
    for rel in sorted(recorded.keys() & actual.keys()):
        problem = _compare(rel, actual[rel], recorded[rel])
        if problem:
            problems.append(problem)
    return problems


def checked_model_path(plan: ResolvedPlan, source_root: Path) -> str:
    """What to hand to transformers: the local model folder once it matches the bundle, or the hub id.

    Raises ModelFilesChanged (or PathOutsideRoots) naming every file that differs from `model.files`.
    """
    m = plan.model
    if m.source != "local":
        return m.path
    path = Path(source_root) / m.path
    check_inside_roots(path, plan.read_roots, source_root, "model folder")
    problems = model_dir_problems(path, dict(m.files))
    if problems:
        raise ModelFilesChanged(f"model folder {path} differs from the bundle ({len(problems)} file(s)); "
                                "nothing was loaded:\n" + "\n".join(problems) +
                                "\nrestore the files, or recompile the recipe to accept the new ones")
    return str(path)


def hub_kwargs(model: ResolvedModel) -> dict:
    """Every model/tokenizer/config load passes these: the remote-code decision explicitly, and for a hub model
    the pinned revision read from the local cache only (never a download, never a question on stdin)."""
    kwargs: dict = {"trust_remote_code": model.trust_remote_code}
    if model.source != "local":
        kwargs.update(revision=model.revision, local_files_only=True)
    return kwargs
