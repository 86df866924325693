"""Safe YAML loading that keeps the file, line and column of every key, and rejects duplicates and tags."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from tkc.schema.diagnostics import Diagnostic

KeyPath = tuple[str | int, ...]
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
_PLAIN_TAGS = {
    "tag:yaml.org,2002:str",
    "tag:yaml.org,2002:int",
    "tag:yaml.org,2002:float",
    "tag:yaml.org,2002:bool",
    "tag:yaml.org,2002:null",
    "tag:yaml.org,2002:map",
    "tag:yaml.org,2002:seq",
}


@dataclass(frozen=True)
class Position:
    file: str
    line: int
    col: int


@dataclass
class LoadedYaml:
    """The plain data of one YAML document plus the position of every key path in it."""

    data: Any
    positions: dict[KeyPath, Position] = field(default_factory=dict)
    problems: list[Diagnostic] = field(default_factory=list)


class _Walker:
    def __init__(self, file: str):
        self.file = file
        self.positions: dict[KeyPath, Position] = {}
        self.problems: list[Diagnostic] = []
        self._scalars = yaml.SafeLoader("")

    def pos(self, node: yaml.Node) -> Position:
        return Position(self.file, node.start_mark.line + 1, node.start_mark.column + 1)

    def problem(self, node: yaml.Node, code: str, path: KeyPath, msg: str, hint: str | None = None) -> None:
        p = self.pos(node)
        self.problems.append(Diagnostic(code, msg, dotted(path), p.file, p.line, p.col, hint))

    def walk(self, node: yaml.Node, path: KeyPath) -> Any:
        self.positions.setdefault(path, self.pos(node))
        if node.tag not in _PLAIN_TAGS:
            self.problem(node, "YAML002", path, f"tag {node.tag!r} is not allowed", "recipes are plain data")
            return None
        if isinstance(node, yaml.MappingNode):
            return self.walk_map(node, path)
        if isinstance(node, yaml.SequenceNode):
            return [self.walk(child, (*path, i)) for i, child in enumerate(node.value)]
        return self._scalars.construct_object(node, deep=True)

    def walk_map(self, node: yaml.MappingNode, path: KeyPath) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                self.problem(key_node, "YAML002", path, "YAML merge keys (<<) are not allowed", "use extends:")
                continue
            key = self.walk(key_node, path) if isinstance(key_node, yaml.ScalarNode) else None
            if not isinstance(key, str):
                self.problem(key_node, "YAML003", path, f"keys must be strings, got {key!r}")
                continue
            if key in out:
                first = self.positions[(*path, key)]
                self.problem(key_node, "YAML004", (*path, key), f"duplicate key (first set at line {first.line})")
                continue
            self.positions[(*path, key)] = self.pos(key_node)
            out[key] = self.walk(value_node, (*path, key))
        return out


def dotted(path: KeyPath) -> str:
    """('stages', 0, 'kind') -> 'stages[0].kind'."""
    out = ""
    for part in path:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out


def load_yaml(text: str, file: str) -> LoadedYaml:
    """Parse one YAML document; syntax errors, tags and duplicate keys become diagnostics, never exceptions."""
    try:
        node = yaml.compose(text, Loader=_LOADER)
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        line, col = (mark.line + 1, mark.column + 1) if mark else (None, None)
        return LoadedYaml(None, {}, [Diagnostic("YAML001", f"invalid YAML: {exc.problem}", "", file, line, col)])
    except yaml.YAMLError as exc:
        return LoadedYaml(None, {}, [Diagnostic("YAML001", f"invalid YAML: {exc}", "", file)])
    if node is None:
        return LoadedYaml({}, {}, [])
    walker = _Walker(file)
    data = walker.walk(node, ())
    return LoadedYaml(data, walker.positions, walker.problems)


def load_yaml_file(path: Path, display: str | None = None) -> LoadedYaml:
    return load_yaml(path.read_text(encoding="utf-8"), display or str(path))
