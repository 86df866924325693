"""Media in `tkc serve` requests: an OpenAI `image_url` part made into a checked RGB image, or a clear refusal.

Where an image may come from, in the order `MediaFetcher.image` tries them:
* a data URL (`data:image/png;base64,...`): always; its encoded length is checked before anything is decoded;
* a local path: only under the bundle's media root, by the rules training data meets (tkc.bundle.media:
  `file://` and other schemes, `..`, a sibling sharing the root's prefix, a symlink out of the root are refused);
* an http(s) URL: only when the server was started with an allow-list (`tkc serve --allow-media-host HOST`, a
  `*.example.com` entry matches subdomains). The host is normalised (IPv4 in decimal, octal or hex spelling is the
  address it spells), resolved once, and every address it resolves to must be public (no private, loopback,
  link-local, multicast, reserved, unspecified, shared or IPv4-mapped private address); the connection goes to
  the address that was checked (a DNS answer that changes between check and connect cannot swap it), TLS still
  verifies the certificate against the host name. Redirects are followed by hand, each hop checked the same way,
  at most `max_redirects`. The body is read in chunks up to `max_bytes` (a Content-Length over it is refused
  before the body is read), within connect, read and total time limits.
Every image, whatever its source, is bounded in bytes and pixels (the header's size is checked before any pixel
is decoded) and decoded in full; a corrupt, truncated or non-image file is refused with the reason.
"""

from __future__ import annotations

import base64
import binascii
import http.client
import io
import ipaddress
import os
import re
import socket
import ssl
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urljoin, urlsplit

from tkc.bundle.media import MAX_IMAGE_BYTES, MAX_IMAGE_PIXELS, MediaRefused, resolve_media_path

