"""Bundles on disk: byte-identical compiles, verification of every file, atomic replacement, diff."""

from __future__ import annotations

import json
import os
from pathlib import Path

from tkc.bundle.canonical import canonical_json
from tkc.bundle.diff import diff_bundles, render_diff
from tkc.bundle.io import check_bundle, read_manifest


def _compile(tkc, recipe: Path, out: Path, *extra: str) -> str:
    code, stdout, stderr = tkc("compile", recipe, "-o", out, *extra)
    assert code == 0, stderr
    return stdout.strip().splitlines()[-1]


def test_canonical_json_is_order_independent():
    assert canonical_json({"b": 1, "a": [1, {"d": 2, "c": "é"}]}) == '{"a":[1,{"c":"é","d":2}],"b":1}'


def test_compile_writes_a_verified_bundle(tkc, demo_copy, tmp_path):
    out = tmp_path / "run"
    digest = _compile(tkc, demo_copy / "demo.yaml", out)
    manifest = read_manifest(out)
    assert manifest["bundle_hash"] == digest
    assert {"resolved.json", "template/chat_template.jinja", "env/requirements.lock"} <= set(manifest["files"])
    assert "recipe/demo.yaml" in manifest["sources"]
    assert any(p.startswith("launch/") and p.endswith(".sh") for p in manifest["files"])
    assert check_bundle(out) == []
    assert tkc("verify", out)[0] == 0
    text = (out / "resolved.json").read_text()
    assert str(demo_copy) not in text and str(tmp_path) not in text  # no absolute paths in hashed files


def test_verify_names_a_flipped_byte(tkc, demo_copy, tmp_path):
    out = tmp_path / "run"
    _compile(tkc, demo_copy / "demo.yaml", out)
    target = out / "resolved.json"
    data = bytearray(target.read_bytes())
    data[10] ^= 1
    target.write_bytes(bytes(data))
    code, _, err = tkc("verify", out)
    assert code == 1 and "resolved.json: changed since compile" in err and "expected sha256" in err


def test_verify_refuses_added_removed_and_symlinked_files(tkc, demo_copy, tmp_path):
    out = tmp_path / "run"
    _compile(tkc, demo_copy / "demo.yaml", out)
    (out / "extra.txt").write_text("x")
    (out / "provenance.json").unlink()
    os.symlink(out / "resolved.json", out / "link.json")
    problems = {p.path: p.problem for p in check_bundle(out)}
    assert problems["extra.txt"] == "added after compile"
    assert problems["provenance.json"] == "removed since compile"
    assert "symlink" in problems["link.json"]
    (out / "outputs").mkdir()
    (out / "outputs" / "anything").write_text("runtime files are not part of the contract")
    assert "outputs/anything" not in {p.path for p in check_bundle(out)}


def test_recompile_keeps_outputs_and_refuses_other_bundle_without_force(tkc, demo_copy, tmp_path):
    out = tmp_path / "run"
    _compile(tkc, demo_copy / "demo.yaml", out)
    (out / "outputs").mkdir()
    (out / "outputs" / "ckpt").write_text("precious")
    _compile(tkc, demo_copy / "demo.yaml", out)
    assert (out / "outputs" / "ckpt").read_text() == "precious"
    code, _, err = tkc("compile", demo_copy / "demo.yaml", "-o", out, "--set", "train.seed=7")
    assert code == 2 and "--force" in err
    assert (out / "outputs" / "ckpt").read_text() == "precious"
    _compile(tkc, demo_copy / "demo.yaml", out, "--set", "train.seed=7", "--force")
    kept = [p for p in tmp_path.iterdir() if p.name.startswith("run.old-")]
    assert len(kept) == 1 and (kept[0] / "outputs" / "ckpt").read_text() == "precious"


def test_bad_recipe_writes_nothing(tkc, demo_copy, tmp_path):
    recipe = demo_copy / "demo.yaml"
    recipe.write_text(recipe.read_text().replace("cutoff_len: 64", "cutoff_len: 64\n  cutof_len: 3"))
    code, _, err = tkc("compile", recipe, "-o", tmp_path / "run")
    assert code == 2 and "did you mean 'cutoff_len'?" in err
    assert not (tmp_path / "run").exists()
    assert [p.name for p in tmp_path.iterdir()] == ["recipes"]


