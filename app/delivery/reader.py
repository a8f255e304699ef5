"""The reader: this consumer's side of the group on the feedback streams, from reading an entry
to settling it.

- which streams there are (``discover``), with the group created on each new one (from the
  oldest entry still there);
- reading: this consumer's own pending entries on start (``XREADGROUP ... 0``), new entries
  (``XREADGROUP ... >``, one pipeline over all streams), and those of consumers that stopped
  (``XAUTOCLAIM``), with long-gone consumers removed from the group;
- holding: the entries read and not yet settled (``held``), touched (``XCLAIM ... JUSTID``) so
  that another deliverer does not claim them while a slow batch goes on;
- settling (``flush``): acknowledging what was delivered, and moving to the dead-letter stream
  what can't be (an entry that can't be read, one handed out more than ``max_failures`` times,
  one the target refused); then trimming the streams it settled entries in (``trim``).

Only single-key commands (and the ``DEAD_LETTER`` script on two keys of one hash tag), so it works
on one Redis and on Redis Cluster alike.
"""

from __future__ import annotations

import logging
from collections.abc import AsyncGenerator, Sequence
from dataclasses import dataclass
from typing import Any

from redis.exceptions import RedisError, ResponseError

from app.config import Retention
from app.delivery.metrics import DeliveryMetrics
from app.delivery.options import Options
from app.delivery.streams import Trimmer, dead_stream, text
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


@dataclass(slots=True)
class Held:
    """An entry read by this consumer and not yet acknowledged."""

    stream: str
    id: str
    fields: dict[Any, Any]
    entry: FeedbackEntry | None = None


class Reader:
    def __init__(
        self,
        client: Client,
        keyspace: Keyspace,
        options: Options,
        retention: Retention,
        metrics: DeliveryMetrics,
    ) -> None:
        self.client = client
        self.keyspace = keyspace
        self.options = options
        self.group = options.group
        self.consumer = options.consumer
        self.metrics = metrics
        self.trimmer = Trimmer(client, retention)
        self._dead_letter = client.register_script(DEAD_LETTER)
        self.streams: list[str] = []
        self.held: dict[str, dict[str, Held]] = {}
        self._counts: dict[str, int] = {}
        self._to_ack: dict[str, set[str]] = {}
        self._to_bury: list[tuple[Held, str]] = []
        self._to_trim: set[str] = set()

    # -- the streams ---------------------------------------------------------------------------

    async def discover(self, recheck: bool = False) -> None:
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

    async def check_consumer_name(self) -> None:
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

    # -- reading -------------------------------------------------------------------------------

    async def own_pending(self) -> AsyncGenerator[list[Held], None]:
        """This consumer's own pending entries, stream by stream, a batch at a time: what a
        previous run under the same consumer name read and did not acknowledge."""
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
                    yield await self._fresh(stream, held)

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

    async def read_new(self) -> tuple[list[Held], bool]:
        """New entries of every stream, and whether a stream may hold more already."""
        more = False
        if not self.streams:
            return [], more
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
            more |= len(rows) >= count  # that stream may hold more already
            self._counts[stream] = min(batch, max(base, 2 * len(rows)))
            held += self._take(stream, rows)
        return held, more

    async def claim(self) -> list[Held]:
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

    # -- holding and settling ------------------------------------------------------------------

    def settle(self, done: list[Held], dead: list[tuple[Held, str]]) -> None:
        """Queue the outcome of a batch: ``done`` to acknowledge, ``dead`` (with why) to bury."""
        for item in done:
            self._to_ack.setdefault(item.stream, set()).add(item.id)
        self._to_bury += dead

    async def flush(self) -> None:
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

    async def touch(self) -> None:
        """Reset the idle time of the entries in hand (leaving their delivery count alone), so
        they don't look abandoned to other deliverers."""
        for stream, mine in list(self.held.items()):
            ids: list[Any] = list(mine)
            for start in range(0, len(ids), 1000):
                try:
                    await self.client.xclaim(
                        stream, self.group, self.consumer, 0, ids[start : start + 1000], justid=True
                    )
                except RedisError as err:
                    log.warning("could not touch %d entries held on %s: %s", len(ids), stream, err)

    async def trim(self) -> None:
        """Trim each stream entries were settled in since the last time (``app/delivery/streams.py``)."""
        streams, self._to_trim = self._to_trim, set()
        try:
            for stream in streams:
                await self.trimmer.trim(stream)
        except RedisError:
            self._to_trim |= streams
            raise
