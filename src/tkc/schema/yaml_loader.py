"""Safe YAML loading that keeps the file, line and column of every key, and rejects duplicates and tags.

A recipe is small configuration, so its YAML is held to limits that no real recipe comes near (file size,
nesting, aliases, values after alias expansion): a hostile or broken file is refused with a positioned error
after a bounded amount of work and memory, never expanded (a 300-byte "billion laughs" file would be gigabytes).
"""

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
_TIMESTAMP = "tag:yaml.org,2002:timestamp"   # a date (2025-01-01) reads as its text, never as a datetime object
MAX_RECIPE_BYTES = 1 << 20      # one recipe file (the shipped ones are under 3 KiB)
MAX_DEPTH = 32                  # nested mappings and lists (recipes use 5)
MAX_ALIASES = 256               # *alias uses in one file
MAX_VALUES = 100_000            # YAML nodes after alias expansion, a recipe and its bases together
MAX_CHARS = 4 << 20             # characters of scalars after alias expansion, a recipe and its bases together
_NESTING = (yaml.MappingStartEvent, yaml.SequenceStartEvent)
_UNNESTING = (yaml.MappingEndEvent, yaml.SequenceEndEvent)


@dataclass(frozen=True)
class Position:
    file: str
    line: int
    col: int


@dataclass
class Budget:
    """What is left of the expansion limits: one per compile, shared by a recipe, its bases and --set values."""

    values: int = MAX_VALUES
    chars: int = MAX_CHARS


@dataclass
class LoadedYaml:
    """The plain data of one YAML document plus the position of every key path in it."""

    data: Any
    positions: dict[KeyPath, Position] = field(default_factory=dict)
    problems: list[Diagnostic] = field(default_factory=list)
    voided: set[KeyPath] = field(default_factory=set)       # values dropped (read as None) after a problem
    incomplete: set[KeyPath] = field(default_factory=set)   # mappings that lost a key after a problem


class _TooBig(Exception):
    def __init__(self, node: yaml.Node):
        self.node = node


class _Walker:
    def __init__(self, file: str, budget: Budget):
        self.file = file
        self.budget = budget
        self.positions: dict[KeyPath, Position] = {}
        self.problems: list[Diagnostic] = []
        self.voided: set[KeyPath] = set()
        self.incomplete: set[KeyPath] = set()
        self._scalars = yaml.SafeLoader("")

    def pos(self, node: yaml.Node) -> Position:
        return Position(self.file, node.start_mark.line + 1, node.start_mark.column + 1)

    def problem(self, node: yaml.Node, code: str, path: KeyPath, msg: str, hint: str | None = None) -> None:
        p = self.pos(node)
        self.problems.append(Diagnostic(code, msg, dotted(path), p.file, p.line, p.col, hint))

    def spend(self, node: yaml.Node) -> None:
        """Count one node (again for each alias of it): the walk stops as soon as the budget is spent."""
        self.budget.values -= 1
        if isinstance(node, yaml.ScalarNode):
            self.budget.chars -= len(node.value)
        if self.budget.values < 0 or self.budget.chars < 0:
            raise _TooBig(node)

    def walk(self, node: yaml.Node, path: KeyPath) -> Any:
        self.spend(node)
        self.positions.setdefault(path, self.pos(node))
        if node.tag == _TIMESTAMP and isinstance(node, yaml.ScalarNode):
            return node.value   # an unquoted date is its text: the fields that take one parse it (template.now)
        if node.tag not in _PLAIN_TAGS:
            self.problem(node, "YAML002", path, f"tag {node.tag!r} is not allowed", "recipes are plain data")
            self.voided.add(path)
            return None
        if isinstance(node, yaml.MappingNode):
            return self.walk_map(node, path)
        if isinstance(node, yaml.SequenceNode):
            return [self.walk(child, (*path, i)) for i, child in enumerate(node.value)]
        try:
            return self._scalars.construct_object(node, deep=True)
        except (ValueError, yaml.YAMLError) as exc:  # e.g. an integer of more than 4300 digits
            self.problem(node, "YAML010", path, f"value cannot be read: {_short(str(exc))}")
            self.voided.add(path)
            return None

    def walk_map(self, node: yaml.MappingNode, path: KeyPath) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key_node, value_node in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                self.problem(key_node, "YAML002", path, "YAML merge keys (<<) are not allowed", "use extends:")
                self.incomplete.add(path)
                continue
            key = self.walk(key_node, path) if isinstance(key_node, yaml.ScalarNode) else None
            if not isinstance(key, str):
                self.problem(key_node, "YAML003", path, f"keys must be strings, got {_short(repr(key))}")
                self.incomplete.add(path)
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


def _short(text: str, limit: int = 120) -> str:
    return text if len(text) <= limit else text[:limit] + "..."


