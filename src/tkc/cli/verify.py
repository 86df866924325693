"""`tkc verify`: recompute every hash of a bundle and refuse any change since compile."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

from tkc.cli.params import Arg


def verify(bundle: Annotated[Path, Arg("Bundle directory.")]) -> int:
    """Exit 0 if every file matches the manifest; otherwise list what changed and exit 1."""
    from tkc.bundle.io import check_bundle, read_manifest

    problems = check_bundle(bundle)
    if problems:
        for p in problems:
            line = f"{bundle}/{p.path}: {p.problem}"
            if p.expected or p.actual:
                line += f"\n    expected sha256 {p.expected or '-'}\n    actual   sha256 {p.actual or '-'}"
            print(line, file=sys.stderr)
        print(f"tkc: bundle {bundle} FAILED verification ({len(problems)} problem(s))", file=sys.stderr)
        return 1
    print(f"ok {read_manifest(bundle)['bundle_hash']}")
    return 0
