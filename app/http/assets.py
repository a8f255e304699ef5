"""Files served as they are from ``app/http/static``: the widget, the favicon, and the demo's page and script."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from functools import cache
from pathlib import Path

from starlette.requests import Request
from starlette.responses import Response

STATIC = Path(__file__).resolve().parent / "static"
# The widget's URL carries no version: an hour of caching, then a cheap revalidation by ETag.
WIDGET_CACHE = "public, max-age=3600"
# Browsers ask every page's origin for /favicon.ico; a 404 is a console error on every page.
FAVICON_CACHE = "public, max-age=86400"


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    media_type: str
    etag: str
    cache_control: str

    def response(self, request: Request, headers: dict[str, str] | None = None) -> Response:
        common = {"ETag": self.etag, "Cache-Control": self.cache_control, **(headers or {})}
        if self.etag in (t.strip() for t in request.headers.get("if-none-match", "").split(",")):
            return Response(status_code=304, headers=common)
        return Response(self.body, media_type=self.media_type, headers=common)


@cache
def load(name: str, media_type: str, cache_control: str) -> Asset:
    body = (STATIC / name).read_bytes()
    etag = '"' + hashlib.sha256(body).hexdigest()[:20] + '"'
    return Asset(body, media_type, etag, cache_control)


async def widget(request: Request) -> Response:
    asset = load("widget.js", "text/javascript; charset=utf-8", WIDGET_CACHE)
    # Any page may load it, also one isolated with Cross-Origin-Embedder-Policy.
    return asset.response(request, {"Cross-Origin-Resource-Policy": "cross-origin"})


async def favicon(request: Request) -> Response:
    return load("favicon.ico", "image/x-icon", FAVICON_CACHE).response(request)
