"""Prometheus metrics: the functions the rest of the app calls, and ``GET /metrics``.

One set of metrics per process, created by ``setup`` (called by ``create_app`` when
``FEEDBACK_METRICS`` is on). Every recording function here is a no-op until then, and cheap
after: label children are cached, so a hot-path call is a dictionary lookup and an increment.

What is counted (the metrics, their buckets and labels, the key metrics read at scrape time) is
defined in ``app/ops/instruments.py``; where the uvicorn workers of one node keep their samples
(prometheus_client's multiprocess mode) in ``app/ops/metrics_directory.py``. prometheus_client is
first imported in ``setup``, once the directory is chosen, and nowhere at module level.

**For the store** (``app/store``): ``observe_redis(op, seconds)`` around each Redis call or
pipeline, ``redis_error(kind)`` (``error_kind(err)`` maps an exception to the bounded set) for
each failed one, ``observe_submit_batch(size)`` for each coalesced submit pipeline.
"""

from __future__ import annotations

import hmac
import sys

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from app.errors import MetricsUnauthorized
from app.ops import metrics_directory
from app.ops.instruments import Metrics
from app.store.failures import KINDS as REDIS_ERROR_KINDS

# -- the process's state and the recording functions -------------------------------------------

_metrics: Metrics | None = None  # set while metrics are on
_created: Metrics | None = None  # kept when turned off, since a registry can't take the names twice


def setup(enabled: bool) -> Metrics | None:
    """Turn this process's metrics on (created once) or off. Returns them when on."""
    global _metrics, _created
    if not enabled:
        _metrics = None
        return None
    if _created is None:
        chosen = "prometheus_client" in sys.modules
        directory = metrics_directory.already_chosen() if chosen else metrics_directory.choose()
        _created = Metrics(directory)
    _metrics = _created
    return _metrics


def shutdown() -> None:
    """At the app's shutdown (not atexit: uvicorn ends a worker by re-raising the SIGTERM it
    handled, so exit handlers never run): leave the node directory, last one out removing it."""
    metrics_directory.leave()


def current() -> Metrics | None:
    return _metrics


def tokens_issued(count: int) -> None:
    if _metrics is not None:
        _metrics.issued.inc(count)


def token_revoked() -> None:
    if _metrics is not None:
        _metrics.revoked.inc()


def observe_redis(op: str, seconds: float) -> None:
    """One Redis call or pipeline named ``op`` (a fixed name from the code: never a key) took
    ``seconds``, whether it succeeded or not."""
    m = _metrics
    if m is None:
        return
    timer = m._redis.get(op)
    if timer is None:
        timer = m._redis[op] = m.redis_duration.labels(op)
    timer.observe(seconds)


def redis_error(kind: str) -> None:
    """One failed Redis call; ``kind`` is what ``app.store.failures.error_kind`` said of it."""
    m = _metrics
    if m is None:
        return
    counter = m._redis_errors.get(kind)
    if counter is None:
        counter = m._redis_errors[kind] = m.redis_errors.labels(kind if kind in REDIS_ERROR_KINDS else "other")
    counter.inc()


def observe_submit_batch(size: int) -> None:
    """One coalesced pipeline carried ``size`` submissions."""
    m = _metrics
    if m is not None:
        m.submit_batch.observe(size)


# -- GET /metrics -----------------------------------------------------------------------------

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


async def endpoint(request: Request) -> Response:
    """The node's metrics. With ``FEEDBACK_METRICS_TOKEN`` set, only for ``Authorization:
    Bearer <token>`` (compared in constant time): a public edge must not hand out its numbers."""
    settings = request.app.state.settings
    if settings.metrics_token is not None:
        given = request.headers.get("authorization", "")
        scheme, _, token = given.partition(" ")
        expected = settings.metrics_token.value.encode()
        if not (hmac.compare_digest(token.strip().encode(), expected) and scheme.lower() == "bearer"):
            raise MetricsUnauthorized("send Authorization: Bearer <FEEDBACK_METRICS_TOKEN> to read the metrics")
    metrics = current()
    if metrics is None:  # another app in this process turned them off (tests)
        return Response(b"", media_type=CONTENT_TYPE)
    # Reading every worker's files takes a few milliseconds: not on the event loop.
    body = await run_in_threadpool(metrics.render, request.app.state.service.keys)
    return Response(body, media_type=CONTENT_TYPE, headers={"Cache-Control": "no-store"})
