"""The media fetcher of `tkc serve` (no model): every way an image_url could read what it must not, refused with a
clear message; data URLs, files under the media root and allowed hosts read, bounded in bytes, pixels and time."""

from __future__ import annotations

import base64
import io
import ipaddress
import os
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from PIL import Image

from tkc.runtime.serve.media import (
    MediaFetcher,
    MediaLimits,
    MediaPolicy,
    MediaRefused,
    is_public,
    normalize_host,
    open_image,
)


def png(size: tuple[int, int] = (8, 6), color=(200, 30, 40)) -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", size, color).save(buf, "PNG")
    return buf.getvalue()


def data_url(data: bytes, kind: str = "image/png") -> str:
    return f"data:{kind};base64,{base64.b64encode(data).decode()}"


@pytest.fixture
def root(tmp_path: Path) -> Path:
    """A media root with one image, a sibling directory sharing its prefix, and a symlink out of it."""
    media = tmp_path / "media"
    (media / "sub").mkdir(parents=True)
    (media / "sub" / "a.png").write_bytes(png())
    sibling = tmp_path / "media_secret"
    sibling.mkdir()
    (sibling / "s.png").write_bytes(png())
    (media / "out.png").symlink_to(sibling / "s.png")
    (media / "outdir").symlink_to(sibling)
    (media / "corrupt.png").write_bytes(png()[:40])
    (media / "notimage.png").write_bytes(b"just text, no pixels at all" * 4)
    return media


def fetcher(root: Path | None = None, hosts: tuple[str, ...] = (), **limits) -> MediaFetcher:
    return MediaFetcher(MediaPolicy(root, hosts, MediaLimits(**limits)))


# ------------------------------------------------------------------ data URLs and images


def test_data_url_read_as_rgb_image():
    im = fetcher().image(data_url(png((5, 3), (1, 2, 3))))
    assert im.mode == "RGB" and im.size == (5, 3) and im.getpixel((0, 0)) == (1, 2, 3)


@pytest.mark.parametrize(
    "url, message",
    [
        ("data:image/png," + "x" * 10, "must be base64"),
        ("data:text/plain;base64,aGVsbG8=", "not an image"),
        ("data:image/png;base64,@@@notbase64", "not valid base64"),
    ],
)
def test_bad_data_urls(url, message):
    with pytest.raises(MediaRefused, match=message):
        fetcher().image(url)


def test_oversized_data_url_refused_before_decoding():
    big = data_url(os.urandom(3000))
    with pytest.raises(MediaRefused, match="over the limit of 1000 bytes; not decoded"):
        fetcher(max_bytes=1000).image(big)


def test_too_many_pixels_refused_from_the_header():
    wide = png((300, 300))
    with pytest.raises(MediaRefused, match=r"300x300 pixels, over the limit of 10000; not decoded"):
        fetcher(max_pixels=100 * 100).image(data_url(wide))


def test_corrupt_and_non_images_refused(root):
    with pytest.raises(MediaRefused, match="not a (readable )?PNG"):
        fetcher().image(data_url(png()[:40]))
    with pytest.raises(MediaRefused, match="corrupt.png: not a (readable )?PNG"):
        fetcher(root).image("corrupt.png")
    truncated = png((64, 64), (9, 9, 9))
    with pytest.raises(MediaRefused, match="not a readable PNG/JPEG/GIF/WEBP/BMP image"):
        fetcher().image(data_url(truncated[: len(truncated) - 30]))
    with pytest.raises(MediaRefused, match="notimage.png: not a PNG/JPEG/GIF/WEBP/BMP image$"):
        fetcher(root).image("notimage.png")


def test_decompression_bomb_refused():
    """A small file declaring a huge canvas: refused from its header, by our limit or (raised) by PIL's own."""
    buf = io.BytesIO()
    Image.new("1", (10_000, 10_000)).save(buf, "PNG")
    bomb = buf.getvalue()
    assert len(bomb) < 100_000
    with pytest.raises(MediaRefused, match="decompression bomb"):
        open_image(bomb, MediaLimits(max_pixels=1 << 40))
    buf = io.BytesIO()
    Image.new("1", (5000, 5000)).save(buf, "PNG")
    with pytest.raises(MediaRefused, match="5000x5000 pixels, over the limit of 16000000; not decoded"):
        open_image(buf.getvalue(), MediaLimits(max_pixels=16_000_000))


