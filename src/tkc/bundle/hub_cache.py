"""Find a hub dataset in the local Hugging Face cache by its on-disk layout (no huggingface_hub import).

The layout and the environment variables are huggingface_hub's (`constants.HF_HUB_CACHE`,
`file_download.repo_folder_name`): `<cache>/datasets--OWNER--NAME/refs/<branch or tag>` holds a commit
hash and `<cache>/datasets--OWNER--NAME/snapshots/<commit>/` the files of that commit.
"""

from __future__ import annotations

import os
import re
from pathlib import Path

COMMIT_RE = re.compile(r"[0-9a-f]{40}")


def hub_cache_dir() -> Path:
    """huggingface_hub's repository cache: HF_HUB_CACHE, else HUGGINGFACE_HUB_CACHE, else <HF_HOME>/hub."""
    default_home = os.path.join(os.getenv("XDG_CACHE_HOME", os.path.join(os.path.expanduser("~"), ".cache")),
                                "huggingface")  # fmt: skip
    home = os.path.expandvars(os.path.expanduser(os.getenv("HF_HOME", default_home)))
    legacy = os.getenv("HUGGINGFACE_HUB_CACHE", os.path.join(home, "hub"))
    return Path(os.path.expandvars(os.path.expanduser(os.getenv("HF_HUB_CACHE", legacy))))


def hub_offline() -> bool:
    """HF_HUB_OFFLINE (or TRANSFORMERS_OFFLINE) set to a true value, as huggingface_hub reads it."""
    value = os.environ.get("HF_HUB_OFFLINE") or os.environ.get("TRANSFORMERS_OFFLINE") or ""
    return value.upper() in {"1", "ON", "YES", "TRUE"}


def repo_dir(repo_id: str, repo_type: str = "dataset") -> Path:
    return hub_cache_dir() / "--".join([f"{repo_type}s", *repo_id.split("/")])


def cached_revisions(repo: Path) -> list[str]:
    """Branch/tag names and commit hashes present in a cached repository folder, for error messages."""
    refs = sorted(p.relative_to(repo / "refs").as_posix() for p in (repo / "refs").rglob("*") if p.is_file())
    snaps = sorted(p.name for p in (repo / "snapshots").glob("*") if p.is_dir())
    return refs + snaps


def find_snapshot(repo_id: str, revision: str | None) -> tuple[Path | None, str | None]:
    """(the cached snapshot folder of `revision` (default: main), None) or (None, why it is not there)."""
    repo, rev = repo_dir(repo_id), revision or "main"
    if not (repo / "snapshots").is_dir():
        return None, f"hub dataset {repo_id!r} is not in the local Hugging Face cache ({hub_cache_dir()})"
    ref = repo / "refs" / rev
    commit = rev if COMMIT_RE.fullmatch(rev) else (ref.read_text().strip() if ref.is_file() else None)
    snapshot = repo / "snapshots" / commit if commit else None
    if snapshot is None or not snapshot.is_dir():
        have = ", ".join(cached_revisions(repo)) or "none"
        return None, f"revision {rev!r} of hub dataset {repo_id!r} is not in the local Hugging Face cache " \
                     f"({repo}; cached: {have})"  # fmt: skip
    return snapshot, None
