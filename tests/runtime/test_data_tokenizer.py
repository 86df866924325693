"""One tokenizer loader: `tkc data inspect` and `tkc run` load the tokenizer alike, so they share cached rows;
rows are read by the stage's own kind (ppo, grpo and eval read unpacked sft rows, only sft packs)."""

from __future__ import annotations

import json
import shutil

from typer.testing import CliRunner

from tkc.runtime import data
from tkc.runtime.stages.common import load_rows


def _model_without_pad(rt, tmp_path):
    model = tmp_path / "nopad"
    shutil.copytree(rt.RECIPES / "assets" / "tiny-qwen2", model)
    config = json.loads((model / "tokenizer_config.json").read_text())
    config["pad_token"] = None
    (model / "tokenizer_config.json").write_text(json.dumps(config))
    return model


def _entries(cache):
    return sorted(p.name for p in cache.glob("*/*") if p.is_dir())  # <key[:2]>/<key>


def test_inspect_and_run_share_the_cache_entry_for_a_tokenizer_without_pad_token(rt, tmp_path):
    from transformers import AutoTokenizer

    from tkc.cli.data import app

    model = _model_without_pad(rt, tmp_path)
    assert AutoTokenizer.from_pretrained(model).pad_token is None  # the case this test is about
    plan = rt.resolved([rt.stage("sft", "sft", 0, ["arith_sft"])], model_path=str(model))
    plan["datasets"]["arith_sft"]["max_samples"] = 50
    bundle = rt.write_bundle(tmp_path / "bundle", plan)
    result = CliRunner().invoke(app, ["inspect", str(bundle)], terminal_width=200)  # the bundle's own cache
    assert result.exit_code == 0, result.output
    cache = bundle / "outputs" / ".cache"
    built_by_inspect = _entries(cache)
    assert len(built_by_inspect) == 1

    ctx = rt.make_ctx(bundle)  # as `tkc run` builds it
    tok = ctx.tokenizer()
    assert tok.pad_token == tok.eos_token == "<|im_end|>"
    built = data.build_stage_data(ctx.plan, ctx.stage_by_name("sft"), tok, ctx.source_root, cache,
                                  template_text=ctx.chat_template(), bundle_dir=ctx.bundle_dir)  # fmt: skip
    assert built.stats["cache_hit"] is True
    assert built.cache_path.name in built_by_inspect and _entries(cache) == built_by_inspect


def test_rows_follow_the_stage_kind_so_eval_and_grpo_read_unpacked_rows(rt, tmp_path):
    stages = [rt.stage("sft", "sft", 0, ["arith_sft"]), rt.stage("eval", "eval", 1, ["arith_sft"]),
              rt.stage("grpo", "grpo", 2, ["arith_sft"])]  # fmt: skip
    plan = rt.resolved(stages)
    plan["data"]["packing"] = True
    for d in plan["datasets"].values():
        d["max_samples"] = 12
    ctx = rt.make_ctx(rt.write_bundle(tmp_path / "bundle", plan))

    packed, _ = load_rows(ctx, ctx.stage_by_name("sft"))
    assert "position_ids" in packed[0] and len(packed) < 12  # sft packs several examples into a row
    for name in ("eval", "grpo"):  # these split each row into prompt and reference: one example a row
        rows, _ = load_rows(ctx, ctx.stage_by_name(name))
        assert len(rows) == 12 and all("position_ids" not in r for r in rows)
