"""Turn pydantic validation errors into positioned diagnostics with 'did you mean' hints."""

from __future__ import annotations

import reprlib
import types
import typing
from typing import Any, Union, get_args, get_origin

from pydantic import BaseModel, ValidationError

from tkc.schema.diagnostics import Diagnostic, did_you_mean
from tkc.schema.top import RecipeSpec
from tkc.schema.yaml_loader import KeyPath, Position, dotted

_CODES = {"extra_forbidden": "SCHEMA001", "missing": "SCHEMA003"}
_REPR = reprlib.Repr()
_REPR.maxlevel, _REPR.maxdict, _REPR.maxlist, _REPR.maxstring, _REPR.maxother, _REPR.maxlong = 3, 6, 6, 80, 80, 40


def _got(value: Any) -> str:
    """The offending value for a message: its repr, shortened (it may be a whole mapping, or a 1 MiB string)."""
    return _REPR.repr(value)


def data_path(loc: tuple[Any, ...], data: Any) -> KeyPath:
    """Drop the union/tag parts pydantic adds to a location (e.g. 'sft', 'HardwareSpec'), keeping data keys."""
    path: list[str | int] = []
    node = data
    for part in loc:
        if isinstance(node, list) and isinstance(part, int) and part < len(node):
            node = node[part]
        elif isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, dict) and isinstance(part, str) and (part == node.get("kind") or _is_type_part(part)):
            continue
        elif node is not None and not isinstance(node, dict) and isinstance(part, str) and _is_type_part(part):
            continue  # a scalar or list checked against each member of a union (`template: 5`): one key, not one per member
        else:
            path.append(part)
            node = None
            continue
        path.append(part)
    return tuple(path)


_TYPE_PARTS = ("str", "int", "float", "bool")


def _is_type_part(part: str) -> bool:
    return part in _TYPE_PARTS or not part.islower() or "[" in part


def _members(tp: Any) -> list[Any]:
    if get_origin(tp) is typing.Annotated:
        return _members(get_args(tp)[0])
    if get_origin(tp) in (Union, types.UnionType):
        return [m for a in get_args(tp) for m in _members(a)]
    return [tp]


def _step(tp: Any, part: Any) -> Any:
    """The type found one location step below `tp` (a model field, a list item, a dict value, a union tag)."""
    for member in _members(tp):
        if isinstance(member, type) and issubclass(member, BaseModel):
            if part in member.model_fields:
                return member.model_fields[part].annotation
            kind = member.model_fields.get("kind")
            if kind is not None and part in get_args(kind.annotation):
                return member
            if part == member.__name__:
                return member
        elif get_origin(member) is list and isinstance(part, int):
            return get_args(member)[0]
        elif get_origin(member) is dict:
            return get_args(member)[1]
    return None


def allowed_keys(loc: tuple[Any, ...]) -> list[str]:
    """Field names accepted at the mapping that contains `loc[-1]`."""
    tp: Any = RecipeSpec
    for part in loc[:-1]:
        tp = _step(tp, part)
        if tp is None:
            return []
    return [n for m in _members(tp) if isinstance(m, type) and issubclass(m, BaseModel) for n in m.model_fields]


def _nested_hint(word: str, loc: tuple[Any, ...]) -> str | None:
    """'lerning_rate' under a stage -> "did you mean 'train.learning_rate'?" (one level down)."""
    candidates: dict[str, str] = {}
    for name in allowed_keys(loc):
        for sub in allowed_keys((*loc[:-1], name, "_")):
            candidates.setdefault(sub, f"{name}.{sub}")
    hint = did_you_mean(word, candidates)
    return hint and hint.replace(f"'{hint.split(chr(39))[1]}'", f"'{candidates[hint.split(chr(39))[1]]}'")


def _union_noise(err: Any, loc: tuple[Any, ...], path: KeyPath) -> bool:
    """An error about a union member the input was never meant to be (a dict checked against `str`)."""
    return len(loc) > len(path) and err["type"].endswith("_type") and str(loc[len(path)]) in _TYPE_PARTS


def _message(err: Any, path: KeyPath, loc: tuple[Any, ...]) -> tuple[str, KeyPath, str | None]:
    if err["type"] == "extra_forbidden":
        word = str(path[-1]) if path else ""
        return "unknown key", path, did_you_mean(word, allowed_keys(loc)) or _nested_hint(word, loc)
    if err["type"] == "missing":
        return "required key is missing", path, None
    if err["type"] in ("union_tag_invalid", "literal_error"):
        ctx = err.get("ctx", {})
        expected = [e.strip(" '") for e in str(ctx.get("expected", ctx.get("expected_tags", ""))).split(",")]
        expected = [e.replace("or ", "").strip(" '") for e in expected]
        if err["type"] == "union_tag_invalid":
            got = err.get("ctx", {}).get("tag")
            return f"unknown stage kind {got!r}; one of {', '.join(expected)}", (*path, "kind"), did_you_mean(
                str(got), expected)
        return f"{err['msg']} (got {_got(err.get('input'))})", path, did_you_mean(str(err.get("input")), expected)
    plain = tuple(p for p in loc if not (isinstance(p, str) and _is_type_part(p)))
    about = field_help(plain)
    text = err["msg"].removeprefix("Value error, ")
    if len(loc) > len(plain) and err["type"] in ("model_type", "dict_type", "string_type") and \
            (shapes := _union_shapes(plain)):
        text = f"expected {shapes}"  # a value of none of a union's shapes: say them all, not one member's complaint
    return f"{text} (got {_got(err.get('input'))})", path, f"{dotted(path)}: {about}" if about else None


def _union_shapes(loc: tuple[Any, ...]) -> str | None:
    """'a string or a mapping' for a field typed `str | SomeSpec`; None for anything else."""
    tp: Any = RecipeSpec
    for part in loc:
        tp = _step(tp, part)
        if tp is None:
            return None
    names = {"a string" if m is str else "a mapping" if isinstance(m, type) and issubclass(m, BaseModel) else "?"
             for m in _members(tp) if m is not type(None)}
    return " or ".join(sorted(names, reverse=True)) if len(names) > 1 and "?" not in names else None


def field_help(loc: tuple[Any, ...]) -> str | None:
    """The schema's description of the field at `loc` (the same text `tkc schema` shows)."""
    tp: Any = RecipeSpec
    for part in loc[:-1]:
        tp = _step(tp, part)
        if tp is None:
            return None
    for member in _members(tp):
        if isinstance(member, type) and issubclass(member, BaseModel) and loc and loc[-1] in member.model_fields:
            return member.model_fields[loc[-1]].description
    return None


def diagnostics_from_validation(exc: ValidationError, data: Any,
                                positions: dict[KeyPath, Position]) -> list[Diagnostic]:
    out: dict[tuple[str, str], Diagnostic] = {}
    for err in exc.errors():
        loc = tuple(err["loc"])
        path = data_path(loc, data)
        if _union_noise(err, loc, path):
            continue
        msg, path, hint = _message(err, path, loc)
        pos = _position(path, positions)
        code = _CODES.get(err["type"], "SCHEMA002")
        key = (dotted(path), code)
        # A union reports one error per member; keep the first per key and code.
        out.setdefault(key, Diagnostic(code, msg, dotted(path), pos.file if pos else None,
                                       pos.line if pos else None, pos.col if pos else None, hint))
    return list(out.values())


def _position(path: KeyPath, positions: dict[KeyPath, Position]) -> Position | None:
    while path and path not in positions:
        path = path[:-1]
    return positions.get(path)
