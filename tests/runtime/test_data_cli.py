"""`tkc data inspect` on a bundle folder: counts, histogram, truncation, highlighted example, bad-record exit."""

import importlib.util
import json
import shutil
from pathlib import Path

from typer.testing import CliRunner

from tkc.bundle import write_bundle
from tkc.cli.data import _histogram, app
from tkc.compiler.inputs import _model_files

_spec = importlib.util.spec_from_file_location(
    "data_helpers", Path(__file__).parents[1] / "fixtures/data/data_helpers.py"
)
H = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(H)


def _bundle(tmp_path: Path, data_file: str, **entry_kw) -> Path:
    src = tmp_path / "src"
    (src / "data").mkdir(parents=True)
    shutil.copy(H.FIXTURES / data_file, src / "data" / data_file)
    H.tokenizer().save_pretrained(src / "tok")
    e = H.entry("d", f"data/{data_file}", "alpaca", "sft", src, **entry_kw)
    resolved = H.resolved_tree([e], cutoff_len=16, stages=[H.stage_tree("sft", ["d"])])  # model: src/tok
    resolved["model"]["files"] = _model_files(src / "tok")  # as the compiler records them: checked before loading
    bundle = tmp_path / "bundle"   # written with a manifest, as tkc compile does: inspect verifies it first
    write_bundle(bundle, {"resolved.json": json.dumps(resolved).encode(),
                          "template/chat_template.jinja": H.CHATML.encode()}, {"source_root": str(src)}, "test")
    return bundle


def test_inspect_bundle(tmp_path):
    bundle = _bundle(tmp_path, "sft_ok.jsonl")
    result = CliRunner().invoke(
        app, ["inspect", str(bundle), "--cache-dir", str(tmp_path / "cache")], terminal_width=200
    )
    assert result.exit_code == 0, result.output
    out = result.output
    assert "dataset d: 3 records, 3 converted, 0 skipped" in out
    assert "truncated to cutoff: 3" in out and "token length histogram" in out
    assert "example row 0" in out and "<|im_end|>" in out


def test_inspect_reports_bad_record(tmp_path):
    bundle = _bundle(tmp_path, "sft_broken.jsonl")
    result = CliRunner().invoke(
        app, ["inspect", str(bundle), "--cache-dir", str(tmp_path / "cache")], terminal_width=200
    )
    assert result.exit_code == 2
    assert "data/sft_broken.jsonl:3: column 'output' (response) is int 2" in result.output


def test_histogram_bins():
    lines = _histogram([1, 2, 2, 10], 3)
    assert len(lines) == 3 and lines[0].split()[:2] == ["1-4", "3"]
    assert _histogram([5, 5], 10) == ["       5-5            2  ########################################"]


def test_inspect_compiles_a_recipe_in_memory(tmp_path):
    recipe = H.REPO / "recipes" / "tiny_sft_dpo.yaml"
    result = CliRunner().invoke(
        app, ["inspect", str(recipe), "--stage", "dpo", "--cache-dir", str(tmp_path)], terminal_width=200
    )
    assert result.exit_code == 0, result.output
    assert "stage dpo (dpo)" in result.output and "chosen_input_ids" in result.output
    assert not (H.REPO / "recipes" / "run").exists()  # nothing written next to the recipe


def test_inspect_in_plain_text_marks_trained_spans_and_shows_each_cut(tmp_path):
    bundle = _bundle(tmp_path, "sft_ok.jsonl")
    result = CliRunner().invoke(
        app, ["inspect", str(bundle), "--cache-dir", str(tmp_path / "cache")], terminal_width=200
    )
    assert result.exit_code == 0, result.output
    out = result.output  # not a terminal: no colour, so the trained tokens are marked in the text itself
    assert "trained ⟦between these marks⟧, the rest masked" in out
    example = out.split("the rest masked):\n", 1)[1]
    assert example.count("⟦") == example.count("⟧") >= 1 and "<|im_end|>⟧" in example
    assert "dropped (tool definition cut): 0" in out
    cuts = [line.strip() for line in out.splitlines() if line.strip().startswith("cut data/sft_ok.jsonl:")]
    assert len(cuts) == 3 and "earlier turn(s) dropped" in cuts[0] and "prompt and" in cuts[0]