__all__ = ["MediaFetcher", "MediaLimits", "MediaPolicy", "MediaRefused", "open_image"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IMAGE_FORMATS = ("PNG", "JPEG", "GIF", "WEBP", "BMP")
_CHUNK = 64 << 10
_REDIRECTS = (301, 302, 303, 307, 308)
_NUMERIC_HOST = re.compile(
    r"[0-9a-fx.]+"
)  # what the legacy IPv4 spellings (2130706433, 0x7f.1, 0177.0.0.1) use


@dataclass(frozen=True)
class MediaLimits:
    max_bytes: int = MAX_IMAGE_BYTES  # an image file (encoded), whatever its source
    max_pixels: int = MAX_IMAGE_PIXELS  # width x height, checked from the header before decoding
    connect_timeout_s: float = 5.0
    read_timeout_s: float = 10.0  # between two reads
    total_timeout_s: float = 30.0  # the whole fetch, redirects included
    max_redirects: int = 3


@dataclass(frozen=True)
class MediaPolicy:
    """What a server may read: local files under `root` (None: none), remote hosts in `allow_hosts` (none: no
    remote URLs), within `limits`."""

    root: Path | None = None
    allow_hosts: tuple[str, ...] = ()
    limits: MediaLimits = field(default_factory=MediaLimits)


def parse_ip(host: str) -> IPAddress | None:
    """The address a host spells, in any spelling a resolver accepts (dotted, decimal, octal, hex, IPv6), or None
    for a name."""
    host = host.strip("[]")
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    if _NUMERIC_HOST.fullmatch(host.lower()):
        try:
            return ipaddress.IPv4Address(socket.inet_aton(host))
        except OSError:
            return None
    return None


def normalize_host(host: str) -> str:
    """Lower case, no trailing dot, an IP literal in its canonical spelling."""
    host = host.strip().rstrip(".").lower()
    ip = parse_ip(host)
    return str(ip) if ip is not None else host


def is_public(ip: IPAddress) -> bool:
    """An address a server may fetch from: globally routable, no special purpose (an IPv6 address that embeds an
    IPv4 one is judged by the IPv4 one too)."""
    embedded = (
        [ip.ipv4_mapped, ip.sixtofour, ip.teredo and ip.teredo[1]]
        if isinstance(ip, ipaddress.IPv6Address)
        else []
    )
    for a in [ip, *(e for e in embedded if e)]:
        if (
            not a.is_global
            or a.is_private
            or a.is_loopback
            or a.is_link_local
            or a.is_multicast
            or a.is_reserved
            or a.is_unspecified
        ):
            return False
    return True


def resolve_host(host: str, port: int) -> list[str]:
    """Every address `host` resolves to (the system resolver)."""
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as e:
        raise MediaRefused(f"host {host!r} does not resolve ({e})") from None
    return [str(info[4][0]) for info in infos]


def host_allowed(host: str, allow: Sequence[str]) -> bool:
    for entry in map(normalize_host, allow):
        if host == entry or (entry.startswith("*.") and host.endswith(entry[1:])):
            return True
    return False


class MediaFetcher:
    """Reads images for `tkc serve` under a MediaPolicy. `resolve` and `permit` are the resolver and the address
    check (tests inject them: a name for the test server, loopback allowed for that one address)."""

    def __init__(
        self,
        policy: MediaPolicy,
        *,
        resolve: Callable[[str, int], list[str]] = resolve_host,
        permit: Callable[[IPAddress], bool] = is_public,
        tls: ssl.SSLContext | None = None,
    ):
        self.policy, self.limits = policy, policy.limits
        self.resolve, self.permit, self.tls = resolve, permit, tls

    def image(self, url: str) -> Any:
        """The image `url` names (data URL, path under the media root, allowed http(s) URL) as RGB."""
        return open_image(self.read(url), self.limits, _short(url))

    def read(self, url: str) -> bytes:
        if not isinstance(url, str) or not url:
            raise MediaRefused("image_url.url must be a non-empty string")
        scheme = url.split(":", 1)[0].lower() if re.match(r"[A-Za-z][A-Za-z0-9+.-]*:", url) else ""
        if scheme == "data":
            return read_data_url(url, self.limits)
        if scheme in ("http", "https"):
            return self._remote(url)
        if scheme and not re.match(r"[A-Za-z]:[\\/]", url):  # a scheme, not a Windows drive letter
            raise MediaRefused(
                f"{_short(url)}: the {scheme}:// scheme is refused; send a data URL, a path under "
                "the media root, or an http(s) URL from an allowed host"
            )
        return self._local(url)

    # ------------------------------------------------------------------ local files
    def _local(self, ref: str) -> bytes:
        root = self.policy.root
        if root is None:
            raise MediaRefused(
                f"{_short(ref)}: local paths need a media root, and this bundle declares none; "
                "send the image as a data URL"
            )
        path = local_path(root, ref)  # the real path: its last component cannot be a symlink (O_NOFOLLOW)
        try:
            with open(os.open(path, os.O_RDONLY | getattr(os, "O_NOFOLLOW", 0)), "rb") as f:
                size = os.fstat(f.fileno()).st_size
                if size > self.limits.max_bytes:
                    raise MediaRefused(
                        f"{_short(ref)}: {size} bytes, over the limit of {self.limits.max_bytes}"
                    )
                return f.read(self.limits.max_bytes + 1)
        except OSError as e:
            raise MediaRefused(f"{_short(ref)}: cannot read it ({e.strerror})") from None

    # ------------------------------------------------------------------ remote URLs
    def _remote(self, url: str) -> bytes:
        if not self.policy.allow_hosts:
            raise MediaRefused(
                f"{_short(url)}: remote image URLs are off; start tkc serve with --allow-media-host "
                "HOST to allow a host, or send the image as a data URL"
            )
        deadline = time.monotonic() + self.limits.total_timeout_s
        for _ in range(self.limits.max_redirects + 1):
            scheme, host, port, target = self._check_url(url)
            ip = self._checked_address(host, port)
            status, location, body = self._get(scheme, host, ip, port, target, deadline, url)
            if status not in _REDIRECTS:
                return body
            if not location:
                raise MediaRefused(f"{_short(url)}: HTTP {status} without a Location")
            url = urljoin(url, location)
        raise MediaRefused(f"{_short(url)}: more than {self.limits.max_redirects} redirects")

    def _check_url(self, url: str) -> tuple[str, str, int, str]:
        try:
            parts = urlsplit(url)
            port = parts.port
        except ValueError as e:
            raise MediaRefused(f"{_short(url)}: not a valid URL ({e})") from None
        if parts.scheme.lower() not in ("http", "https"):
            raise MediaRefused(
                f"{_short(url)}: a redirect to {parts.scheme or 'no'} scheme; only http(s) is read"
            )
        if parts.username is not None or parts.password is not None:
            raise MediaRefused(f"{_short(url)}: credentials in a URL are refused")
        host = normalize_host(parts.hostname or "")
        if not host:
            raise MediaRefused(f"{_short(url)}: no host")
        if not host_allowed(host, self.policy.allow_hosts):
            raise MediaRefused(
                f"{_short(url)}: host {host} is not on the media allow-list "
                f"({', '.join(self.policy.allow_hosts)})"
            )
        scheme = parts.scheme.lower()
        target = (parts.path or "/") + (f"?{parts.query}" if parts.query else "")
        return scheme, host, port or (443 if scheme == "https" else 80), target

    def _checked_address(self, host: str, port: int) -> str:
        """One address to connect to; every address the host resolves to must pass `permit`."""
        literal = parse_ip(host)
        found = [str(literal)] if literal is not None else self.resolve(host, port)
        if not found:
            raise MediaRefused(f"host {host} resolves to no address")
        for text in found:
            ip = ipaddress.ip_address(text.split("%", 1)[0])
            if not self.permit(ip):
                raise MediaRefused(
                    f"host {host} resolves to {ip}, a private, loopback, link-local or otherwise "
                    "non-public address: refused"
                )
        return found[0]

    def _get(
        self, scheme: str, host: str, ip: str, port: int, target: str, deadline: float, url: str
    ) -> tuple[int, str | None, bytes]:
        lim = self.limits
        if scheme == "https":
            conn: http.client.HTTPConnection = _PinnedHTTPS(ip, port, lim, host, self.tls)
        else:
            conn = _PinnedHTTP(ip, port, lim)
        try:
            name = f"[{host}]" if ":" in host else host
            conn.request(
                "GET",
                target,
                headers={
                    "Host": name if port in (80, 443) else f"{name}:{port}",
                    "User-Agent": "tkc-serve",
                    "Accept": "image/*",
                    "Accept-Encoding": "identity",
                },
            )
            resp = conn.getresponse()
            if resp.status in _REDIRECTS:
                return resp.status, resp.getheader("Location"), b""
            if resp.status != 200:
                raise MediaRefused(f"{_short(url)}: the server answered HTTP {resp.status}")
            return 200, None, self._body(resp, deadline, url)
        except (OSError, http.client.HTTPException) as e:
            raise MediaRefused(f"{_short(url)}: fetch failed ({type(e).__name__}: {e})") from None
        finally:
            conn.close()

    def _body(self, resp: http.client.HTTPResponse, deadline: float, url: str) -> bytes:
        cap = self.limits.max_bytes
        length = resp.getheader("Content-Length")
        if length is not None and length.strip().isdigit() and int(length) > cap:
            raise MediaRefused(
                f"{_short(url)}: Content-Length {int(length)} is over the limit of {cap} bytes; not read"
            )
        body = bytearray()
        while chunk := resp.read(min(_CHUNK, cap + 1 - len(body))):
            body += chunk
            if len(body) > cap:
                raise MediaRefused(f"{_short(url)}: over the limit of {cap} bytes; read no further")
            if time.monotonic() > deadline:
                raise MediaRefused(
                    f"{_short(url)}: took longer than {self.limits.total_timeout_s} s; abandoned"
                )
        return bytes(body)


class _PinnedHTTP(http.client.HTTPConnection):
    """An HTTP connection to the address that was checked, with a connect and a read timeout."""

    def __init__(self, ip: str, port: int, limits: MediaLimits):
        super().__init__(ip, port, timeout=limits.connect_timeout_s)
        self._read_s = limits.read_timeout_s

    def connect(self) -> None:
        super().connect()
        self.sock.settimeout(self._read_s)


class _PinnedHTTPS(http.client.HTTPSConnection):
    """An HTTPS connection to the checked address; the certificate is verified against the host name (SNI)."""

    def __init__(self, ip: str, port: int, limits: MediaLimits, server_name: str, tls: ssl.SSLContext | None):
        self._tls = tls or ssl.create_default_context()
        super().__init__(ip, port, timeout=limits.connect_timeout_s, context=self._tls)
        self._read_s, self._server_name = limits.read_timeout_s, server_name

    def connect(self) -> None:
        sock = socket.create_connection((self.host, self.port), self.timeout)
        sock.settimeout(self._read_s)
        self.sock = self._tls.wrap_socket(sock, server_hostname=self._server_name)


# ---------------------------------------------------------------------- data URLs, paths, images


def read_data_url(url: str, limits: MediaLimits) -> bytes:
    """The bytes of a base64 `data:image/...` URL; its length is checked before it is decoded."""
    header, comma, payload = url[5:].partition(",")
    params = [p.strip().lower() for p in header.split(";")]
    if not comma or "base64" not in params[1:]:
        raise MediaRefused("a data URL must be base64: data:image/<type>;base64,<data>")
    if params[0] and not params[0].startswith("image/"):
        raise MediaRefused(f"a data URL of type {params[0]!r} is not an image")
    if len(payload) > 4 * (limits.max_bytes // 3 + 1) + 64:
        raise MediaRefused(
            f"the data URL holds {len(payload)} base64 characters, over the limit of "
            f"{limits.max_bytes} bytes; not decoded"
        )
    try:
        data = base64.b64decode(re.sub(r"\s+", "", payload), validate=True)
    except (binascii.Error, ValueError) as e:
        raise MediaRefused(f"the data URL is not valid base64 ({e})") from None
    if len(data) > limits.max_bytes:
        raise MediaRefused(f"the data URL's image is {len(data)} bytes, over the limit of {limits.max_bytes}")
    return data


def local_path(root: Path, ref: str) -> Path:
    """`ref` as a real path inside the real media root (the data pipeline's rules: tkc.bundle.media), else
    MediaRefused."""
    return resolve_media_path(ref, root)


def open_image(data: bytes, limits: MediaLimits, what: str = "the image") -> Any:
    """Decode `data` as an image of an allowed format, bounded in bytes and pixels, fully loaded, as RGB."""
    from PIL import Image

    if len(data) > limits.max_bytes:
        raise MediaRefused(f"{what}: {len(data)} bytes, over the limit of {limits.max_bytes}")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            im = Image.open(io.BytesIO(data), formats=IMAGE_FORMATS)
            width, height = im.size
            if width * height > limits.max_pixels:
                raise MediaRefused(
                    f"{what}: {width}x{height} pixels, over the limit of {limits.max_pixels}; not decoded"
                )
            im.load()
            return im.convert("RGB")
    except MediaRefused:
        raise
    except Image.UnidentifiedImageError:
        raise MediaRefused(f"{what}: not a {'/'.join(IMAGE_FORMATS)} image") from None
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as e:
        raise MediaRefused(f"{what}: a decompression bomb ({e})") from None
    except (OSError, SyntaxError, ValueError, EOFError) as e:  # UnidentifiedImageError is an OSError
        raise MediaRefused(f"{what}: not a readable {'/'.join(IMAGE_FORMATS)} image ({e})") from None


def _short(url: str) -> str:
    """A reference as quoted in a message: a data URL's payload left out, long ones cut."""
    if url[:5].lower() == "data:":
        return url.split(",", 1)[0] + ",..."
    return url if len(url) <= 200 else url[:200] + "..."
