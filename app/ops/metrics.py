"""Prometheus metrics: what the node counts, and ``GET /metrics``.

One set of metrics per process, created by ``setup`` (called by ``create_app`` when
``FEEDBACK_METRICS`` is on). Every recording function here is a no-op until then, and cheap
after: label children are cached, so a hot-path call is a dictionary lookup and an increment.

**Several uvicorn workers.** Each worker is its own process with its own counters, and a scrape
reaches whichever worker accepts the connection. So workers run prometheus_client's multiprocess
mode: each writes its samples to files in one directory per node, and the worker answering a
scrape reads them all, so any worker answers with the node's totals (counters of a worker that
exited stay counted until the node stops). The directory must be known before prometheus_client
is first imported (it picks its storage at import), which is why that import happens in
``setup`` and nowhere at module level. Where the directory comes from:

- ``PROMETHEUS_MULTIPROC_DIR`` set: used as it is (``feedback-tokens serve --workers N`` sets it
  to a directory of its own, made fresh at start-up and removed at exit; an operator may set it
  too, and then owns it).
- otherwise, in a process started by a supervisor (``uvicorn --workers N``, ``--reload``, and
  granian's workers, even one): the workers derive one directory from the supervisor's pid and
  start time, so it is fresh for each supervisor run. The last worker to exit removes it, and a
  start-up removes those of supervisors that are gone (killed ones leave theirs behind).
- otherwise (one process: ``uvicorn app.main:app``, ``make run``, tests): plain in-process
  metrics, plus prometheus_client's process and GC metrics.

Key metrics (which key signs, how many verify, how old the keyring is) are read from the
answering process's key source at scrape time: every worker polls the same keyring.

**For the store** (``app/store``): ``observe_redis(op, seconds)`` around each Redis call or
pipeline, ``redis_error(kind)`` (``error_kind(err)`` maps an exception to the bounded set) for
each failed one, ``observe_submit_batch(size)`` for each coalesced submit pipeline.
"""

from __future__ import annotations

import contextlib
import hmac
import logging
import math
import os
import shutil
import stat
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from starlette.concurrency import run_in_threadpool
from starlette.requests import Request
from starlette.responses import Response

from app.errors import MetricsUnauthorized
from app.keys.source import JwksSource, KeySource

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

log = logging.getLogger("feedback_tokens.metrics")

# 1 ms .. 10 s, as the issue asks: the submit path sits around 1-20 ms, a hung Redis at 2 s.
HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# A Redis round trip on a LAN is ~0.1-1 ms; FEEDBACK_REDIS_TIMEOUT (2 s) bounds it.
REDIS_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
# Submissions per coalesced pipeline (the coalescer caps a pipeline at 512).
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})
REDIS_ERROR_KINDS = ("timeout", "connection", "oom", "noscript", "response", "other")

DIR_PREFIX = "feedback-tokens-metrics-"
_MARKER = "worker-"
_owned: str | None = None  # the node directory this worker joined, which the last one out removes


# -- the node's metrics directory ------------------------------------------------------------


def _start_time(pid: int) -> str | None:
    """A process's start time in clock ticks since boot (Linux), None if there is no such
    process. With the pid it names one process run: a recycled pid has another start time."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def node_directory(supervisor: int) -> str:
    """The metrics directory of the node run by process ``supervisor``: its pid and start time
    in the name, so each run of a supervisor gets a fresh one."""
    return os.path.join(
        tempfile.gettempdir(), f"{DIR_PREFIX}{os.getuid()}-{supervisor}-{_start_time(supervisor) or 0}"
    )


def remove_stale_directories() -> None:
    """Remove our user's node directories whose supervisor no longer runs (a killed node)."""
    base = tempfile.gettempdir()
    mine = f"{DIR_PREFIX}{os.getuid()}-"
    with contextlib.suppress(OSError):
        for name in os.listdir(base):
            if not name.startswith(mine):
                continue
            try:
                pid, started = name[len(mine) :].split("-")
                gone = _start_time(int(pid)) != started
            except ValueError:
                continue
            if gone:
                shutil.rmtree(os.path.join(base, name), ignore_errors=True)


def _private_directory(path: str) -> bool:
    """Create ``path`` for this user alone, or accept it if it already is: a directory in /tmp
    with a guessable name could have been made by someone else to read or skew our counts."""
    try:
        os.mkdir(path, 0o700)
        return True
    except FileExistsError:
        pass
    st = os.lstat(path)
    return stat.S_ISDIR(st.st_mode) and st.st_uid == os.getuid() and not st.st_mode & 0o077