def _line_col(text: str, byte_offset: int) -> tuple[int, int]:
    """1-based line and column (in characters) of a UTF-8 byte offset into `text`."""
    head = text.encode("utf-8")[:byte_offset].decode("utf-8", errors="replace")
    return head.count("\n") + 1, len(head) - (head.rfind("\n") + 1) + 1


def _syntax_error(exc: yaml.YAMLError, text: str, file: str) -> Diagnostic:
    mark = getattr(exc, "problem_mark", None) or getattr(exc, "context_mark", None)
    if mark is not None:
        line, col = mark.line + 1, mark.column + 1
    else:  # a ReaderError (a control character, say) carries a byte offset instead of a mark
        line, col = _line_col(text, int(getattr(exc, "position", 0) or 0))
    problem = getattr(exc, "problem", None) or getattr(exc, "reason", None) or str(exc)
    return Diagnostic("YAML001", f"invalid YAML: {_short(str(problem))}", "", file, line, col)


def _limit(mark: Any, code: str, file: str, msg: str) -> Diagnostic:
    return Diagnostic(code, msg, "", file, mark.line + 1, mark.column + 1,
                      "a recipe is configuration; recipes never come near this limit")


def _scan(text: str, file: str) -> Diagnostic | None:
    """Nesting depth, alias and value counts from the event stream, before any node tree is built."""
    depth = aliases = values = 0
    for event in yaml.parse(text, Loader=_LOADER):
        values += isinstance(event, yaml.NodeEvent)
        if values > MAX_VALUES:
            return _limit(event.start_mark, "YAML009", file, f"more than {MAX_VALUES} values")
        if isinstance(event, _NESTING):
            depth += 1
            if depth > MAX_DEPTH:
                return _limit(event.start_mark, "YAML008", file, f"nested more than {MAX_DEPTH} levels deep")
        elif isinstance(event, _UNNESTING):
            depth -= 1
        elif isinstance(event, yaml.AliasEvent):
            aliases += 1
            if aliases > MAX_ALIASES:
                return _limit(event.start_mark, "YAML007", file, f"more than {MAX_ALIASES} aliases (*name)")
    return None


def load_yaml(text: str, file: str, budget: Budget | None = None) -> LoadedYaml:
    """Parse one YAML document; syntax errors, tags, duplicate keys and limits become diagnostics, never exceptions."""
    try:
        node = None if (limit := _scan(text, file)) else yaml.compose(text, Loader=_LOADER)
    except yaml.YAMLError as exc:
        return LoadedYaml(None, {}, [_syntax_error(exc, text, file)])
    if limit is not None:
        return LoadedYaml(None, {}, [limit])
    if node is None:  # an empty document: keys it lacks are reported at its start
        return LoadedYaml({}, {(): Position(file, 1, 1)}, [])
    walker = _Walker(file, budget or Budget())
    try:
        data = walker.walk(node, ())
    except _TooBig as exc:
        return LoadedYaml(None, {}, [_limit(exc.node.start_mark, "YAML009", file, (
            f"expands to more than {MAX_VALUES} values or {MAX_CHARS} characters (through aliases, "
            "counting every base recipe); the walk stopped here"))])
    return LoadedYaml(data, walker.positions, walker.problems, walker.voided, walker.incomplete)


def decode_recipe(data: bytes, file: str) -> tuple[str | None, Diagnostic | None]:
    """The text of a recipe file, or a diagnostic at the line and column of its first byte that is not UTF-8."""
    try:
        return data.decode("utf-8"), None
    except UnicodeDecodeError as exc:
        head = data[:exc.start]
        line = head.count(b"\n") + 1
        col = len(head[head.rfind(b"\n") + 1:].decode("utf-8")) + 1
        return None, Diagnostic("YAML006", f"not UTF-8: byte 0x{data[exc.start]:02x} cannot be decoded", "", file,
                                line, col, "save the recipe as UTF-8")


def read_recipe_bytes(path: Path, file: str) -> tuple[bytes | None, Diagnostic | None]:
    """A recipe file's bytes, read only when it is within MAX_RECIPE_BYTES (never read whole first)."""
    try:
        with path.open("rb") as fh:
            data = fh.read(MAX_RECIPE_BYTES + 1)
    except OSError as exc:
        return None, Diagnostic("RECIPE001", f"cannot read recipe file: {exc.strerror or exc}", "", file)
    if len(data) > MAX_RECIPE_BYTES:
        return None, Diagnostic("YAML005", f"recipe file is larger than {MAX_RECIPE_BYTES} bytes (1 MiB)", "",
                                file, 1, 1, "a recipe is configuration: keep data in dataset files")
    return data, None


def load_yaml_file(path: Path, display: str | None = None, budget: Budget | None = None) -> LoadedYaml:
    file = display or str(path)
    data, problem = read_recipe_bytes(path, file)
    text, problem = decode_recipe(data, file) if data is not None else (None, problem)
    if text is None:
        return LoadedYaml(None, {}, [problem] if problem else [])
    return load_yaml(text, file, budget)
