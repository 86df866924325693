"""Benchmark evals (metric mmlu | cmmlu | ceval) at compile time: files found, checked and hashed into the bundle;
every mistake a positioned error (BENCH001/2/3, PATH001), all reported at once."""

from __future__ import annotations

import hashlib
import shutil
from pathlib import Path

import pytest

from tkc.compiler.pipeline import compile_recipe
from tkc.schema.diagnostics import CompileError

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures"


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    shutil.copytree(REPO / "recipes" / "assets" / "tiny-qwen2", tmp_path / "tiny")
    shutil.copy(REPO / "recipes" / "data" / "arith_sft.jsonl", tmp_path / "sft.jsonl")
    for name in ("mmlu", "cmmlu", "ceval"):
        shutil.copytree(FIXTURES / f"{name}_sample", tmp_path / name)
    return tmp_path


def recipe(folder: Path, stage: str) -> Path:
    path = folder / "r.yaml"
    path.write_text("name: mc\nmodel: {path: tiny, init: scratch}\ndata: {datasets: {sft: {path: sft.jsonl}}}\n"
                    f"stages:\n{stage}hardware: cpu\n")
    return path


def stage_of(folder: Path, stage: str) -> dict:
    return compile_recipe(recipe(folder, stage)).resolved["stages"][0]


def errors(folder: Path, stage: str) -> list:
    with pytest.raises(CompileError) as info:
        compile_recipe(recipe(folder, stage))
    return info.value.diagnostics


def test_mmlu_sample_resolves_with_hashes_titles_and_categories(folder):
    st = stage_of(folder, "  - {kind: eval, metric: mmlu, benchmark: {path: mmlu, n_shot: 2}}\n")
    bench = st["options"]["benchmark"]
    assert st["datasets"] == [] and bench["split"] == "test" and bench["lang"] == "en" and bench["prompt"] == "chat"
    subjects = {s["id"]: s for s in bench["subjects"]}
    assert list(subjects) == ["abstract_algebra", "high_school_geography", "philosophy"]
    algebra = subjects["abstract_algebra"]
    assert (algebra["name"], algebra["category"], algebra["questions"]) == ("abstract algebra", "STEM", 4)
    assert subjects["philosophy"]["category"] == "Humanities"
    test_file = folder / "mmlu" / "data" / "test" / "abstract_algebra_test.csv"
    assert algebra["file"] == {"path": "mmlu/data/test/abstract_algebra_test.csv",
                               "sha256": hashlib.sha256(test_file.read_bytes()).hexdigest(),
                               "size": test_file.stat().st_size}
    assert algebra["dev"]["path"] == "mmlu/data/dev/abstract_algebra_dev.csv"


def test_cmmlu_and_ceval_layouts(folder):
    cm = stage_of(folder, "  - {kind: eval, metric: cmmlu, benchmark: {path: cmmlu, subjects: [chinese_history]}}\n")
    bench = cm["options"]["benchmark"]
    assert bench["lang"] == "zh" and [s["name"] for s in bench["subjects"]] == ["中国历史"]
    assert bench["subjects"][0]["questions"] == 3 and bench["subjects"][0]["file"]["path"] == \
        "cmmlu/test/chinese_history.csv"
    ce = stage_of(folder, "  - {kind: eval, metric: ceval, benchmark: {path: ceval, n_shot: 1}}\n")
    bench = ce["options"]["benchmark"]
    assert bench["split"] == "val" and bench["subjects"][0]["name"] == "逻辑学"
    assert bench["subjects"][0]["questions"] == 2


def test_a_changed_benchmark_file_changes_the_bundle(folder):
    stage = "  - {kind: eval, metric: mmlu, benchmark: {path: mmlu, n_shot: 0}}\n"
    before = compile_recipe(recipe(folder, stage)).files["resolved.json"]
    path = folder / "mmlu" / "data" / "test" / "philosophy_test.csv"
    path.write_text(path.read_text().replace(",B\n", ",D\n", 1))
    assert compile_recipe(recipe(folder, stage)).files["resolved.json"] != before