@contextlib.contextmanager
def serving_directory(workers: int, enabled: bool = True) -> Iterator[str | None]:
    """For ``feedback-tokens serve``: a fresh metrics directory for its ``workers`` (when more
    than one and none is set), exported as ``PROMETHEUS_MULTIPROC_DIR``, removed at exit."""
    if not enabled or workers < 2 or os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        yield os.environ.get("PROMETHEUS_MULTIPROC_DIR")
        return
    remove_stale_directories()
    path = node_directory(os.getpid())
    shutil.rmtree(path, ignore_errors=True)
    if not _private_directory(path):
        raise RuntimeError(f"{path} exists and is not a private directory of ours")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    try:
        yield path
    finally:
        os.environ.pop("PROMETHEUS_MULTIPROC_DIR", None)
        shutil.rmtree(path, ignore_errors=True)


def _leave(path: str) -> None:
    """At a worker's exit: the last live worker of the node removes the directory. Each removes
    its own marker before looking at the others', so of workers exiting together at least one
    sees none left."""
    with contextlib.suppress(FileNotFoundError):
        os.unlink(os.path.join(path, f"{_MARKER}{os.getpid()}"))
    try:
        names = os.listdir(path)
    except FileNotFoundError:
        return
    for name in names:
        if name.startswith(_MARKER) and name[len(_MARKER) :].isdigit() and _alive(int(name[len(_MARKER) :])):
            return
    shutil.rmtree(path, ignore_errors=True)


def _choose_directory() -> str | None:
    """The multiprocess directory for this process, prepared; None for in-process metrics."""
    global _owned
    import multiprocessing

    given = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if given:
        os.makedirs(given, mode=0o700, exist_ok=True)
        return given
    if multiprocessing.parent_process() is None:
        return None
    supervisor = os.getppid()
    remove_stale_directories()
    path = node_directory(supervisor)
    if not _private_directory(path):
        log.error("metrics directory %s is not a private directory of ours: each worker counts alone", path)
        return None
    with open(os.path.join(path, f"{_MARKER}{os.getpid()}"), "w"):
        pass
    _owned = path
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path
    return path


def shutdown() -> None:
    """At the app's shutdown (not atexit: uvicorn ends a worker by re-raising the SIGTERM it
    handled, so exit handlers never run): leave the node directory, last one out removing it."""
    if _owned is not None:
        _leave(_owned)


# -- the metrics -----------------------------------------------------------------------------


class Metrics:
    """The process's metric objects and cached label children."""

    def __init__(self, directory: str | None) -> None:
        from prometheus_client import CollectorRegistry, Counter, Histogram, disable_created_metrics

        disable_created_metrics()  # type: ignore[no-untyped-call]  # a `_created` series per child doubles the series for little
        self.directory = directory
        self.registry = CollectorRegistry()
        if directory is not None:
            from prometheus_client.multiprocess import MultiProcessCollector

            self.exported = CollectorRegistry()
            MultiProcessCollector(self.exported, path=directory)  # type: ignore[no-untyped-call]
        else:
            from prometheus_client import GCCollector, PlatformCollector, ProcessCollector

            ProcessCollector(registry=self.registry)
            PlatformCollector(registry=self.registry)
            GCCollector(registry=self.registry)
            self.exported = self.registry
        r = self.registry
        self.http_requests = Counter(
            "http_requests_total", "HTTP requests answered, by route template, method and status.",
            ["route", "method", "status"], registry=r,
        )
        self.http_duration = Histogram(
            "http_request_duration_seconds", "Time from a request's arrival to the end of its answer.",
            ["route", "method"], buckets=HTTP_BUCKETS, registry=r,
        )
        self.submissions = Counter(
            "feedback_submissions_total",
            "Submission attempts by outcome: recorded, duplicate, or the problem code.",
            ["outcome"], registry=r,
        )
        self.issued = Counter("feedback_tokens_issued_total", "Tokens issued.", registry=r)
        self.revoked = Counter("feedback_tokens_revoked_total", "Tokens revoked.", registry=r)
        self.redis_duration = Histogram(
            "feedback_redis_duration_seconds", "Redis calls (a pipeline counts once), by operation.",
            ["op"], buckets=REDIS_BUCKETS, registry=r,
        )
        self.redis_errors = Counter(
            "feedback_redis_errors_total", "Failed Redis calls, by kind of failure.", ["kind"], registry=r
        )
        self.submit_batch = Histogram(
            "feedback_submit_batch_size", "Submissions sent to Redis together in one coalesced pipeline.",
            buckets=BATCH_BUCKETS, registry=r,
        )
        self._requests: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self._outcomes: dict[str, Any] = {}
        self._redis: dict[str, Any] = {}
        self._redis_errors: dict[str, Any] = {}

    def request(self, route: str, method: str, status: int, seconds: float) -> None:
        if method not in METHODS:
            method = "other"
        key = (route, method, status)
        children = self._requests.get(key)
        if children is None:
            children = self._requests[key] = (
                self.http_requests.labels(route, method, str(status)),
                self.http_duration.labels(route, method),
            )
        children[0].inc()
        children[1].observe(seconds)

    def submission(self, outcome: str) -> None:
        counter = self._outcomes.get(outcome)
        if counter is None:
            counter = self._outcomes[outcome] = self.submissions.labels(outcome)
        counter.inc()

    def render(self, keys: KeySource | None) -> bytes:
        from prometheus_client import generate_latest

        return generate_latest(_Scrape(self.exported, keys))