# ------------------------------------------------------------------ local paths


def test_file_under_the_root_is_read(root):
    assert fetcher(root).image("sub/a.png").size == (8, 6)


@pytest.mark.parametrize(
    "ref, message",
    [
        ("/etc/passwd", "absolute path|outside the media root"),
        ("../x", "outside the media root"),
        ("sub/../../media_secret/s.png", "outside the media root"),  # a sibling sharing the root's prefix
        ("out.png", "outside the media root"),  # a symlink out
        ("outdir/s.png", "outside the media root"),  # a directory symlink out
        ("missing.png", "does not exist"),
        ("file:///etc/passwd", "scheme is refused"),
        ("ftp://example.com/a.png", "scheme is refused"),
        ("gopher://127.0.0.1:6379/_INFO", "scheme is refused"),
    ],
)
def test_local_paths_outside_the_root_refused(root, ref, message):
    with pytest.raises(MediaRefused, match=message):
        fetcher(root).image(ref)


def test_sibling_prefix_by_absolute_path_refused(root):
    with pytest.raises(MediaRefused):
        fetcher(root).image(str(root.parent / "media_secret" / "s.png"))


def test_local_paths_need_a_root():
    with pytest.raises(MediaRefused, match="need a media root"):
        fetcher(None).image("a.png")


# ------------------------------------------------------------------ remote URLs: refused before any connection


@pytest.mark.parametrize(
    "url",
    [
        "http://127.0.0.1/a.png",
        "http://169.254.169.254/latest/meta-data/",
        "http://2130706433/a.png",  # 127.0.0.1 in decimal
        "http://0x7f.0.0.1/a.png",  # in hex
        "http://0177.0.0.1/a.png",  # in octal
        "http://[::1]/a.png",
        "http://[::ffff:127.0.0.1]/a.png",  # IPv4-mapped loopback
        "http://10.1.2.3/a.png",
        "http://0.0.0.0/a.png",
        "http://224.0.0.1/a.png",
        "http://[fe80::1]/a.png",
    ],
)
def test_private_addresses_refused_even_when_allowed(url):
    """Each host is on the allow-list, so what refuses it is the address check (no resolver, no connection)."""
    host = url.split("/")[2].rsplit(":", 1)[0] if "[" not in url else url.split("[")[1].split("]")[0]
    f = fetcher(hosts=(host,))
    f.resolve = lambda *a: pytest.fail("an IP literal must not be resolved")  # type: ignore[assignment]
    with pytest.raises(MediaRefused, match="non-public address"):
        f.image(url)


def test_remote_urls_off_without_an_allow_list():
    with pytest.raises(MediaRefused, match="remote image URLs are off.*--allow-media-host"):
        fetcher().image("https://example.com/a.png")


def test_host_not_on_the_allow_list_refused():
    with pytest.raises(MediaRefused, match="not on the media allow-list"):
        fetcher(hosts=("images.example.com",)).image("https://evil.example.com/a.png")


def test_name_resolving_to_a_private_address_refused():
    f = fetcher(hosts=("*.example.com",))
    f.resolve = lambda host, port: ["93.184.216.34", "192.168.0.9"]  # type: ignore[assignment]
    with pytest.raises(MediaRefused, match="resolves to 192.168.0.9"):
        f.image("https://cdn.example.com/a.png")


def test_credentials_in_url_refused():
    with pytest.raises(MediaRefused, match="credentials"):
        fetcher(hosts=("example.com",)).image("http://user:pw@example.com/a.png")


def test_normalisation():
    assert normalize_host("2130706433") == "127.0.0.1"
    assert normalize_host("0x7F.1") == "127.0.0.1"
    assert normalize_host("Example.COM.") == "example.com"
    assert not is_public(ipaddress.ip_address("100.64.0.1"))  # shared address space
    assert is_public(ipaddress.ip_address("93.184.216.34"))


# ------------------------------------------------------------------ remote URLs against a real local server

IMAGE = png((4, 4))


