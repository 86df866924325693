"""Compare the installed Python distributions with a bundle's pinned versions (resolved.json environment.pins)."""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import metadata

from packaging.version import InvalidVersion, Version


@dataclass(frozen=True)
class Mismatch:
    """One pinned package whose installed version differs (installed None: not installed)."""

    name: str
    pinned: str
    installed: str | None

    def __str__(self) -> str:
        have = "not installed" if self.installed is None else f"installed {self.installed}"
        return f"{self.name}: pinned {self.pinned}, {have}"


def versions_match(pinned: str, installed: str) -> bool:
    """Equal as PEP 440 versions; a pin without a local label (2.13.0) accepts any build of it (2.13.0+cpu)."""
    try:
        want, have = Version(pinned), Version(installed)
    except InvalidVersion:
        return pinned == installed
    if want.local is None:
        return want == Version(have.public)
    return want == have


def _installed(name: str) -> str | None:
    try:
        return metadata.version(name)
    except metadata.PackageNotFoundError:
        return None


def check_environment(pins: Mapping[str, str],
                      installed: Callable[[str], str | None] = _installed) -> list[Mismatch]:
    """Every pin the running interpreter does not satisfy, sorted by package name."""
    out = []
    for name, pinned in sorted(pins.items()):
        have = installed(name)
        if have is None or not versions_match(str(pinned), have):
            out.append(Mismatch(name, str(pinned), have))
    return out


def format_mismatches(mismatches: list[Mismatch], lockfile: str = "env/requirements.lock") -> str:
    """A readable report: one line per package, then how to install the pinned environment."""
    if not mismatches:
        return "environment matches the bundle's pins"
    lines = [f"{len(mismatches)} installed package(s) differ from the bundle's pins:"]
    lines += [f"  {m}" for m in mismatches]
    lines.append(f"install the pinned environment: pip install --require-hashes -r {lockfile}")
    return "\n".join(lines)
