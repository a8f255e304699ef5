"""The deliverer's Prometheus metrics, in a registry of its own (``deliver --metrics-port``).

    feedback_delivery_delivered_total{group}      entries the target confirmed
    feedback_delivery_retried_total{group}        entries sent again after a failed attempt
    feedback_delivery_dead_lettered_total{group}  entries moved to a dead-letter stream
    feedback_delivery_lag{group}                  entries not yet delivered to the group
    feedback_delivery_pending{group}              entries delivered, not yet acknowledged

Lag and pending cover every stream and every deliverer of the group (read from Redis a few
times a minute); the counters count this process.
"""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, start_http_server


class DeliveryMetrics:
    def __init__(self, group: str) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        labels = ["group"]
        self.delivered = Counter(
            "feedback_delivery_delivered", "Entries the target confirmed.", labels, registry=self.registry
        ).labels(group)
        self.retried = Counter(
            "feedback_delivery_retried", "Entries sent again after a failed attempt.", labels, registry=self.registry
        ).labels(group)
        self.dead_lettered = Counter(
            "feedback_delivery_dead_lettered", "Entries moved to a dead-letter stream.", labels, registry=self.registry
        ).labels(group)
        self.lag = Gauge(
            "feedback_delivery_lag", "Entries not yet delivered to the group.", labels, registry=self.registry
        ).labels(group)
        self.pending = Gauge(
            "feedback_delivery_pending", "Entries delivered, not yet acknowledged.", labels, registry=self.registry
        ).labels(group)

    def serve(self, port: int, host: str = "0.0.0.0") -> None:
        """Serve ``/metrics`` on ``port`` from a background thread."""
        start_http_server(port, addr=host, registry=self.registry)
