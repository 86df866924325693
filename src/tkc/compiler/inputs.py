"""The loading step: all I/O the compiler needs, done once before the pure passes run."""

from __future__ import annotations

import json
import os
from dataclasses import replace
from pathlib import Path
from typing import Any

from tkc import __version__
from tkc.bundle.canonical import sha256_file
from tkc.compiler import paths
from tkc.compiler.plan import DatasetFacts, Inputs, ModelFacts, RewardBundleFacts
from tkc.schema.diagnostics import Diagnostic, did_you_mean
from tkc.schema.load import LoadedRecipe

LOCKFILE_DIR = Path(__file__).resolve().parents[3] / "lockfiles"
MODEL_FILE_LIMIT = 64 << 20   # hash files up to this size; weights above it are recorded by size only (never code)
_TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
                    "chat_template.jinja", "tokenizer.model", "vocab.json", "merges.txt")


def relpath(path: Path, root: Path) -> str:
    return Path(os.path.relpath(path.resolve(), root.resolve())).as_posix()


def _model_files(model_dir: Path) -> dict[str, str]:
    files: dict[str, str] = {}
    for path in sorted(model_dir.rglob("*")):
        if path.is_file() and not any(p.startswith(".") for p in path.relative_to(model_dir).parts):
            rel = path.relative_to(model_dir).as_posix()
            size = path.stat().st_size
            code = path.suffix == ".py"  # remote code runs only from files whose hash the runtime checks
            files[rel] = sha256_file(path) if size <= MODEL_FILE_LIMIT or code else f"size:{size}"
    return files


def _tokenizer_template(model_dir: Path) -> str | None:
    jinja = model_dir / "chat_template.jinja"
    if jinja.is_file():
        return jinja.read_text(encoding="utf-8")
    cfg = model_dir / "tokenizer_config.json"
    if cfg.is_file():
        template = json.loads(cfg.read_text(encoding="utf-8")).get("chat_template")
        if isinstance(template, list):  # named templates: the "default" one is what apply_chat_template uses
            template = next((t["template"] for t in template if t.get("name") == "default"), None)
        return template if isinstance(template, str) else None
    return None


def _special_tokens(model_dir: Path) -> dict[str, str]:
    cfg = model_dir / "tokenizer_config.json"
    raw = json.loads(cfg.read_text(encoding="utf-8")) if cfg.is_file() else {}
    out = {}
    for key in ("bos_token", "eos_token", "pad_token"):
        value = raw.get(key)
        value = value.get("content") if isinstance(value, dict) else value
        if isinstance(value, str):
            out[key] = value
    return out


def load_model_facts(recipe: LoadedRecipe, root: Path, found: paths.PathFacts) -> tuple[ModelFacts, paths.PathFacts]:
    """A local folder's config, template, tokens and file hashes; a path outside the read roots is not read."""
    spec = recipe.spec.model
    local = (root / spec.path).expanduser()
    checked = paths.check(found, ("model", "path"), "model folder", spec.path, local)
    if checked is not found:
        return ModelFacts(True, relpath(local, root)), checked
    for link in paths.escaping_links(local) if local.is_dir() else []:
        checked = paths.PathFacts(checked.roots, checked.recorded, (*checked.outside, (
            ("model", "path"), f"model file {link!r} is a symlink out of the model folder {spec.path!r}")))
    return _local_model(local, root) if local.is_dir() else ModelFacts(False, spec.path), checked


def _local_model(local: Path, root: Path) -> ModelFacts:
    config_path = local / "config.json"
    config = json.loads(config_path.read_text(encoding="utf-8")) if config_path.is_file() else None
    return ModelFacts(True, relpath(local, root), config, _tokenizer_template(local), _special_tokens(local),
                      _model_files(local))


def _layout(spec: Any, entry: dict[str, Any] | None) -> tuple[str, str, dict, dict]:
    """format, kind, columns, tags: the recipe wins over the registry entry, which wins over defaults."""
    from tkc.compiler.dataset_formats import infer_kind, resolve_columns_and_tags

    entry = entry or {}
    fmt = spec.format or entry.get("format") or "alpaca"
    columns = spec.columns if spec.columns is not None else entry.get("columns")
    kind = spec.kind or entry.get("kind") or infer_kind(fmt, columns)
    cols, tags = resolve_columns_and_tags(fmt, kind, columns, spec.tags if spec.tags is not None
                                          else entry.get("tags"))
    return fmt, kind, cols, tags


def _registry_path(entry: dict[str, Any] | None, registry_dir: Path, root: Path) -> str | None:
    """A registry's `file_name` is relative to the registry file's folder (as in dataset_info.json)."""
    if entry is None or entry.get("path") is None:
        return None
    if entry.get("source") == "hub":
        return str(entry["path"])
    return relpath(registry_dir / entry["path"], root)


