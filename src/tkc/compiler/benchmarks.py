"""The loading step for benchmark evals: find each eval stage's benchmark files, check every row, hash them.

Runs before the passes (it reads files); `passes/resolve_benchmarks.py` turns what it found into the plan. A folder
outside the read roots is PATH001 and is not read; a missing folder, split or subject is BENCH002 at its recipe key;
a bad row is BENCH003 at the file and line of its CSV (one per file, with how many more rows share it).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from tkc.bundle import benchmarks as bm
from tkc.bundle.canonical import sha256_file
from tkc.compiler import paths
from tkc.schema.diagnostics import Diagnostic, did_you_mean
from tkc.schema.load import LoadedRecipe
from tkc.schema.yaml_loader import dotted

KeyPath = tuple[str | int, ...]


@dataclass(frozen=True)
class BenchmarkFacts:
    """One eval stage's benchmark as found on disk: its split and, per subject, question count and file hashes."""

    name: str
    path: str                                   # relative POSIX path from the source root
    split: str
    subjects: tuple[Mapping[str, Any], ...] = ()   # {"id", "questions", "file": {...}, "dev": {...} | None}
    problems: tuple[Diagnostic, ...] = ()


@dataclass
class _Found:
    """What one stage's loading collects: diagnostics placed at recipe keys."""

    recipe: LoadedRecipe
    stage: int
    roots: tuple[Path, ...]
    problems: list[Diagnostic] = field(default_factory=list)

    def at(self, code: str, key: str, message: str, hint: str | None = None) -> None:
        path: KeyPath = ("stages", self.stage, "benchmark", key)
        pos = self.recipe.position(path)
        self.problems.append(Diagnostic(code, message, dotted(path), pos.file if pos else None, pos.line if pos else None,
                                        pos.col if pos else None, hint))


def _relpath(path: Path, root: Path) -> str:
    from tkc.compiler.inputs import relpath

    return relpath(path, root)


def _file_facts(name: str, path: Path, root: Path, found: _Found) -> tuple[dict[str, Any], int]:
    """The file's hash record and question count; its bad rows become one BENCH003 at the first."""
    rel = _relpath(path, root)
    if (real := paths.outside(path, found.roots)) is not None:  # a symlink out of the folder: not read
        found.at("PATH001", "path", paths.message("benchmark file", rel, real, found.roots), paths.HINT)
        return {"path": rel, "sha256": "", "size": 0}, 0
    rows = list(bm.read_rows(name, path))
    bad = [(line, msg) for line, msg in rows if isinstance(msg, str)]
    if bad:
        more = f"; {len(bad) - 1} more rows of this file have problems" if len(bad) > 1 else ""
        found.problems.append(Diagnostic("BENCH003", f"{name} row: {bad[0][1]}{more}",
                                         dotted(("stages", found.stage, "benchmark", "path")), rel, bad[0][0]))
    elif not rows:
        found.problems.append(Diagnostic("BENCH003", f"{name} file has no questions",
                                         dotted(("stages", found.stage, "benchmark", "path")), rel, 1))
    return {"path": rel, "sha256": sha256_file(path), "size": path.stat().st_size}, len(rows)


def _split(spec: Any, name: str, default: str, found: _Found) -> str | None:
    split = spec.split or default
    if name == "ceval" and split == "test":
        found.at("BENCH002", "split", "C-Eval's test split has no answers (the authors keep them to grade "
                 "submissions), so it cannot be scored here", "use split: val")
        return None
    if split not in bm.SPLITS[name]:
        found.at("BENCH002", "split", f"{name} has no {split!r} split (it has {', '.join(bm.SPLITS[name])})")
        return None
    return split


def _subjects(spec: Any, name: str, folder: Path, split: str, found: _Found) -> list[str]:
    present = bm.subjects_in(name, folder, split)
    if not present:
        found.at("BENCH002", "path", f"no {name} files for split {split!r} in {spec.path!r}: expected files like "
                 f"{bm.LAYOUT[name].format(split=split)}", f"the {name} layout: see `tkc schema`, BenchmarkSpec")
        return []
    wanted = spec.subjects if spec.subjects is not None else present
    for subject in wanted:
        if subject not in present:
            found.at("BENCH002", "subjects", f"no {name} subject {subject!r} in split {split!r} of {spec.path!r}",
                     did_you_mean(subject, present) or f"found: {', '.join(present[:8])}")
    if spec.subjects is not None and not spec.subjects:
        found.at("BENCH002", "subjects", "an empty subject list scores nothing", "leave subjects out for all")
    return [s for s in dict.fromkeys(wanted) if s in present]


def _subject(name: str, folder: Path, split: str, subject: str, spec: Any, root: Path,
             found: _Found) -> dict[str, Any]:
    file, count = _file_facts(name, bm.split_file(name, folder, split, subject), root, found)
    dev = None
    if spec.n_shot:
        dev_path = bm.split_file(name, folder, "dev", subject)
        if dev_path.is_file():
            dev = _file_facts(name, dev_path, root, found)[0]
        else:
            found.at("BENCH002", "n_shot", f"n_shot {spec.n_shot} needs the dev split, and subject {subject!r} has "
                     f"no {_relpath(dev_path, root)}", "add the dev files, or set n_shot: 0")
    return {"id": subject, "questions": count, "file": file, "dev": dev}


def load_benchmark(recipe: LoadedRecipe, i: int, stage: Any, root: Path, roots: tuple[Path, ...],
                   default_split: str) -> BenchmarkFacts:
    name, spec, found = stage.metric, stage.benchmark, _Found(recipe, i, roots)
    folder = (root / spec.path).expanduser()
    rel = _relpath(folder, root)
    if (real := paths.outside(folder, roots)) is not None:
        found.at("PATH001", "path", paths.message("benchmark folder", spec.path, real, roots), paths.HINT)
    elif not folder.is_dir():
        found.at("BENCH002", "path", f"benchmark folder not found: {spec.path} (relative to {root})")
    elif (split := _split(spec, name, default_split, found)) is not None:
        subjects = tuple(_subject(name, folder, split, s, spec, root, found)
                         for s in _subjects(spec, name, folder, split, found))
        return BenchmarkFacts(name, rel, split, subjects, tuple(found.problems))
    return BenchmarkFacts(name, rel, spec.split or default_split, (), tuple(found.problems))


def load_benchmarks(recipe: LoadedRecipe, root: Path, roots: tuple[Path, ...]) -> dict[int, BenchmarkFacts]:
    """stage index -> its benchmark, for each eval stage whose metric is a benchmark and that has a `benchmark`."""
    from tkc.catalog.benchmarks import benchmarks

    known = benchmarks()
    return {i: load_benchmark(recipe, i, st, root, roots, known[st.metric].default_split)
            for i, st in enumerate(recipe.spec.stages)
            if st.kind == "eval" and st.metric in bm.BENCHMARKS and st.benchmark is not None}
