"""Recipe input limits and hostile YAML: each refused with a positioned diagnostic, never a traceback."""

from __future__ import annotations

from pathlib import Path

import pytest

from tkc.schema.diagnostics import CompileError
from tkc.schema.load import MAX_RECIPE_FILES, load_recipe
from tkc.schema.yaml_loader import MAX_ALIASES, MAX_DEPTH, MAX_RECIPE_BYTES, load_yaml

GOOD = """\
name: t
model: {path: assets/tiny-qwen2}
data:
  datasets:
    a: {path: data/arith_sft.jsonl}
stages:
  - kind: sft
"""


def _errors(tmp_path: Path, text: str | bytes, name: str = "r.yaml", overrides: tuple[str, ...] = ()) -> list:
    path = tmp_path / name
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    try:  # tolerant, as `tkc compile` loads: bad keys come back as problems, unreadable input raises
        diags = load_recipe(path, overrides, tolerant=True).problems
    except CompileError as exc:
        diags = exc.diagnostics
    assert diags, "expected diagnostics"
    for diag in diags:
        assert diag.file is not None and diag.line is not None, diag.render()
    return diags


def test_recipe_larger_than_the_limit_is_refused_unread(tmp_path):
    diags = _errors(tmp_path, GOOD + "#" * MAX_RECIPE_BYTES + "\n")
    assert [d.code for d in diags] == ["YAML005"] and (diags[0].line, diags[0].col) == (1, 1)
    assert "1 MiB" in diags[0].message


def test_extends_base_larger_than_the_limit_is_refused(tmp_path):
    (tmp_path / "big.yaml").write_text("train: {seed: 1}\n" + "#" * (MAX_RECIPE_BYTES + 1) + "\n")
    diags = _errors(tmp_path, "extends: [big.yaml]\n" + GOOD)
    assert [d.code for d in diags] == ["YAML005"] and diags[0].file.endswith("big.yaml")


def test_deep_nesting_is_refused_at_the_level_past_the_limit(tmp_path):
    diags = _errors(tmp_path, GOOD + "x: " + "[" * (MAX_DEPTH + 5) + "]" * (MAX_DEPTH + 5) + "\n")
    assert [d.code for d in diags] == ["YAML008"]
    assert (diags[0].line, diags[0].col) == (8, 3 + MAX_DEPTH)   # the mapping around is level 1


def test_too_many_aliases_are_refused(tmp_path):
    text = GOOD + "x: &v 1\ny: [" + ", ".join(["*v"] * (MAX_ALIASES + 1)) + "]\n"
    diags = _errors(tmp_path, text)
    assert [d.code for d in diags] == ["YAML007"] and diags[0].line == 9


def test_alias_expansion_is_counted_and_stops_early():
    # 12 levels of 10 aliases would be 10**12 values; the walk stops after MAX_VALUES of them
    lines = ['a0: &a0 ["x", "x", "x", "x", "x", "x", "x", "x", "x", "x"]']
    lines += [f"a{i}: &a{i} [{', '.join([f'*a{i - 1}'] * 10)}]" for i in range(1, 12)]
    loaded = load_yaml("\n".join(lines) + "\n", "bomb.yaml")
    assert loaded.data is None and [d.code for d in loaded.problems] == ["YAML009"]
    assert loaded.problems[0].file == "bomb.yaml" and loaded.problems[0].line is not None


def test_a_long_string_repeated_through_aliases_is_counted_by_characters():
    big = "y" * 200_000
    text = f'a: &a "{big}"\nb: &b [*a, *a, *a, *a, *a, *a, *a, *a]\nc: [*b, *b, *b, *b]\n'
    loaded = load_yaml(text, "r.yaml")
    assert [d.code for d in loaded.problems] == ["YAML009"]


def test_extends_repeats_are_bounded(tmp_path):
    # each base listed many times, two levels deep: without a bound, 40 x 40 reads
    (tmp_path / "b.yaml").write_text("extends: [" + ", ".join(["c.yaml"] * 40) + "]\n")
    (tmp_path / "c.yaml").write_text("train: {seed: 1}\n")
    diags = _errors(tmp_path, "extends: [" + ", ".join(["b.yaml"] * 40) + "]\n" + GOOD)
    assert {d.code for d in diags} == {"RECIPE004"}
    assert f"more than {MAX_RECIPE_FILES}" in diags[0].message and diags[0].path == "extends"


def test_missing_base_is_positioned_at_its_extends_entry(tmp_path):
    diags = _errors(tmp_path, GOOD + "extends: [nope.yaml]\n")
    assert [d.code for d in diags] == ["RECIPE001"] and (diags[0].line, diags[0].col) == (8, 11)


