"""CLI parameters declared without typer, so the hot verbs (compile, verify, explain) start without importing it.

Such a verb is a plain function returning its exit code, each parameter annotated `Annotated[T, Arg(help)]` or
`Annotated[T, Opt(help, *flags)]`. `parse` reads argv for it and declines (returns None) whatever it does not fully
understand (--help, `--`, unknown or malformed options, missing or extra arguments): main.py then hands the
command line to the typer app, built from the same declarations, which prints the help or the usage error.
"""

from __future__ import annotations

import inspect
import types
import typing
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

_HELP_FLAGS = ("-h", "--help")


class Arg:
    """A positional argument."""

    def __init__(self, help: str) -> None:
        self.help = help


class Opt:
    """An option; `flags` default to --<name> (booleans: --<name>/--no-<name>, as typer makes them)."""

    def __init__(self, help: str, *flags: str) -> None:
        self.help, self.flags = help, flags


@dataclass(frozen=True)
class Param:
    name: str
    kind: str                   # arg | value | multi | flag
    flags: tuple[str, ...]      # option spellings; a flag's negative spellings are in `negative`
    negative: tuple[str, ...]
    required: bool
    default: Any
    hint: Any                   # the annotation without the Arg/Opt marker, e.g. Path | None
    decl: Arg | Opt

    def convert(self, text: str) -> Any:
        return Path(text) if _base(self.hint) is Path else text


def _members(hint: Any) -> list[Any]:
    if typing.get_origin(hint) in (typing.Union, types.UnionType):
        return [a for a in typing.get_args(hint) if a is not type(None)]
    return [hint]


def _base(hint: Any) -> Any:
    """Path | None -> Path; list[str] | None -> list; bool -> bool."""
    members = _members(hint)
    if len(members) != 1:
        raise TypeError(f"unsupported CLI parameter type {hint!r}")
    return typing.get_origin(members[0]) or members[0]


def _param(p: inspect.Parameter, annotated: Any) -> Param:
    hint, *extras = typing.get_args(annotated)
    decl = next(e for e in extras if isinstance(e, (Arg, Opt)))
    required = p.default is inspect.Parameter.empty
    if isinstance(decl, Arg):
        return Param(p.name, "arg", (), (), required, None if required else p.default, hint, decl)
    base, dashed = _base(hint), p.name.strip("_").replace("_", "-")
    if base is bool:
        return Param(p.name, "flag", decl.flags or (f"--{dashed}",), () if decl.flags else (f"--no-{dashed}",),
                     False, p.default, hint, decl)
    if base not in (str, Path, list):
        raise TypeError(f"unsupported CLI parameter type {hint!r} for {p.name}")
    return Param(p.name, "multi" if base is list else "value", decl.flags or (f"--{dashed}",), (), False,
                 p.default, hint, decl)


def params(func: Callable[..., int]) -> list[Param]:
    """The declared parameters of a verb, in signature order."""
    hints = typing.get_type_hints(func, include_extras=True)
    return [_param(p, hints[p.name]) for p in inspect.signature(func).parameters.values()]


def _option(spec: list[Param], values: dict[str, Any], token: str, rest: list[str]) -> bool:
    """Apply one option token (consuming its value from `rest`); False when it is not understood."""
    name, eq, text = token.partition("=") if token.startswith("--") else (token, "", "")
    p = next((p for p in spec if name in p.flags or name in p.negative), None)
    if p is None or (p.kind == "flag" and eq):
        return False
    if p.kind == "flag":
        values[p.name] = name in p.flags
        return True
    if not eq:
        if not rest or rest[0].startswith("-"):
            return False
        text = rest.pop(0)
    if p.kind == "multi":
        values[p.name] = [*(values[p.name] or []), p.convert(text)]
    else:
        values[p.name] = p.convert(text)
    return True


def parse(func: Callable[..., int], argv: list[str]) -> dict[str, Any] | None:
    """Keyword arguments for `func` from argv, or None when typer should handle this command line."""
    spec = params(func)
    values = {p.name: p.default for p in spec}
    positional: list[str] = []
    rest = list(argv)
    while rest:
        token = rest.pop(0)
        if token in _HELP_FLAGS or token == "--":
            return None
        if token.startswith("-") and token != "-":
            if not _option(spec, values, token, rest):
                return None
        else:
            positional.append(token)
    args = [p for p in spec if p.kind == "arg"]
    if len(positional) > len(args) or len(positional) < sum(p.required for p in args):
        return None
    for p, text in zip(args, positional, strict=False):
        values[p.name] = p.convert(text)
    return values
