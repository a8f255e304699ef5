"""/favicon.ico: browsers ask every origin for it, so without it every page logs a console error."""

from __future__ import annotations

import struct

from conftest import TOKENS


def test_favicon_is_an_icon_browsers_can_cache(client):
    r = client.get("/favicon.ico")
    assert r.status_code == 200
    assert r.headers["content-type"] == "image/x-icon"
    # An ICO directory whose every image is a PNG of the size the directory says.
    reserved, kind, count = struct.unpack_from("<HHH", r.content)
    assert (reserved, kind) == (0, 1) and count >= 1
    for i in range(count):
        width, height, _, _, _, _, size, offset = struct.unpack_from("<BBBBHHII", r.content, 6 + 16 * i)
        image = r.content[offset : offset + size]
        assert image.startswith(b"\x89PNG\r\n\x1a\n") and len(image) == size
        assert struct.unpack_from(">II", image, 16) == (width or 256, height or 256)
    # Cacheable (unlike every API answer), and revalidated cheaply.
    cache = r.headers["cache-control"]
    assert "public" in cache and "no-store" not in cache and "max-age=" in cache
    again = client.get("/favicon.ico", headers={"If-None-Match": r.headers["etag"]})
    assert again.status_code == 304 and again.content == b""
    assert len(r.content) < 2048


def test_pages_may_load_it(client):
    """Every HTML page's CSP allows the icon from the service's own origin."""
    page = client.get(f"{TOKENS}/not.a.token", params={"score": "1"}, headers={"Accept": "text/html"})
    assert page.status_code == 401 and page.headers["content-type"].startswith("text/html")
    directives = dict(d.strip().split(" ", 1) for d in page.headers["content-security-policy"].split(";"))
    assert "'self'" in directives["img-src"].split()
