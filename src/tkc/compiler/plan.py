"""The plan a compiler pass reads and returns: frozen inputs, flat resolved values and their provenance."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field, replace
from pathlib import PurePosixPath
from types import MappingProxyType
from typing import Any

from tkc.compiler.benchmarks import BenchmarkFacts
from tkc.compiler.paths import PathFacts
from tkc.schema.diagnostics import Diagnostic
from tkc.schema.load import LoadedRecipe

FILES = "_files."   # values under this prefix are bundle files (path -> text), not resolved.json entries


@dataclass(frozen=True)
class ModelFacts:
    """What the loading step read about the model: local config, tokenizer template, file hashes."""

    local: bool
    path: str                               # relative POSIX path from the source root, or the hub id
    config: Mapping[str, Any] | None = None
    chat_template: str | None = None        # the tokenizer's own template, if it ships one
    special_tokens: Mapping[str, str] = field(default_factory=dict)   # bos_token/eos_token of the tokenizer
    files: Mapping[str, str] = field(default_factory=dict)

    def max_positions(self) -> int | None:
        """The longest sequence the model's config allows: max_position_embeddings (n_positions for GPT-2 shapes;
        a multimodal model's text_config), raised by a rope_scaling factor over its original length (YaRN)."""
        config = dict(self.config or {})
        text = config.get("text_config")
        config = text if isinstance(text, dict) else config
        limit = config.get("max_position_embeddings") or config.get("n_positions")
        rope = config.get("rope_scaling") or {}
        if isinstance(rope, dict) and rope.get("factor") and rope.get("original_max_position_embeddings"):
            limit = max(limit or 0, int(rope["factor"] * rope["original_max_position_embeddings"]))
        return limit if isinstance(limit, int) and limit > 0 else None


@dataclass(frozen=True)
class DatasetFacts:
    """What the loading step found for one dataset: files with hashes, type, columns seen, problems."""

    local: bool
    path: str
    file_type: str
    files: tuple[Mapping[str, Any], ...] = ()
    problems: tuple[Diagnostic, ...] = ()
    format: str = "alpaca"
    kind: str = "sft"
    columns: Mapping[str, Any] = field(default_factory=dict)
    tags: Mapping[str, Any] = field(default_factory=dict)
    split: str = "train"
    from_registry: bool = False
    auto_columns: tuple[str, ...] = ()     # column keys mapped because the data has them (e.g. tools)


@dataclass(frozen=True)
class RewardBundleFacts:
    """Another bundle named by a ppo/grpo `reward_model: path[:stage]`, as the loading step found it."""

    path: str                               # relative POSIX path from the source root
    bundle_hash: str | None = None
    stage: str | None = None                # its rm stage the reward model comes from
    tokenizer_sha256: str | None = None     # its model's tokenizer.json hash, when local
    problem: str | None = None              # why it cannot be used (not a bundle, changed, no rm stage, ...)


@dataclass(frozen=True)
class Inputs:
    recipe: LoadedRecipe
    model: ModelFacts
    datasets: Mapping[str, DatasetFacts]
    lockfiles: Mapping[str, str]            # lockfile name -> text
    tkc_version: str
    reward_bundles: Mapping[str, RewardBundleFacts] = field(default_factory=dict)   # reward_model text -> facts
    paths: PathFacts = field(default_factory=PathFacts)   # the read roots, and paths found outside them (PATH001)
    benchmarks: Mapping[int, BenchmarkFacts] = field(default_factory=dict)   # eval stage index -> its benchmark
    media: Mapping[str, Any] = field(default_factory=dict)   # dataset name -> compiler.media.MediaFacts


@dataclass(frozen=True)
class Plan:
    inputs: Inputs
    values: Mapping[str, Any] = field(default_factory=lambda: MappingProxyType({}))
    provenance: Mapping[str, str] = field(default_factory=lambda: MappingProxyType({}))
    diagnostics: tuple[Diagnostic, ...] = ()

    def get(self, key: str, default: Any = None) -> Any:
        return self.values.get(key, default)

    def with_values(self, updates: Mapping[str, tuple[Any, str]]) -> Plan:
        """A new plan with `key -> (value, source)` set; sources are recipe, default, family:x, derived:pass."""
        values = dict(self.values)
        prov = dict(self.provenance)
        for key, (value, source) in updates.items():
            values[key] = value
            prov[key] = source
        return replace(self, values=MappingProxyType(values), provenance=MappingProxyType(prov))

    def diagnostic(self, code: str, message: str, path: tuple[str | int, ...], hint: str | None = None) -> Diagnostic:
        """A diagnostic placed at the recipe line that set `path` (or its nearest parent)."""
        from tkc.schema.yaml_loader import dotted

        pos = self.inputs.recipe.position(path)
        if pos is None:
            return Diagnostic(code, message, dotted(path), hint=hint)
        return Diagnostic(code, message, dotted(path), pos.file, pos.line, pos.col, hint)

    def with_diagnostics(self, diags: list[Diagnostic]) -> Plan:
        return replace(self, diagnostics=self.diagnostics + tuple(diags)) if diags else self

    def stage_count(self) -> int:
        return sum(1 for k in self.values if k.startswith("stages.") and k.endswith(".kind"))

    def stage_keys(self, i: int) -> str:
        return f"stages.{i}."


def unflatten(values: Mapping[str, Any]) -> dict[str, Any]:
    """{'a.b': 1, 'stages.0.kind': 'sft'} -> {'a': {'b': 1}, 'stages': [{'kind': 'sft'}]}; skips files."""
    root: dict[str, Any] = {}
    for key in sorted(values):
        if key.startswith(FILES):
            continue
        node = root
        parts = key.split(".")
        for part in parts[:-1]:
            node = node.setdefault(part, {})
        node[parts[-1]] = values[key]
    return _lists(root)


def _lists(node: Any) -> Any:
    if isinstance(node, dict):
        if node and all(k.isdigit() for k in node):
            return [_lists(node[k]) for k in sorted(node, key=int)]
        return {k: _lists(v) for k, v in node.items()}
    return node


def bundle_files(values: Mapping[str, Any]) -> dict[str, str]:
    return {k[len(FILES):]: v for k, v in values.items() if k.startswith(FILES)}


def posix(path: str) -> str:
    return PurePosixPath(path).as_posix()
