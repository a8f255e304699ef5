"""The app factory. ``uvicorn app.main:app`` serves an app configured from the environment."""

from __future__ import annotations

import contextlib
import gc
import logging
import re
from collections.abc import AsyncIterator
from typing import Any

from redis.exceptions import RedisError
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.middleware.cors import CORSMiddleware
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from app.clock import Clock
from app.config import Settings
from app.delivery.upkeep import Upkeep
from app.errors import FeedbackTokenError, MethodNotAllowed, NotFound
from app.http import assets, demo, endpoints, info, openapi
from app.http.fastpath import LeanSubmit
from app.http.middleware import BASE_HEADERS, SecurityHeaders
from app.http.shutdown import Drain
from app.keys.keyring import KeyringDir
from app.keys.source import DirectorySource, JwksSource, KeySource
from app.ops import context, logs, metrics
from app.ops.middleware import Observe
from app.store.connect import RedisVersionError, display_url
from app.store.keyspace import Keyspace
from app.store.store import Store

log = logging.getLogger("feedback_tokens")
_TOKEN_IN_PATH = re.compile(r"(/feedback/tokens/)([A-Za-z0-9_-]{12})[A-Za-z0-9_.=-]{20,}")


def redact(text: str) -> str:
    """Keep the first 12 characters of a token in a path: enough to correlate, useless to replay."""
    return _TOKEN_IN_PATH.sub(r"\1\2…", text)


async def start_store(store: Store, url: str) -> None:
    """Connect the store and say at start-up which Redis this process uses and whether it answered:
    a wrong REDIS_URL otherwise shows only as 503s on the first requests. A Redis too old for the
    scripts stops the start (every call would fail); one that does not answer does not."""
    try:
        await store.start()
    except RedisVersionError:
        raise
    except RedisError as err:
        log.warning(
            "Redis at %s did not answer: %s: %s. Serving anyway: requests that need Redis answer 503 "
            "and /readyz reports not ready until it does (check REDIS_URL)",
            display_url(url), type(err).__name__, err,
        )


def problem(err: FeedbackTokenError) -> JSONResponse:
    body = {
        "type": f"urn:feedback-tokens:problem:{err.code}",
        "title": err.title,
        "status": err.status,
        "detail": err.detail,
        "code": err.code,
    }
    request_id = context.note_problem(err.code)
    if request_id is not None:
        body["request_id"] = request_id
    return JSONResponse(
        body, status_code=err.status, headers=err.headers(), media_type="application/problem+json"
    )


async def on_error(request: Request, exc: Exception) -> Response:
    if isinstance(exc, FeedbackTokenError):
        return problem(exc)
    if isinstance(exc, HTTPException):
        if exc.status_code == 405:
            return problem(MethodNotAllowed(f"{request.method} is not allowed here"))
        return problem(NotFound(f"nothing at {redact(request.url.path)}"))
    log.exception("unhandled error on %s %s", request.method, redact(request.url.path))
    response = problem(FeedbackTokenError("something went wrong on our side"))
    # Starlette answers this from its outermost middleware, outside SecurityHeaders and Observe.
    response.headers.update(BASE_HEADERS)
    access = context.current()
    if access is not None:
        response.headers[context.REQUEST_ID_HEADER] = access.request_id
    return response


class Readiness:
    """``/readyz``: Redis reachable and safe to use, keys loaded and fresh, not shutting down."""

    def __init__(self, store: Store, keys: KeySource, drain: Drain) -> None:
        self.store = store
        self.keys = keys
        self.drain = drain

    async def check(self) -> dict[str, dict[str, Any]]:
        checks: dict[str, dict[str, Any]] = {}
        if self.drain.draining:
            checks["shutdown"] = {"ok": False, "detail": "draining: this node is shutting down"}
        try:
            await self.store.ensure_started()
            await self.store.ping()
            policy = await self.store.eviction_policy()
            if policy not in (None, "noeviction"):
                detail = (
                    f"maxmemory-policy is {policy}: Redis may evict consumed-token markers and "
                    "let used tokens be replayed; set it to noeviction"
                )
                log.error("not ready: %s", detail)
                checks["redis"] = {"ok": False, "detail": detail}
            else:
                checks["redis"] = {"ok": True}
        except FeedbackTokenError as err:
            checks["redis"] = {"ok": False, "detail": err.detail}
        except RedisVersionError as err:
            checks["redis"] = {"ok": False, "detail": str(err)}
        except RedisError as err:
            checks["redis"] = {"ok": False, "detail": f"Redis did not answer: {type(err).__name__}: {err}"}
        keyring = self.keys.keyring
        stale = self.keys.stale()
        if stale is not None:
            checks["keys"] = {"ok": False, "detail": stale}
        elif any(k.verifies for k in keyring.keys.values()):
            checks["keys"] = {"ok": True, "signing": keyring.signer is not None}
            if self.keys.error:  # still serving, with the last good keyring: say why it's stale
                checks["keys"]["detail"] = self.keys.error
        else:
            checks["keys"] = {"ok": False, "detail": self.keys.error or "no key that verifies"}
        return checks


