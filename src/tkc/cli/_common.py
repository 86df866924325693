"""Shared CLI helpers: printing diagnostics and exit codes."""

from __future__ import annotations

import sys

from tkc.schema.diagnostics import CompileError

EXIT_INVALID = 2


def report(exc: CompileError) -> int:
    """Print every diagnostic to stderr (one per line) and return the invalid-input exit code."""
    n = len(exc.diagnostics)
    for diag in exc.diagnostics:
        print(diag.render(), file=sys.stderr)
    print(f"tkc: {n} problem{'s' if n != 1 else ''} found; nothing was written", file=sys.stderr)
    return EXIT_INVALID
