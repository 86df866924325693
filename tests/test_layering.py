"""The compile path (schema, catalog, bundle, compiler, CLI) never imports heavy ML libraries."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]

HEAVY = ("torch", "transformers", "datasets", "trl", "peft", "accelerate", "deepspeed", "vllm")


def test_compile_path_imports_no_heavy_library(tmp_path):
    code = (
        "import sys\n"
        "from tkc.cli.main import app\n"
        "from tkc.compiler import compile_recipe\n"
        "from tkc.bundle.io import write_bundle\n"
        "c = compile_recipe('recipes/demo.yaml')\n"
        "write_bundle(__import__('pathlib').Path(sys.argv[1]), c.files, {}, '0')\n"
        f"print(sorted({{m.split('.')[0] for m in sys.modules}} & set({HEAVY!r})))\n"
    )
    out = subprocess.run([sys.executable, "-c", code, str(tmp_path / "b")], cwd=REPO, capture_output=True,
                         text=True, check=True)
    assert out.stdout.strip() == "[]", out.stdout


def test_runtime_is_not_imported_by_cli_module():
    out = subprocess.run([sys.executable, "-c", "import sys, tkc.cli.main; "
                          "print(any(m.startswith('tkc.runtime') for m in sys.modules))"],
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
