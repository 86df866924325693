"""A hub dataset compiled from the offline HF cache gives the rows of the same file read locally."""

from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

import pytest

from tkc.bundle.plan import structure_plan
from tkc.compiler.pipeline import compile_recipe
from tkc.runtime.data import DataError, build_stage_data

pytest.importorskip("datasets")
transformers = pytest.importorskip("transformers")

_spec = importlib.util.spec_from_file_location(
    "hub_helpers", Path(__file__).parents[1] / "compiler/test_hub_datasets.py"
)
H = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(H)
# the fixture: HF_HOME -> a cache holding acme/tiny-sft at H.REV, HF_HUB_OFFLINE=1
offline_hub = H.offline_hub


def _rows(compiled, cache: Path) -> list[tuple[list[int], list[int]]]:
    plan = structure_plan(compiled.resolved)
    tok = transformers.AutoTokenizer.from_pretrained(H.TINY)
    template = compiled.files["template/chat_template.jinja"].decode("utf-8")
    data = build_stage_data(plan, plan.stages[0], tok, compiled.source_root, cache,
                            template_text=template)  # fmt: skip
    return [(list(r["input_ids"]), list(r["labels"])) for r in data.train]


def test_hub_rows_equal_local_rows(offline_hub):
    snapshot_file = next((offline_hub / "hf" / "hub").rglob("train.jsonl"))
    local_dir = offline_hub / "local"
    (local_dir / "data").mkdir(parents=True)
    shutil.copy(snapshot_file, local_dir / "data" / "train.jsonl")
    local = _rows(compile_recipe(H.write_recipe(local_dir, "data/train.jsonl")), offline_hub / "c0")
    assert len(local) == len(H.RECORDS) and all(any(lab != -100 for lab in labels) for _, labels in local)
    pinned = compile_recipe(H.write_recipe(offline_hub / "pinned", revision=H.REV))
    unpinned = compile_recipe(H.write_recipe(offline_hub / "unpinned"))
    assert _rows(pinned, offline_hub / "c1") == local
    assert _rows(unpinned, offline_hub / "c2") == local


def test_a_revision_missing_at_run_time_is_a_data_error(offline_hub):
    compiled = compile_recipe(H.write_recipe(offline_hub / "pinned", revision=H.REV))
    entry = compiled.resolved["datasets"]["h"]
    entry["revision"] = "f" * 40  # the cache lost that revision after compiling
    expected = (
        r"dataset 'h': cannot load 'acme/tiny-sft' .*no snapshot of 'acme/tiny-sft' at revision 'f{40}'"
    )
    with pytest.raises(DataError, match=expected):
        _rows(compiled, offline_hub / "c")
