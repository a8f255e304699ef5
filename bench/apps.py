"""The two reference apps that ``bench/run.py`` serves next to the real service.

- ``bare_app``: the floor. One POST route on the submit path's URL pattern; it reads the body
  and answers a small JSON. No middleware, no parsing: what Starlette + uvicorn cost by themselves.
- ``verify_app``: the real app (``app.main.create_app``, configured from the same environment)
  with only the storage step replaced: ``Store.submit`` answers as if the script had accepted
  the submission, without any Redis call. Middleware, routing, body parsing, token verification
  (shape, signature, claims), value checks and the JSON answer are the real ones, so
  submit / verify-only is what the Redis step costs. The bench points this app's ``REDIS_URL`` at
  a port where nothing listens: a Redis call on this path would fail the request and show up as
  an error in the results.

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

SUBMIT_ROUTE = "/api/v1/feedback/tokens/{token}"


async def _bare(request: Request) -> Response:
    await request.body()
    return JSONResponse({"ok": True})


async def _healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


def build_bare_app() -> Starlette:
    return Starlette(routes=[Route(SUBMIT_ROUTE, _bare, methods=["POST"]), Route("/healthz", _healthz)])


class NoStorageStore:
    """Wraps the real store; ``submit`` skips Redis and reports the submission as accepted."""

    def __init__(self, store: Any, outcome: Any) -> None:
        self._store = store
        self._outcome = outcome
        self._signature = inspect.signature(type(store).submit)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._store, name)

    async def submit(self, *args: Any, **kwargs: Any) -> Any:
        bound = self._signature.bind(self._store, *args, **kwargs)
        return self._outcome(bound.arguments.get("answer", {}), duplicate=False)


def build_verify_app() -> Starlette:
    from app.main import create_app
    from app.store.store import Outcome

    app = create_app()
    service = app.state.service
    store = getattr(service, "store", None)
    if store is None or not hasattr(store, "submit"):
        raise RuntimeError(
            "bench.apps.verify_app: the service no longer has store.submit; adapt NoStorageStore "
            "to the new storage interface"
        )
    service.store = NoStorageStore(store, Outcome)
    return app


def __getattr__(name: str) -> Any:
    if name == "bare_app":
        globals()["bare_app"] = app = build_bare_app()
        return app
    if name == "verify_app":
        globals()["verify_app"] = app = build_verify_app()
        return app
    raise AttributeError(name)
