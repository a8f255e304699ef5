"""Security headers on every answer (pure ASGI, so the hot path pays one dict merge)."""

from __future__ import annotations

from starlette.datastructures import MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.http.shutdown import Drain

BASE_HEADERS = {
    "cache-control": "no-store",
    "x-content-type-options": "nosniff",
    "referrer-policy": "no-referrer",
}
HTML_HEADERS = {
    # Pages carry their own inline style and nothing else; nobody may frame them.
    "content-security-policy": (
        "default-src 'none'; style-src 'unsafe-inline'; img-src 'self' data:; "
        "form-action 'self'; frame-ancestors 'none'; base-uri 'none'"
    ),
    "x-frame-options": "DENY",
}


class SecurityHeaders:
    """Also says ``Connection: close`` on every answer while the node drains (app/http/shutdown.py)."""

    def __init__(self, app: ASGIApp, drain: Drain | None = None) -> None:
        self.app = app
        self.drain = drain

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                headers = MutableHeaders(scope=message)
                for name, value in BASE_HEADERS.items():
                    if name not in headers:
                        headers[name] = value
                if headers.get("content-type", "").startswith("text/html"):
                    for name, value in HTML_HEADERS.items():
                        headers.setdefault(name, value)
                if self.drain is not None and self.drain.draining:
                    headers["connection"] = "close"
            await send(message)

        await self.app(scope, receive, send_with_headers)
