"""Check that both tools feed the model the same tokens: the peer's `qwen` template vs tkc's `qwen2_5`.

    .venv/bin/python bench/parity.py

Every record of alpaca_en_demo (SFT) and dpo_en_demo (DPO pairs) is tokenized by each tool: the peer via
`llamafactory-cli train` with `tokenized_path` (its saved rows are read back), tkc via its data pipeline
(bench/tkc_prep.py). Both insert Qwen2.5's default system prompt. Compared per record, in order: input_ids
and labels, rows matched on their token ids (each tool stores rows in its own order). At a cutoff no
record reaches (16384) this isolates the chat format; at the benchmark cutoff (512) the two tools'
truncation rules also show. Results: bench/results/parity.json.
"""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from common import TKC, TKC_PY, run, save, tkc_ready  # noqa: E402
from errors import PEER_ENV  # noqa: E402
from peer import CLI as PEER_CLI  # noqa: E402
from peer import ensure as ensure_peer  # noqa: E402
from tiny_assets import build as build_assets  # noqa: E402
from workloads import WORKLOADS, workdir, write_peer_config, write_tkc_recipe  # noqa: E402

DUMP_PEER = (
    "import json,sys; from datasets import load_from_disk; d=load_from_disk(sys.argv[1]); t=d['train'];"
    "cols=[c for c in t.column_names if c.endswith(('input_ids','labels'))];"
    "json.dump([{c: r[c] for c in cols} for r in t], open(sys.argv[2],'w'))"
)
FULL = {"sft_lora": 999, "dpo_lora": 300}


def peer_rows(w, model: Path, d: Path) -> list[dict] | str:
    shutil.rmtree(d, ignore_errors=True)
    cfg = write_peer_config(
        w, model, d / "out", d / "cfg.yaml", tokenized_path=str(d / "tokenized"), do_train=False
    )
    r = run(
        [PEER_CLI, "train", cfg],
        env={**PEER_ENV, "HF_DATASETS_CACHE": str(d / "hf")},
        timeout=300,
        stop_on=r"Tokenized dataset is saved",
    )
    if not (d / "tokenized").exists():
        return "peer failed: " + " | ".join(s for _, s in r.lines[-5:])
    dump = d / "rows.json"
    run([TKC_PY, "-c", DUMP_PEER, d / "tokenized", dump], timeout=120)
    return json.loads(dump.read_text())


def tkc_rows(w, model: Path, d: Path) -> list[dict] | str:
    shutil.rmtree(d, ignore_errors=True)
    recipe = write_tkc_recipe(w, model, d / "recipe.yaml")
    c = run([TKC, "compile", recipe, "-o", d / "run"], timeout=120)
    if c.returncode != 0:
        return "tkc compile failed: " + " | ".join(s for _, s in c.lines[-5:])
    r = run(
        [
            TKC_PY,
            Path(__file__).resolve().parent / "tkc_prep.py",
            d / "run",
            d / "cache",
            "--dump",
            d / "rows.json",
        ],
        timeout=300,
    )
    if r.returncode != 0:
        return "tkc data pipeline failed: " + " | ".join(s for _, s in r.lines[-5:])
    return json.loads((d / "rows.json").read_text())


def _decode(ids: list[int]) -> str:
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(build_assets() / "tokenizer.json")).decode(ids, skip_special_tokens=False)


def compare(p: list[dict], t: list[dict]) -> dict:
    """Rows matched as multisets on their token ids (the tools store rows in different orders)."""
    keys = sorted(k for k in p[0] if k in t[0]) if p and t else []
    ids = [k for k in keys if k.endswith("input_ids")]
    lab = [k for k in keys if k.endswith("labels")]
    by_ids: dict[tuple, list[dict]] = {}
    for b in t:
        by_ids.setdefault(tuple(tuple(b[k]) for k in ids), []).append(b)
    pairs, unmatched = [], []
    for a in p:
        bucket = by_ids.get(tuple(tuple(a[k]) for k in ids))
        (pairs.append((a, bucket.pop())) if bucket else unmatched.append(a))
    same_lab = sum(all(a[k] == b[k] for k in lab) for a, b in pairs)
    only_peer: dict[int, int] = {}
    only_tkc: dict[int, int] = {}
    for a, b in pairs:
        for k in lab:
            for x, y in zip(a[k], b[k], strict=True):
                if x != y and x != -100:
                    only_peer[x] = only_peer.get(x, 0) + 1
                if x != y and y != -100:
                    only_tkc[y] = only_tkc.get(y, 0) + 1

    def top(d: dict[int, int]) -> list:
        return [[_decode([k]), n] for k, n in sorted(d.items(), key=lambda kv: -kv[1])[:3]]

    return {
        "records": {"peer": len(p), "tkc": len(t)},
        "columns": keys,
        "same_order": [a[ids[0]] for a in p] == [b[ids[0]] for b in t] if ids else None,
        "identical_input_ids": len(pairs),
        "identical_labels": same_lab,
        "all_input_ids_identical": len(pairs) == len(p) == len(t),
        "all_labels_identical": same_lab == len(p) == len(t),
        "label_tokens_trained_only_by_peer": {
            "count": sum(only_peer.values()),
            "most_common": top(only_peer),
        },
        "label_tokens_trained_only_by_tkc": {"count": sum(only_tkc.values()), "most_common": top(only_tkc)},
        "rows_with_different_input_ids": len(unmatched),
    }


def main() -> dict:
    model = build_assets()
    ensure_peer()
    res: dict = {
        "template": {
            "peer": "qwen (default system prompt inserted)",
            "tkc": "qwen2_5 (default system prompt inserted)",
        },
        "cases": {},
    }
    ready = tkc_ready("run")
    for n, records in FULL.items():
        for cutoff in (16384, 512):
            w = WORKLOADS[n].__class__(**{**WORKLOADS[n].__dict__, "records": records, "cutoff": cutoff})
            d = workdir("parity", f"{n}-{cutoff}")
            p = peer_rows(w, model, d / "peer")
            t = tkc_rows(w, model, d / "tkc") if ready else "tkc runtime not available yet"
            key = f"{'sft' if n.startswith('sft') else 'dpo'}_cutoff{cutoff}"
            if isinstance(p, str) or isinstance(t, str):
                res["cases"][key] = {"error": p if isinstance(p, str) else t}
            else:
                res["cases"][key] = compare(p, t)
            print(key, {k: v for k, v in res["cases"][key].items() if k != "first_difference"}, flush=True)
    save("parity", res)
    return res


if __name__ == "__main__":
    main()
