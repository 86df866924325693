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


def test_catalog_counts_in_readme():
    for count, what in ((len(templates()), "chat templates"), (len(families()), "model families"),
                        (len(profiles()), "hardware profiles")):
        assert f"**{count} {what}**" in README, what


def test_every_recipe_is_listed():
    for recipe in sorted((REPO / "recipes").glob("*.yaml")):
        assert recipe.name in README, recipe.name