def test_invalid_utf8_names_line_and_column_of_the_first_bad_byte(tmp_path):
    diags = _errors(tmp_path, GOOD.encode().replace(b"name: t", b"name: t\n# caf\xc3\xa9 ok, then \xff bad"))
    assert [d.code for d in diags] == ["YAML006"]
    assert (diags[0].line, diags[0].col) == (2, 17) and "0xff" in diags[0].message


def test_control_character_is_positioned(tmp_path):
    diags = _errors(tmp_path, GOOD.replace("kind: sft", "kind: s\x07ft"))
    assert [d.code for d in diags] == ["YAML001"] and (diags[0].line, diags[0].col) == (7, 12)


def test_integer_too_long_to_read_is_positioned(tmp_path):
    diags = _errors(tmp_path, GOOD + "train: {seed: " + "1" * 5000 + "}\n")
    assert [d.code for d in diags] == ["YAML010"] and diags[0].path == "train.seed" and diags[0].line == 8


@pytest.mark.parametrize("key,value", [("epochs", ".inf"), ("max_grad_norm", ".inf"), ("neftune_alpha", ".inf"),
                                       ("learning_rate", ".nan"), ("weight_decay", ".inf")])
def test_non_finite_floats_are_positioned_errors(tmp_path, key, value):
    diags = _errors(tmp_path, GOOD + f"train:\n  {key}: {value}\n")
    assert [(d.code, d.path, d.line) for d in diags] == [("SCHEMA002", f"train.{key}", 9)]
    assert "finite number" in diags[0].message


def test_non_finite_floats_in_stages_hardware_and_overrides(tmp_path):
    text = GOOD.replace("kind: sft", "kind: dpo\n    beta: .inf") + "hardware: {accelerator: cpu, memory_gb: .inf}\n"
    diags = _errors(tmp_path, text, overrides=("train.max_grad_norm=-.inf",))
    assert {d.path for d in diags} == {"stages[0].beta", "hardware.memory_gb", "train.max_grad_norm"}


def test_unsafe_tag_on_a_block_reports_only_the_tag(tmp_path):
    diags = _errors(tmp_path, GOOD.replace("model: {path: assets/tiny-qwen2}", "model: !!python/object:os.system {}"))
    assert [(d.code, d.path, d.line) for d in diags] == [("YAML002", "model", 2)]


def test_unsafe_tag_on_the_document_reports_only_the_tag(tmp_path):
    diags = _errors(tmp_path, "--- !!python/object/apply:os.system\n" + GOOD)
    assert [(d.code, d.line) for d in diags] == [("YAML002", 1)]


def test_merge_key_hides_only_missing_keys_of_its_mapping(tmp_path):
    text = GOOD.replace("model: {path: assets/tiny-qwen2}", "base: &m {path: x}\nmodel: {<<: *m, init: bad}")
    diags = _errors(tmp_path, text)
    codes = {(d.code, d.path) for d in diags}
    assert ("YAML002", "model") in codes and ("SCHEMA002", "model.init") in codes   # a real mistake stays
    assert not any(d.code == "SCHEMA003" for d in diags)                           # model.path: an echo


def test_bad_set_value_is_a_positioned_error(tmp_path):
    diags = _errors(tmp_path, GOOD, overrides=("train.seed=1", "train.seed=!!python/object/apply:os.system [ls]"))
    assert [(d.code, d.file, d.line, d.path) for d in diags] == [("YAML002", "--set", 2, "train.seed")]
    diags = _errors(tmp_path, GOOD, overrides=("train.seed=[unclosed",))
    assert [(d.code, d.file, d.line) for d in diags] == [("YAML001", "--set", 1)]


def test_stage_and_dataset_counts_are_bounded(tmp_path):
    """Compile time grows with stages x stages (3000 stages took 34 s): a pipeline has at most 256 stages."""
    text = GOOD + "".join(f"  - {{kind: sft, name: s{i}}}\n" for i in range(256))
    text = text.replace("  datasets:\n", "  datasets:\n" + "".join(f"    d{i}: {{path: x}}\n" for i in range(1024)))
    diags = _errors(tmp_path, text)
    by_path = {d.path: d for d in diags}
    assert "at most 256 items" in by_path["stages"].message and by_path["stages"].line == 1030
    assert "at most 1024 items" in by_path["data.datasets"].message and by_path["data.datasets"].line == 4


def test_too_many_values_refused_before_the_node_tree_is_built():
    loaded = load_yaml("x: [" + ",".join(["1"] * 100_001) + "]\n", "wide.yaml")
    assert [d.code for d in loaded.problems] == ["YAML009"] and loaded.problems[0].line == 1
    assert "more than 100000 values" in loaded.problems[0].message
