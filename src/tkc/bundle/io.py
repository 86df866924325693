"""Bundle files on disk: manifest and hash, atomic write, verification."""

from __future__ import annotations

import os
import shutil
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from tkc.bundle.canonical import canonical_bytes, pretty_json_bytes, sha256_bytes, sha256_file

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
UNHASHED = ("manifest.json", "volatile.json")   # files outside the hash
UNHASHED_DIRS = ("outputs",)                     # runtime writes here; never part of the contract


def bundle_hash(files: dict[str, str]) -> str:
    return sha256_bytes(canonical_bytes({"format_version": FORMAT_VERSION, "files": files}))


def build_manifest(contents: dict[str, bytes], tkc_version: str,
                   sources: dict[str, bytes] | None = None) -> dict[str, Any]:
    """`files` (what the runtime consumes) make the bundle hash; `sources` (recipe copies, provenance) are
    verified too but left out of the hash, so reformatting a recipe or renaming it keeps the hash."""
    files = {path: sha256_bytes(data) for path, data in sorted(contents.items())}
    return {"format_version": FORMAT_VERSION, "tkc_version": tkc_version, "files": files,
            "sources": {path: sha256_bytes(data) for path, data in sorted((sources or {}).items())},
            "bundle_hash": bundle_hash(files)}


def fsync_path(path: Path) -> None:
    """fsync a file or a directory (a directory's entry list, so a rename inside it is durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _write_tree(root: Path, contents: dict[str, bytes]) -> None:
    for rel, data in contents.items():
        target = root / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        with target.open("wb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        if rel.endswith(".sh"):
            target.chmod(0o755)


@dataclass(frozen=True)
class Written:
    """What `write_bundle_at` did: the new manifest, and where the bundle it replaced was kept (None: nothing
    was kept, because there was no bundle there or it held nothing but its own verified, compiled files)."""

    manifest: dict[str, Any]
    aside: Path | None = None
    aside_hash: str | None = None


def write_bundle(out: Path, contents: dict[str, bytes], volatile: dict[str, Any], tkc_version: str,
                 force: bool = False, sources: dict[str, bytes] | None = None) -> dict[str, Any]:
    """`write_bundle_at`, returning only the manifest."""
    return write_bundle_at(out, contents, volatile, tkc_version, force, sources).manifest


def write_bundle_at(out: Path, contents: dict[str, bytes], volatile: dict[str, Any], tkc_version: str,
                    force: bool = False, sources: dict[str, bytes] | None = None) -> Written:
    """Write into a temp dir beside `out`, verify it, then rename into place.

    An existing bundle is replaced only with `force` (or when the hash is unchanged). tkc never deletes outputs
    or anything a person put in a bundle: the old bundle is moved to `<out>.old-<hash>` (`-2`, `-3`, ... when that
    name is taken; an existing folder is never overwritten). With an unchanged hash its `outputs/` moves into the
    new bundle. The moved-aside folder is removed only when it holds nothing but the old bundle's own compiled
    files, unchanged (those can be compiled again); otherwise it stays, and `Written.aside` says where.
    """
    out = Path(out)
    manifest = build_manifest(contents, tkc_version, sources)
    tmp = Path(tempfile.mkdtemp(prefix=f".{out.name}.tmp-", dir=out.parent if out.parent.exists() else None))
    try:
        _write_tree(tmp, {**contents, **(sources or {}), MANIFEST: pretty_json_bytes(manifest),
                          "volatile.json": pretty_json_bytes(volatile)})
        problems = verify_bundle(tmp)
        if problems:
            raise RuntimeError("bundle failed verification right after writing: " + "; ".join(problems))
        aside, old_hash = _swap_into_place(tmp, out, manifest, force)
    except BaseException:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)  # only our own temp dir: no outputs ever move into it
        raise
    return Written(manifest, aside, old_hash if aside else None)


class BundleExists(Exception):
    pass


def _old_hash(out: Path, manifest: dict[str, Any], force: bool) -> str:
    """The hash of the bundle at `out` ("empty" for an empty folder); refuses what must not be replaced."""
    if not (out / MANIFEST).is_file():
        if any(out.iterdir()):
            raise BundleExists(f"{out} exists and is not a tkc bundle; refusing to touch it")
        return "empty"
    try:
        old = str(read_manifest(out).get("bundle_hash", "unreadable"))
    except (OSError, ValueError, AttributeError):
        old = "unreadable"
    if old != manifest["bundle_hash"] and not force:
        raise BundleExists(f"{out} holds another bundle ({old[:12]}); "
                           "use --force to replace it (it is moved aside with its outputs, never deleted)")
    return old


def _claim_aside(out: Path, old_hash: str) -> Path:
    """A new, empty folder `<out>.old-<hash>[-N]` beside `out`: created here, so no existing folder is reused."""
    base = f"{out.name}.old-{old_hash[:12]}"
    for n in range(1, 10_000):
        candidate = out.parent / (base if n == 1 else f"{base}-{n}")
        try:
            candidate.mkdir()
        except FileExistsError:
            continue
        return candidate
    raise BundleExists(f"too many folders named {base}-N beside {out}; move some away")


def _swap_into_place(tmp: Path, out: Path, manifest: dict[str, Any], force: bool) -> tuple[Path | None, str]:
    """Rename `tmp` to `out`; the old `out` goes to a fresh aside folder (outputs follow an unchanged hash)."""
    if not out.exists():
        out.parent.mkdir(parents=True, exist_ok=True)
        os.replace(tmp, out)
        fsync_path(out.parent)
        return None, ""
    old_hash = _old_hash(out, manifest, force)
    aside = _claim_aside(out, old_hash)
    try:
        os.replace(out, aside)  # onto the empty folder just created: rename(2) replaces an empty directory
    except BaseException:
        aside.rmdir()
        raise
    try:
        os.replace(tmp, out)
    except BaseException:
        os.replace(aside, out)  # put the old bundle back where it was
        raise
    if old_hash == manifest["bundle_hash"] and (aside / "outputs").exists():
        os.replace(aside / "outputs", out / "outputs")
    fsync_path(out.parent)
    if _disposable(aside):
        shutil.rmtree(aside)
        return None, old_hash
    return aside, old_hash


def _disposable(aside: Path) -> bool:
    """Empty, or exactly a compiled bundle (every file listed in its manifest and unchanged) without outputs."""
    if not any(aside.iterdir()):
        return True
    if (aside / "outputs").exists() or not (aside / MANIFEST).is_file():
        return False
    try:
        return check_bundle(aside) == []
    except (OSError, ValueError, AttributeError):
        return False


def set_aside(path: Path, why: str) -> Path:
    """Rename `path` to `<name>.<why>-<k>` (first free k): out of every listing, kept for the user to inspect."""
    k = 1
    while (aside := path.with_name(f"{path.name}.{why}-{k}")).exists():
        k += 1
    os.rename(path, aside)
    return aside


def volatile_facts(source_root: Path) -> dict[str, Any]:
    """volatile.json's content for a bundle compiled now (outside the hash): when, where, and its source root."""
    import platform
    import time

    return {"compiled_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()), "host": platform.node(),
            "source_root": str(source_root), "python": platform.python_version()}


