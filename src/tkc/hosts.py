"""Bind-address facts shared by the HTTP servers (`tkc serve`, `tkc board`): stdlib only, no tkc imports."""

from __future__ import annotations

import ipaddress


def is_loopback(host: str) -> bool:
    """Whether binding `host` keeps a server reachable from this machine only (a name other than localhost may
    resolve anywhere, so it is not loopback)."""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False
