"""The two reference apps that ``bench/run.py`` serves next to the real service.

- ``bare_app``: the floor. One POST route on the token URL's pattern (``<jwt>/<token id>``); it
  reads the body and answers a small JSON. No middleware, no parsing: what Starlette + uvicorn
  cost by themselves.
- ``verify_app``: the real app (``app.main.create_app``, configured from the same environment)
  with only the Redis call of a submission replaced: ``Store.submit`` answers what the submit
  script answers for a first use (``SubmitReply("ok", uses=1, created_ms=...)``) without
  sending anything. Middleware, routing, body parsing, token verification (shape, signature,
  claims, id in the path), value checks, building the stream entry and the use-state arguments
  (``FeedbackService.record``) and the JSON answer are the real ones, so submit / verify-only is
  what the Redis step costs (the store's argument list, the batched round trip, the script).
  The bench points this app's ``REDIS_URL`` at a port where nothing listens: any other Redis
  call on this path would fail the request and show up as an error in the results.

Both are built on first attribute access, so ``uvicorn bench.apps:bare_app`` never imports the
service, and ``uvicorn bench.apps:verify_app`` reads the environment in each worker.
"""

from __future__ import annotations

import inspect
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

SUBMIT_ROUTE = "/api/v1/feedback/tokens/{token}/{token_id}"


async def _bare(request: Request) -> Response:
    await request.body()
    return JSONResponse({"ok": True})


async def _healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


def build_bare_app() -> Starlette:
    return Starlette(routes=[Route(SUBMIT_ROUTE, _bare, methods=["POST"]), Route("/healthz", _healthz)])


class NoStorageStore:
    """Wraps the real store; ``submit`` takes the same arguments (the first call is checked
    against the real signature, so a changed store API fails loudly here) and answers a first,
    accepted use. Only the first call binds: ``inspect``'s binding costs more than a request's
    whole parsing, and the reference must not be slower than what it stands in for."""

    def __init__(self, store: Any, reply: type) -> None:
        self._store = store
        self._reply = reply
        self._signature: inspect.Signature | None = inspect.signature(type(store).submit)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def submit(self, *args: Any, **kwargs: Any) -> Any:
        if self._signature is not None:
            self._signature.bind(self._store, *args, **kwargs)
            if "created_ms" not in kwargs:
                raise TypeError("NoStorageStore: the service no longer passes created_ms by keyword")
            self._signature = None
        return self._reply("ok", uses=1, created_ms=kwargs["created_ms"])


def build_verify_app() -> Starlette:
    from app.main import create_app
    from app.store.results import SubmitReply

    app = create_app()
    service = app.state.service
    store = getattr(service, "store", None)
    if store is None or "created_ms" not in inspect.signature(type(store).submit).parameters:
        raise RuntimeError(
            "bench.apps.verify_app: the service's store.submit no longer takes created_ms; adapt "
            "NoStorageStore to the new storage interface"
        )
    service.store = NoStorageStore(store, SubmitReply)
    return app


def __getattr__(name: str) -> Any:
    if name == "bare_app":
        globals()["bare_app"] = app = build_bare_app()
        return app
    if name == "verify_app":
        globals()["verify_app"] = app = build_verify_app()
        return app
    raise AttributeError(name)
