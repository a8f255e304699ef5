"""Security headers on every answer (pure ASGI, so the hot path pays one pass over the headers).

``secure`` is the rule; ``SecurityHeaders`` applies it to every answer of the app and the lean
submit path (``app/http/fastpath.py``) to its own."""

from __future__ import annotations

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
_BASE = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in BASE_HEADERS.items()]
_HTML = [(name.encode("latin-1"), value.encode("latin-1")) for name, value in HTML_HEADERS.items()]
_CLOSE = (b"connection", b"close")


def secure(message: Message, draining: bool) -> None:
    """Give a response start message the security headers it lacks (the HTML ones on a page), and
    ``Connection: close`` while the node drains (app/http/shutdown.py). The message gets a new
    header list: a response object may be sent more than once."""
    headers = message["headers"] = list(message["headers"])
    names = {name for name, _ in headers}
    for item in _BASE:
        if item[0] not in names:
            headers.append(item)
    content_type = next((value for name, value in headers if name == b"content-type"), b"")
    if content_type.startswith(b"text/html"):
        for item in _HTML:
            if item[0] not in names:
                headers.append(item)
    if draining:
        found = [i for i, (name, _) in enumerate(headers) if name == b"connection"]
        if found:
            for i in reversed(found[1:]):
                del headers[i]
            headers[found[0]] = _CLOSE
        else:
            headers.append(_CLOSE)


class SecurityHeaders:
    """Also says ``Connection: close`` on every answer while the node drains (app/http/shutdown.py)."""

    def __init__(self, app: ASGIApp, drain: Drain | None = None) -> None:
        self.app = app
        self.drain = drain

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        drain = self.drain

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                secure(message, drain is not None and drain.draining)
            await send(message)

        await self.app(scope, receive, send_with_headers)
