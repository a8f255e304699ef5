"""The service's own look at its streams, every ``FEEDBACK_STREAM_CHECK_INTERVAL`` seconds, so
streams stay bounded even where no deliverer runs: streams without a consumer group are trimmed
by ``FEEDBACK_STREAM_RETENTION``, streams with groups of what every group acknowledged, and a
group more than ``FEEDBACK_LAG_WARNING`` entries behind is logged as a warning (``/readyz``
stays ready: the submissions are safe in Redis, only their delivery is late).

Every process of the service runs it; the work is idempotent and small (a script and an
``XINFO GROUPS`` per stream).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from redis.exceptions import RedisError

from app.config import Settings
from app.delivery.streams import GroupStatus, Trimmer, group_status
from app.store.connect import Client, connect, discover_streams
from app.store.keyspace import Keyspace

log = logging.getLogger("feedback_tokens.delivery")


async def check_streams(client: Client, keyspace: Keyspace, settings: Settings) -> dict[str, GroupStatus]:
    """Trim every stream once and warn about groups that fall behind; the groups, for callers
    that export them (metrics)."""
    streams = await discover_streams(client, keyspace)
    trimmer = Trimmer(client, settings.stream_retention)
    for stream in streams:
        removed, how = await trimmer.trim(stream)
        if removed and how == "retention":
            log.info("trimmed %d entries from %s (no consumer group; retention %s)", removed, stream,
                     settings.stream_retention)
    groups = await group_status(client, streams, dead_letters=False)
    for group in groups.values():
        behind = group.behind
        if behind is not None and behind > settings.lag_warning:
            log.warning(
                "consumer group %s is %d entries behind (%d not yet delivered, %d not acknowledged; "
                "FEEDBACK_LAG_WARNING is %d): is its deliverer running?",
                group.name, behind, group.lag or 0, group.pending, settings.lag_warning,
            )
    return groups


class Upkeep:
    """The periodic task; ``start`` it in the app's lifespan, ``stop`` it on the way out."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self._task: asyncio.Task[None] | None = None
        self._stopping = asyncio.Event()

    def start(self) -> Upkeep:
        self._task = asyncio.create_task(self._run())
        return self

    async def stop(self) -> None:
        """Ends the task. The flag matters as much as the cancel: a cancellation that lands as a
        Redis call times out can reach the loop as a Redis timeout, and the loop goes on."""
        if self._task is None:
            return
        self._stopping.set()
        self._task.cancel()
        await asyncio.wait({self._task}, timeout=5)
        if not self._task.done():
            log.warning("the stream checks did not stop within 5 s")
        self._task = None

    async def _pause(self) -> bool:
        """Wait one interval; False once asked to stop."""
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._stopping.wait(), self.settings.stream_check_interval)
        return not self._stopping.is_set()

    async def _run(self) -> None:
        s = self.settings
        if not await self._pause():  # nothing to do (nor to connect) at start-up
            return
        client = await connect(s.redis_url, s.redis_cluster, timeout=s.redis_timeout, pool_size=2)
        keyspace = Keyspace(s.redis_prefix, s.shards)
        try:
            while True:
                try:
                    await check_streams(client, keyspace, s)
                except RedisError as err:
                    log.warning("stream check failed: %s: %s", type(err).__name__, err)
                if not await self._pause():
                    return
        finally:
            await client.aclose()