def create_app(
    settings: Settings | None = None,
    *,
    clock: Clock | None = None,
    keys: KeySource | None = None,
    lean: bool = True,
) -> Starlette:
    """``lean``: serve JSON submissions through the lean path (``app/http/fastpath.py``); off, the
    same answers come through the router and the middleware (the tests compare the two)."""
    from app.domain.service import FeedbackService

    settings = settings or Settings.from_env()
    clock = clock or Clock()
    if keys is None and settings.jwks_url:
        keys = JwksSource(
            settings.jwks_url, settings.jwks_refresh, settings.jwks_refetch_floor, max_age=settings.jwks_max_age
        )
    keys = keys or DirectorySource(KeyringDir(settings.keys_dir), settings.keyring_poll)
    store = Store(
        settings.redis_url,
        Keyspace(settings.redis_prefix, settings.shards),
        cluster=settings.redis_cluster,
        timeout=settings.redis_timeout,
        pool_size=settings.redis_pool_size,
        retry_after=settings.retry_after,
        grace=settings.leeway + settings.max_clock_skew,
        run_cap=settings.max_run_tokens,
        observe=metrics.observe_redis,
        on_error=metrics.redis_error,
        on_batch=metrics.observe_submit_batch,
    )
    drain = Drain(settings.shutdown_drain)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await keys.start()
        await start_store(store, settings.redis_url)
        drain.install()
        # Everything loaded so far (modules, the app, keys) lives as long as the process: keep it
        # out of the collector's full passes, which otherwise pause a worker for 20-30 ms a few
        # times a minute under load (bench: gen-2 pauses 21 ms -> under 1 ms median; p99 follows).
        gc.collect()
        gc.freeze()
        upkeep = Upkeep(settings).start()  # trims streams, warns of lagging groups
        try:
            yield
        finally:
            drain.uninstall()
            await upkeep.stop()
            await keys.stop()
            await store.close()
            metrics.shutdown()
            logs.flush()

    routes = [
        Route("/api/v1/feedback/tokens", endpoints.tokens_root, methods=["GET", "POST"]),
        Route(
            "/api/v1/feedback/tokens/{token}",
            endpoints.token_path,
            methods=["GET", "HEAD", "POST", "DELETE"],
        ),
        Route("/api/v1/feedback/tokens/{token}/info", endpoints.token_info, methods=["GET"]),
        # Token URLs: <jwt>/<token id> (the id last, where the LangSmith SDK looks for it).
        Route("/api/v1/feedback/tokens/{token}/{token_id}", endpoints.token_path, methods=["GET", "HEAD", "POST"]),
        Route("/api/v1/feedback/tokens/{token}/{token_id}/info", endpoints.token_info, methods=["GET"]),
        Route("/api/v1/info", info.endpoint, methods=["GET"]),
        Route("/widget.js", assets.widget, methods=["GET"]),
        Route("/favicon.ico", assets.favicon, methods=["GET"]),
        Route("/.well-known/jwks.json", endpoints.jwks, methods=["GET"]),
        Route("/healthz", endpoints.healthz, methods=["GET"]),
        Route("/readyz", endpoints.readyz, methods=["GET"]),
        Route("/openapi.json", openapi.endpoint, methods=["GET"]),
    ]
    if metrics.setup(settings.metrics) is not None:
        routes.append(Route("/metrics", metrics.endpoint, methods=["GET"]))
    if settings.demo:
        log.warning("FEEDBACK_DEMO is on: /demo issues tokens without an API key (development only)")
        routes += [
            Route("/demo", demo.page, methods=["GET"]),
            Route("/demo/demo.js", demo.script, methods=["GET"]),
            Route("/demo/token", demo.issue, methods=["POST"]),
            Route("/demo/entries", demo.entries, methods=["GET"]),
        ]
    # Any page may submit to a token URL, without credentials (and with an Idempotency-Key,
    # so that its resends are recognised). X-API-Key is not an allowed header, so browsers
    # can't call the issuing endpoints cross-origin at all.
    cors = Middleware(
        CORSMiddleware,
        allow_origins=["*"],
        allow_methods=["GET", "HEAD", "POST"],
        allow_headers=["Content-Type", "Accept", "Accept-Language", "Idempotency-Key"],
        allow_credentials=False,
        max_age=600,
    )
    handlers = {Exception: on_error, HTTPException: on_error, FeedbackTokenError: on_error}
    middleware = [
        # Outermost: it sees every answer as sent, CORS preflights included.
        Middleware(Observe, routes=routes, access_log=settings.access_log),
        Middleware(SecurityHeaders, drain=drain),
        cors,
    ]
    if lean:  # in front of them all: the submit route's answers, with the same rules
        handled = tuple(kind for kind in handlers if kind is not Exception)
        middleware.insert(0, Middleware(
            LeanSubmit, routes=routes, cors=cors, drain=drain, access_log=settings.access_log,
            handler=on_error, handled=handled,
        ))
    app = Starlette(routes=routes, middleware=middleware, lifespan=lifespan, exception_handlers=handlers)
    app.state.settings = settings
    app.state.service = FeedbackService(settings, store, keys, clock)
    app.state.readiness = Readiness(store, keys, drain)
    return app


app: Starlette


def __getattr__(name: str) -> Any:
    # `uvicorn app.main:app` builds the app on first access, so importing this module for
    # `create_app` (tests, the CLI) reads no environment.
    if name == "app":
        global app
        settings = Settings.from_env()
        logs.configure(settings.log_format, settings.access_log)
        app = create_app(settings)
        return app
    raise AttributeError(name)
