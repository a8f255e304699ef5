"""``feedback-tokens deliver``: run a deliverer, or show how the groups stand (``--status``)."""

from __future__ import annotations

import asyncio
import logging
import signal
import sys
from dataclasses import dataclass
from typing import TextIO

from app.config import Settings
from app.delivery.consumer import Deliverer
from app.delivery.metrics import DeliveryMetrics
from app.delivery.options import Options
from app.delivery.streams import group_status
from app.delivery.target import Target, group_name, open_target
from app.store.connect import Client, check_version, connect, discover_streams
from app.store.keyspace import Keyspace

log = logging.getLogger("feedback_tokens.delivery")


def keyspace_of(settings: Settings) -> Keyspace:
    return Keyspace(settings.redis_prefix, settings.shards)


async def _client(settings: Settings) -> Client:
    client = await connect(
        settings.redis_url, settings.redis_cluster, timeout=settings.redis_timeout, pool_size=8
    )
    await check_version(client)
    return client


@dataclass
class Request:
    to: str
    group: str | None = None
    consumer: str | None = None
    batch: int = 500
    claim_idle: float = 60.0
    max_failures: int = 5
    metrics_port: int | None = None


async def deliver(settings: Settings, request: Request, target: Target | None = None) -> int:
    """Deliver until SIGTERM or SIGINT; the batch in hand is finished first."""
    target = target or open_target(request.to, settings)
    options = Options(
        group=request.group or group_name(request.to),
        batch=request.batch,
        claim_idle=request.claim_idle,
        max_failures=request.max_failures,
    )
    if request.consumer:
        options.consumer = request.consumer
    metrics = DeliveryMetrics(options.group)
    if request.metrics_port is not None:
        metrics.serve(request.metrics_port)
    client = await _client(settings)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop.set)
    deliverer = Deliverer(client, keyspace_of(settings), target, options, settings.stream_retention, metrics)
    log.info("delivering as group %s, consumer %s, batches of %d", options.group, options.consumer, options.batch)
    try:
        await deliverer.run(stop)
    finally:
        await client.aclose()
    log.info("stopped")
    return 0


async def status(settings: Settings, group: str | None = None, out: TextIO = sys.stdout) -> int:
    """Print each group's lag, pending entries and dead letters over all streams."""
    client = await _client(settings)
    try:
        streams = await discover_streams(client, keyspace_of(settings))
        groups = await group_status(client, streams)
    finally:
        await client.aclose()
    if group is not None:
        groups = {name: g for name, g in groups.items() if name == group}
    if not groups:
        print(f"no consumer group{' named ' + group if group else ''} reads the {len(streams)} feedback streams",
              file=out)
        return 1 if group else 0
    rows = [("GROUP", "STREAMS", "LAG", "PENDING", "DEAD LETTERS", "CONSUMERS")]
    for g in sorted(groups.values(), key=lambda g: g.name):
        lag = "?" if g.lag is None else str(g.lag)
        rows.append((g.name, str(g.streams), lag, str(g.pending), str(g.dead), str(len(g.consumers))))
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    for row in rows:
        print("  ".join(cell.ljust(width) for cell, width in zip(row, widths, strict=True)).rstrip(), file=out)
    return 0
