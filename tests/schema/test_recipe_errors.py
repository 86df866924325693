"""Bad recipes: every mistake reported at once with file:line:col, key path and a hint; exit 2; nothing written."""

from __future__ import annotations

from pathlib import Path

import pytest

from tkc.schema.diagnostics import CompileError
from tkc.schema.load import load_recipe, parse_override
from tkc.schema.migrate import migrate
from tkc.schema.yaml_loader import load_yaml

GOOD = """\
name: t
model: {path: assets/tiny-qwen2}
data:
  datasets:
    a: {path: data/arith_sft.jsonl}
stages:
  - kind: sft
"""


def _errors(tmp_path: Path, text: str) -> list:
    path = tmp_path / "r.yaml"
    path.write_text(text)
    with pytest.raises(CompileError) as info:
        load_recipe(path)
    return info.value.diagnostics


def test_typo_wrong_type_and_range_reported_together(tmp_path):
    diags = _errors(tmp_path, GOOD.replace("model: {path: assets/tiny-qwen2}",
                                           "model: {path: x, trust_remote_cod: true}")
                    + "train:\n  learning_rate: fast\n  global_batch_size: 0\n")
    by_path = {d.path: d for d in diags}
    assert by_path["model.trust_remote_cod"].hint == "did you mean 'trust_remote_code'?"
    assert by_path["model.trust_remote_cod"].line == 2
    assert by_path["train.learning_rate"].line == 9 and "number" in by_path["train.learning_rate"].message
    assert by_path["train.global_batch_size"].line == 10 and "greater than 0" in by_path["train.global_batch_size"].message
    assert all(d.file.endswith("r.yaml") for d in diags)


def test_key_in_wrong_block_suggests_the_right_one(tmp_path):
    diags = _errors(tmp_path, GOOD + "    lerning_rate: 0.1\n")
    assert diags[0].path == "stages[0].lerning_rate"
    assert diags[0].hint == "did you mean 'train.learning_rate'?"


def test_unknown_stage_kind_points_at_kind(tmp_path):
    diags = _errors(tmp_path, GOOD.replace("kind: sft", "kind: dpoo"))
    assert diags[0].path == "stages[0].kind" and diags[0].hint == "did you mean 'dpo'?"
    assert (diags[0].line, diags[0].col) == (7, 5)


def test_duplicate_keys_and_unsafe_tags(tmp_path):
    diags = _errors(tmp_path, GOOD + "name: again\nevil: !!python/object/apply:os.system [ls]\n")
    codes = {d.code: d for d in diags}
    assert codes["YAML004"].line == 8 and "first set at line 1" in codes["YAML004"].message
    assert codes["YAML002"].line == 9


def test_yaml_syntax_error_has_position(tmp_path):
    diags = _errors(tmp_path, "name: [unclosed\n")
    assert diags[0].code == "YAML001" and diags[0].line is not None


def test_extends_merges_and_reports_in_the_base_file(tmp_path):
    (tmp_path / "base.yaml").write_text("train:\n  learning_rate: 0.5\n  warmup_ratoi: 0.1\n")
    diags = _errors(tmp_path, "extends: [base.yaml]\n" + GOOD)
    assert diags[0].file.endswith("base.yaml") and diags[0].line == 3
    assert diags[0].hint == "did you mean 'warmup_ratio'?"


def test_extends_cycle(tmp_path):
    (tmp_path / "a.yaml").write_text("extends: [r.yaml]\n")
    diags = _errors(tmp_path, "extends: [a.yaml]\n" + GOOD)
    assert any(d.code == "RECIPE002" for d in diags)


def test_set_overrides_and_positions(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text(GOOD)
    loaded = load_recipe(path, ["train.learning_rate=0.25", "stages.0.name=tuned"])
    assert loaded.spec.train.learning_rate == 0.25
    assert loaded.spec.stages[0].name == "tuned"
    assert loaded.positions[("train", "learning_rate")].file == "--set"
    assert parse_override("a.0.b=[1, 2]") == (("a", 0, "b"), [1, 2])


def test_migration_from_v0_flat_lora_keys():
    raw, steps = migrate({"schema_version": 0, "finetuning": {"method": "lora", "lora_rank": 4}})
    assert steps == [0] and raw["finetuning"] == {"method": "lora", "lora": {"rank": 4}}
    assert raw["schema_version"] == 1


def test_positions_cover_nested_keys():
    loaded = load_yaml("a:\n  b:\n    - x: 1\n", "f.yaml")
    assert loaded.positions[("a", "b", 0, "x")].line == 3


@pytest.mark.parametrize("seed", ["99999999999999999999999999", "-1", "4294967296"])
def test_a_seed_torch_cannot_take_is_a_positioned_error_not_a_run_traceback(tmp_path, seed):
    """train.seed 10**26 compiled, then `tkc run` died in torch.manual_seed: 'Overflow when unpacking long long'."""
    diags = _errors(tmp_path, GOOD + f"train: {{seed: {seed}}}\n")
    assert [(d.code, d.path, d.line) for d in diags] == [("SCHEMA002", "train.seed", 8)], [d.render() for d in diags]


def test_a_set_that_replaces_a_mapping_positions_its_errors_at_the_set_not_the_replaced_lines(tmp_path):
    """`--set 'train={epochs: -1}'` replaced the recipe's train mapping; the error pointed at the recipe line of
    the value it replaced (r.yaml:8), which holds a valid value."""
    path = tmp_path / "r.yaml"
    path.write_text(GOOD + "train: {epochs: 2}\n")
    with pytest.raises(CompileError) as info:
        load_recipe(path, ["train={epochs: -1}"])
    assert [(d.path, d.file, d.line) for d in info.value.diagnostics] == [("train.epochs", "--set", 1)]
    loaded = load_recipe(path, ["train={epochs: 3, learning_rate: 0.1}"])
    assert loaded.user_set(("train", "learning_rate")) and loaded.positions[("train", "epochs")].file == "--set"
