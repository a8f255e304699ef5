"""The deliverer: reads every feedback stream through one consumer group and hands the entries to
a target, at least once.

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
import logging
import random
import socket
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from redis.exceptions import RedisError, ResponseError

from app.config import Retention
from app.delivery.metrics import DeliveryMetrics
from app.delivery.streams import Trimmer, dead_stream, group_status, text
from app.delivery.target import Closable, Rejected, Target, TargetUnavailable
from app.store.connect import Client, discover_streams
from app.store.entry import FeedbackEntry, decode
from app.store.keyspace import Keyspace

log = logging.getLogger("feedback_tokens.delivery")

# KEYS[1] a feedback stream, KEYS[2] the group's dead-letter stream for it (same hash tag)
# ARGV[1] group, ARGV[2] entry id, ARGV[3] why, ARGV[4..] the entry's field/value pairs
# Acknowledges the entry and, if it was still pending (no other consumer delivered it in the
# meantime), appends it to the dead-letter stream with dead_from (its id) and dead_reason.
# Returns 1 when dead-lettered, 0 when it was no longer pending
DEAD_LETTER = """
if redis.call('XACK', KEYS[1], ARGV[1], ARGV[2]) == 0 then return 0 end
local fields = {unpack(ARGV, 4)}
fields[#fields + 1] = 'dead_from'
fields[#fields + 1] = ARGV[2]
fields[#fields + 1] = 'dead_reason'
fields[#fields + 1] = ARGV[3]
redis.call('XADD', KEYS[2], '*', unpack(fields))
return 1
"""

MAX_RETRY_AFTER = 600.0


class Stopping(Exception):
    """Raised out of a wait when the deliverer is asked to stop."""


@dataclass
class Options:
    group: str
    consumer: str = field(default_factory=socket.gethostname)
    batch: int = 500
    max_failures: int = 5
    claim_idle: float = 60.0  # seconds an entry sits unacknowledged before another consumer takes it
    # Pause when the streams had nothing more than what was read: a caught-up deliverer reads
    # ~20 times a second (so entries wait at most this long) instead of spinning on tiny batches.
    poll: float = 0.05
    backoff: float = 0.5  # first retry delay; doubles per failed attempt, with jitter
    max_backoff: float = 30.0
    rediscover: float = 1.0
    recheck: float = 30.0
    trim_every: float = 1.0
    stats_every: float = 5.0
    grace: float = 10.0  # once asked to stop, how long the batch in hand may take to finish


@dataclass(slots=True)
class Held:
    """An entry read by this consumer and not yet acknowledged."""

    stream: str
    id: str
    fields: dict[Any, Any]
    entry: FeedbackEntry | None = None


def jitter(delay: float) -> float:
    return delay / 2 + random.uniform(0, delay / 2)


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
        self.trimmer = Trimmer(client, retention)
        self._dead_letter = client.register_script(DEAD_LETTER)
        self.streams: list[str] = []
        self.held: dict[str, dict[str, Held]] = {}
        self._counts: dict[str, int] = {}
        self._to_ack: dict[str, set[str]] = {}
        self._to_bury: list[tuple[Held, str]] = []
        self._to_trim: set[str] = set()
        self._stop = asyncio.Event()
        self._started = False
        self._more = False
        self._next: dict[str, float] = {}

    # -- running -------------------------------------------------------------------------------

    async def run(self, stop: asyncio.Event | None = None) -> None:
        """Deliver until ``stop`` is set (or the task is cancelled). Once asked to stop, the batch
        in hand gets ``grace`` seconds to finish; then what was delivered is acknowledged."""
        if stop is not None:
            self._stop = stop
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
            if self.streams:
                await self._settle()
        finally:
            heartbeat.cancel()
            work.cancel()
            if isinstance(self.target, Closable):
                try:
                    await asyncio.wait_for(self.target.aclose(), 10)
                except TimeoutError:
                    log.warning("the target did not close within 10s")

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
                    self.streams = []  # the next discovery creates the group wherever it is missing
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

    async def _wait(self, seconds: float) -> None:
        """Sleep, or raise Stopping as soon as the deliverer is asked to stop."""
        await self._pause(seconds)
        if self._stop.is_set():
            raise Stopping

    def _due(self, what: str, every: float) -> bool:
        now = asyncio.get_running_loop().time()
        if now < self._next.get(what, 0.0):
            return False
        self._next[what] = now + every
        return True

    async def _start(self) -> None:
        await self._discover()
        await self._check_consumer_name()
        for stream in self.streams:
            cursor = "0"
            while True:
                replies: Any = await self.client.xreadgroup(
                    self.group, self.consumer, {stream: cursor}, count=self.options.batch
                )
                rows = replies[0][1] if replies else []
                if not rows:
                    break
                cursor = text(rows[-1][0])
                held = self._take(stream, rows)
                if held:
                    log.info("%d entries of %s were pending for %s: delivering them again", len(held), stream,
                             self.consumer)
                    await self._deliver(await self._fresh(stream, held))

    async def _check_consumer_name(self) -> None:
        """Two live deliverers under one name share their pending entries: each re-reads the
        other's on start and delivers them a second time. Harmless (at least once) but wasteful,
        so say so; a name seen moments ago may also be this deliverer's own previous run."""
        for stream in self.streams[:4]:
            try:
                consumers = await self.client.xinfo_consumers(stream, self.group)
            except ResponseError:
                continue
            for consumer in consumers:
                if text(consumer["name"]) == self.consumer and int(consumer["idle"]) < 2000:
                    log.warning(
                        "consumer %s of group %s was active %d ms ago: if another deliverer runs under this "
                        "name, give each its own --consumer", self.consumer, self.group, int(consumer["idle"]),
                    )
                    return

    async def _discover(self, recheck: bool = False) -> None:
        """Find the streams; make sure the group is on every new one (on all, with ``recheck``:
        a stream deleted and written again has lost its groups)."""
        streams = await discover_streams(self.client, self.keyspace)
        for stream in streams:
            if stream in self.streams and not recheck:
                continue
            try:
                await self.client.xgroup_create(stream, self.group, id="0", mkstream=True)
                log.info("created group %s on %s", self.group, stream)
            except ResponseError as err:
                if "BUSYGROUP" not in str(err):
                    raise
        self.streams = streams

    async def _cycle(self) -> bool:
        """One round; True when more is waiting already (go again without a pause)."""
        await self._flush()
        if self._due("discover", self.options.rediscover):
            await self._discover(recheck=self._due("recheck", self.options.recheck))
        held: list[Held] = []
        if self._due("claim", self.options.claim_idle / 2):
            held = await self._claim()
        more = bool(held)
        if not held:
            held = await self._read_new()
            more = self._more
        if held:
            await self._deliver(held)
        if self._due("trim", self.options.trim_every):
            await self._trim()
        if self._due("stats", self.options.stats_every):
            await self._stats()
        return more

    async def _settle(self) -> None:
        """On the way out: acknowledge and trim what is done (best effort)."""
        try:
            await self._flush()
            await self._trim()
        except RedisError as err:
            log.warning("could not acknowledge or trim on the way out: %s", err)

    # -- reading -------------------------------------------------------------------------------

    def _take(self, stream: str, rows: Sequence[Any]) -> list[Held]:
        """Entries as read; those deleted while pending (read back as no fields) are acknowledged."""
        mine = self.held.setdefault(stream, {})
        held = []
        for raw_id, fields in rows:
            entry_id = text(raw_id)
            if fields is None:
                self._to_ack.setdefault(stream, set()).add(entry_id)
                continue
            item = mine.get(entry_id) or Held(stream, entry_id, fields)
            mine[entry_id] = item
            if item.entry is None:
                try:
                    item.entry = decode(stream, entry_id, fields)
                except (ValueError, KeyError) as err:
                    self._to_bury.append((item, f"malformed entry: {type(err).__name__}: {err}"))
                    continue
            held.append(item)
        return held

    async def _read_new(self) -> list[Held]:
        self._more = False
        if not self.streams:
            return []
        batch = self.options.batch
        base = max(1, -(-batch // len(self.streams)))
        plan = [(stream, self._counts.get(stream, base)) for stream in self.streams]
        total = sum(count for _, count in plan)
        if total > 4 * batch:  # many busy streams: at most about four batches in hand at once
            plan = [(stream, max(1, count * 4 * batch // total)) for stream, count in plan]
        async with self.client.pipeline(transaction=False) as pipe:
            for stream, count in plan:
                pipe.xreadgroup(self.group, self.consumer, {stream: ">"}, count=count)
            replies = await pipe.execute()
        held: list[Held] = []
        for (stream, count), reply in zip(plan, replies, strict=True):
            rows = reply[0][1] if reply else []
            self._more |= len(rows) >= count  # that stream may hold more already
            self._counts[stream] = min(batch, max(base, 2 * len(rows)))
            held += self._take(stream, rows)
        return held

    async def _claim(self) -> list[Held]:
        """Entries that consumers which stopped left pending (and a clean-up of long-gone consumers)."""
        idle_ms = int(self.options.claim_idle * 1000)
        held: list[Held] = []
        for stream in self.streams:
            cursor = "0-0"
            claimed: list[Held] = []
            while len(claimed) < self.options.batch:
                reply = await self.client.xautoclaim(
                    stream, self.group, self.consumer, idle_ms, cursor, count=self.options.batch
                )
                cursor = text(reply[0])
                claimed += self._take(stream, reply[1])
                if cursor == "0-0":
                    break
            if claimed:
                log.warning("claimed %d entries of %s left pending by stopped consumers", len(claimed), stream)
                held += await self._fresh(stream, claimed)
            await self._forget_gone_consumers(stream)
        return held

    async def _forget_gone_consumers(self, stream: str) -> None:
        gone_after = max(3600.0, 10 * self.options.claim_idle) * 1000
        for consumer in await self.client.xinfo_consumers(stream, self.group):
            name = text(consumer["name"])
            if name != self.consumer and int(consumer["pending"]) == 0 and int(consumer["idle"]) > gone_after:
                await self.client.xgroup_delconsumer(stream, self.group, name)

    async def _fresh(self, stream: str, held: list[Held]) -> list[Held]:
        """Of entries read again, those not yet handed out more than ``max_failures`` times; the
        others are buried in the dead-letter stream."""
        if not held:
            return held
        ids = sorted(held, key=lambda h: tuple(int(part) for part in h.id.split("-")))
        rows = await self.client.xpending_range(
            stream, self.group, ids[0].id, ids[-1].id, len(self.held.get(stream, {})) + len(held), self.consumer
        )
        times = {text(row["message_id"]): int(row["times_delivered"]) for row in rows}
        fresh = []
        for item in held:
            count = times.get(item.id, 1)
            if count > self.options.max_failures:
                self._to_bury.append(
                    (item, f"handed out {count} times without being acknowledged (its deliverers stopped or crashed)")
                )
            else:
                fresh.append(item)
        return fresh

    # -- delivering ----------------------------------------------------------------------------

    async def _deliver(self, held: list[Held]) -> None:
        size = self.options.batch
        for start in range(0, len(held), size):
            chunk = held[start : start + size]
            done, dead = await self._attempt(chunk)
            for item in done:
                self._to_ack.setdefault(item.stream, set()).add(item.id)
            self._to_bury += dead
            self.metrics.delivered.inc(len(done))
            await self._flush()

    async def _attempt(self, batch: list[Held]) -> tuple[list[Held], list[tuple[Held, str]]]:
        """Deliver ``batch``: (confirmed, refused with why). A refused batch is halved until the
        refused entries stand alone."""
        entries = [item.entry for item in batch if item.entry is not None]
        failures, delay = 0, self.options.backoff
        while True:
            try:
                await self.target.deliver(entries)
                return batch, []
            except TargetUnavailable as err:
                wait = err.retry_after if err.retry_after is not None else jitter(delay)
                wait = min(wait, MAX_RETRY_AFTER)
                delay = min(delay * 2, self.options.max_backoff)
                log.warning("target unavailable (%s); trying %d entries again in %.1fs", err, len(batch), wait)
            except Rejected as err:
                reason = str(err)
                break
            except Exception as err:  # a target's own failure: counted, and retried up to max_failures
                failures += 1
                log.warning("delivery of %d entries failed (%d of %d)", len(batch), failures,
                            self.options.max_failures, exc_info=True)
                if failures >= self.options.max_failures:
                    reason = f"failed {failures} times: {type(err).__name__}: {err}"
                    break
                wait = jitter(delay)
                delay = min(delay * 2, self.options.max_backoff)
            self.metrics.retried.inc(len(batch))
            await self._wait(wait)
        if len(batch) == 1:
            log.warning("giving up on %s %s: %s", batch[0].stream, batch[0].id, reason)
            return [], [(batch[0], reason)]
        half = len(batch) // 2
        first_done, first_dead = await self._attempt(batch[:half])
        second_done, second_dead = await self._attempt(batch[half:])
        return first_done + second_done, first_dead + second_dead

    async def _flush(self) -> None:
        """Acknowledge what was delivered and bury what was given up, in that order; what fails
        (Redis away) stays queued for the next try."""
        if self._to_ack:
            acks = list(self._to_ack.items())
            async with self.client.pipeline(transaction=False) as pipe:
                for stream, ids in acks:
                    pipe.xack(stream, self.group, *ids)
                await pipe.execute()
            for stream, ids in acks:
                mine = self.held.get(stream, {})
                for entry_id in ids:
                    mine.pop(entry_id, None)
                self._to_trim.add(stream)
            self._to_ack = {}
        while self._to_bury:
            item, reason = self._to_bury[0]
            args: list[Any] = [self.group, item.id, reason]
            for name, value in item.fields.items():
                args += (name, value)
            buried = await self._dead_letter(keys=[item.stream, dead_stream(item.stream, self.group)], args=args)
            self._to_bury.pop(0)
            self.held.get(item.stream, {}).pop(item.id, None)
            if buried:
                self.metrics.dead_lettered.inc()
                self._to_trim.add(item.stream)

    async def _heartbeat(self) -> None:
        """Keep the entries in hand from looking abandoned while a slow batch goes on."""
        while True:
            await asyncio.sleep(self.options.claim_idle / 4)
            for stream, mine in list(self.held.items()):
                ids: list[Any] = list(mine)
                for start in range(0, len(ids), 1000):
                    try:
                        await self.client.xclaim(
                            stream, self.group, self.consumer, 0, ids[start : start + 1000], justid=True
                        )
                    except RedisError as err:
                        log.warning("could not touch %d entries held on %s: %s", len(ids), stream, err)

    # -- upkeep --------------------------------------------------------------------------------

    async def _trim(self) -> None:
        streams, self._to_trim = self._to_trim, set()
        try:
            for stream in streams:
                await self.trimmer.trim(stream)
        except RedisError:
            self._to_trim |= streams
            raise

    async def _stats(self) -> None:
        status = (await group_status(self.client, self.streams, dead_letters=False)).get(self.group)
        if status is not None:
            self.metrics.lag.set(status.lag if status.lag is not None else float("nan"))
            self.metrics.pending.set(status.pending)

