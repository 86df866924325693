"""Semantic diff of two bundles: resolved values (with provenance), data hashes, environment pins, scripts."""

from __future__ import annotations

import difflib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


def flatten(obj: Any, prefix: str = "") -> dict[str, Any]:
    """Nested dicts/lists to dotted keys; lists of scalars stay leaves, lists of mappings are indexed."""
    if isinstance(obj, dict) and obj:
        out: dict[str, Any] = {}
        for k, v in obj.items():
            out.update(flatten(v, f"{prefix}.{k}" if prefix else str(k)))
        return out
    if isinstance(obj, list) and obj and all(isinstance(v, dict) for v in obj):
        out = {}
        for i, v in enumerate(obj):
            out.update(flatten(v, f"{prefix}.{i}"))
        return out
    return {prefix: obj}


@dataclass
class BundleDiff:
    values: list[tuple[str, Any, Any, str, str]] = field(default_factory=list)   # key, a, b, prov a, prov b
    files: list[tuple[str, str | None, str | None]] = field(default_factory=list)  # path, hash a, hash b
    texts: dict[str, list[str]] = field(default_factory=dict)                     # path -> unified diff lines
    hashes: tuple[str, str] = ("", "")
    provenance: list[tuple[str, str, str]] = field(default_factory=list)         # key, prov a, prov b

    @property
    def same_plan(self) -> bool:
        return self.hashes[0] == self.hashes[1]

    @property
    def same(self) -> bool:
        """Identical plans and identical sources (recipe copies, provenance): nothing to show."""
        return self.same_plan and not self.files


def _load(root: Path) -> tuple[dict[str, Any], dict[str, Any], dict[str, Any]]:
    read = lambda name: json.loads((root / name).read_text(encoding="utf-8"))  # noqa: E731
    return read("manifest.json"), read("resolved.json"), read("provenance.json")


_SKIP_TEXT = {"resolved.json", "provenance.json"}
_SOURCE = "recipe/tkc-source.json"


def diff_bundles(a: Path, b: Path) -> BundleDiff:
    man_a, res_a, prov_a = _load(a)
    man_b, res_b, prov_b = _load(b)
    out = BundleDiff(hashes=(man_a["bundle_hash"], man_b["bundle_hash"]))
    fa, fb = flatten(res_a), flatten(res_b)
    for key in sorted(set(fa) | set(fb)):
        if fa.get(key, "<absent>") != fb.get(key, "<absent>"):
            out.values.append((key, fa.get(key, "<absent>"), fb.get(key, "<absent>"),
                               _prov(prov_a, key), _prov(prov_b, key)))
    out.provenance = [(k, prov_a.get(k, ""), prov_b.get(k, "")) for k in sorted(set(prov_a) | set(prov_b))
                      if prov_a.get(k) != prov_b.get(k) and not k.startswith("_files.")
                      and fa.get(k, "<absent>") == fb.get(k, "<absent>")]
    files_a = {**man_a.get("sources", {}), **man_a["files"]}
    files_b = {**man_b.get("sources", {}), **man_b["files"]}
    for path in sorted(set(files_a) | set(files_b)):
        if files_a.get(path) != files_b.get(path):
            out.files.append((path, files_a.get(path), files_b.get(path)))
            if path not in _SKIP_TEXT and path in files_a and path in files_b:
                out.texts[path] = _text_diff(a / path, b / path, path)
    _entry_diff(out, a, b, files_a, files_b)
    return out


def _entry(root: Path) -> str | None:
    try:
        return str(json.loads((root / _SOURCE).read_text(encoding="utf-8"))["entry"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def _entry_diff(out: BundleDiff, a: Path, b: Path, files_a: dict[str, str], files_b: dict[str, str]) -> None:
    """A renamed top-level recipe: its text diffed against the other bundle's entry recipe."""
    ea, eb = _entry(a), _entry(b)
    if ea and eb and ea != eb and ea in files_a and eb in files_b and files_a[ea] != files_b[eb]:
        out.texts[f"{ea} -> {eb}"] = _text_diff(a / ea, b / eb, ea, eb)


def _prov(prov: dict[str, str], key: str) -> str:
    while key and key not in prov:
        key = key.rpartition(".")[0]
    return prov.get(key, "")


def _text_diff(pa: Path, pb: Path, path: str, path_b: str | None = None) -> list[str]:
    try:
        la = pa.read_text(encoding="utf-8").splitlines()
        lb = pb.read_text(encoding="utf-8").splitlines()
    except UnicodeDecodeError:
        return ["(binary file differs)"]
    except OSError as exc:
        return [f"({path}: cannot read: {exc.strerror})"]
    return list(difflib.unified_diff(la, lb, f"a/{path}", f"b/{path_b or path}", lineterm=""))


def render_diff(d: BundleDiff) -> str:
    """Plain text, stable, suitable for code review."""
    if d.same:
        return f"bundles are identical ({d.hashes[0][:16]}): same plan, same sources\n"
    if d.same_plan:
        lines = [f"plans are identical ({d.hashes[0][:16]}), but the sources differ "
                 "(recipe copies and provenance are verified but outside the bundle hash)", ""]
    else:
        lines = [f"bundle {d.hashes[0][:16]} -> {d.hashes[1][:16]}", ""]
    if d.values:
        lines.append("resolved values:")
        for key, va, vb, pa, pb in d.values:
            src = pa if pa == pb else f"{pa} -> {pb}"
            lines.append(f"  {key}: {json.dumps(va, ensure_ascii=False)} -> {json.dumps(vb, ensure_ascii=False)}"
                         f"   [{src}]")
        lines.append("")
    if d.provenance:
        lines.append("same values, other provenance:")
        lines += [f"  {key}: [{pa} -> {pb}]" for key, pa, pb in d.provenance]
        lines.append("")
    lines.append("files:")
    for path, ha, hb in d.files:
        state = "added" if ha is None else "removed" if hb is None else "changed"
        lines.append(f"  {state:8} {path}")
    for text in d.texts.values():
        lines += ["", *text]
    return "\n".join(lines) + "\n"
