"""The metric definitions of the service (``GET /metrics``): every counter and histogram the node
records, with its buckets and bounded labels (route templates, methods, status codes, outcomes,
operation names, error kinds: never an id), and the key metrics read at scrape time.

``Metrics`` is one process's set, created by ``app.ops.metrics.setup``. The rest of the app
records through ``app/ops/metrics.py``: its functions (the store's hooks, tokens issued and
revoked), or ``current()``'s ``request`` and ``submission`` (the middleware).
prometheus_client is imported inside the functions here, never at module level: it picks its
storage (in-process or multiprocess files) when first imported, which must come after the
metrics directory is chosen (``app/ops/metrics_directory.py``).

Key metrics (which key signs, how many verify, how old the keyring is) are read from the
answering process's key source at scrape time: every worker polls the same keyring.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Iterator
from typing import TYPE_CHECKING, Any

from app.keys.source import JwksSource, KeySource

if TYPE_CHECKING:
    from prometheus_client.metrics_core import Metric

# 1 ms .. 10 s, as the issue asks: the submit path sits around 1-20 ms, a hung Redis at 2 s.
HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)
# A Redis round trip on a LAN is ~0.1-1 ms; FEEDBACK_REDIS_TIMEOUT (2 s) bounds it.
REDIS_BUCKETS = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5)
# Submissions per coalesced pipeline (the coalescer caps a pipeline at 512).
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)
METHODS = frozenset({"GET", "HEAD", "POST", "PUT", "DELETE", "PATCH", "OPTIONS"})


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

