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


def test_runtime_reads_only_the_bundle():
    """Every runtime module imported: none of the compile side's packages comes with it (the runtime reads
    the bundle, never the recipe schema, the catalog or the compiler)."""
    code = (
        "import importlib, pkgutil, sys\n"
        "import tkc.runtime\n"
        "names = [m.name for m in pkgutil.walk_packages(tkc.runtime.__path__, 'tkc.runtime.')]\n"
        "for name in names:\n"
        "    importlib.import_module(name)\n"
        "print(len(names))\n"
        "print(sorted(m for m in sys.modules if m.split('.')[:2] in "
        "(['tkc', 'catalog'], ['tkc', 'compiler'], ['tkc', 'schema'])))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    count, leaked = out.stdout.strip().splitlines()
    assert int(count) > 40  # the walk reached the stages, data and infer packages
    assert leaked == "[]", leaked


def test_inference_engines_import_the_interface_never_the_reverse():
    import ast

    infer = REPO / "src" / "tkc" / "runtime" / "infer"
    imported = {
        node.module
        for node in ast.walk(ast.parse((infer / "engine.py").read_text(encoding="utf-8")))
        if isinstance(node, ast.ImportFrom) and node.module
    }
    assert not {m for m in imported if m.startswith("tkc.runtime.infer")}, imported
    for impl in ("hf.py", "vllm_engine.py"):
        text = (infer / impl).read_text(encoding="utf-8")
        assert "tkc.runtime.infer.engine import" in text and "tkc.runtime.infer.factory" not in text


def test_bundle_is_the_base_layer():
    """tkc.bundle (the contract both sides read) and tkc.dataio import no other tkc package."""
    code = (
        "import importlib, pkgutil, sys\n"
        "import tkc.bundle, tkc.dataio\n"
        "names = [m.name for m in pkgutil.walk_packages(tkc.bundle.__path__, 'tkc.bundle.')]\n"
        "for name in names:\n"
        "    importlib.import_module(name)\n"
        "print(len(names))\n"
        "print(sorted({'.'.join(m.split('.')[:2]) for m in sys.modules if m.startswith('tkc.')}\n"
        "             - {'tkc.bundle', 'tkc.dataio'}))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, check=True)
    count, leaked = out.stdout.strip().splitlines()
    assert int(count) >= 10, count
    assert leaked == "[]", leaked
