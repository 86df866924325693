"""Benchmark evals (MMLU, CMMLU, C-Eval layouts) compiled and run: exact accuracies from a model built to always
answer C, the per-choice probabilities recomputed independently with transformers, and the file hash check."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[2]
FIXTURES = REPO / "tests" / "fixtures"
TINY = REPO / "recipes" / "assets" / "tiny-qwen2"
EN = ("The following are multiple choice questions (with answers) about {}.\n\n", "\nAnswer:")


def build_model(folder: Path, letter: str | None) -> Path:
    """The tiny Qwen2 with seeded weights; with `letter`, rewired so its next-token logits rank that letter first
    among A-D after any prompt not ending in a letter: the final norm keeps only dimension 0, which no layer writes
    (o_proj and down_proj rows 0 are zero), so it is the last token's embedding[0] (5) over the RMS; the tied head
    scores token t by embedding[t][0] times that, and the letter's is 6 (the other letters' 5)."""
    from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer

    folder.mkdir(parents=True)
    for f in TINY.iterdir():
        shutil.copy(f, folder / f.name)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(AutoConfig.from_pretrained(TINY))
    if letter:
        tok = AutoTokenizer.from_pretrained(TINY)
        with torch.no_grad():
            model.model.norm.weight.zero_()
            model.model.norm.weight[0] = 1.0
            model.model.embed_tokens.weight[:, 0] = 5.0
            model.model.embed_tokens.weight[tok.encode(letter, add_special_tokens=False)[-1], 0] = 6.0
            for layer in model.model.layers:
                layer.self_attn.o_proj.weight[0].zero_()
                layer.mlp.down_proj.weight[0].zero_()
    model.save_pretrained(folder)
    return folder


def compile_and_run(folder: Path, stages: str) -> tuple[int, Path]:
    from tkc.bundle.io import write_bundle
    from tkc.compiler.pipeline import compile_recipe
    from tkc.runtime.run import run_bundle

    for name in ("mmlu", "cmmlu", "ceval"):
        if not (folder / name).exists():
            shutil.copytree(FIXTURES / f"{name}_sample", folder / name)
    shutil.copy(REPO / "recipes" / "data" / "arith_sft.jsonl", folder / "sft.jsonl")
    recipe = folder / "r.yaml"
    recipe.write_text("name: mc\nmodel: {path: model}\ndata: {datasets: {sft: {path: sft.jsonl}}}\n"
                      f"stages:\n{stages}hardware: cpu\n")
    compiled = compile_recipe(recipe)
    bundle = folder / "run"
    write_bundle(bundle, compiled.files, {"source_root": str(compiled.source_root)}, compiled.plan.inputs.tkc_version,
                 True, compiled.sources)
    return run_bundle(bundle), bundle


def metrics(bundle: Path, stage: str) -> dict:
    return json.loads((bundle / "outputs" / stage / "metrics.json").read_text())


def predictions(bundle: Path, stage: str) -> list[dict]:
    return [json.loads(x) for x in (bundle / "outputs" / stage / "predictions.jsonl").read_text().splitlines()]


@pytest.mark.slow
def test_a_model_that_answers_c_scores_exactly_the_c_answers(tmp_path, capsys):
    """The samples' answer keys (their READMEs): C is right 2/4, 3/5, 2/3 times (MMLU), 1/2 and 2/3 (CMMLU), 1/2
    (C-Eval val); chat prompts with shots and a plain prompt alike."""
    build_model(tmp_path / "model", "C")
    code, bundle = compile_and_run(tmp_path, (
        "  - {kind: eval, name: mmlu, metric: mmlu, benchmark: {path: mmlu, n_shot: 2, batch_size: 3}}\n"
        "  - {kind: eval, name: plain, metric: mmlu, benchmark: {path: mmlu, n_shot: 1, prompt: plain}}\n"
        "  - {kind: eval, name: cmmlu, metric: cmmlu, benchmark: {path: cmmlu, n_shot: 1}}\n"
        "  - {kind: eval, name: ceval, metric: ceval, benchmark: {path: ceval, n_shot: 1}}\n"))
    assert code == 0
    for stage in ("mmlu", "plain"):
        m = metrics(bundle, stage)
        assert {k: (v["correct"], v["total"], v["category"]) for k, v in m["subjects"].items()} == {
            "abstract_algebra": (2, 4, "STEM"), "high_school_geography": (3, 5, "Social Sciences"),
            "philosophy": (2, 3, "Humanities")}
        assert (m["correct"], m["total"], m["accuracy"]) == (7, 12, 7 / 12)
        assert m["macro_accuracy"] == pytest.approx((2 / 4 + 3 / 5 + 2 / 3) / 3, abs=1e-12)
        assert {k: v["accuracy"] for k, v in m["categories"].items()} == {
            "STEM": 0.5, "Social Sciences": 0.6, "Humanities": 2 / 3}
        assert {p["prediction"] for p in predictions(bundle, stage)} == {"C"}
    cm, ce = metrics(bundle, "cmmlu"), metrics(bundle, "ceval")
    assert {k: (v["correct"], v["total"]) for k, v in cm["subjects"].items()} == {
        "chinese_history": (2, 3), "college_mathematics": (1, 2)}
    assert (ce["subjects"]["logic"]["correct"], ce["subjects"]["logic"]["total"], ce["split"]) == (1, 2, "val")
    out = capsys.readouterr().out
    assert "high_school_geography" in out and "Macro average" in out and "58.33" in out


def lf_messages(rows: list[dict], subject: str) -> list[dict]:
    """LLaMA-Factory's EvalTemplate.format_example (en), written out again: shots as turns, the target last."""
    def text(r):
        return r["question"] + "".join(f"\n{c}. {r[c]}" for c in "ABCD") + EN[1]
    messages = []
    for shot in rows[:-1]:
        messages += [{"role": "user", "content": text(shot)}, {"role": "assistant", "content": shot["answer"]}]
    messages.append({"role": "user", "content": text(rows[-1])})
    messages[0]["content"] = EN[0].format(subject) + messages[0]["content"]
    return messages


