"""Write the demo's synthetic addition data to recipes/data/ (deterministic: same bytes on every run).

Single-digit addition (a, b in 0..9): a table small enough for the tiny model to learn in a CPU minute,
with 20 of its 100 facts held out of every training file so the eval shows what it inferred, not recalled.
(Two-digit addition was tried first: after ~5 CPU minutes the tiny model still scored ~2% on held-out sums.)
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path


def make(out: Path, *, max_operand: int = 9, n_eval: int = 20, n_sft: int | None = None, per_line: int = 8,
         text_repeats: int = 30, seed: int = 0) -> dict[str, int]:
    """Pretraining text = `text_repeats` freshly shuffled passes over the training facts, `per_line` per line."""
    rng = random.Random(seed)
    pairs = [(a, b) for a in range(max_operand + 1) for b in range(max_operand + 1)]
    rng.shuffle(pairs)
    held, rest = pairs[:n_eval], pairs[n_eval:]
    text = []
    for _ in range(text_repeats):
        order = rest[:]
        rng.shuffle(order)
        text += [" ".join(f"{a}+{b}={a + b}" for a, b in order[i:i + per_line]) for i in range(0, len(order), per_line)]
    qa = [{"instruction": f"What is {a}+{b}?", "input": "", "output": str(a + b)} for a, b in rest[:n_sft]]
    files = {
        "arith_text.jsonl": [{"text": line} for line in text],
        "arith_sft.jsonl": qa,
        "arith_eval.jsonl": [{"instruction": f"What is {a}+{b}?", "input": "", "output": str(a + b)} for a, b in held],
    }
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in files.items():
        body = "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows)
        (out / name).write_text(body, encoding="utf-8")
    return {name: len(rows) for name, rows in files.items()}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "recipes" / "data")
    parser.add_argument("--max-operand", type=int, default=9)
    parser.add_argument("--n-eval", type=int, default=20)
    args = parser.parse_args()
    print(make(args.out, max_operand=args.max_operand, n_eval=args.n_eval))
