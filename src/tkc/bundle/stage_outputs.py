"""Stage output manifests: the sha256 of every file a finished stage left in outputs/<stage>/, checked before use.

When a stage finishes, the runtime writes `outputs/<stage>/manifest.json` (canonical JSON, written atomically)
just before `DONE`. Whatever later reads that stage's outputs (init_from, export, eval/infer, a reward model,
`tkc verify`) checks them against it first: a changed, added or removed file is refused. `checkpoints/` is left
out: a finished stage's resume state is never read again, and it is the largest thing there. No torch here: the
compile path (`tkc verify`) uses it too.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

from tkc.bundle.canonical import canonical_bytes, sha256_file
from tkc.bundle.io import FileProblem, fsync_path

STAGE_MANIFEST = "manifest.json"
DONE = "DONE"
FORMAT_VERSION = 1
_NOT_LISTED = (STAGE_MANIFEST, DONE)        # the manifest itself; DONE is written after it
_NOT_WALKED = ("checkpoints",)               # resume state: never read once the stage is done


def _present(stage_dir: Path) -> dict[str, Path]:
    """Every file and symlink under the stage folder, by relative POSIX path (symlinks are never followed)."""
    found: dict[str, Path] = {}
    for dirpath, dirnames, filenames in os.walk(stage_dir, followlinks=False):
        rel_dir = Path(dirpath).relative_to(stage_dir)
        if rel_dir == Path("."):
            dirnames[:] = [d for d in dirnames if d not in _NOT_WALKED]
        links = [d for d in dirnames if (Path(dirpath) / d).is_symlink()]
        for name in [*filenames, *links]:
            rel = (rel_dir / name).as_posix()
            if rel not in _NOT_LISTED:
                found[rel] = Path(dirpath) / name
    return found


def build_stage_manifest(stage_dir: Path, stage: str, bundle_hash: str) -> dict[str, Any]:
    files = {rel: sha256_file(path) for rel, path in sorted(_present(Path(stage_dir)).items())}
    return {"format_version": FORMAT_VERSION, "stage": stage, "bundle_hash": bundle_hash, "files": files}


def write_stage_manifest(stage_dir: Path, stage: str, bundle_hash: str) -> dict[str, Any]:
    """Hash the stage's outputs (streamed) and write the manifest atomically: temp file, fsync, rename."""
    stage_dir = Path(stage_dir)
    stage_dir.mkdir(parents=True, exist_ok=True)
    manifest = build_stage_manifest(stage_dir, stage, bundle_hash)
    fd, tmp = tempfile.mkstemp(prefix=f".{STAGE_MANIFEST}.", suffix=".tmp", dir=stage_dir)
    try:
        with os.fdopen(fd, "wb") as fh:
            fh.write(canonical_bytes(manifest) + b"\n")
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, stage_dir / STAGE_MANIFEST)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)  # only our own temp file
        raise
    fsync_path(stage_dir)
    return manifest


def read_stage_manifest(stage_dir: Path) -> dict[str, Any] | None:
    """The manifest, or None when it is missing or not a manifest."""
    import json

    try:
        manifest = json.loads((Path(stage_dir) / STAGE_MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    ok = isinstance(manifest, dict) and isinstance(manifest.get("files"), dict)
    return manifest if ok else None


def check_stage_outputs(stage_dir: Path, bundle_hash: str | None = None) -> list[FileProblem]:
    """Every difference between a finished stage's folder and its manifest (paths relative to the stage folder)."""
    stage_dir = Path(stage_dir)
    manifest = read_stage_manifest(stage_dir)
    if manifest is None:
        return [FileProblem(STAGE_MANIFEST, "missing or unreadable: this finished stage's outputs cannot be "
                                            "checked (run the stage again to write one)")]
    problems: list[FileProblem] = []
    if bundle_hash is not None and manifest.get("bundle_hash") != bundle_hash:
        problems.append(FileProblem(STAGE_MANIFEST, f"written for bundle {str(manifest.get('bundle_hash'))[:12]}, "
                                                    f"not this bundle {bundle_hash[:12]}"))
    expected: dict[str, str] = manifest["files"]
    present = _present(stage_dir)
    for rel, path in sorted(present.items()):
        if path.is_symlink():
            problems.append(FileProblem(rel, "is a symlink (stage outputs are plain files)"))
        elif rel not in expected:
            problems.append(FileProblem(rel, "added after the stage finished", None, sha256_file(path)))
        else:
            actual = sha256_file(path)
            if actual != expected[rel]:
                problems.append(FileProblem(rel, "changed after the stage finished", expected[rel], actual))
    problems.extend(FileProblem(rel, "removed after the stage finished", digest, None)
                    for rel, digest in sorted(expected.items()) if rel not in present)
    return problems


def finished_stages(bundle_dir: Path) -> list[Path]:
    """outputs/<stage>/ folders that carry a DONE marker, sorted by name."""
    outputs = Path(bundle_dir) / "outputs"
    if not outputs.is_dir():
        return []
    return sorted(p for p in outputs.iterdir() if p.is_dir() and not p.is_symlink() and (p / DONE).is_file())