def _probe(name: str, spec: Any, registry: dict[str, Any], registry_dir: Path, root: Path,
           file: str | None, roots: tuple[Path, ...] = ()) -> DatasetFacts:
    from tkc.compiler.dataset_formats import auto_columns
    from tkc.compiler.datasets_probe import probe_dataset

    key = f"data.datasets.{name}"
    entry = registry.get(spec.registry) if spec.registry else None
    path_text = spec.path or _registry_path(entry, registry_dir, root)
    try:
        if spec.registry and entry is None:
            raise ValueError(f"no registry entry {spec.registry!r} ({did_you_mean(spec.registry, registry)})")
        if path_text is None:
            raise ValueError("dataset needs `path` or a `registry` entry")
        fmt, kind, cols, tags = _layout(spec, entry)
    except ValueError as exc:
        return DatasetFacts(False, path_text or "", "missing", problems=(Diagnostic("DATA003", str(exc), key, file),))
    path = (root / path_text).expanduser()
    facts = DatasetFacts(False, path_text, "hub", (), (), fmt, kind, cols, tags, spec.split, entry is not None)
    if (outside := _outside(path, path_text, f"{key}.{'path' if spec.path else 'registry'}", file, roots)):
        return replace(facts, file_type="missing", problems=(outside,))
    if not path.exists():
        if (entry or {}).get("source") == "hub" or ("/" in path_text and not path_text.startswith((".", "/"))):
            return _hub_facts(facts, key, spec.revision, file)
        return replace(facts, file_type="missing", problems=(
            Diagnostic("DATA002", f"dataset not found: {path_text} (relative to {root})", key, file),))
    try:
        probe = probe_dataset(path, None, cols, fmt, kind, tags=tags, root=root, auto_columns=auto_columns(
            fmt, spec.columns if spec.columns is not None else (entry or {}).get("columns")))
    except (OSError, ValueError) as exc:
        return replace(facts, file_type="missing", problems=(Diagnostic("DATA001", str(exc), key, file),))
    problems = _collapse(probe.problems, key, probe.file_type)
    problems += tuple(d for f in probe.files if (d := _outside(root / f.path, f.path, f"{key}.path", file, roots)))
    files = tuple({"path": relpath(root / f.path, root), "sha256": f.sha256, "size": f.size} for f in probe.files)
    return replace(facts, local=True, path=relpath(path, root), file_type=probe.file_type, files=files,
                   problems=problems, columns=probe.columns or cols, auto_columns=probe.auto_mapped)


def _hub_facts(facts: DatasetFacts, key: str, revision: str | None, file: str | None) -> DatasetFacts:
    """A hub id. Offline, the local HF cache must hold it at the asked revision: `tkc run` reads only that cache."""
    from tkc.bundle.hub_cache import find_snapshot, hub_offline

    if not hub_offline():
        return facts  # online, this machine's cache says nothing about the one `tkc run` will use
    _, problem = find_snapshot(facts.path, revision)
    if problem is None:
        return facts
    field = "registry" if facts.from_registry else "path"
    field = "revision" if revision and problem.startswith("revision") else field
    hint = f"fetch it while online: huggingface-cli download --repo-type dataset {facts.path}"
    hint += f" --revision {revision}" if revision else ""
    return replace(facts, file_type="missing", problems=(Diagnostic("DATA004", problem, f"{key}.{field}", file,
                                                                     hint=hint),))


def _outside(path: Path, text: str, key: str, file: str | None, roots: tuple[Path, ...]) -> Diagnostic | None:
    """PATH001 when a dataset path leaves the read roots (it is then not read)."""
    real = paths.outside(path, roots)
    return None if real is None else Diagnostic("PATH001", paths.message("dataset path", text, real, roots), key,
                                                file, hint=paths.HINT)


_PLACED = ("DATA002", "DATA003", "DATA004", "PATH001")   # diagnostics about a recipe key (not a data file's record)


def _placed(recipe: LoadedRecipe, facts: DatasetFacts) -> DatasetFacts:
    """Put dataset diagnostics about a recipe key at that key's line (or its nearest parent's)."""
    out = []
    for d in facts.problems:
        pos = recipe.position(tuple(d.path.split("."))) if d.code in _PLACED and d.line is None else None
        out.append(replace(d, file=pos.file, line=pos.line, col=pos.col) if pos else d)
    return replace(facts, problems=tuple(out)) if out else facts


_LINE_TYPES = ("jsonl", "json", "csv", "txt")   # the probe reports 1-based lines for these, record indexes otherwise


def _collapse(found: Any, key: str, file_type: str) -> tuple[Diagnostic, ...]:
    """One diagnostic per distinct problem, at its first record, with how many other records share it."""
    groups: dict[str, list[Any]] = {}
    for p in found:
        groups.setdefault(p.message, []).append(p)
    out = []
    for message, items in groups.items():
        first, more = items[0], len(items) - 1
        text = message + (f" (expected {first.expected})" if first.expected else "")
        text += f"; {more} more of the records checked have the same problem" if more else ""
        line = first.line if file_type in _LINE_TYPES else None
        if first.record is not None:  # a JSON array: at its line, and by index (one-line arrays put all on line 1)
            text = f"record {first.record}: {text}"
        elif line is None and first.line is not None:
            text = f"record {first.line}: {text}"
        out.append(Diagnostic("DATA001", text, key, first.file, line))
    return tuple(out)


