"""Shared fixtures: repo paths, the shared demo datasets, and a CLI runner that captures exit codes."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
RECIPES = REPO / "recipes"
SHARED_DATASETS = REPO.parent / "shared" / "datasets"


@pytest.fixture
def shared_datasets() -> Path:
    if not SHARED_DATASETS.is_dir():
        pytest.skip(f"shared demo datasets not found at {SHARED_DATASETS}")
    return SHARED_DATASETS


@pytest.fixture
def demo_copy(tmp_path: Path) -> Path:
    """A private copy of recipes/ (demo recipe, tiny model assets, demo data) to edit freely."""
    dst = tmp_path / "recipes"
    shutil.copytree(RECIPES, dst)
    return dst


@pytest.fixture
def tkc():
    """Invoke the real CLI in-process; returns (exit code, stdout, stderr)."""
    from typer.testing import CliRunner

    from tkc.cli.main import app

    runner = CliRunner()

    def invoke(*args: str) -> tuple[int, str, str]:
        result = runner.invoke(app, [str(a) for a in args])
        if result.exception and not isinstance(result.exception, SystemExit):
            raise result.exception
        return result.exit_code, result.stdout, result.stderr

    return invoke
