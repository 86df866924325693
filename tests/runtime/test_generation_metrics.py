"""Generation metrics (runtime/metrics.py) equal the reference libraries' figures computed the way LLaMA-Factory
computes them; jieba stays quiet and caches inside the given folder; the infer stage writes them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PAIRS = [  # (prediction, reference)
    ("今天天气很好，我们去公园散步吧。", "今天天气不错，我们去公园走走。"),
    ("机器学习是人工智能的一个分支", "机器学习是人工智能的重要分支之一"),
    ("The cat sat on the mat.", "The cat is sitting on the mat."),
    ("034567", "034567"),
    ("", "something"),
    ("completely different words", "nothing in common here"),
]


def reference_scores(prediction: str, reference: str) -> dict:
    """scripts/eval_bleu_rouge.py compute_metrics of LLaMA-Factory, with the libraries called directly."""
    import jieba
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
    from rouge_chinese import Rouge

    hyp, ref = list(jieba.cut(prediction)), list(jieba.cut(reference))
    bleu = sentence_bleu([list(reference)], list(prediction), smoothing_function=SmoothingFunction().method3)
    if len(" ".join(hyp).split()) == 0 or len(" ".join(ref).split()) == 0:
        result = {"rouge-1": {"f": 0.0}, "rouge-2": {"f": 0.0}, "rouge-l": {"f": 0.0}}
    else:
        result = Rouge().get_scores(" ".join(hyp), " ".join(ref))[0]
    out = {k: round(v["f"] * 100, 4) for k, v in result.items()}
    out["bleu-4"] = round(bleu * 100, 4)
    return out


@pytest.mark.parametrize("prediction,reference", PAIRS)
def test_row_scores_equal_the_libraries(prediction, reference, tmp_path):
    from tkc.runtime.metrics import row_scores

    got = row_scores(prediction, reference, tmp_path)
    want = reference_scores(prediction, reference)
    assert {k: got[k] for k in want} == want
    assert got["exact_match"] == (100.0 if prediction == reference else 0.0)


def test_known_figures_and_the_average(tmp_path):
    from tkc.runtime.metrics import generation_scores, row_scores

    same = row_scores("034567", "034567", tmp_path)
    assert same["rouge-1"] == same["rouge-l"] == 100.0 and same["exact_match"] == 100.0 and same["bleu-4"] > 80
    assert row_scores("", "something", tmp_path) == {"rouge-1": 0.0, "rouge-2": 0.0, "rouge-l": 0.0,
                                                     "bleu-4": 0.0, "exact_match": 0.0}
    rows = [reference_scores(p, r) for p, r in PAIRS]
    means = generation_scores(PAIRS, tmp_path)
    for key in ("bleu-4", "rouge-1", "rouge-2", "rouge-l"):
        assert means[key] == pytest.approx(sum(r[key] for r in rows) / len(rows), abs=1e-9)
    assert means["exact_match"] == pytest.approx(100 / len(PAIRS))
    assert generation_scores([], tmp_path) == {}


def test_jieba_is_quiet_and_caches_in_the_given_folder(tmp_path):
    code = ("import sys, pathlib; from tkc.runtime.metrics import row_scores; "
            "print(row_scores('今天天气很好', '今天天气不错', pathlib.Path(sys.argv[1]))['rouge-1'])")
    env = {**os.environ, "TMPDIR": str(tmp_path / "tmp")}
    (tmp_path / "tmp").mkdir()
    done = subprocess.run([sys.executable, "-c", code, str(tmp_path / "cache")], capture_output=True, text=True,
                          timeout=120, env=env)
    assert done.returncode == 0 and done.stderr == "", done.stderr
    assert float(done.stdout) > 0
    assert [p.name for p in (tmp_path / "cache").iterdir()] == ["jieba.cache"]
    assert not list((tmp_path / "tmp").iterdir())


def test_infer_stage_writes_generation_metrics(rt, tmp_path, tiny_pretrained, capsys):
    from tkc.runtime.metrics import generation_scores
    from tkc.runtime.run import run_bundle

    stages = [rt.stage("infer", "infer", 0, ["arith_eval"], options={"max_new_tokens": 4})]
    plan = rt.resolved(stages, model_path=str(tiny_pretrained), init="pretrained")
    plan["datasets"]["arith_eval"]["max_samples"] = 4
    bundle = rt.write_bundle(tmp_path / "run", plan)
    assert run_bundle(bundle) == 0
    out = bundle / "outputs" / "infer"
    rows = [json.loads(x) for x in (out / "predictions.jsonl").read_text().splitlines()]
    metrics = json.loads((out / "metrics.json").read_text())
    want = generation_scores([(r["prediction"], r["reference"]) for r in rows])
    assert metrics["scored"] == len(rows) > 0
    assert {k: metrics[k] for k in want} == want
    assert "bleu-4" in capsys.readouterr().out
