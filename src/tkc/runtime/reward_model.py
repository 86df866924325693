"""The reward model of a ppo/grpo stage: an rm stage of this bundle, or an rm stage of another bundle.

Another bundle is named in the recipe as `reward_model: path/to/bundle[:stage]`; the compiler records it as
`options.reward_bundle = {"path", "bundle_hash", "stage"}` (path relative to the source root). Before loading,
the runtime checks that the bundle is still intact and still has the compiled hash (else exit 3: recompile to
use the new reward model), and that its rm stage finished (its DONE marker carries that bundle's hash). The model
is then loaded exactly as that bundle would load its own stage output: full weights as saved, or the LoRA
adapter merged onto the weights that stage started from (that bundle's base model or init_from stage).
"""

from __future__ import annotations

from pathlib import Path

import torch

from tkc.bundle.plan import (
    PlanError,
    ResolvedGrpoOptions,
    ResolvedPpoOptions,
    ResolvedRewardBundle,
    load_plan,
)
from tkc.runtime import outputs
from tkc.runtime.context import BundleChanged, RunContext, load_bundle_hash, resolve_source_root
from tkc.runtime.model import load_stage_output

RewardOptions = ResolvedPpoOptions | ResolvedGrpoOptions


def describe(options: RewardOptions) -> str:
    ref = options.reward_bundle
    return f"{ref.path}:{ref.stage}" if ref else str(options.reward_model)


def reward_bundle_context(ctx: RunContext, ref: ResolvedRewardBundle) -> RunContext:
    """A RunContext for the referenced bundle, after checking it is the compiled one and its rm stage is done.
    Its resolved.json is structured like `tkc run`'s own: PlanError (key path) when it does not fit."""
    from tkc.bundle.io import verify_bundle

    bundle_dir = (ctx.source_root / ref.path).resolve()
    if not (bundle_dir / "manifest.json").is_file():
        raise RuntimeError(f"reward bundle {bundle_dir} is gone (no manifest.json); this bundle was compiled "
                           f"against {ref.path} (hash {ref.bundle_hash[:12]})")
    problems = verify_bundle(bundle_dir)
    if problems:
        raise BundleChanged(f"reward bundle {bundle_dir} changed since this bundle was compiled: "
                            f"{'; '.join(problems[:3])}")
    actual = load_bundle_hash(bundle_dir)
    if actual != ref.bundle_hash:
        raise BundleChanged(f"reward bundle {bundle_dir} is now {actual[:12]}, but this bundle was compiled against "
                            f"{ref.bundle_hash[:12]}; recompile this recipe to use the new reward model")
    try:
        plan = load_plan(bundle_dir)
    except PlanError as exc:
        raise PlanError([f"reward bundle {bundle_dir}: {line}" for line in exc.errors]) from None
    other = RunContext(bundle_dir, plan, resolve_source_root(bundle_dir, None), actual, dist=ctx.dist)
    stage = other.stage_by_name(ref.stage)
    if stage.kind != "rm":
        raise RuntimeError(f"reward bundle {bundle_dir}: stage {ref.stage!r} is {stage.kind}, not rm")
    if not outputs.is_done(other, stage):
        raise RuntimeError(f"reward bundle {bundle_dir}: its rm stage {ref.stage!r} has not finished "
                           f"(no {Path('outputs', ref.stage, 'DONE')}); run `tkc run {bundle_dir}` first")
    return other


def load_reward_model(ctx: RunContext, options: RewardOptions, *, dtype: torch.dtype = torch.float32):
    """The frozen sequence-classification reward model the stage's options name (eval mode, no grads)."""
    ref = options.reward_bundle
    if ref:
        model = load_stage_output(reward_bundle_context(ctx, ref), ref.stage, dtype=dtype, head="seq_cls")
    else:
        assert options.reward_model is not None, "the compiler names a reward model or a reward function"
        kind = ctx.stage_by_name(options.reward_model).kind
        if kind != "rm":
            raise RuntimeError(f"reward_model {options.reward_model!r} is a {kind} stage, not an rm stage")
        model = load_stage_output(ctx, options.reward_model, dtype=dtype, head="seq_cls")
    return model.eval().requires_grad_(False)
