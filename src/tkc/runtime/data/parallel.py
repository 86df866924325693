"""Render + tokenize large datasets in spawned worker processes: the same rows, order and bad-record reports.

Why spawn: forking a process whose Rust tokenizer has already run its thread pool deadlocks (seen here),
so workers start fresh, rebuild the tokenizer from its serialized JSON and the chat spec from plain data.
Each worker runs the tokenizer single-threaded; parallelism comes from the processes.
"""

from __future__ import annotations

import os
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict

import numpy as np

from tkc.bundle.chat import ChatTemplate
from tkc.runtime.data.encode import Counters, EncodeOptions, encode_pairwise, encode_sft

# Below this many examples a worker's start-up (fresh interpreter, numpy, jinja2) costs more than it saves.
MIN_EXAMPLES_PER_WORKER = 5000
_STATE: tuple | None = None


class _Tokenizer:
    """What `encode_texts` needs from a tokenizer: the Rust backend."""

    def __init__(self, backend):
        self.backend_tokenizer = backend


def auto_workers(n_items: int) -> int:
    return max(1, min(os.cpu_count() or 1, 8, n_items // MIN_EXAMPLES_PER_WORKER))


def can_parallelize(tokenizer, chat: ChatTemplate | None) -> bool:
    return getattr(tokenizer, "backend_tokenizer", None) is not None and chat is not None


def _init(tokenizer_json: str, chat: dict, opts: dict) -> None:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one tokenizer thread per worker process
    from tokenizers import Tokenizer

    global _STATE
    _STATE = (_Tokenizer(Tokenizer.from_str(tokenizer_json)), ChatTemplate(**chat), EncodeOptions(**opts))


def rows_to_columns(rows: list[dict]) -> tuple[list[str], list] | list[dict]:
    """Rows as columns: each int-array column as (one flat array, lengths), others as lists.

    One flat array per column pickles much faster than three small arrays per row, on both sides of a
    chunk's trip back to the parent. Rows with differing keys travel as they are.
    """
    if not rows or any(r.keys() != rows[0].keys() for r in rows):
        return rows
    keys, cols = list(rows[0]), []
    for k in keys:
        vals = [r[k] for r in rows]
        if isinstance(vals[0], np.ndarray):
            lengths = np.fromiter(map(len, vals), dtype=np.int64, count=len(vals))
            cols.append((np.concatenate(vals), lengths))
        else:
            cols.append(vals)
    return keys, cols


def columns_to_rows(packed: tuple[list[str], list] | list[dict]) -> list[dict]:
    """The rows `rows_to_columns` turned into columns (array columns come back as views of one array per column)."""
    if isinstance(packed, list):
        return packed
    keys, cols = packed
    split = [np.split(c[0], np.cumsum(c[1])[:-1]) if isinstance(c, tuple) else c for c in cols]
    return [dict(zip(keys, vals, strict=True)) for vals in zip(*split, strict=True)]


def _work(job: tuple[str, list]) -> tuple[tuple | list, list, Counters]:
    kind, chunk = job
    assert _STATE is not None
    tokenizer, chat, opts = _STATE
    bad: list = []
    counters = Counters()
    if kind in ("rm", "dpo"):
        rows = encode_pairwise(chunk, tokenizer, chat, opts, bad.append, counters)
    else:
        rows = encode_sft(chunk, tokenizer, chat, opts, bad.append, counters, kto=kind == "kto")
    return rows_to_columns(rows), bad, counters


class Workers:
    """Spawned processes that render and tokenize chunks of examples, in input order.

    Started before the examples are converted, so the workers' start-up (a fresh interpreter, numpy,
    jinja2, the tokenizer) overlaps the parent's reading and conversion instead of following it.
    """

    def __init__(self, tokenizer, chat: ChatTemplate, opts: EncodeOptions, workers: int):
        import multiprocessing

        init = (tokenizer.backend_tokenizer.to_str(), asdict(chat), asdict(opts))
        self._pool = ProcessPoolExecutor(
            workers, mp_context=multiprocessing.get_context("spawn"), initializer=_init, initargs=init
        )
        for _ in range(workers):
            self._pool.submit(int)  # a spawn pool starts a process per submission that finds none idle

    def encode(self, kind: str, items: list, on_bad, counters: Counters, batch: int) -> list[dict]:
        """Chunks of `batch` examples mapped over the workers; results and bad records kept in input order."""
        jobs = [(kind, items[i : i + batch]) for i in range(0, len(items), batch)]
        rows: list[dict] = []
        for part, bad, c in self._pool.map(_work, jobs):
            for exc in bad:
                on_bad(exc)  # raises on the first record of an `on_bad_record: error` dataset
            counters.merge(c)
            rows += columns_to_rows(part)
        return rows

    def close(self) -> None:
        self._pool.shutdown(wait=True, cancel_futures=True)
