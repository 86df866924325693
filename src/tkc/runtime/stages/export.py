"""Export stage (kind: export): merge the adapter of the init_from stage and save full safetensors weights."""

from __future__ import annotations

from tkc.runtime import outputs
from tkc.runtime.checkpoint import save_model_dir
from tkc.runtime.context import RunContext
from tkc.runtime.model import DTYPES, load_stage_output


def run(ctx: RunContext, stage: dict) -> int:
    opts = stage.get("options") or {}
    source = stage.get("init_from") or ctx.resolved["stages"][stage["index"] - 1]["name"]
    model = load_stage_output(ctx, source).to(DTYPES[opts.get("dtype", "fp32")])
    if ctx.dist.is_main:
        target, template = ctx.stage_dir(stage) / "model", ctx.chat_template()

        def write(folder) -> None:
            model.save_pretrained(str(folder), safe_serialization=True)
            ctx.tokenizer().save_pretrained(str(folder))
            if template is not None:
                (folder / "chat_template.jinja").write_text(template, encoding="utf-8")

        save_model_dir(target, write)  # atomic; SaveFailed on a full disk; adapter configs byte-stable
        outputs.write_json(ctx.stage_dir(stage) / "metrics.json", {"source_stage": source, "dtype": opts.get("dtype", "fp32")})
        ctx.log(f"[{stage['name']}] exported {source} (adapter merged) to {target}")
    outputs.mark_done(ctx, stage)
    return 0
