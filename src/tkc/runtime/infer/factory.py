"""Picks and builds an inference engine over a bundle's stage output (`load_engine`), and what it needs."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from tkc.bundle.plan import load_plan
from tkc.runtime.context import RunContext, load_bundle_hash, resolve_source_root
from tkc.runtime.infer.engine import Engine

ENGINES = ("hf", "vllm")
MODEL_LESS_KINDS = ("eval", "infer")  # stages that write no model/: chat with the model they read


def open_context(bundle: Path, source_root: Path | None = None) -> RunContext:
    """A RunContext for a bundle directory, as `tkc run` builds it (no distributed setup). Its resolved.json is
    structured once (load_plan): PlanError naming the key path when it does not fit; callers exit 2 on it."""
    bundle = Path(bundle).resolve()
    return RunContext(
        bundle, load_plan(bundle), resolve_source_root(bundle, source_root), load_bundle_hash(bundle)
    )


def model_stage(ctx: RunContext, stage_name: str | None) -> str | None:
    """The stage whose outputs/<stage>/model/ to load: the named one (an eval/infer stage: the model it reads),
    or, when none is named, the last stage that wrote a language model (an rm stage's model scores, it does not
    generate: it is served only when named); None means the bundle's base model."""
    if stage_name is None:
        done = [s for s in ctx.plan.stages if s.kind != "rm" and (ctx.stage_dir(s) / "model").is_dir()]
        return max(done, key=lambda s: s.index).name if done else None
    stage = ctx.stage_by_name(stage_name)
    if stage.kind in MODEL_LESS_KINDS:
        return model_stage(ctx, stage.init_from) if stage.init_from else None
    if not (ctx.stage_dir(stage) / "model").is_dir():
        raise RuntimeError(
            f"stage {stage_name!r} has no model yet ({ctx.stage_dir(stage) / 'model'}); "
            f"run it first: tkc run {ctx.bundle_dir} --stage {stage_name}"
        )
    return stage_name


def load_engine(
    ctx_or_bundle: RunContext | Path | str, stage_name: str | None = None, engine: str = "hf", **options: Any
) -> Engine:
    """An engine over a stage's output model (adapter merged or full weights); None: the bundle's base model.

    An eval/infer stage name means the model that stage reads. `options` go to the engine's from_bundle.
    """
    ctx = ctx_or_bundle if isinstance(ctx_or_bundle, RunContext) else open_context(Path(ctx_or_bundle))
    stage_name = model_stage(ctx, stage_name) if stage_name is not None else None
    if engine == "hf":
        from tkc.runtime.infer.batching import BatchingEngine

        return BatchingEngine.from_bundle(ctx, stage_name, **options)
    if engine == "vllm":
        from tkc.runtime.infer.vllm_engine import VLLMEngine

        return VLLMEngine.from_bundle(ctx, stage_name, **options)
    raise ValueError(f"unknown engine {engine!r}; expected one of {ENGINES}")
