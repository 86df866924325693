"""Data errors that name the file, the line (or record index), what is wrong and what was expected."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Where:
    file: str  # relative POSIX path (as in resolved.json)
    line: int | None  # jsonl/csv/txt: 1-based line; json/parquet/arrow/hf_disk/hub: 0-based record index
    by_line: bool
    dataset: str = ""  # the resolved.json dataset name (its on_bad_record policy applies)

    def __str__(self) -> str:
        if self.line is None:
            return self.file
        return f"{self.file}:{self.line}" if self.by_line else f"{self.file} record {self.line}"


class BadRecord(ValueError):
    """One record cannot be converted; `on_bad_record: skip` drops it, `error` stops the run."""

    def __init__(self, message: str, expected: str, where: Where | None = None):
        self.message, self.expected, self.where = message, expected, where
        super().__init__(self._text())

    def _text(self) -> str:
        head = f"{self.where}: " if self.where else ""
        return f"{head}{self.message} (expected {self.expected})"

    def __reduce__(self):  # picklable across worker processes (Exception pickles only `args`)
        return (BadRecord, (self.message, self.expected, self.where))

    def at(self, where: Where) -> BadRecord:
        return BadRecord(self.message, self.expected, where)

    def to_json(self) -> dict:
        w = self.where
        return {"dataset": w.dataset if w else None, "file": w.file if w else None, "line": w.line if w else None,
                "message": self.message, "expected": self.expected}  # fmt: skip


class DataError(RuntimeError):
    """A dataset cannot be used at all (missing file, sha256 mismatch, unreadable file)."""