class _Handler(BaseHTTPRequestHandler):
    def log_message(self, *args):  # quiet
        pass

    def do_GET(self):  # noqa: N802 (http.server's name)
        self.server.paths.append(self.path)  # type: ignore[attr-defined]
        port = self.server.server_address[1]
        redirects = {
            "/to-private": f"http://inner.test:{port}/secret",  # allowed name, private address
            "/to-metadata": "http://169.254.169.254/latest/meta-data/",
            "/to-file": "file:///etc/passwd",
            "/to-self": f"http://media.test:{port}/img.png",
            "/loop": f"http://media.test:{port}/loop",
        }
        if self.path in redirects:
            self.send_response(302)
            self.send_header("Location", redirects[self.path])
            self.end_headers()
        elif self.path == "/big-declared":
            self.send_response(200)
            self.send_header("Content-Length", str(10_000_000))
            self.end_headers()
        elif self.path == "/big-stream":  # no length: the reader's cap must stop it
            self.send_response(200)
            self.end_headers()
            try:
                for _ in range(2000):
                    self.wfile.write(b"\0" * 65536)
            except OSError:
                pass
        elif self.path == "/img.png":
            self.send_response(200)
            self.send_header("Content-Length", str(len(IMAGE)))
            self.end_headers()
            self.wfile.write(IMAGE)
        else:
            self.send_response(404)
            self.end_headers()


@pytest.fixture(scope="module")
def web():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    server.paths = []  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()


def web_fetcher(web, **limits) -> tuple[MediaFetcher, list]:
    """A fetcher whose resolver names the test server media.test (127.0.0.1) and inner.test a private address;
    the address check allows loopback only for this test server (the real check refuses it: tested above)."""
    names = {"media.test": ["127.0.0.1"], "inner.test": ["10.9.8.7"]}
    lookups: list[str] = []

    def resolve(host, port):
        lookups.append(host)
        return names[host]

    def permit(ip):
        return str(ip) == "127.0.0.1" or is_public(ip)

    policy = MediaPolicy(None, ("media.test", "inner.test"), MediaLimits(**limits))
    return MediaFetcher(policy, resolve=resolve, permit=permit), lookups


def url(web, path: str) -> str:
    return f"http://media.test:{web.server_address[1]}{path}"


def test_allowed_host_read_through_its_checked_address(web):
    f, lookups = web_fetcher(web)
    assert f.image(url(web, "/img.png")).size == (4, 4)
    assert f.image(url(web, "/to-self")).size == (4, 4)  # a redirect to an allowed, checked host is followed
    assert lookups == ["media.test", "media.test", "media.test"]  # resolved once per hop, never again


@pytest.mark.parametrize(
    "path, message",
    [
        ("/to-private", "inner.test resolves to 10.9.8.7"),
        ("/to-metadata", "169.254.169.254 is not on the media allow-list"),
        ("/to-file", "only http"),
        ("/loop", "more than 3 redirects"),
    ],
)
def test_every_redirect_hop_checked(web, path, message):
    f, _ = web_fetcher(web)
    web.paths.clear()
    with pytest.raises(MediaRefused, match=message):
        f.image(url(web, path))
    assert "/secret" not in web.paths  # the private target is never requested


def test_remote_size_bounded(web):
    f, _ = web_fetcher(web, max_bytes=100_000)
    with pytest.raises(MediaRefused, match="Content-Length 10000000 is over the limit of 100000 bytes; not read"):
        f.image(url(web, "/big-declared"))
    with pytest.raises(MediaRefused, match="over the limit of 100000 bytes; read no further"):
        f.image(url(web, "/big-stream"))


def test_remote_error_status_refused(web):
    f, _ = web_fetcher(web)
    with pytest.raises(MediaRefused, match="HTTP 404"):
        f.image(url(web, "/nothing"))


def test_silent_server_times_out():
    import socket

    quiet = socket.socket()
    quiet.bind(("127.0.0.1", 0))
    quiet.listen(1)  # accepts the connection, never answers
    try:
        names = {"media.test": ["127.0.0.1"]}
        f = MediaFetcher(
            MediaPolicy(None, ("media.test",), MediaLimits(read_timeout_s=0.5)),
            resolve=lambda h, p: names[h],
            permit=lambda ip: True,
        )
        with pytest.raises(MediaRefused, match="fetch failed.*timed out"):
            f.image(f"http://media.test:{quiet.getsockname()[1]}/a.png")
    finally:
        quiet.close()
