"""Multiple-choice benchmarks the eval stage knows: `benchmark_subjects/<id>.yaml` (subject titles, categories)."""

from __future__ import annotations

from functools import cache
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from tkc.catalog.registry import CATALOG_DIR, Record, load_records


class Subject(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)
    name: str                       # the title the prompt names ("abstract algebra")
    category: Literal["STEM", "Humanities", "Social Sciences", "Other"]


class Benchmark(Record):
    lang: Literal["en", "zh"]
    default_split: str
    subjects: dict[str, Subject] = Field(default_factory=dict)


@cache
def benchmarks() -> dict[str, Benchmark]:
    return load_records(CATALOG_DIR / "benchmark_subjects", Benchmark)