def test_bad_path_split_and_subject_are_positioned(folder):
    found = errors(folder, "  - kind: eval\n    metric: mmlu\n    benchmark:\n      path: nowhere\n"
                           "  - kind: eval\n    metric: cmmlu\n    benchmark: {path: cmmlu, split: val}\n"
                           "  - kind: eval\n    metric: mmlu\n    benchmark:\n      path: mmlu\n"
                           "      subjects: [philosphy]\n"
                           "  - {kind: eval, metric: ceval, benchmark: {path: ceval, split: test}}\n")
    by_key = {d.path: d for d in found}
    assert {d.code for d in found} == {"BENCH002"}
    assert "benchmark folder not found: nowhere" in by_key["stages[0].benchmark.path"].message
    assert by_key["stages[0].benchmark.path"].line == 8
    assert "cmmlu has no 'val' split" in by_key["stages[1].benchmark.split"].message
    assert by_key["stages[1].benchmark.split"].line == 11
    subj = by_key["stages[2].benchmark.subjects"]
    assert subj.line == 16 and "philosphy" in subj.message and subj.hint == "did you mean 'philosophy'?"
    assert "test split has no answers" in by_key["stages[3].benchmark.split"].message


def test_wrong_layout_names_the_expected_files(folder):
    (found,) = errors(folder, "  - {kind: eval, metric: mmlu, benchmark: {path: cmmlu}}\n")
    assert found.code == "BENCH002" and found.line == 5 and "data/test/<subject>_test.csv" in found.message


def test_bad_rows_are_reported_at_their_csv_line(folder):
    path = folder / "mmlu" / "data" / "test" / "philosophy_test.csv"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text(lines[0] + "only,three,cells\n" + lines[1].replace(",C\n", ",E\n") + lines[2])
    (found,) = errors(folder, "  - {kind: eval, metric: mmlu, benchmark: {path: mmlu, n_shot: 0}}\n")
    assert (found.code, found.file, found.line) == ("BENCH003", "mmlu/data/test/philosophy_test.csv", 2)
    assert "expected 6 columns (question,A,B,C,D,answer), found 3" in found.message and "1 more rows" in found.message


def test_missing_dev_file_for_shots(folder):
    (folder / "mmlu" / "data" / "dev" / "philosophy_dev.csv").unlink()
    (found,) = errors(folder, "  - kind: eval\n    metric: mmlu\n    benchmark: {path: mmlu, n_shot: 3}\n")
    assert found.code == "BENCH002" and found.path == "stages[0].benchmark.n_shot" and "philosophy" in found.message


def test_metric_and_benchmark_block_must_agree(folder):
    found = errors(folder, "  - {kind: eval, metric: mmlu}\n"
                           "  - {kind: eval, metric: exact_match, datasets: [sft], benchmark: {path: mmlu}}\n"
                           "  - {kind: eval, metric: mmlu, datasets: [sft], benchmark: {path: mmlu}}\n")
    assert sorted((d.code, d.path, d.line) for d in found) == [
        ("BENCH001", "stages[0].metric", 5), ("BENCH001", "stages[1].benchmark", 6),
        ("BENCH001", "stages[2].datasets", 7)]


def test_a_folder_outside_the_read_roots_is_not_read(folder, tmp_path_factory):
    outside = tmp_path_factory.mktemp("elsewhere")
    shutil.copytree(FIXTURES / "mmlu_sample", outside / "mmlu")
    (found,) = errors(folder, f"  - {{kind: eval, metric: mmlu, benchmark: {{path: {outside / 'mmlu'}}}}}\n")
    assert found.code == "PATH001" and found.path == "stages[0].benchmark.path"


def test_bad_option_values_are_schema_errors(folder):
    found = errors(folder, "  - {kind: eval, metric: mmlu, benchmark: {path: mmlu, n_shot: -1, prompt: fancy}}\n")
    assert {d.path for d in found} >= {"stages[0].benchmark.n_shot", "stages[0].benchmark.prompt"}
    assert all(d.line == 5 for d in found)
