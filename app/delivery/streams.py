"""Keeping the feedback streams bounded, and looking at how far behind their groups are.

A stream that has consumer groups loses exactly what every group has acknowledged: ``TRIM``
removes the entries older than the oldest one any group still needs. A stream that no group
reads is trimmed by ``FEEDBACK_STREAM_RETENTION`` instead (age or length). Both happen in one
script per stream, so a group can't appear between the look at the groups and the trim, and
nothing a group has not read is ever dropped. Every group counts, including one whose deliverer
no longer runs: delete a group you retired (``XGROUP DESTROY`` on each stream), or its stream
grows without bound (the lag warning says so).

Everything here uses one key per command (or per script), so it runs unchanged on Redis Cluster.
"""

from __future__ import annotations

import logging
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from app.config import Retention
from app.store.connect import Client

log = logging.getLogger("feedback_tokens.delivery")

# KEYS[1] a feedback stream
# ARGV[1] what to do when it has no consumer group: 'age' | 'length' | 'off'
# ARGV[2] the retention's amount: milliseconds ('age') or entries ('length')
# With groups: XTRIM MINID <the oldest id any group still needs>, which is a group's oldest
# pending entry or, when it has none older, the entry after the last one delivered to it.
# Without: entries older than ARGV[2] ms (by Redis's clock), or all but the newest ARGV[2].
# Returns {entries removed, 'groups' | 'retention' | 'none'}
TRIM = """
local function parse(id)
  local dash = string.find(id, '-', 1, true)
  return tonumber(string.sub(id, 1, dash - 1)), tonumber(string.sub(id, dash + 1))
end
local function older(ams, aseq, bms, bseq)
  return ams < bms or (ams == bms and aseq < bseq)
end
if redis.call('EXISTS', KEYS[1]) == 0 then return {0, 'none'} end
local groups = redis.call('XINFO', 'GROUPS', KEYS[1])
if #groups == 0 then
  if ARGV[1] == 'age' then
    local now = redis.call('TIME')
    local cutoff = tonumber(now[1]) * 1000 + math.floor(tonumber(now[2]) / 1000) - tonumber(ARGV[2])
    if cutoff <= 0 then return {0, 'retention'} end
    return {redis.call('XTRIM', KEYS[1], 'MINID', string.format('%d-0', cutoff)), 'retention'}
  elseif ARGV[1] == 'length' then
    return {redis.call('XTRIM', KEYS[1], 'MAXLEN', ARGV[2]), 'retention'}
  end
  return {0, 'none'}
end
local min_ms, min_seq = nil, nil
for _, group in ipairs(groups) do
  local info = {}
  for i = 1, #group, 2 do info[group[i]] = group[i + 1] end
  local ms, seq = parse(info['last-delivered-id'])
  seq = seq + 1
  if info['pending'] > 0 then
    local pms, pseq = parse(redis.call('XPENDING', KEYS[1], info['name'])[2])
    if older(pms, pseq, ms, seq) then ms, seq = pms, pseq end
  end
  if min_ms == nil or older(ms, seq, min_ms, min_seq) then min_ms, min_seq = ms, seq end
end
return {redis.call('XTRIM', KEYS[1], 'MINID', string.format('%d-%d', min_ms, min_seq)), 'groups'}
"""


def dead_stream(stream: str, group: str) -> str:
    """Where ``group`` puts the entries of ``stream`` it gave up on: beside the stream, in its
    hash tag (so in its Redis Cluster slot)."""
    return f"{stream}:dead:{group}"


def text(raw: Any) -> str:
    return raw.decode() if isinstance(raw, bytes) else str(raw)


class Trimmer:
    def __init__(self, client: Client, retention: Retention) -> None:
        self.client = client
        self.retention = retention
        self._script = client.register_script(TRIM)

    async def trim(self, stream: str) -> tuple[int, str]:
        """Trim one stream; (entries removed, 'groups' | 'retention' | 'none')."""
        removed, how = await self._script(keys=[stream], args=[self.retention.kind, self.retention.amount])
        return int(removed), text(how)


@dataclass
class GroupStatus:
    """One consumer group over all the streams it reads."""

    name: str
    streams: int = 0
    lag: int | None = 0  # entries not yet delivered to any of its consumers (None: Redis can't tell)
    pending: int = 0  # delivered, not yet acknowledged
    dead: int = 0  # in its dead-letter streams
    consumers: set[str] = field(default_factory=set)

    @property
    def behind(self) -> int | None:
        """Entries this group has not acknowledged yet."""
        return None if self.lag is None else self.lag + self.pending


async def group_status(client: Client, streams: Iterable[str], dead_letters: bool = True) -> dict[str, GroupStatus]:
    """Every group found on ``streams``, with its lag, pending and dead letters summed."""
    groups: dict[str, GroupStatus] = {}
    for stream in streams:
        if not await client.exists(stream):
            continue
        for info in await client.xinfo_groups(stream):
            name = text(info["name"])
            status = groups.setdefault(name, GroupStatus(name))
            status.streams += 1
            lag = info.get("lag")
            status.lag = None if lag is None or status.lag is None else status.lag + int(lag)
            status.pending += int(info["pending"])
            if dead_letters:
                status.dead += int(await client.xlen(dead_stream(stream, name)))
                if int(info["consumers"]):
                    for consumer in await client.xinfo_consumers(stream, name):
                        status.consumers.add(text(consumer["name"]))
    return groups
