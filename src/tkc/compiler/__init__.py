"""The compiler: pure passes from a validated recipe to a resolved, hashable bundle."""

from tkc.compiler.pipeline import PASSES, Compiled, compile_recipe

__all__ = ["PASSES", "Compiled", "compile_recipe"]
