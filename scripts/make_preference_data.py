"""Write the shipped preference (DPO/RM) and KTO demo data: arithmetic answers, right vs. wrong, seeded."""

from __future__ import annotations

import json
import random
from pathlib import Path

OUT = Path(__file__).resolve().parents[1] / "recipes" / "data"


def _wrong(rng: random.Random, right: int) -> int:
    return right + rng.choice([-10, -2, -1, 1, 2, 10])


def main(n: int = 300, seed: int = 1234) -> None:
    rng = random.Random(seed)
    pref, kto = [], []
    for _ in range(n):
        a, b = rng.randint(0, 99), rng.randint(0, 99)
        q = f"What is {a}+{b}?"
        pref.append({"instruction": q, "input": "", "chosen": str(a + b), "rejected": str(_wrong(rng, a + b))})
        good = rng.random() < 0.5
        kto.append({"instruction": q, "input": "", "output": str(a + b if good else _wrong(rng, a + b)),
                    "label": good})
    for name, rows in (("arith_pref.jsonl", pref), ("arith_kto.jsonl", kto)):
        text = "".join(json.dumps(r, sort_keys=True) + "\n" for r in rows)
        (OUT / name).write_text(text, encoding="utf-8")


if __name__ == "__main__":
    main()
