"""A finished stage's outputs, sealed when it finishes and checked before anything reads them (tkc.bundle.stage_outputs).

`seal` runs in `outputs.mark_done`, just before DONE. `require_intact` runs before a model is built from another
stage's outputs (init_from, export, eval/infer, a reward model, the chat/serve engines): a stage that has not
finished, or whose files changed, were added or removed since, is refused before any weights load.
"""

from __future__ import annotations

from pathlib import Path

from tkc.bundle.plan import ResolvedStage
from tkc.bundle.stage_outputs import DONE, STAGE_MANIFEST, check_stage_outputs, write_stage_manifest
from tkc.runtime.context import RunContext


class StageOutputsChanged(RuntimeError):
    """A finished stage's outputs differ from its manifest (`tkc run` exits 2: an invalid bundle)."""


def seal(ctx: RunContext, stage: ResolvedStage) -> None:
    """outputs/<stage>/manifest.json: the sha256 of every file the stage left (main rank only)."""
    if ctx.dist.is_main:
        write_stage_manifest(ctx.stage_dir(stage), stage.name, ctx.bundle_hash)


def require_intact(ctx: RunContext, name: str) -> Path:
    """The stage's output folder, once its every file matches the manifest written when it finished."""
    stage_dir = ctx.stage_dir(name)
    if not (stage_dir / DONE).is_file():
        raise RuntimeError(f"stage {name!r} has not finished (no {stage_dir / DONE}), so its outputs cannot be "
                           f"used; run it first: tkc run {ctx.bundle_dir} --stage {name}")
    problems = check_stage_outputs(stage_dir, ctx.bundle_hash)
    if not problems:
        return stage_dir
    lines = []
    for p in problems[:20]:
        line = f"  {stage_dir / p.path}: {p.problem}"
        if p.expected or p.actual:
            line += f"\n      expected sha256 {p.expected or '-'}\n      actual   sha256 {p.actual or '-'}"
        lines.append(line)
    more = f"\n  ... and {len(problems) - 20} more" if len(problems) > 20 else ""
    raise StageOutputsChanged(
        f"the outputs of finished stage {name!r} differ from {stage_dir / STAGE_MANIFEST} "
        f"(written when it finished); refusing to load them:\n" + "\n".join(lines) + more
        + f"\n  restore the files, or move {stage_dir} aside and run the stage again")
