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
    allow_env_drift: Annotated[bool, typer.Option(help="Run even when the installed packages differ from the "
                                                       "bundle's pins (versions, extra packages, modified files); "
                                                       "the differences are printed and recorded in each "
                                                       "stage's run_record.json. Without it: exit 4.")] = False,
    strict_env: Annotated[bool, typer.Option(hidden=True, help="Accepted and ignored: refusing environment "
                                                               "drift is the default.")] = False,
) -> None:
    """Verify the bundle, check the environment and the model files, then run each stage deterministically."""
    from tkc.runtime.run import run_bundle

    raise typer.Exit(run_bundle(bundle, stage=stage, source_root=source_root, allow_env_drift=allow_env_drift,
                                strict_env=strict_env, own_process=True))
