"""`tkc run`: execute a bundle's stages (the only verb that imports the training runtime)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer


def run(
    bundle: Annotated[Path, typer.Argument(help="Bundle directory written by tkc compile.")],
    stage: Annotated[str | None, typer.Option(help="Run only this stage.")] = None,
    source_root: Annotated[Path | None, typer.Option(help="Where the bundle's relative data/model paths "
                                                           "resolve (default: recorded at compile).")] = None,
    strict_env: Annotated[bool, typer.Option(help="Refuse to run when installed versions differ from the "
                                                  "bundle's pins.")] = False,
) -> None:
    """Verify the bundle, check the environment, then train/evaluate each stage deterministically."""
    from tkc.runtime.run import run_bundle

    raise typer.Exit(run_bundle(bundle, stage=stage, source_root=source_root, strict_env=strict_env, own_process=True))
