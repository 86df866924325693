"""tkc side of the preprocessing benchmark: run tkc's data pipeline for one stage of a compiled bundle.

    .venv/bin/python bench/tkc_prep.py BUNDLE CACHE_DIR [--dump rows.json]

Times `tkc.runtime.data.build_stage_data` exactly as `tkc run` calls it, up to rows ready as a
memory-mapped Arrow dataset (the peer's figure likewise ends when its dataset is ready); turning them into
Python lists, which `tkc run`'s stages do next, is timed apart as materialize_s. Library imports
(`datasets`, ~0.9 s) happen before the clock starts, as the peer's happen before its window opens; the
launch -> data-ready figure of bench/preprocess.py includes them for both tools. (tokenizer from the bundle's model,
the bundle's chat template, content-addressed cache in CACHE_DIR). Prints one JSON line:
{"prep_s", "materialize_s", "cache_hit", "rows", "tokens"}; --dump writes the token ids and labels (parity check).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("bundle", type=Path)
    ap.add_argument("cache_dir", type=Path)
    ap.add_argument("--dump", type=Path)
    a = ap.parse_args()
    import datasets  # noqa: F401  imported before the clock starts, as the peer's are before its window

    from tkc.bundle.plan import load_plan
    from tkc.runtime import data
    from tkc.runtime.context import RunContext, load_bundle_hash, resolve_source_root

    bundle = a.bundle.resolve()
    plan = load_plan(bundle)
    ctx = RunContext(bundle, plan, resolve_source_root(bundle, None), load_bundle_hash(bundle))
    stage = plan.stages[0]
    tok = ctx.tokenizer()
    t0 = time.perf_counter()
    built = data.build_stage_data(
        plan,
        stage,
        tok,
        ctx.source_root,
        a.cache_dir,
        template_text=ctx.chat_template(),
        bundle_dir=bundle,
    )
    prep = time.perf_counter() - t0  # the pipeline itself: rows ready as a memory-mapped Arrow dataset
    rows = list(built.train)  # what a stage then does (load_rows): Python lists, timed apart
    materialize = time.perf_counter() - t0 - prep
    tokens = sum(len(v) for r in rows for k, v in r.items() if k.endswith("input_ids"))
    if a.dump:
        keep = [{k: list(v) for k, v in r.items() if k.endswith(("input_ids", "labels"))} for r in rows]
        a.dump.write_text(json.dumps(keep))
    print(
        json.dumps(
            {
                "prep_s": prep,
                "materialize_s": materialize,
                "cache_hit": bool(built.stats.get("cache_hit")),
                "rows": len(rows),
                "tokens": tokens,
            }
        )
    )
    sys.stdout.flush()


if __name__ == "__main__":
    main()
