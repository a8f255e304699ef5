"""Per request: the request id, the HTTP and submission metrics, the access line.

Pure ASGI and outermost of the app's middleware, so it sees every answer (CORS preflights and
404s included) and the status actually sent. Its cost on the submit path is a header scan, a
context-variable write, a few dictionary lookups and increments, and the access line: ``bench/
ops_cost.py`` measures it. A request that raises out of the app is answered 500 by Starlette's
outermost handler, which ``app.main.on_error`` gives the request id header itself.

The rules are functions (``open_access``, ``echo``, ``unanswered``, ``record``, and ``Exchange``
that counts a request once) that the lean
submit path (``app/http/fastpath.py``) calls too, so both paths count and log a request the same
way.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from time import perf_counter

from starlette.routing import BaseRoute, Match
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from app.ops import logs, metrics
from app.ops.context import CURRENT, Access, request_id

UNMATCHED = "unmatched"


def open_access(given: bytes | None) -> Access:
    """The request's record, with the client's ``X-Request-ID`` (``given``) or a new id, made
    current (each request runs in a task of its own: nothing to reset)."""
    access = Access(request_id(given))
    CURRENT.set(access)
    return access


def echo(access: Access) -> tuple[bytes, bytes]:
    """The request id header every answer ends with."""
    return (b"x-request-id", access.request_id.encode("ascii"))


def unanswered(access: Access) -> int:
    """A request that raised before its answer started: Starlette's outermost handler answers it
    with a 500 problem. Returns the status to count."""
    access.problem = "internal_error"
    return 500


def record(template: str, method: str, status: int, seconds: float, access: Access, access_log: bool) -> None:
    """Count the request (and a submission's outcome) and write its access line."""
    m = metrics.current()
    if m is not None:
        m.request(template, method, status, seconds)
        if access.submission:
            outcome = access.outcome or access.problem
            if outcome is not None:
                m.submission(outcome)
    if access_log and logs.ACCESS.isEnabledFor(logging.INFO):
        logs.access_line(method, template, status, seconds, access)


class Exchange:
    """One request's count and access line, taken exactly once: as its answer's last part is
    about to be sent (so a scrape that follows an answer includes it), or else when the request
    ends; one that raised before its answer started counts as the 500 Starlette answers it with."""

    __slots__ = ("access", "start", "status", "counted")

    def __init__(self, access: Access, start: float) -> None:
        self.access = access
        self.start = start
        self.status = 0
        self.counted = False

    def count(self, template: str, method: str, access_log: bool) -> None:
        if not self.counted:
            self.counted = True
            record(template, method, self.status, perf_counter() - self.start, self.access, access_log)

    def failed(self) -> None:
        if not self.status:
            self.status = unanswered(self.access)


class Observe:
    def __init__(self, app: ASGIApp, routes: Sequence[BaseRoute] = (), access_log: bool = True) -> None:
        self.app = app
        self.routes = routes
        self.access_log = access_log

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        start = perf_counter()
        given = None
        for name, value in scope["headers"]:
            if name == b"x-request-id":
                given = value
                break
        exchange = Exchange(open_access(given), start)
        id_header = echo(exchange.access)

        async def send_with_id(message: Message) -> None:
            if message["type"] == "http.response.start":
                exchange.status = message["status"]
                # A new list: a response object may be sent more than once (cached pages).
                message["headers"] = [*message.get("headers", ()), id_header]
            elif message["type"] == "http.response.body" and not message.get("more_body", False):
                self.done(scope, exchange)
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except BaseException:
            exchange.failed()
            raise
        finally:
            self.done(scope, exchange)

    def done(self, scope: Scope, exchange: Exchange) -> None:
        if exchange.counted:
            return
        route = scope.get("route")
        template = route.path if route is not None else self.template(scope)
        exchange.count(template, scope["method"], self.access_log)

    def template(self, scope: Scope) -> str:
        """The route template of a request the router didn't handle (a CORS preflight, a 404)."""
        for route in self.routes:
            match, _ = route.matches(scope)
            if match is not Match.NONE:
                path = getattr(route, "path", None)
                return path if isinstance(path, str) else UNMATCHED
        return UNMATCHED
