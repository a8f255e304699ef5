"""The lean submit path: ``POST /api/v1/feedback/tokens/<token>[/<token id>]`` with a JSON body,
served without the router, the three middleware or a ``Request`` object.

``LeanSubmit`` is the outermost of the app's own middleware (inside only Starlette's catch-all
for unexpected errors, which answers them 500 on both paths). It recognises the submit route by
a string check and answers it with the same steps and the same rules as the Starlette path, by
calling the same functions:

- what the request names and sends: ``endpoints.submit_target``, ``endpoints.submit_json`` (the
  steps of ``endpoints.submit_post``, in its order), ``media_type`` / ``is_json`` / ``is_form`` /
  ``declared_over`` for the body;
- an error's answer: the app's exception handler (``app.main.on_error``);
- the CORS headers: ``CORSMiddleware.send`` of an instance built from the app's own CORS options;
- the security headers and ``Connection: close`` while draining: ``app.http.middleware.secure``
  (what these two add to each kind of answer is computed by them once, then kept: ``decorate``);
- the request id, the metrics and the access line: ``open_access``, ``echo`` and ``Exchange`` of
  ``app.ops.middleware``, with the template of the route the router would pick.

Whatever is unusual goes to the Starlette app untouched: any other method or path, a form or a
body that is not JSON, a body without a Content-Length or over the cap, ``Expect:
100-continue``, a body that comes in more than one piece (handed on with what was read of it),
an app mounted under a root path.
``tests/test_fastpath.py`` compares the answers of both paths.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Sequence
from time import perf_counter
from typing import Any

from starlette.datastructures import Headers
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import BaseRoute, Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.domain import feedback
from app.http import endpoints
from app.http.middleware import secure
from app.http.shutdown import Drain
from app.ops import context
from app.ops.middleware import Exchange, echo, open_access

PREFIX = "/api/v1/feedback/tokens/"
ONE, TWO = PREFIX + "{token}", PREFIX + "{token}/{token_id}"
_WANTED = frozenset((b"content-type", b"content-length", b"idempotency-key", b"x-request-id", b"origin", b"expect"))
_KEPT = 64  # kinds of answers whose added headers are kept (status, Origin, draining, headers)

Handler = Callable[[Request, Exception], Awaitable[Response]]


async def _kept(message: Message) -> None:
    """CORSMiddleware.send's onward ``send``: the decorated message stays with the caller."""


def _replay(first: Message, receive: Receive) -> Receive:
    """``receive`` as if ``first`` had not been read yet."""
    pending = [first]

    async def again() -> Message:
        return pending.pop() if pending else await receive()

    return again


def submit_routes(routes: Sequence[BaseRoute]) -> tuple[Route, Route]:
    """The routes the router picks for a POST to ``<token>`` and ``<token>/<token id>``. Refuses
    routes that could take such a POST before them: the lean path would then answer for them."""
    found: dict[str, Route] = {}
    for route in routes:
        if isinstance(route, Route) and route.path in (ONE, TWO):
            if route.endpoint is not endpoints.token_path or "POST" not in (route.methods or ()):
                raise RuntimeError(f"lean submit path: {route.path} must be token_path for POST")
            found.setdefault(route.path, route)
        elif len(found) < 2 and _may_take_post(route):
            raise RuntimeError(f"lean submit path: {route!r} may take POSTs to token URLs; serve them "
                               "without the lean path (create_app(lean=False)) or route it after them")
    if len(found) < 2:
        raise RuntimeError(f"lean submit path: the app has no route {ONE} and {TWO}")
    return found[ONE], found[TWO]


def _may_take_post(route: BaseRoute) -> bool:
    if not isinstance(route, Route):
        return True
    if route.methods is not None and "POST" not in route.methods:
        return False
    return route.path.startswith(PREFIX) or "{" in route.path


