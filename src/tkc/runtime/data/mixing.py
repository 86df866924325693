"""Combine several datasets (concat or weighted interleave) and split off an eval set, deterministically from the seed."""

from __future__ import annotations

import numpy as np


def mix(parts: list[list], weights: list[float], mode: str, seed: int) -> list:
    """`concat`: every example once, shuffled. `interleave`: draw a dataset by weight each step until one runs out.

    Interleave follows HF `interleave_datasets(stopping_strategy="first_exhausted")`: weights set the share of
    each dataset in the mix, so the largest-weight dataset is read fully only if it runs out first.
    """
    rng = np.random.default_rng(seed)
    if mode == "concat":
        everything = [x for part in parts for x in part]
        return [everything[i] for i in rng.permutation(len(everything))]
    if mode != "interleave":
        raise ValueError(f"unknown data.mix {mode!r}; expected 'concat' or 'interleave'")
    shuffled = [[p[i] for i in rng.permutation(len(p))] for p in parts]
    w = np.asarray(weights, dtype=np.float64)
    if (w < 0).any() or w.sum() <= 0:
        raise ValueError(f"dataset weights must be >= 0 with a positive sum, got {weights}")
    draws = rng.choice(len(parts), size=sum(len(p) for p in parts), p=w / w.sum())
    cursor, out = [0] * len(parts), []
    for k in draws:
        if cursor[k] == len(shuffled[k]):
            break
        out.append(shuffled[k][cursor[k]])
        cursor[k] += 1
    return out


def split_eval(items: list, val_size: float, seed: int) -> tuple[list, list]:
    """(train, eval): val_size < 1 is a fraction, >= 1 a count; eval is taken from a seeded permutation."""
    if not val_size:
        return items, []
    n_eval = int(val_size) if val_size >= 1 else max(1, int(round(len(items) * val_size)))
    if n_eval >= len(items):
        raise ValueError(f"val_size {val_size} leaves no training examples out of {len(items)}")
    order = np.random.default_rng(seed + 1).permutation(len(items))
    held = set(order[:n_eval].tolist())
    return [x for i, x in enumerate(items) if i not in held], [items[i] for i in sorted(held)]