class _Scrape:
    """What one scrape exports: the stored metrics, then the key metrics read now."""

    def __init__(self, stored: Any, keys: KeySource | None) -> None:
        self.stored = stored
        self.keys = keys

    def collect(self) -> Iterable[Metric]:
        yield from self.stored.collect()
        if self.keys is not None:
            yield from key_metrics(self.keys, time.time())


def key_metrics(keys: KeySource, now: float) -> Iterator[Metric]:
    from prometheus_client.core import GaugeMetricFamily

    keyring = keys.keyring
    info = GaugeMetricFamily(
        "feedback_signing_key_info", "1 for the key this process signs with (none on verify-only nodes).",
        labels=["kid", "alg"],
    )
    signer = keyring.signer
    if signer is not None:
        info.add_metric([signer.kid, signer.alg], 1)
    yield info
    verifying = sum(1 for k in keyring.keys.values() if k.verifies)
    yield GaugeMetricFamily("feedback_keys_loaded", "Keys that verify tokens here.", value=verifying)
    name, what = (
        ("feedback_jwks_age_seconds", "the last successful fetch of the issuer's JWK Set")
        if isinstance(keys, JwksSource)
        else ("feedback_keyring_age_seconds", "the keyring was last loaded or found current")
    )
    loaded = keys.loaded_at
    # Never loaded: infinitely old, so a staleness alert fires rather than seeing no series.
    age = math.inf if loaded is None else max(0.0, now - loaded)
    yield GaugeMetricFamily(name, f"Seconds since {what}.", value=age)


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
        directory = _choose_directory() if "prometheus_client" not in sys.modules else _already_chosen()
        _created = Metrics(directory)
    _metrics = _created
    return _metrics


def _already_chosen() -> str | None:
    """prometheus_client was imported before us: its storage is chosen; follow it."""
    from prometheus_client import values

    if getattr(values.ValueClass, "_multiprocess", False):
        return os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR") or _is_worker():
        log.error("prometheus_client was imported before the metrics directory was set: each worker counts alone")
    return None


def _is_worker() -> bool:
    import multiprocessing

    return multiprocessing.parent_process() is not None


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
    """One failed Redis call; ``kind`` is one of ``REDIS_ERROR_KINDS`` (see ``error_kind``)."""
    m = _metrics
    if m is None:
        return
    counter = m._redis_errors.get(kind)
    if counter is None:
        counter = m._redis_errors[kind] = m.redis_errors.labels(kind if kind in REDIS_ERROR_KINDS else "other")
    counter.inc()


def error_kind(err: BaseException) -> str:
    """The bounded label for a redis-py exception."""
    from redis.exceptions import (
        ConnectionError,
        NoScriptError,
        OutOfMemoryError,
        ResponseError,
        TimeoutError,
    )

    if isinstance(err, TimeoutError):
        return "timeout"
    if isinstance(err, ConnectionError):
        return "connection"
    if isinstance(err, OutOfMemoryError) or str(err).startswith("OOM"):
        return "oom"
    if isinstance(err, NoScriptError):
        return "noscript"
    if isinstance(err, ResponseError):
        return "response"
    return "other"


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
