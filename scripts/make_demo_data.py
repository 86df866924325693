"""Write the demo's synthetic addition data to recipes/data/ (deterministic: same bytes on every run)."""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path


def make(out: Path, *, max_operand: int = 99, n_eval: int = 200, n_sft: int = 4000, per_line: int = 8,
         seed: int = 0) -> dict[str, int]:
    """Held-out eval pairs never appear in the pretraining text or the SFT set."""
    rng = random.Random(seed)
    pairs = [(a, b) for a in range(max_operand + 1) for b in range(max_operand + 1)]
    rng.shuffle(pairs)
    held, rest = pairs[:n_eval], pairs[n_eval:]
    out.mkdir(parents=True, exist_ok=True)
    lines = [" ".join(f"{a}+{b}={a + b}" for a, b in rest[i:i + per_line]) for i in range(0, len(rest), per_line)]
    files = {
        "arith_text.jsonl": [{"text": line} for line in lines],
        "arith_sft.jsonl": [{"instruction": f"What is {a}+{b}?", "input": "", "output": str(a + b)}
                            for a, b in rest[:n_sft]],
        "arith_eval.jsonl": [{"instruction": f"What is {a}+{b}?", "input": "", "output": str(a + b)} for a, b in held],
    }
    for name, rows in files.items():
        text = "".join(json.dumps(r, ensure_ascii=False, sort_keys=True) + "\n" for r in rows)
        (out / name).write_text(text, encoding="utf-8")
    return {name: len(rows) for name, rows in files.items()}


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--out", type=Path, default=Path(__file__).resolve().parent.parent / "recipes" / "data")
    parser.add_argument("--n-sft", type=int, default=4000)
    parser.add_argument("--n-eval", type=int, default=200)
    args = parser.parse_args()
    print(make(args.out, n_sft=args.n_sft, n_eval=args.n_eval))