class LeanSubmit:
    def __init__(
        self,
        app: ASGIApp,
        *,
        routes: Sequence[BaseRoute],
        cors: Middleware,
        drain: Drain,
        access_log: bool,
        handler: Handler,
        handled: tuple[type[Exception], ...],
    ) -> None:
        self.app = app
        self.one, self.two = submit_routes(routes)
        built = cors.cls(app, *cors.args, **cors.kwargs)  # the app's CORS rules, as configured
        if not isinstance(built, CORSMiddleware):
            raise RuntimeError(f"lean submit path: {cors.cls!r} is not Starlette's CORSMiddleware")
        self.cors = built
        self.drain = drain
        self.access_log = access_log
        self.handler = handler
        self.handled = handled
        self._added: dict[tuple[Any, ...], list[tuple[bytes, bytes]]] = {}

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] != "POST" or scope.get("root_path"):
            await self.app(scope, receive, send)
            return
        path: str = scope["path"]
        if not path.startswith(PREFIX):
            await self.app(scope, receive, send)
            return
        token, slash, token_id = path[len(PREFIX):].partition("/")
        if not token or (slash and (not token_id or "/" in token_id)):
            await self.app(scope, receive, send)
            return
        start = perf_counter()
        found: dict[bytes, bytes] = {}
        for name, value in scope["headers"]:
            if name in _WANTED and name not in found:  # the first of each, as Headers.get finds
                found[name] = value
        media = endpoints.media_type(found.get(b"content-type", b"").decode("latin-1"))
        length = found.get(b"content-length")
        if (
            endpoints.is_form(media)
            or not endpoints.is_json(media)
            or length is None
            or not length.isdigit()
            or endpoints.declared_over(length.decode("latin-1"), feedback.BODY_CAP)
            # The server answers "100 Continue" when the body is first asked for, which the
            # router's path does only once the URL and Idempotency-Key checked out.
            or b"expect" in found
        ):
            await self.app(scope, receive, send)
            return
        message = await receive()
        if message["type"] != "http.request" or message.get("more_body", False):
            await self.app(scope, _replay(message, receive), send)
            return
        body: bytes = message.get("body", b"")
        if len(body) > feedback.BODY_CAP:
            await self.app(scope, _replay(message, receive), send)
            return
        idempotency = found.get(b"idempotency-key")
        await self.submit(
            scope, receive, send, start, found.get(b"x-request-id"),
            self.two if slash else self.one, token, token_id if slash else None,
            idempotency.decode("latin-1") if idempotency is not None else None, body, found.get(b"origin"),
        )

    async def decorate(self, scope: Scope, response: Response, origin: bytes | None) -> list[tuple[bytes, bytes]]:
        """The answer's headers with what CORS and SecurityHeaders add to them. Those headers
        depend only on the status, the request's Origin, whether the node drains and the
        answer's other headers (not on the Content-Length's value); the lean path's answers are
        few kinds, so what the two rules add to each kind is computed once, by them, and kept."""
        raw = response.raw_headers
        draining = self.drain.draining
        key = (response.status_code, origin, draining, tuple(h for h in raw if h[0] != b"content-length"))
        added = self._added.get(key)
        if added is not None:
            return [*raw, *added]
        message: Message = {"type": "http.response.start", "status": response.status_code, "headers": raw}
        await self.cors.send(message, _kept, Headers(raw=scope["headers"]))
        secure(message, draining)
        headers: list[tuple[bytes, bytes]] = message["headers"]
        if headers[: len(raw)] == raw and len(self._added) < _KEPT:  # only added, nothing changed
            self._added[key] = headers[len(raw):]
        return headers

    async def submit(
        self, scope: Scope, receive: Receive, send: Send, start: float, given: bytes | None,
        route: Route, token: str, token_id: str | None, idempotency: str | None, body: bytes,
        origin: bytes | None,
    ) -> None:
        """What Observe, SecurityHeaders, CORS, the exception handler and ``token_path`` do for
        this request, in their order."""
        exchange = Exchange(open_access(given), start)
        try:
            context.note_submission()
            try:
                ref, idempotency_key = endpoints.submit_target(token, token_id, idempotency)
                response = await endpoints.submit_json(scope["app"].state.service, ref, idempotency_key, body)
            except self.handled as exc:
                response = await self.handler(Request(scope, receive), exc)
                exc.__traceback__ = None  # as Starlette does for a handled exception
            headers = await self.decorate(scope, response, origin)
            headers.append(echo(exchange.access))
            exchange.status = response.status_code
            await send({"type": "http.response.start", "status": exchange.status, "headers": headers})
            exchange.count(route.path, "POST", self.access_log)  # before the end of the answer, as Observe
            await send({"type": "http.response.body", "body": response.body})
        except BaseException:
            exchange.failed()
            raise
        finally:
            exchange.count(route.path, "POST", self.access_log)
