"""Multiple-choice benchmark files (MMLU, CMMLU, C-Eval layouts): where each split's file lies and one reader for
its rows, shared by the compiler (which checks and hashes them) and the eval stage (which scores them). Pure Python.

Layouts, relative to the benchmark folder the recipe names (`benchmark.path`):
  mmlu   data/{split}/<subject>_{split}.csv   no header: question,A,B,C,D,answer   (the folder holding `data/`,
                                                                                   or `data/` itself)
  cmmlu  {split}/<subject>.csv                header: ,Question,A,B,C,D,Answer   (splits dev, test)
  ceval  {split}/<subject>_{split}.csv        header: id,question,A,B,C,D,answer[,explanation]
Cells are read as the file spells them (csv module, UTF-8, a BOM allowed), never reinterpreted as numbers.
"""

from __future__ import annotations

import csv
from collections.abc import Iterator
from pathlib import Path

BENCHMARKS = ("mmlu", "cmmlu", "ceval")
CHOICES = ("A", "B", "C", "D")
SPLITS = {"mmlu": ("dev", "val", "test"), "cmmlu": ("dev", "test"), "ceval": ("dev", "val", "test")}
LAYOUT = {"mmlu": "data/{split}/<subject>_{split}.csv", "cmmlu": "{split}/<subject>.csv",
          "ceval": "{split}/<subject>_{split}.csv"}
_HEADER_NAMES = {"cmmlu": ("Question", "Answer"), "ceval": ("question", "answer")}

Row = dict[str, str]            # question, A, B, C, D, answer


def split_root(name: str, folder: Path) -> Path:
    """The folder holding the split folders: MMLU's `data/` when the recipe names the folder above it."""
    return folder / "data" if name == "mmlu" and (folder / "data").is_dir() else folder


def split_file(name: str, folder: Path, split: str, subject: str) -> Path:
    suffix = "" if name == "cmmlu" else f"_{split}"
    return split_root(name, folder) / split / f"{subject}{suffix}.csv"


def subjects_in(name: str, folder: Path, split: str) -> list[str]:
    """The subjects that have a file for `split`, sorted."""
    suffix = ".csv" if name == "cmmlu" else f"_{split}.csv"
    where = split_root(name, folder) / split
    if not where.is_dir():
        return []
    return sorted(p.name[: -len(suffix)] for p in where.iterdir() if p.is_file() and p.name.endswith(suffix)
                  and len(p.name) > len(suffix))


def _row(name: str, cells: list[str], header: list[str] | None) -> Row | str:
    """One record as a Row, or what is wrong with it."""
    if header is None:
        if len(cells) != 6:
            return f"expected 6 columns (question,A,B,C,D,answer), found {len(cells)}"
        values = dict(zip(("question", *CHOICES, "answer"), cells, strict=True))
    else:
        if len(cells) != len(header):
            return f"expected {len(header)} columns like the header, found {len(cells)}"
        raw = dict(zip(header, cells, strict=True))
        q, a = _HEADER_NAMES[name]
        values = {"question": raw[q], **{c: raw[c] for c in CHOICES}, "answer": raw.get(a, "")}
    if values["answer"].strip() not in CHOICES:
        return f"answer {values['answer']!r} is not one of A, B, C, D"
    return {**values, "answer": values["answer"].strip()}


def _header(name: str, cells: list[str]) -> list[str] | str:
    q, a = _HEADER_NAMES[name]
    missing = [c for c in (q, *CHOICES, a) if c not in cells]
    if missing:
        return f"the header lacks {', '.join(missing)} (a {name} file starts with {_expected_header(name)})"
    return cells


def _expected_header(name: str) -> str:
    return ",Question,A,B,C,D,Answer" if name == "cmmlu" else "id,question,A,B,C,D,answer"


def read_rows(name: str, path: Path) -> Iterator[tuple[int, Row | str]]:
    """(line where the record starts, Row or a problem) for each record of one benchmark file, in file order; a
    bad header is one problem at line 1 and ends the file."""
    with open(path, encoding="utf-8-sig", newline="") as f:
        reader = csv.reader(f)
        header: list[str] | None = None
        line = 1
        for cells in reader:
            if name != "mmlu" and header is None:
                found = _header(name, cells)
                if isinstance(found, str):
                    yield line, found
                    return
                header, line = found, reader.line_num + 1
                continue
            if cells:
                yield line, _row(name, cells, header)
            line = reader.line_num + 1
