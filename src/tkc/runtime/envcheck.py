"""Compare the running environment with a bundle's pins (resolved.json environment.pins): `tkc run` refuses drift.

Three kinds of drift, each a reason to refuse (exit 4) unless `tkc run --allow-env-drift`:

* versions: a pinned distribution missing or at another version (a pin without a local label, `2.13.0`, accepts
  any build of it, `2.13.0+cpu`);
* extra packages that change behaviour by being importable: distributions that transformers, peft, trl or
  accelerate detect and use on their own (BEHAVIOUR_PACKAGES: attention kernels, fused-loss kernels, quantisation
  and ZeRO backends) installed but not pinned. A package `tkc run` hides for the whole run (made unimportable,
  see tkc.runtime.run.unused_packages) cannot act and is not drift; other extras (pytest, ruff) are not drift;
* modified installed files: each pinned distribution's `.py` files against the sha256 its own RECORD lists, and
  every other RECORD file (compiled extensions, data) by its recorded size.

What is and is not comparable. An installed distribution keeps its RECORD (the hash of each file as installed)
but not the wheel it came from, so the lockfile's `--hash=sha256:` of the wheel cannot be checked after install:
pip checks it at install time (`pip install --require-hashes`). The RECORD check catches a file edited, patched
or replaced after install; it cannot catch a RECORD rewritten along with the file, or a wheel that was not the
pinned one (install with --require-hashes for that). Python files are hashed because that is where a patch to
behaviour lands and they are cheap (the cpu lockfile's ~13,000 .py files, 213 MiB: 0.7 s with a warm page
cache); compiled extensions are compared by size only, since hashing them all reads ~1.1 GB more (1.1 s warm,
several seconds cold) on every run. Results are cached per process (tests run many bundles in one process).
"""

from __future__ import annotations

import base64
import csv
import functools
import hashlib
import os
import re
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from importlib import metadata

from packaging.version import InvalidVersion, Version

# Distributions the HF stack imports and uses on its own when they are importable (normalized names).
BEHAVIOUR_PACKAGES = ("apex", "auto-gptq", "bitsandbytes", "causal-conv1d", "deepspeed", "flash-attn",
                      "flash-attn-3", "gptqmodel", "hqq", "kernels", "liger-kernel", "mamba-ssm", "optimum-quanto",
                      "torchao", "xformers")


def normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


@dataclass(frozen=True)
class Mismatch:
    """One pinned package whose installed version differs (installed None: not installed)."""

    name: str
    pinned: str
    installed: str | None

    def __str__(self) -> str:
        have = "not installed" if self.installed is None else f"installed {self.installed}"
        return f"{self.name}: pinned {self.pinned}, {have}"


@dataclass(frozen=True)
class Extra:
    """A behaviour-changing distribution installed (and importable during the run) but not pinned."""

    name: str
    installed: str

    def __str__(self) -> str:
        return f"{self.name}: installed {self.installed}, not pinned (the HF libraries use it when importable)"


@dataclass(frozen=True)
class Modified:
    """A pinned distribution's installed file that differs from its RECORD."""

    name: str
    path: str
    detail: str

    def __str__(self) -> str:
        return f"{self.name}: {self.path} {self.detail}"


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


def extra_packages(pins: Mapping[str, str], hidden: Iterable[str] = (),
                   installed: Callable[[str], str | None] = _installed) -> list[Extra]:
    """Behaviour-changing distributions that are installed, not pinned and not hidden by the run."""
    skip = {normalize(n) for n in (*pins, *hidden)}
    return [Extra(name, have) for name in BEHAVIOUR_PACKAGES
            if name not in skip and (have := installed(name)) is not None]


def _file_problem(path: str, hash_spec: str, size: str) -> str | None:
    """Why an installed file differs from its RECORD row (`sha256=<urlsafe b64>`, size), or None."""
    try:
        if path.endswith(".py") and hash_spec:
            algo, _, want = hash_spec.partition("=")
            with open(path, "rb") as f:
                digest = hashlib.file_digest(f, algo).digest()
            ok = base64.urlsafe_b64encode(digest).rstrip(b"=").decode() == want
            return None if ok else f"differs from its RECORD ({algo})"
        if size and os.stat(path).st_size != int(size):
            return f"has {os.stat(path).st_size} bytes, its RECORD lists {size}"
    except FileNotFoundError:
        return "is missing (listed in its RECORD)"
    return None


@functools.cache
def _modified(name: str, version: str) -> tuple[Modified, ...]:
    """RECORD rows read as text (importlib's PackagePath objects cost ~1 s over the cpu lockfile's 26,000 files)."""
    try:
        dist = metadata.distribution(name)
    except metadata.PackageNotFoundError:
        return ()
    base, record = str(dist.locate_file("")), dist.read_text("RECORD") or ""
    out = []
    for row in csv.reader(record.splitlines()):
        if len(row) == 3 and (row[1] or row[2]):
            problem = _file_problem(os.path.normpath(os.path.join(base, row[0])), row[1], row[2])
            if problem:
                out.append(Modified(name, row[0], problem))
    return tuple(out)


def modified_files(pins: Mapping[str, str]) -> list[Modified]:
    """Installed files of the pinned distributions that differ from their RECORD (see the module docstring)."""
    out: list[Modified] = []
    for name in sorted(pins):
        version = _installed(name)
        if version is not None:
            out += _modified(name, version)
    return out


def environment_drift(pins: Mapping[str, str], hidden: Iterable[str] = ()) -> list[Mismatch | Extra | Modified]:
    """Everything that differs from the pins. An empty `pins` (a hand-written bundle) pins nothing: no drift."""
    if not pins:
        return []
    return [*check_environment(pins), *extra_packages(pins, hidden), *modified_files(pins)]


def format_mismatches(mismatches: list, lockfile: str = "env/requirements.lock") -> str:
    """A readable report: one line per difference, then how to install the pinned environment."""
    if not mismatches:
        return "environment matches the bundle's pins"
    lines = [f"{len(mismatches)} difference(s) between the installed packages and the bundle's pins:"]
    lines += [f"  {m}" for m in mismatches[:40]]
    lines += [f"  ... and {len(mismatches) - 40} more"] if len(mismatches) > 40 else []
    lines.append(f"install the pinned environment: pip install --require-hashes -r {lockfile}")
    return "\n".join(lines)
