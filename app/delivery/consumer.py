"""The deliverer: reads every feedback stream through one consumer group and hands the entries to
a target, at least once.

This module is the loop: what happens when, and stopping. The reader (``app/delivery/reader.py``)
talks to the group (reads, claims, holds, acknowledges, dead-letters, trims); the courier
(``app/delivery/courier.py``) hands batches to the target and retries them; the options are in
``app/delivery/options.py``.

One loop, with single-key commands only (so it runs on one Redis and on Redis Cluster alike):

1. Streams come from ``discover_streams`` (again every ``rediscover`` seconds, which is cheap);
   the group is created on each new one (from the oldest entry still there), and checked on
   every stream every ``recheck`` seconds (a stream deleted and written again lost its groups).
2. On start, the consumer's own pending entries are read again (``XREADGROUP ... 0``): what a
   previous run under the same consumer name read and did not acknowledge.
3. Then new entries (``XREADGROUP ... >``, one pipeline over all streams), and every
   ``claim_idle / 2`` seconds the entries of consumers that stopped (``XAUTOCLAIM``, idle for
   longer than ``claim_idle``). Entries this process holds are touched every ``claim_idle / 4``
   seconds (``XCLAIM ... JUSTID``, which leaves their delivery count alone), so a batch that
   takes long (a target that is down) is never claimed from a live deliverer.
4. Entries go to the target in batches of at most ``batch``; they are acknowledged only after the
   target confirmed them (see ``app/delivery/target.py`` for what its failures mean).
5. An entry handed out more than ``max_failures`` times without being acknowledged (each holder
   crashed or was killed) goes to the dead-letter stream instead of to the target, so an entry
   that kills deliverers can't stop a group for ever. So does an entry that can't be read.
6. At most every ``trim_every`` seconds, each stream it acknowledged entries in is trimmed of what
   every group has acknowledged (``app/delivery/streams.py``).

Stopping (``stop`` set) lets the batch in hand finish, unless the target is down, in which case
it stays pending and goes to the next deliverer.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging

from redis.exceptions import RedisError, ResponseError

from app.config import Retention
from app.delivery.courier import Courier, Stopping, jitter
from app.delivery.metrics import DeliveryMetrics
from app.delivery.options import Options
from app.delivery.reader import Held, Reader
from app.delivery.streams import group_status
from app.delivery.target import Target
from app.store.connect import Client
from app.store.keyspace import Keyspace

log = logging.getLogger("feedback_tokens.delivery")


class Deliverer:
    def __init__(
        self,
        client: Client,
        keyspace: Keyspace,
        target: Target,
        options: Options,
        retention: Retention,
        metrics: DeliveryMetrics | None = None,
    ) -> None:
        self.client = client
        self.keyspace = keyspace
        self.target = target
        self.options = options
        self.group = options.group
        self.consumer = options.consumer
        self.metrics = metrics or DeliveryMetrics(options.group)
        self._stop = asyncio.Event()
        self.reader = Reader(client, keyspace, options, retention, self.metrics)
        self.courier = Courier(target, options, self.metrics, self._stop)
        self._started = False
        self._next: dict[str, float] = {}

    # -- running -------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Deliver until ``stop`` is set (or the task is cancelled). Once asked to stop, the batch
        in hand gets ``grace`` seconds to finish; then what was delivered is acknowledged."""
        if stop is not None:
            self._stop = self.courier.stop = stop
        heartbeat = asyncio.create_task(self._heartbeat())
        work = asyncio.create_task(self._work())
        try:
            asked = asyncio.create_task(self._stop.wait())
            await asyncio.wait({work, asked}, return_when=asyncio.FIRST_COMPLETED)
            asked.cancel()
            if not work.done():
                await asyncio.wait({work}, timeout=self.options.grace)
            if not work.done():
                log.warning("the batch in hand did not finish within %.0fs; it stays pending", self.options.grace)
                work.cancel()
                await asyncio.wait({work})
            if not work.cancelled():
                work.result()  # an unexpected failure of the loop surfaces here
            if self.reader.streams:
                await self._settle()
        finally:
            heartbeat.cancel()
            work.cancel()
            await self.courier.close()

    async def _work(self) -> None:
        delay = self.options.backoff
        while not self._stop.is_set():
            try:
                if not self._started:
                    await self._start()
                    self._started = True
                more = await self._cycle()
                delay = self.options.backoff
            except Stopping:
                return
            except RedisError as err:
                if isinstance(err, ResponseError) and "NOGROUP" in str(err):
                    log.warning("a stream lost group %s (deleted or recreated); creating it again", self.group)
                    self.reader.streams = []  # the next discovery creates the group wherever it is missing
                    self._next.pop("discover", None)
                    await self._pause(self.options.poll)
                    continue
                log.warning("Redis: %s: %s; trying again in %.1fs", type(err).__name__, err, delay)
                await self._pause(jitter(delay))
                delay = min(delay * 2, self.options.max_backoff)
                continue
            if not more:
                await self._pause(self.options.poll)

    async def _pause(self, seconds: float) -> None:
        try:
            await asyncio.wait_for(self._stop.wait(), seconds)
        except TimeoutError:
            pass

    def _due(self, what: str, every: float) -> bool:
        now = asyncio.get_running_loop().time()
        if now < self._next.get(what, 0.0):
            return False
        self._next[what] = now + every
        return True

    async def _start(self) -> None:
        await self.reader.discover()
        await self.reader.check_consumer_name()
        async with contextlib.aclosing(self.reader.own_pending()) as pending:
            async for held in pending:
                await self._deliver(held)

    async def _cycle(self) -> bool:
        """One round; True when more is waiting already (go again without a pause)."""
        reader = self.reader
        await reader.flush()
        if self._due("discover", self.options.rediscover):
            await reader.discover(recheck=self._due("recheck", self.options.recheck))
        held: list[Held] = []
        if self._due("claim", self.options.claim_idle / 2):
            held = await reader.claim()
        more = bool(held)
        if not held:
            held, more = await reader.read_new()
        if held:
            await self._deliver(held)
        if self._due("trim", self.options.trim_every):
            await reader.trim()
        if self._due("stats", self.options.stats_every):
            await self._stats()
        return more

    async def _settle(self) -> None:
        """On the way out: acknowledge and trim what is done (best effort)."""
        try:
            await self.reader.flush()
            await self.reader.trim()
        except RedisError as err:
            log.warning("could not acknowledge or trim on the way out: %s", err)

    async def _deliver(self, held: list[Held]) -> None:
        size = self.options.batch
        for start in range(0, len(held), size):
            done, dead = await self.courier.attempt(held[start : start + size])
            self.reader.settle(done, dead)
            self.metrics.delivered.inc(len(done))
            await self.reader.flush()

    async def _heartbeat(self) -> None:
        """Keep the entries in hand from looking abandoned while a slow batch goes on."""
        while True:
            await asyncio.sleep(self.options.claim_idle / 4)
            await self.reader.touch()

    async def _stats(self) -> None:
        status = (await group_status(self.client, self.reader.streams, dead_letters=False)).get(self.group)
        if status is not None:
            self.metrics.lag.set(status.lag if status.lag is not None else float("nan"))
            self.metrics.pending.set(status.pending)
