"""`tkc verify`: recompute every hash of a bundle and refuse any change since compile; check finished stages too."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

from tkc.cli.params import Arg


def _print_problem(where: Path, p) -> None:
    line = f"{where / p.path}: {p.problem}"
    if p.expected or p.actual:
        line += f"\n    expected sha256 {p.expected or '-'}\n    actual   sha256 {p.actual or '-'}"
    print(line, file=sys.stderr)


def _check_outputs(bundle: Path, bundle_hash: str | None) -> tuple[int, list[str]]:
    """Each finished stage (outputs/<stage>/DONE) against the manifest written when it finished:
    (problem count, one line per intact stage)."""
    from tkc.bundle.stage_outputs import (
        STAGE_MANIFEST,
        check_stage_outputs,
        finished_stages,
        read_stage_manifest,
    )

    failed, intact = 0, []
    for stage_dir in finished_stages(bundle):
        problems = check_stage_outputs(stage_dir, bundle_hash)
        for p in problems:
            _print_problem(stage_dir, p)
        failed += len(problems)
        if not problems:
            count = len((read_stage_manifest(stage_dir) or {}).get("files", {}))
            intact.append(f"ok outputs/{stage_dir.name}: {count} file(s) match its {STAGE_MANIFEST} "
                          "(written when the stage finished)")
    return failed, intact


def verify(bundle: Annotated[Path, Arg("Bundle directory.")]) -> int:
    """Exit 0 if every file matches the manifest and each finished stage's outputs match the manifest written when
    it finished; otherwise list what changed and exit 1."""
    from tkc.bundle.io import check_bundle, read_manifest

    problems = check_bundle(bundle)
    for p in problems:
        _print_problem(bundle, p)
    bundle_hash = None if problems else read_manifest(bundle)["bundle_hash"]
    failed, intact = _check_outputs(bundle, bundle_hash)
    failed += len(problems)
    if failed:
        print(f"tkc: bundle {bundle} FAILED verification ({failed} problem(s))", file=sys.stderr)
        return 1
    print("\n".join([f"ok {bundle_hash}", *intact]))
    return 0
