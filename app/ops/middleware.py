"""Per request: the request id, the HTTP and submission metrics, the access line.

Pure ASGI and outermost of the app's middleware, so it sees every answer (CORS preflights and
404s included) and the status actually sent. Its cost on the submit path is a header scan, a
context-variable write, a few dictionary lookups and increments, and the access line: ``bench/
ops_cost.py`` measures it. A request that raises out of the app is answered 500 by Starlette's
outermost handler, which ``app.main.on_error`` gives the request id header itself.
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
        access = Access(request_id(given))
        CURRENT.set(access)  # each request runs in a task of its own: nothing to reset
        echo = (b"x-request-id", access.request_id.encode("ascii"))
        status = 0
        logged = False

        async def send_with_id(message: Message) -> None:
            nonlocal status, logged
            if message["type"] == "http.response.start":
                status = message["status"]
                # A new list: a response object may be sent more than once (cached pages).
                message["headers"] = [*message.get("headers", ()), echo]
            elif message["type"] == "http.response.body" and not message.get("more_body", False) and not logged:
                # Counted before the client can read the end of the answer, so a scrape that
                # follows an answer always includes it.
                logged = True
                self.done(scope, access, status, perf_counter() - start)
            await send(message)

        try:
            await self.app(scope, receive, send_with_id)
        except BaseException:
            if not status:  # Starlette's outermost handler answers it: a 500 problem
                status, access.problem = 500, "internal_error"
            raise
        finally:
            if not logged:
                self.done(scope, access, status, perf_counter() - start)

    def done(self, scope: Scope, access: Access, status: int, seconds: float) -> None:
        route = scope.get("route")
        template = route.path if route is not None else self.template(scope)
        method = scope["method"]
        m = metrics.current()
        if m is not None:
            m.request(template, method, status, seconds)
            if access.submission:
                outcome = access.outcome or access.problem
                if outcome is not None:
                    m.submission(outcome)
        if self.access_log and logs.ACCESS.isEnabledFor(logging.INFO):
            logs.access_line(method, template, status, seconds, access)

    def template(self, scope: Scope) -> str:
        """The route template of a request the router didn't handle (a CORS preflight, a 404)."""
        for route in self.routes:
            match, _ = route.matches(scope)
            if match is not Match.NONE:
                path = getattr(route, "path", None)
                return path if isinstance(path, str) else UNMATCHED
        return UNMATCHED
