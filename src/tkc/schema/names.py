"""Grammars of the names a recipe hands to other systems (Slurm directives, Kubernetes objects, images).

Checked when the recipe is validated, so each bad value is a positioned error at its own key, all reported in
one compile; compiler/launch.py checks the same grammars again on what it renders.
"""

from __future__ import annotations

import re

_SLURM_VALUE = re.compile(r"[A-Za-z0-9_.,:+-]{1,128}")
_SLURM_TIME = re.compile(r"INFINITE|UNLIMITED|(?:[0-9]{1,5}-)?[0-9]{1,7}(?::[0-9]{1,2}){0,2}")
_DNS1123_LABEL = re.compile(r"[a-z0-9](?:[a-z0-9-]{0,61}[a-z0-9])?")
# The distribution/reference grammar: [domain[:port]/]path[:tag][@digest] (docker's reference.go).
_ALNUM = r"[a-z0-9]+"
_COMPONENT = rf"{_ALNUM}(?:(?:[._]|__|-+){_ALNUM})*"
_LABEL = r"[A-Za-z0-9](?:[A-Za-z0-9-]*[A-Za-z0-9])?"
_DOMAIN = rf"(?:{_LABEL}(?:\.{_LABEL})*|\[[0-9A-Fa-f:.]+\])(?::[0-9]+)?"
_TAG = r"[A-Za-z0-9_][A-Za-z0-9_.-]{0,127}"
_DIGEST = r"[A-Za-z][A-Za-z0-9]*(?:[-_+.][A-Za-z][A-Za-z0-9]*)*:[0-9a-fA-F]{32,}"
_IMAGE = re.compile(rf"(?:{_DOMAIN}/)?{_COMPONENT}(?:/{_COMPONENT})*(?::{_TAG})?(?:@{_DIGEST})?")
MAX_IMAGE_LEN = 512


def check_slurm_value(value: str) -> str:
    """A partition or account name: written into `#SBATCH` lines, so nothing a shell or Slurm would read more into."""
    if not _SLURM_VALUE.fullmatch(value):
        raise ValueError("only letters, digits and _.,:+- are allowed (at most 128)")
    return value


def check_slurm_time(value: str) -> str:
    if not _SLURM_TIME.fullmatch(value):
        raise ValueError("not a Slurm time limit: minutes, [days-]hours:minutes:seconds, days-hours or UNLIMITED")
    return value


def is_slurm_value(value: str) -> bool:
    """A partition/account value safe on an #SBATCH line: letters, digits and _.,:+- (1-128 characters)."""
    return _SLURM_VALUE.fullmatch(value) is not None


def is_dns1123_label(value: str) -> bool:
    """A Kubernetes namespace or object name: lowercase letters, digits and '-', at most 63, alphanumeric ends."""
    return _DNS1123_LABEL.fullmatch(value) is not None


def check_namespace(value: str) -> str:
    if not is_dns1123_label(value):
        raise ValueError("not a Kubernetes namespace (DNS-1123 label): lowercase letters, digits and '-', "
                         "at most 63 characters, starting and ending with a letter or digit")
    return value


def is_image_reference(value: str) -> bool:
    return len(value) <= MAX_IMAGE_LEN and _IMAGE.fullmatch(value) is not None


def check_image(value: str) -> str:
    if not is_image_reference(value):
        raise ValueError("not a container image reference: [registry[:port]/]name[:tag][@sha256:digest], "
                         "lowercase name, no spaces or shell characters")
    return value
