"""Write the demo's synthetic data to recipes/data/ (deterministic: same bytes on every run).

The task: sort the digits of a string of 3 to 6 distinct digits ("604735" -> "034567"). Qwen2's pre-tokenizer
splits every digit into its own token, so this is a rule over ten symbols. Sorting is found by content, not by
position (the next answer digit is the smallest prompt digit above the last one written), so what the model
learns on raw text still works inside the chat template, whose tokens sit between question and answer. The 100
eval strings are drawn first and are in no training file: exact match measures the rule, not recall.

Files (the names keep their historical `arith_` prefix: other recipes and tests refer to them):
  arith_text.jsonl  pt:   {"text": "604735>034567"}                                raw text, no instructions
  arith_sft.jsonl   sft:  {"instruction": "Sort 604735", "input": "", "output": "034567"}   (rows fit cutoff_len 64)
  arith_eval.jsonl  eval: same format as sft; strings that are in no training file

Tried first, on this 2-core CPU (tiny Qwen2: 4 layers, hidden 128), all at 0% held-out exact match:
  * addition: single-digit (80 facts taught, 20 held out); two-digit, ~2% after 5 CPU minutes;
  * reversing 3-6 digit strings: pt loss stayed at the input entropy (~2.05) for 650 steps;
  * adding 1 to each digit of a 4-digit string: learned on raw text "4829>5930" in ~100 steps (answer 4 tokens
    after its digit), but neither LoRA nor full SFT moved it into the chat template, where the answer sits 8
    tokens after its digit; raw text with that same distance ("4829 becomes 5930") was not learned in 546 steps.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path


def make(out: Path, *, min_len: int = 3, max_len: int = 6, n_text: int = 30000, n_sft: int = 4000,
         n_eval: int = 100, seed: int = 0) -> dict[str, int]:
    """Eval strings first (distinct), then training strings drawn from the others."""
    rng = random.Random(seed)
    held: list[str] = []
    while len(held) < n_eval:
        s = "".join(rng.sample("0123456789", rng.randint(min_len, max_len)))
        if s not in held:
            held.append(s)

    def fresh(n: int) -> list[str]:
        got: list[str] = []
        while len(got) < n:
            s = "".join(rng.sample("0123456789", rng.randint(min_len, max_len)))
            if s not in held:
                got.append(s)
        return got

    def qa(s: str) -> dict[str, str]:
        return {"instruction": f"Sort {s}", "input": "", "output": "".join(sorted(s))}

    files = {
        "arith_text.jsonl": [{"text": f"{s}>{''.join(sorted(s))}"} for s in fresh(n_text)],
        "arith_sft.jsonl": [qa(s) for s in fresh(n_sft)],
        "arith_eval.jsonl": [qa(s) for s in held],
    }
    out.mkdir(parents=True, exist_ok=True)
    for name, rows in files.items():
        body = "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows)
        (out / name).write_text(body, encoding="utf-8")
    return {name: len(rows) for name, rows in files.items()}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "recipes" / "data")
    parser.add_argument("--min-len", type=int, default=3)
    parser.add_argument("--max-len", type=int, default=6)
    parser.add_argument("--n-text", type=int, default=30000)
    parser.add_argument("--n-sft", type=int, default=4000)
    parser.add_argument("--n-eval", type=int, default=100)
    args = parser.parse_args()
    print(make(args.out, min_len=args.min_len, max_len=args.max_len, n_text=args.n_text, n_sft=args.n_sft, n_eval=args.n_eval))
