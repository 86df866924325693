"""Export stage (kind: export): the init_from stage's model as a folder other tools load, with tokenizer and template.

merge_adapter true: the adapter is merged and full safetensors weights are saved (a full-weights stage is saved
as it is). false: the LoRA adapter itself (adapter_config.json + adapter_model.safetensors), which applies to the
weights that stage started from (metrics.json `base`: the stage it was initialised from, or the bundle's model)."""

from __future__ import annotations

from tkc.bundle.plan import ResolvedStage
from tkc.runtime import outputs
from tkc.runtime.checkpoint import save_model_dir
from tkc.runtime.context import RunContext
from tkc.runtime.model import DTYPES, load_stage_adapter, load_stage_output


def run(ctx: RunContext, stage: ResolvedStage) -> int:
    opts = stage.options
    source = stage.init_from or ctx.plan.stages[stage.index - 1].name  # the stage before it, by the compiler's rule
    merge, dtype = bool(opts.merge_adapter), opts.dtype
    model = (load_stage_output(ctx, source) if merge else load_stage_adapter(ctx, source)).to(DTYPES[dtype])
    if ctx.dist.is_main:
        target, template = ctx.stage_dir(stage) / "model", ctx.chat_template()

        def write(folder) -> None:
            model.save_pretrained(str(folder), safe_serialization=True)
            ctx.tokenizer().save_pretrained(str(folder))
            if template is not None:
                (folder / "chat_template.jinja").write_text(template, encoding="utf-8")

        save_model_dir(target, write)  # atomic; SaveFailed on a full disk; adapter configs byte-stable
        record = {"source_stage": source, "dtype": dtype}
        if not merge:
            record.update(merged=False, base=ctx.stage_by_name(source).init_from or "model")
        outputs.write_json(ctx.stage_dir(stage) / "metrics.json", record)
        how = "adapter merged" if merge else "adapter, not merged"
        ctx.log(f"[{stage.name}] exported {source} ({how}) to {target}")
    outputs.mark_done(ctx, stage)
    return 0