def recorded_source_root(root: Path) -> Path | None:
    """The source root volatile.json records (where the bundle's relative data/model paths resolve); None when
    the bundle has no volatile.json or it names none. A volatile.json that is not JSON raises ValueError."""
    import json

    path = Path(root) / "volatile.json"
    if not path.exists():
        return None
    found = json.loads(path.read_text(encoding="utf-8"))
    value = found.get("source_root") if isinstance(found, dict) else None
    return Path(value) if isinstance(value, str) and value else None


def read_manifest(root: Path) -> dict[str, Any]:
    import json

    return json.loads((Path(root) / MANIFEST).read_text(encoding="utf-8"))


@dataclass(frozen=True)
class FileProblem:
    path: str
    problem: str
    expected: str | None = None
    actual: str | None = None

    def render(self) -> str:
        extra = f" (expected {self.expected[:16]}…, actual {self.actual[:16]}…)" if self.expected and self.actual \
            else ""
        return f"{self.path}: {self.problem}{extra}"


def _listed(root: Path) -> dict[str, Path]:
    found: dict[str, Path] = {}
    for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
        rel_dir = Path(dirpath).relative_to(root)
        if rel_dir.parts[:1] and rel_dir.parts[0] in UNHASHED_DIRS:
            dirnames[:] = []
            continue
        for name in dirnames + filenames:
            rel = (rel_dir / name).as_posix()
            if rel not in UNHASHED and rel.split("/")[0] not in UNHASHED_DIRS:
                found[rel] = Path(dirpath) / name
    return found


def check_bundle(root: Path) -> list[FileProblem]:
    """Every difference between a bundle directory and its manifest (changed/added/removed/symlinked)."""
    root = Path(root)
    if not (root / MANIFEST).is_file():
        return [FileProblem(MANIFEST, "missing: not a tkc bundle")]
    try:
        manifest = read_manifest(root)
        expected: dict[str, str] = {**manifest.get("sources", {}), **manifest.get("files", {})}
    except (OSError, ValueError, AttributeError, TypeError) as exc:
        return [FileProblem(MANIFEST, f"unreadable ({type(exc).__name__}): not a valid tkc manifest")]
    problems: list[FileProblem] = []
    if bundle_hash(manifest.get("files", {})) != manifest.get("bundle_hash"):
        problems.append(FileProblem(MANIFEST, "bundle_hash does not match the file list"))
    present = _listed(root)
    for rel, path in sorted(present.items()):
        if path.is_symlink():
            problems.append(FileProblem(rel, "is a symlink (bundles hold plain files only)"))
        elif path.is_dir():
            continue
        elif rel not in expected:
            problems.append(FileProblem(rel, "added after compile", None, sha256_file(path)))
        else:
            actual = sha256_file(path)
            if actual != expected[rel]:
                problems.append(FileProblem(rel, "changed since compile", expected[rel], actual))
    problems.extend(FileProblem(rel, "removed since compile", h) for rel, h in sorted(expected.items())
                    if rel not in present)
    return problems


def verify_bundle(root: Path) -> list[str]:
    """Human-readable problems; empty when the bundle is intact."""
    return [p.render() for p in check_bundle(root)]