def is_bundle_ref(reward_model: str | None) -> bool:
    """A ppo/grpo reward_model naming another bundle (a path with a `/`, or `path:stage`), not a stage here
    (stage names cannot hold either character)."""
    return bool(reward_model) and ("/" in str(reward_model) or ":" in str(reward_model))


def split_bundle_ref(ref: str) -> tuple[str, str | None]:
    """`path/to/bundle:stage` -> (path, stage); a plain path -> (path, None)."""
    path, sep, stage = ref.rpartition(":")
    return (path, stage) if sep and path and stage and "/" not in stage else (ref, None)


def _rm_stage(resolved: dict[str, Any], wanted: str | None) -> tuple[str | None, str | None]:
    """(the referenced bundle's rm stage, problem)."""
    rms = [st["name"] for st in resolved.get("stages", []) if st.get("kind") == "rm"]
    if wanted is not None:
        return (wanted, None) if wanted in rms else (None, f"has no rm stage {wanted!r} (rm stages: {rms}; "
                                                           f"{did_you_mean(wanted, rms) or 'check the name'})")
    if len(rms) != 1:
        return None, f"has {len(rms)} rm stages {rms}; name one as <path>:<stage>"
    return rms[0], None


def load_reward_bundle(ref: str, root: Path) -> RewardBundleFacts:
    """Check that `ref` names an intact tkc bundle with the rm stage it asks for; record its hash."""
    from tkc.bundle.io import check_bundle, read_manifest

    path_text, wanted = split_bundle_ref(ref)
    path = (root / path_text).expanduser()
    rel = relpath(path, root)
    if not path.is_dir():
        return RewardBundleFacts(rel, problem=f"no bundle directory {path_text} (relative to {root})")
    problems = check_bundle(path)
    if problems:
        what = "not a tkc bundle (no manifest.json)" if not (path / "manifest.json").is_file() else \
            f"not an intact tkc bundle: {problems[0].render()}"
        return RewardBundleFacts(rel, problem=f"{path_text} is {what}")
    resolved = json.loads((path / "resolved.json").read_text(encoding="utf-8"))
    stage, problem = _rm_stage(resolved, wanted)
    tokenizer = (resolved.get("model") or {}).get("files", {}).get("tokenizer.json")
    return RewardBundleFacts(rel, read_manifest(path)["bundle_hash"], stage, tokenizer,
                             f"bundle {path_text} {problem}" if problem else None)


def load_reward_bundles(recipe: LoadedRecipe, root: Path,
                        found: paths.PathFacts | None = None) -> dict[str, RewardBundleFacts]:
    """Each referenced bundle; one outside the read roots is not read (PATH001 reports it)."""
    roots = found.roots if found else ()
    refs = {getattr(st, "reward_model", None) for st in recipe.spec.stages}
    return {ref: load_reward_bundle(ref, root) if paths.outside(root / split_bundle_ref(ref)[0], roots) is None
            else RewardBundleFacts(relpath(root / split_bundle_ref(ref)[0], root), problem="outside the folders this recipe may read (PATH001)")
            for ref in sorted(r for r in refs if r and is_bundle_ref(r))}


def _registry(recipe: LoadedRecipe, root: Path, found: paths.PathFacts) -> tuple[dict, Path, paths.PathFacts]:
    """The dataset registry's entries and folder; one outside the read roots is not read."""
    text = recipe.spec.data.registry
    if not text:
        return {}, root, found
    checked = paths.check(found, ("data", "registry"), "dataset registry", text, root / text)
    if checked is not found:
        return {}, root, checked
    from tkc.compiler.datasets_probe import load_registry

    return load_registry(root / text), (root / text).parent, checked


def load_inputs(recipe: LoadedRecipe, root: Path) -> Inputs:
    """Read the model directory, probe every dataset, read the lockfiles; nothing outside the read roots."""
    found = paths.check_recipe_files(recipe, paths.read_roots(recipe, root))
    found = paths.check_reward_bundles(recipe, root, found)
    registry, registry_dir, found = _registry(recipe, root, found)
    model, found = load_model_facts(recipe, root, found)
    pos = recipe.position(("data",))
    datasets = {name: _probe(name, spec, registry, registry_dir, root, pos.file if pos else None, found.roots)
                for name, spec in recipe.spec.data.datasets.items()}
    datasets = {name: _placed(recipe, facts) for name, facts in datasets.items()}
    lockfiles = {p.stem: p.read_text(encoding="utf-8") for p in sorted(LOCKFILE_DIR.glob("*.txt"))}
    from tkc.compiler.benchmarks import load_benchmarks
    from tkc.compiler.media import load_media

    return Inputs(recipe, model, datasets, lockfiles, __version__, load_reward_bundles(recipe, root, found), found,
                  load_benchmarks(recipe, root, found.roots), load_media(recipe, root, datasets, found.roots))
