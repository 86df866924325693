"""Generation metrics of predictions against references: BLEU-4, ROUGE-1/2/L and exact match, as percentages.

Computed as LLaMA-Factory computes them (src/llamafactory/train/sft/metric.py, ComputeSimilarity, and
scripts/eval_bleu_rouge.py), so the numbers compare: per row, ROUGE F1 from `rouge_chinese.Rouge().get_scores` on the
jieba-segmented texts joined by spaces (0 when either side segments to nothing), BLEU-4 from nltk's `sentence_bleu` on
the texts' characters with `SmoothingFunction().method3`; each x100, rounded to 4 places, then averaged over rows.
Exact match (ours): the share of rows whose prediction equals the reference after stripping surrounding whitespace.
jieba is kept quiet (its log level) and its dictionary cache is written under the caller's cache folder.
"""

from __future__ import annotations

import logging
import warnings
from pathlib import Path

KEYS = ("bleu-4", "rouge-1", "rouge-2", "rouge-l", "exact_match")


def _jieba(cache_dir: Path | None):
    import jieba

    jieba.setLogLevel(logging.CRITICAL)
    if cache_dir is not None and jieba.dt.tmp_dir != str(cache_dir):
        cache_dir.mkdir(parents=True, exist_ok=True)
        jieba.dt.tmp_dir = str(cache_dir)
    return jieba


def row_scores(prediction: str, reference: str, cache_dir: Path | None = None) -> dict[str, float]:
    """One row's scores (x100), exactly as LLaMA-Factory's compute_metrics for one sample."""
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu
    from rouge_chinese import Rouge

    jieba = _jieba(cache_dir)
    hypothesis, ref_words = list(jieba.cut(prediction)), list(jieba.cut(reference))
    if len(" ".join(hypothesis).split()) == 0 or len(" ".join(ref_words).split()) == 0:
        rouge = {"rouge-1": {"f": 0.0}, "rouge-2": {"f": 0.0}, "rouge-l": {"f": 0.0}}
    else:
        rouge = Rouge().get_scores(" ".join(hypothesis), " ".join(ref_words))[0]
    with warnings.catch_warnings():  # nltk warns about missing n-gram orders on short texts; smoothing handles them
        warnings.simplefilter("ignore")
        bleu = sentence_bleu([list(reference)], list(prediction), smoothing_function=SmoothingFunction().method3)
    out = {k: round(v["f"] * 100, 4) for k, v in rouge.items()}
    out["bleu-4"] = round(float(bleu) * 100, 4)
    out["exact_match"] = 100.0 if prediction.strip() == reference.strip() else 0.0
    return out


def generation_scores(pairs: list[tuple[str, str]], cache_dir: Path | None = None) -> dict[str, float]:
    """The mean of each score over (prediction, reference) pairs; empty when there are none."""
    if not pairs:
        return {}
    rows = [row_scores(p, r, cache_dir) for p, r in pairs]
    return {k: sum(row[k] for row in rows) / len(rows) for k in KEYS}


def table(scores: dict[str, float], count: int) -> str:
    head = f"{'metric':<12}  {'score':>8}"
    lines = [f"generation metrics over {count} rows with a reference (percent)", head, "-" * len(head)]
    return "\n".join(lines + [f"{k:<12}  {scores[k]:8.2f}" for k in KEYS])