def read_csv(path: Path) -> list[dict]:
    import csv

    with open(path, encoding="utf-8", newline="") as f:
        return [dict(zip(("question", "A", "B", "C", "D", "answer"), r, strict=True)) for r in csv.reader(f)]


@pytest.mark.slow
def test_choice_probabilities_match_a_direct_computation(tmp_path):
    """Each question's probabilities over A-D equal those of one unbatched forward of the tokenizer's own chat
    template (transformers' apply_chat_template) over LLaMA-Factory's prompt; accuracy is their argmax's."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model_dir = build_model(tmp_path / "model", None)
    code, bundle = compile_and_run(tmp_path, "  - {kind: eval, name: mmlu, metric: mmlu, benchmark: {path: mmlu, "
                                             "n_shot: 1, batch_size: 3}}\n")
    assert code == 0
    tok, model = AutoTokenizer.from_pretrained(model_dir), AutoModelForCausalLM.from_pretrained(model_dir).eval()
    letters = [tok.encode(c, add_special_tokens=False)[-1] for c in "ABCD"]
    got = {(p["subject"], p["index"]): p for p in predictions(bundle, "mmlu")}
    correct = 0
    for subject in ("abstract_algebra", "high_school_geography", "philosophy"):
        dev = read_csv(tmp_path / "mmlu" / "data" / "dev" / f"{subject}_dev.csv")
        for i, row in enumerate(read_csv(tmp_path / "mmlu" / "data" / "test" / f"{subject}_test.csv")):
            text = tok.apply_chat_template(lf_messages([dev[0], row], subject.replace("_", " ")), tokenize=False,
                                           add_generation_prompt=True)
            with torch.no_grad():
                logits = model(input_ids=torch.tensor([tok(text, add_special_tokens=False)["input_ids"]])).logits
            probs = torch.softmax(logits[0, -1, letters].float(), -1).tolist()
            ours = got[(subject, i)]
            assert [ours["probs"][c] for c in "ABCD"] == pytest.approx(probs, abs=1e-5)
            pick = "ABCD"[max(range(4), key=probs.__getitem__)]
            assert ours["prediction"] == pick
            correct += pick == row["answer"]
    assert metrics(bundle, "mmlu")["correct"] == correct


def test_a_benchmark_file_changed_after_compile_is_refused(tmp_path, capsys):
    from tkc.runtime.run import run_bundle

    build_model(tmp_path / "model", "C")
    code, bundle = compile_and_run(tmp_path, "  - {kind: eval, name: ce, metric: ceval, benchmark: {path: ceval, "
                                             "n_shot: 0}}\n")
    assert code == 0
    shutil.rmtree(bundle / "outputs")
    path = tmp_path / "ceval" / "val" / "logic_val.csv"
    path.write_text(path.read_text(encoding="utf-8").replace(",D\n", ",C\n"), encoding="utf-8")
    assert run_bundle(bundle) == 2
    out = capsys.readouterr().out
    assert "ceval/val/logic_val.csv changed since compile" in out and "recompile" in out
    assert not (bundle / "outputs" / "ce" / "metrics.json").exists()
