"""What the README promises a new user stays true: CI runs its test command; its catalog counts are real."""

from __future__ import annotations

import re
from pathlib import Path

from tkc.catalog.registry import families, profiles, templates

REPO = Path(__file__).resolve().parents[1]
README = (REPO / "README.md").read_text(encoding="utf-8")


def test_ci_runs_the_readme_test_command():
    ci = [line.strip() for line in (REPO / ".ci" / "run").read_text().splitlines()
          if line.strip() and not line.startswith("#")]
    assert ci[-1] == "make test"
    assert re.search(r"^make test\b", README, re.M) and re.search(r"^make demo\b", README, re.M)


def _catalog_counts() -> dict[str, int]:
    """The counts the README states, read from the catalog's data files (not written down anywhere else)."""
    return {"chat templates": len(templates()), "model families": len(families()),
            "hardware profiles": len(profiles())}


def test_catalog_counts_in_readme():
    for what, count in _catalog_counts().items():
        assert f"**{count} {what}**" in README, what


def test_no_stale_catalog_count_in_readme_or_docs():
    """Every "N chat templates" / "N model families" / "N hardware profiles" in README.md and docs/ is the catalog's."""
    counts = _catalog_counts()
    for doc in [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]:
        text = doc.read_text(encoding="utf-8")
        for m in re.finditer(r"\b(\d+)\*{0,2} (chat templates|model families|hardware profiles)\b", text):
            assert int(m.group(1)) == counts[m.group(2)], f"{doc.name}: {m.group(0)!r}, the catalog has {counts[m.group(2)]}"


def test_every_recipe_is_listed():
    for recipe in sorted((REPO / "recipes").glob("*.yaml")):
        assert recipe.name in README, recipe.name
