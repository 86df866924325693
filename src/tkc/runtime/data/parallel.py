"""Render + tokenize large datasets in spawned worker processes: the same rows, order and bad-record reports.

Why spawn: forking a process whose Rust tokenizer has already run its thread pool deadlocks (seen here),
so workers start fresh, rebuild the tokenizer from its serialized JSON and the chat spec from plain data.
Each worker runs the tokenizer single-threaded; parallelism comes from the processes.
"""

from __future__ import annotations

import os
import pickle
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict

from tkc.runtime.data.encode import ChatSpec, Counters, EncodeOptions, encode_pairwise, encode_sft

# Below this many examples a worker's start-up (fresh interpreter, numpy, jinja2) costs more than it saves.
MIN_EXAMPLES_PER_WORKER = 5000
_STATE: tuple | None = None


class _Tokenizer:
    """What `encode_texts` needs from a tokenizer: the Rust backend."""

    def __init__(self, backend):
        self.backend_tokenizer = backend


def auto_workers(n_items: int) -> int:
    return max(1, min(os.cpu_count() or 1, 8, n_items // MIN_EXAMPLES_PER_WORKER))


def can_parallelize(tokenizer, chat: ChatSpec | None) -> bool:
    if getattr(tokenizer, "backend_tokenizer", None) is None or chat is None:
        return False
    try:
        pickle.dumps(chat.spans_fn)
    except Exception:  # a test's local function: stay in-process
        return False
    return True


def _init(tokenizer_json: str, chat: dict, opts: dict) -> None:
    os.environ["TOKENIZERS_PARALLELISM"] = "false"  # one tokenizer thread per worker process
    from tokenizers import Tokenizer

    global _STATE
    _STATE = (_Tokenizer(Tokenizer.from_str(tokenizer_json)), ChatSpec(**chat), EncodeOptions(**opts))


def _work(job: tuple[str, list]) -> tuple[list, list, Counters]:
    kind, chunk = job
    assert _STATE is not None
    tokenizer, chat, opts = _STATE
    bad: list = []
    counters = Counters()
    if kind in ("rm", "dpo"):
        rows = encode_pairwise(chunk, tokenizer, chat, opts, bad.append, counters)
    else:
        rows = encode_sft(chunk, tokenizer, chat, opts, bad.append, counters, kto=kind == "kto")
    return rows, bad, counters


def encode_parallel(
    kind, items, tokenizer, chat, opts, on_bad, counters, batch: int, workers: int
) -> list[dict]:
    """Chunks of `batch` examples mapped over `workers` processes; results and bad records kept in input order."""
    init = (tokenizer.backend_tokenizer.to_str(), asdict(chat), asdict(opts))
    jobs = [(kind, items[i : i + batch]) for i in range(0, len(items), batch)]
    rows: list[dict] = []
    import multiprocessing

    pool = ProcessPoolExecutor(
        workers, mp_context=multiprocessing.get_context("spawn"), initializer=_init, initargs=init
    )
    try:
        for part, bad, c in pool.map(_work, jobs):
            for exc in bad:
                on_bad(exc)  # raises on the first record of an `on_bad_record: error` dataset
            counters.truncated += c.truncated
            counters.dropped_no_labels += c.dropped_no_labels
            rows += part
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
    return rows
