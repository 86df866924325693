"""Media access rules, kept once for `tkc compile`, `tkc run` and `tkc serve` (stdlib only: no PIL, no torch).

A media reference is a string in a dataset's images/videos/audios column (or a local path a serve request names).
It is read only from under one declared folder, the media root: `data.media.root` (relative to the recipe), else
the dataset file's own folder. The root itself must lie inside the recipe's read roots (PATH001, the compiler's
rule). References are relative to the root (an absolute path is allowed when it lies inside it).

API
* `MEDIA_KINDS`: the three media columns; `PLACEHOLDERS`: what datasets write for each (`<image>`, ...).
* `ENCODED_MEDIA`: the media kinds `tkc run` encodes today (a family may declare more: MM001 refuses them);
  `MEDIA_STAGE_KINDS`: the stage kinds whose rows carry media to the model (MM001 refuses media for the others).
* `MAX_IMAGE_BYTES`, `MAX_IMAGE_PIXELS`: default bounds (a recipe sets `data.media.max_image_bytes/_pixels`);
  `MAX_AUDIO_BYTES`: audio files (fixed; their seconds are bounded by the model's feature window at run time).
* `MediaRefused(ValueError)`: why a reference is refused; its message names the reference and the root.
* `resolve_media_path(ref, root) -> Path`: the real path (symlinks followed) of a local reference, or MediaRefused
  for a URL of any scheme (`http://`, `file://`, `data:`), an empty reference, a path that leaves the root (`../x`,
  `/etc/passwd`, a sibling folder sharing the root's name as a prefix, a symlink out of the root), a missing file or
  anything but a regular file. It reads no file content: only `os.path.realpath` and `stat`.
* `count_placeholders(text, placeholder)`, `expand_placeholders(text, placeholder, runs)`: placeholders in a text,
  and the text with the k-th placeholder replaced by `runs[k]` (the family's prefix + token x n + suffix).
* `compress_runs(text, tokens)`: `<|image_pad|><|image_pad|>...` shown as `<|image_pad|>×64` (tkc data inspect).
"""

from __future__ import annotations

import functools
import os
import re
import stat
from pathlib import Path

MEDIA_KINDS = ("images", "videos", "audios")
PLACEHOLDERS = {"images": "<image>", "videos": "<video>", "audios": "<audio>"}
ENCODED_MEDIA = ("images", "audios")
MEDIA_STAGE_KINDS = ("sft", "dpo", "infer")   # stage kinds whose rows carry their media to the model
MAX_IMAGE_BYTES = 32 << 20          # a bigger file is refused before it is opened
MAX_IMAGE_PIXELS = 50_000_000       # width x height, checked from the header before the pixels are decoded
MAX_AUDIO_BYTES = 16 << 20          # an audio file over it is refused (MM003) before it is opened; its length in
                                    # seconds is bounded by the model's feature window when it is read
_SCHEME = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]+:")   # two letters at least: `C:` is a drive, not a scheme


class MediaRefused(ValueError):
    """A media reference that is not read (a URL, outside the media root, missing, not a regular file)."""


def resolve_media_path(ref: object, root: Path | str) -> Path:
    """The real path of `ref` under `root`, or MediaRefused (see the module docstring). Reads no file content."""
    if not isinstance(ref, str) or not ref.strip():
        raise MediaRefused(f"media reference {ref!r} is not a file path")
    if _SCHEME.match(ref) or ref.startswith("//"):
        raise MediaRefused(f"media reference {ref!r} is a URL; only files under the media root {str(root)!r} are "
                           "read (download it there first)")
    real_root = Path(os.path.realpath(root))
    real = Path(os.path.realpath(real_root / os.path.expanduser(ref)))
    if not real.is_relative_to(real_root):   # path components, not a string prefix: /data/img2 is not in /data/img
        raise MediaRefused(f"media file {ref!r} resolves to {real}, outside the media root {str(real_root)!r}")
    try:
        mode = os.stat(real).st_mode
    except OSError:
        raise MediaRefused(f"media file {ref!r} does not exist under the media root {str(real_root)!r}") from None
    if not stat.S_ISREG(mode):
        raise MediaRefused(f"media file {ref!r} is not a regular file")
    return real


def count_placeholders(text: str, placeholder: str) -> int:
    return text.count(placeholder) if text else 0


def expand_placeholders(text: str, placeholder: str, runs: list[str]) -> str:
    """`text` with its k-th `placeholder` replaced by `runs[k]`; the counts must match (ValueError)."""
    pieces = text.split(placeholder)
    if len(pieces) - 1 != len(runs):
        raise ValueError(f"{len(pieces) - 1} {placeholder} placeholders for {len(runs)} media files")
    out = [pieces[0]]
    for run, piece in zip(runs, pieces[1:], strict=True):
        out += [run, piece]
    return "".join(out)


def compress_runs(text: str, tokens: list[str] | tuple[str, ...]) -> str:
    """Runs of two or more of each token shown as `token×n`."""
    for token in tokens:
        if token:
            text = re.sub(f"(?:{re.escape(token)}){{2,}}", functools.partial(_count_run, token), text)
    return text


def _count_run(token: str, match: re.Match[str]) -> str:
    return f"{token}×{len(match.group(0)) // len(token)}"
