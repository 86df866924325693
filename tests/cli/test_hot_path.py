"""compile/verify/explain run from argv without typer, and behave exactly as the typer app does."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from tkc.cli.main import HOT_VERBS, _hot_verb, run_hot
from tkc.cli.params import params, parse

REPO = Path(__file__).resolve().parents[2]
NOT_ON_HOT_PATH = ("typer", "click", "rich", "shellingham", "jinja2", "torch", "transformers", "datasets", "peft",
                   "trl")


def test_typo_report_imports_no_cli_framework(demo_copy, tmp_path):
    recipe = demo_copy / "demo.yaml"  # a catalog template, as in bench/errors.py (`auto` renders the tokenizer's)
    recipe.write_text(recipe.read_text().replace("cutoff_len: 64", "cutoff_len: 64\n  pakcing: true")
                      .replace("template: auto", "template: qwen2_5"))
    code = ("import sys\nfrom tkc.cli.main import main\n"
            "try:\n    main()\nexcept SystemExit as e:\n    code = e.code\n"
            f"print(code, sorted({{m.split('.')[0] for m in sys.modules}} & set({NOT_ON_HOT_PATH!r})))")
    out = subprocess.run([sys.executable, "-c", code, "compile", str(recipe), "-o", str(tmp_path / "out")],
                         capture_output=True, text=True, cwd=demo_copy, check=True)
    assert "demo.yaml:21:3: SCHEMA001 data.pakcing: unknown key (did you mean 'packing'?)" in out.stderr
    assert out.stdout.strip() == "2 []"


def test_no_launch_scripts_rendered_for_a_recipe_with_bad_keys(demo_copy):
    """Scripts from a recipe whose bad keys were dropped would only repeat its errors (and cost jinja2)."""
    from tkc.compiler.pipeline import compile_loaded
    from tkc.schema.diagnostics import CompileError
    from tkc.schema.load import load_recipe

    def launch_files(recipe: Path) -> list[str]:
        seen: list[str] = []

        def trace(name, plan):
            if name == "render_launch":
                seen.extend(k for k in plan.values if k.startswith("_files.launch/"))
        try:
            compile_loaded(load_recipe(recipe, tolerant=True), trace=trace)
        except CompileError:
            pass
        return seen

    recipe = demo_copy / "demo.yaml"
    assert launch_files(recipe)
    typo = demo_copy / "typo.yaml"
    typo.write_text(recipe.read_text().replace("cutoff_len: 64", "cutoff_len: 64\n  pakcing: true"))
    assert launch_files(typo) == []


@pytest.mark.parametrize("verb", HOT_VERBS)
def test_declared_parameters_match_the_typer_command(verb):
    """The parser's reading of a verb's declarations is what typer builds from them (names, flags, kinds)."""
    import typer

    from tkc.cli.main import app

    command = typer.main.get_command(app).commands[verb]  # type: ignore[attr-defined]
    ours = {p.name: p for p in params(_hot_verb(verb))}
    assert [c.name for c in command.params if c.name != "help"] == list(ours)
    for c in command.params:
        if c.name == "help":
            continue
        p = ours[c.name]
        assert c.param_type_name == ("argument" if p.kind == "arg" else "option")
        assert c.required == p.required
        if p.kind != "arg":
            assert set(c.opts) == set(p.flags) and set(c.secondary_opts) == set(p.negative)
            assert c.multiple == (p.kind == "multi") and c.is_flag == (p.kind == "flag")


def test_parse_reads_what_typer_would():
    compile_ = _hot_verb("compile")
    assert parse(compile_, ["r.yaml", "-o", "out", "--set", "a=1", "--set=b.c=x", "--strict", "--no-strict",
                            "--source-root", "src", "--check"]) == {
        "recipe": Path("r.yaml"), "out": Path("out"), "set_": ["a=1", "b.c=x"], "source_root": Path("src"),
        "strict": False, "force": False, "check": True}
    assert parse(_hot_verb("explain"), ["r.yaml", "lr", "--passes"]) == {
        "recipe": Path("r.yaml"), "key": "lr", "set_": None, "passes": True}


@pytest.mark.parametrize("argv", [
    ["r.yaml", "--help"], ["-h"], [], ["a.yaml", "b.yaml"], ["r.yaml", "--bogus"], ["r.yaml", "-o"],
    ["r.yaml", "-o", "--check"], ["r.yaml", "--strict=yes"], ["--", "r.yaml"], ["r.yaml", "-oout"],
])
def test_parse_declines_what_typer_must_answer(argv):
    assert parse(_hot_verb("compile"), argv) is None
    assert run_hot(["compile", *argv]) is None


def _both(tkc, capsys, *args: str) -> tuple[tuple, tuple]:
    """(exit code, stdout, stderr) through the hot path and through the typer app."""
    hot = run_hot([str(a) for a in args])
    captured = capsys.readouterr()
    return (hot, captured.out, captured.err), tkc(*args)


def test_hot_path_and_typer_app_agree(tkc, capsys, demo_copy, tmp_path):
    recipe = demo_copy / "demo.yaml"
    typo = demo_copy / "typo.yaml"
    typo.write_text(recipe.read_text().replace("cutoff_len: 64", "cutoff_len: 64\n  pakcing: true"))
    out = tmp_path / "bundle"
    cases = [("compile", typo, "-o", tmp_path / "x"), ("compile", recipe, "--check"),
             ("explain", recipe, "learning_rate"), ("explain", recipe, "no.such.key"), ("explain", typo)]
    for args in cases:
        hot, typer_ = _both(tkc, capsys, *args)
        assert hot == typer_, args
    assert _both(tkc, capsys, "compile", recipe, "-o", out)[0][0] == 0   # write once, then both verify it
    for args in [("verify", out), ("compile", recipe, "-o", out)]:
        hot, typer_ = _both(tkc, capsys, *args)
        assert hot == typer_ and hot[0] == 0, args
    (out / "resolved.json").write_text("{}")
    hot, typer_ = _both(tkc, capsys, "verify", out)
    assert hot == typer_ and hot[0] == 1 and "FAILED verification" in hot[2]