def test_diff_shows_exactly_the_changed_learning_rate(tkc, demo_copy, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    _compile(tkc, demo_copy / "demo.yaml", a)
    _compile(tkc, demo_copy / "demo.yaml", b, "--set", "stages.1.train.learning_rate=0.001")
    result = diff_bundles(a, b)
    assert [(k, va, vb) for k, va, vb, _, _ in result.values] == [("stages.1.train.learning_rate", 0.002, 0.001)]
    assert result.values[0][3:] == ("recipe", "override")
    text = render_diff(result)
    assert "stages.1.train.learning_rate: 0.002 -> 0.001   [recipe -> override]" in text
    code, out, _ = tkc("diff", a, b, "--plain")
    assert code == 1 and "learning_rate" in out
    assert tkc("diff", a, a, "--plain")[0] == 0


def test_resolved_is_fully_explicit(tkc, demo_copy, tmp_path):
    out = tmp_path / "run"
    _compile(tkc, demo_copy / "demo.yaml", out)
    resolved = json.loads((out / "resolved.json").read_text())
    sft = resolved["stages"][1]
    assert sft["train"]["precision"] == "fp32"             # never left to a library default
    assert sft["train"]["gradient_checkpointing"] is False
    assert sft["train"]["micro_batch_size"] * sft["train"]["gradient_accumulation_steps"] == 16
    assert sft["finetuning"]["lora"]["targets"] == ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    assert sft["init_from"] == "pretrain"
    assert resolved["model"]["family"] == "qwen2" and resolved["template"]["id"] == "auto"


def _write_output(bundle: Path, name: str, text: str) -> None:
    (bundle / "outputs" / "sft").mkdir(parents=True, exist_ok=True)
    (bundle / "outputs" / "sft" / name).write_text(text)


def test_force_between_two_bundles_never_deletes_outputs(tkc, demo_copy, tmp_path):
    """Compile A, train, force B, train, force A, train, force B: every earlier output survives somewhere."""
    out, recipe = tmp_path / "run", demo_copy / "demo.yaml"
    b_args = ("--set", "train.seed=7")
    hash_a = _compile(tkc, recipe, out)
    _write_output(out, "model.bin", "A trained first")
    hash_b = _compile(tkc, recipe, out, *b_args, "--force")
    _write_output(out, "model.bin", "B trained")
    code, _, err = tkc("compile", recipe, "-o", out, "--force")
    assert code == 0 and "moved the previous bundle" in err and f"run.old-{hash_b[:12]}" in err
    _write_output(out, "model.bin", "A trained again")
    code, _, err = tkc("compile", recipe, "-o", out, *b_args, "--force")
    assert code == 0 and f"run.old-{hash_a[:12]}-2" in err and "nothing was deleted" in err
    kept = {p.name: (p / "outputs" / "sft" / "model.bin").read_text()
            for p in tmp_path.iterdir() if p.name.startswith("run.old-")}
    assert kept == {f"run.old-{hash_a[:12]}": "A trained first", f"run.old-{hash_b[:12]}": "B trained",
                    f"run.old-{hash_a[:12]}-2": "A trained again"}
    assert read_manifest(out)["bundle_hash"] == hash_b and not (out / "outputs").exists()


def test_force_keeps_an_existing_aside_folder_and_files_a_person_added(tkc, demo_copy, tmp_path):
    out, recipe = tmp_path / "run", demo_copy / "demo.yaml"
    hash_a = _compile(tkc, recipe, out)
    squatter = tmp_path / f"run.old-{hash_a[:12]}"
    squatter.mkdir()
    (squatter / "mine.txt").write_text("not tkc's")
    (out / "notes.txt").write_text("a person's notes")
    _compile(tkc, recipe, out)  # same hash: the bundle is rewritten, the notes must not vanish
    assert (squatter / "mine.txt").read_text() == "not tkc's"
    assert (tmp_path / f"run.old-{hash_a[:12]}-2" / "notes.txt").read_text() == "a person's notes"
    _compile(tkc, recipe, out, "--set", "train.seed=7", "--force")  # a pristine bundle, nothing to keep
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(
        ["recipes", "run", f"run.old-{hash_a[:12]}", f"run.old-{hash_a[:12]}-2"])


def test_unreadable_manifest_is_a_verify_problem_not_a_crash(tkc, demo_copy, tmp_path):
    out = tmp_path / "run"
    _compile(tkc, demo_copy / "demo.yaml", out)
    (out / "manifest.json").write_text("[1, 2")
    assert [p.path for p in check_bundle(out)] == ["manifest.json"]
    code, _, err = tkc("verify", out)
    assert code == 1 and "manifest.json: unreadable" in err


def test_diff_names_differing_recipe_files_when_plans_are_identical(tkc, demo_copy, tmp_path):
    a, b = tmp_path / "a", tmp_path / "b"
    recipe = demo_copy / "demo.yaml"
    hash_a = _compile(tkc, recipe, a)
    recipe.write_text(recipe.read_text().replace("name: demo\n", "name: demo   # a reviewer's note\n"))
    assert _compile(tkc, recipe, b) == hash_a  # comments are outside the plan
    result = diff_bundles(a, b)
    assert not result.same and result.same_plan and [f for f, _, _ in result.files] == ["recipe/demo.yaml"]
    code, out, _ = tkc("diff", a, b, "--plain")
    assert code == 1 and "bundles are identical" not in out
    assert "plans are identical" in out and "changed  recipe/demo.yaml" in out
    assert "+name: demo   # a reviewer's note" in out and "-name: demo" in out
    renamed = demo_copy / "renamed.yaml"
    renamed.write_text(recipe.read_text() + "# renamed\n")
    _compile(tkc, renamed, tmp_path / "c")
    code, out, _ = tkc("diff", b, tmp_path / "c", "--plain")
    assert code == 1 and "removed  recipe/demo.yaml" in out and "added    recipe/renamed.yaml" in out
    assert "--- a/recipe/demo.yaml" in out and "+++ b/recipe/renamed.yaml" in out and "+# renamed" in out
    code, out, _ = tkc("diff", a, a, "--plain")
    assert code == 0 and "bundles are identical" in out
    code, _, err = tkc("diff", a, tmp_path / "nowhere", "--plain")
    assert code == 2 and "not a tkc bundle" in err


def test_diff_without_plain_keeps_long_lines_whole_in_a_pipe(tkc, demo_copy, tmp_path):
    """Piped or logged (not a terminal), `tkc diff` printed through rich cropped every line at 80 columns:
    'but the sources differ (recipe copies an' and long recipe lines lost their ends, silently."""
    a, b = tmp_path / "a", tmp_path / "b"
    recipe = demo_copy / "demo.yaml"
    _compile(tkc, recipe, a)
    note = "# " + "a long reviewer's note that goes well past eighty columns " * 2 + "END"
    recipe.write_text(recipe.read_text().replace("name: demo\n", f"name: demo   {note}\n"))
    _compile(tkc, recipe, b)
    code, out, _ = tkc("diff", a, b)
    assert code == 1 and "outside the bundle hash)" in out and f"+name: demo   {note}" in out, out
