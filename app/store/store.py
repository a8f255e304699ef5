"""The Redis store: token records, per-run indexes, and the feedback stream.

Keys (``P`` is ``FEEDBACK_REDIS_PREFIX``; ``{P}`` is a Redis Cluster hash tag, so every key one
script touches hashes to the same slot)::

    {P}:feedback        stream, one entry per accepted submission (never trimmed here)
    {P}:t:<token id>    hash: jwt (for lookups by id), n (uses) once used, fp + ans (the latest
                        submission, under 'once' and 'update'), rev once revoked;
                        expires with its token (plus clock leeway)
    {P}:r:<run id>      sorted set of the run's token ids scored by creation time (µs; a batch's
                        tokens one µs apart, so listing keeps the request order); entries
                        older than the longest token lifetime are pruned on every write, and the
                        whole set expires with its last token

A submission is one script call: the consumed marker and the stream entry are written together or
not at all.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar, cast
from uuid import UUID

import redis.asyncio as aioredis
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.commands.core import AsyncScript
from redis.exceptions import NoScriptError, OutOfMemoryError, RedisError

from app import encoding
from app.errors import StoreUnavailable, TokenRevoked, TokenUsed

log = logging.getLogger("feedback_tokens.store")
T = TypeVar("T")

# KEYS[1] token record, KEYS[2] feedback stream
# ARGV[1] submission fingerprint, ARGV[2] record expiry (unix s), ARGV[3] answer JSON,
# ARGV[4] use policy ('once' | 'update' | 'many', see app/domain/policy.py), ARGV[5] cap on uses (0: none),
# ARGV[6..] stream entry field/value pairs
# Returns {"ok", entry id, uses} | {"dup", stored answer JSON, uses} | {"used"} | {"revoked"}
# 'once' and 'update' keep the latest fingerprint and answer: resending it is a duplicate. 'update'
# adds the field revision = uses to each entry, so the stream's order is the revisions' order and
# its last revision is the record's. 'many' keeps only the count: every submission is new.
SUBMIT = """
local state = redis.call('HMGET', KEYS[1], 'rev', 'fp', 'ans', 'n')
if state[1] then return {'revoked'} end
local policy = ARGV[4]
local uses = tonumber(state[4]) or (state[2] and 1 or 0)
if state[2] and policy ~= 'many' then
  if state[2] == ARGV[1] then return {'dup', state[3], uses} end
  if policy == 'once' then return {'used'} end
end
local cap = tonumber(ARGV[5])
if cap > 0 and uses >= cap then return {'used'} end
uses = uses + 1
local fields = {unpack(ARGV, 6)}
if policy == 'update' then
  fields[#fields + 1] = 'revision'
  fields[#fields + 1] = tostring(uses)
end
local entry = redis.call('XADD', KEYS[2], '*', unpack(fields))
if policy == 'many' then
  redis.call('HSET', KEYS[1], 'n', uses)
else
  redis.call('HSET', KEYS[1], 'fp', ARGV[1], 'ans', ARGV[3], 'n', uses)
end
if redis.call('TTL', KEYS[1]) < 0 then redis.call('EXPIREAT', KEYS[1], ARGV[2]) end
return {'ok', entry, uses}
"""

# KEYS[1] token record, KEYS[2] run index
# ARGV[1] jwt, ARGV[2] record expiry (unix s), ARGV[3] created (µs), ARGV[4] token id,
# ARGV[5] prune index entries created before this (µs)
# Returns 1
ISSUE = """
redis.call('HSET', KEYS[1], 'jwt', ARGV[1])
redis.call('EXPIREAT', KEYS[1], ARGV[2])
redis.call('ZADD', KEYS[2], ARGV[3], ARGV[4])
redis.call('ZREMRANGEBYSCORE', KEYS[2], '-inf', '(' .. ARGV[5])
if redis.call('EXPIRETIME', KEYS[2]) < tonumber(ARGV[2]) then
  redis.call('EXPIREAT', KEYS[2], ARGV[2])
end
return 1
"""

# KEYS[1] token record
# Returns 1 when revoked (or already revoked), 0 when the token is unknown
REVOKE = """
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
redis.call('HSET', KEYS[1], 'rev', '1')
return 1
"""


class Coalescer:
    """Calls of one script from concurrent requests, sent together as one pipeline.

    A call queues its keys and arguments and waits; the first call of a loop iteration schedules
    a flush for when the loop next comes round, which sends everything queued by then as one
    non-transactional pipeline (one round trip, one write, one read). Each EVALSHA in it is still
    atomic on its own, and each caller gets its own reply or its own error: a per-command error
    (OOM, NOSCRIPT after a Redis restart, which is retried once after loading the script) fails
    only that call; a connection error or timeout fails the calls of that pipeline. The client's
    socket timeout bounds each pipeline as it bounds a single call."""

    def __init__(self, client: aioredis.Redis, script: AsyncScript, max_batch: int = 512) -> None:
        self.client = client
        self.script = script
        self.max_batch = max_batch
        self._queue: list[tuple[list[Any], list[Any], asyncio.Future[Any]]] = []
        self._scheduled = False
        self._flushes: set[asyncio.Task[None]] = set()  # strong references until done

    async def __call__(self, keys: list[Any], args: list[Any]) -> Any:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._queue.append((keys, args, future))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._kick)
        return await future

    def _kick(self) -> None:
        self._scheduled = False
        queue, self._queue = self._queue, []
        for start in range(0, len(queue), self.max_batch):
            task = asyncio.ensure_future(self._flush(queue[start : start + self.max_batch]))
            self._flushes.add(task)
            task.add_done_callback(self._flushes.discard)

    async def _send(self, batch: list[tuple[list[Any], list[Any], asyncio.Future[Any]]]) -> list[Any]:
        async with self.client.pipeline(transaction=False) as pipe:
            for keys, args, _ in batch:
                pipe.evalsha(self.script.sha, len(keys), *keys, *args)
            return await pipe.execute(raise_on_error=False)

    async def _flush(self, batch: list[tuple[list[Any], list[Any], asyncio.Future[Any]]]) -> None:
        try:
            replies = await self._send(batch)
            missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
            if missing:
                # Redis lost its script cache (a restart or SCRIPT FLUSH): nothing ran for these.
                await self.client.script_load(self.script.script)
                retried = await self._send([batch[i] for i in missing])
                for i, reply in zip(missing, retried, strict=True):
                    replies[i] = reply
        except BaseException as err:  # noqa: B036 - every waiter must hear of it, then re-raise
            for _, _, future in batch:
                if not future.done():
                    future.set_exception(err if isinstance(err, Exception) else RedisError(repr(err)))
            if not isinstance(err, Exception):
                raise
            return
        for (_, _, future), reply in zip(batch, replies, strict=True):
            if future.done():  # its request went away (cancelled); the reply has no reader
                continue
            if isinstance(reply, Exception):
                future.set_exception(reply)
            else:
                future.set_result(reply)


@dataclass(frozen=True, slots=True)
class StoredToken:
    token_id: str
    jwt: str
    created_us: int
    used: bool
    revoked: bool
    uses: int = 0


@dataclass(frozen=True, slots=True)
class Outcome:
    answer: dict[str, Any]
    duplicate: bool
    uses: int = 1


@dataclass(frozen=True, slots=True)
class TokenState:
    """What the record says of a token, read without changing it."""

    uses: int
    revoked: bool
    fingerprint: str | None  # the latest submission's ('once' and 'update')
    answer: dict[str, Any] | None


def _uses(n: bytes | None, fp: bytes | None) -> int:
    return int(n) if n is not None else int(fp is not None)


def encode_field(value: Any) -> str:
    """Stream fields: plain strings as they are, everything else JSON, absent as ''."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    return json.dumps(value, separators=(",", ":"), ensure_ascii=False)


# What each ``Store._call`` was doing, in the words a 503's detail uses.
OPERATIONS = {
    "ping": "checking Redis",
    "issue": "issuing tokens",
    "submit": "recording the submission",
    "lookup": "looking up the token id",
    "state": "reading the token's state",
    "recent": "reading recent feedback",
    "revoke": "revoking the token",
    "list": "listing the run's tokens",
}


class Store:
    def __init__(self, client: aioredis.Redis, prefix: str, retry_after: int = 5) -> None:
        self.redis = client
        self.prefix = prefix
        self.retry_after = retry_after
        self.stream = f"{{{prefix}}}:feedback"
        self._submit = client.register_script(SUBMIT)
        self._issue = client.register_script(ISSUE)
        self._revoke = client.register_script(REVOKE)
        self._submit_batched = Coalescer(client, self._submit)

    @classmethod
    def from_url(cls, url: str, prefix: str, timeout: float, retry_after: int = 5) -> Store:
        client = aioredis.Redis.from_url(
            url,
            socket_timeout=timeout,
            socket_connect_timeout=timeout,
            # One immediate retry on a broken pooled connection (e.g. after a Redis restart).
            # Safe: every script here is idempotent for the same arguments.
            retry=Retry(NoBackoff(), 1),
            health_check_interval=30,
        )
        return cls(client, prefix, retry_after)

    def token_key(self, token_id: UUID | str) -> str:
        return f"{{{self.prefix}}}:t:{token_id}"

    def run_key(self, run_id: UUID | str) -> str:
        return f"{{{self.prefix}}}:r:{run_id}"

    async def _call(self, what: str, fn: Callable[[], Awaitable[T]]) -> T:
        try:
            return await fn()
        except RedisError as err:
            log.warning("redis %s failed: %s: %s", what, type(err).__name__, err)
            doing = OPERATIONS.get(what, what)
            if isinstance(err, OutOfMemoryError) or str(err).startswith("OOM"):
                # Refused at the script's first write: certainly nothing was recorded.
                detail = f"feedback storage (Redis) is out of memory: {doing} failed; nothing was recorded, try again"
            elif what == "submit":
                # A timeout or a dropped connection may come after Redis ran the script, so don't
                # promise that nothing was recorded; an identical retry is answered either way.
                detail = (
                    f"feedback storage (Redis) is unavailable: {doing} failed; send the same submission again "
                    "shortly (unless the token takes many submissions, an identical resend is never counted twice)"
                )
            else:
                detail = f"feedback storage (Redis) is unavailable: {doing} failed; try again shortly"
            raise StoreUnavailable(detail, retry_after=self.retry_after) from err

    async def close(self) -> None:
        await self.redis.aclose()

    async def ping(self) -> bool:
        return bool(await self._call("ping", self.redis.ping))

    async def eviction_policy(self) -> str | None:
        """The server's maxmemory-policy, or None where CONFIG is not allowed."""
        try:
            reply = await self.redis.config_get("maxmemory-policy")
        except RedisError:
            return None
        value = reply.get("maxmemory-policy") if isinstance(reply, dict) else None
        return value.decode() if isinstance(value, bytes) else value

    async def issue(self, records: Sequence[tuple[str, str, str, int, int]], prune_before_us: int) -> None:
        """records: (token id, run id, jwt, record expiry unix s, created µs). All or nothing."""

        async def run() -> None:
            async with self.redis.pipeline(transaction=True) as pipe:
                for token_id, run_id, jwt, expire_at, created_us in records:
                    await self._issue(
                        keys=[self.token_key(token_id), self.run_key(run_id)],
                        args=[jwt, expire_at, created_us, token_id, prune_before_us],
                        client=pipe,
                    )
                await pipe.execute()

        await self._call("issue", run)

    async def submit(
        self,
        token_id: str,
        fingerprint: str,
        expire_at: int,
        answer: dict[str, Any],
        entry: dict[str, str],
        use: str = "once",
        cap: int | None = None,
    ) -> Outcome:
        """Record a submission under the token's use policy; under 'update' the answer gets its
        ``revision``. Raises TokenUsed / TokenRevoked."""
        args: list[Any] = [fingerprint, expire_at, encoding.dumps(answer), use, cap or 0]
        for name, value in entry.items():
            args += (name, value)
        reply = await self._call(
            "submit",
            lambda: self._submit_batched([self.token_key(token_id), self.stream], args),
        )
        status = reply[0].decode() if isinstance(reply[0], bytes) else reply[0]
        if status == "ok":
            uses = int(reply[2])
            return Outcome({**answer, "revision": uses} if use == "update" else answer, False, uses)
        if status == "dup":
            uses, stored = int(reply[2]), json.loads(reply[1])
            return Outcome({**stored, "revision": uses} if use == "update" else stored, True, uses)
        if status == "revoked":
            raise TokenRevoked("this token was revoked")
        raise TokenUsed("this token was already used for a different submission")

    async def lookup(self, token_id: UUID) -> str | None:
        jwt = await self._call("lookup", lambda: self.redis.hget(self.token_key(token_id), "jwt"))
        return jwt.decode() if isinstance(jwt, bytes) else jwt

    async def state(self, token_id: UUID) -> TokenState:
        fields: Any = await self._call(
            "state", lambda: self.redis.hmget(self.token_key(token_id), "rev", "fp", "ans", "n")
        )
        rev, fp, ans, n = fields
        return TokenState(
            uses=_uses(n, fp),
            revoked=rev is not None,
            fingerprint=fp.decode() if fp is not None else None,
            answer=json.loads(ans) if ans is not None else None,
        )

    async def recent(self, count: int) -> list[dict[str, str]]:
        """The stream's newest entries, newest first (the demo page shows them)."""
        rows: Any = await self._call(
            "recent", lambda: self.redis.xrevrange(self.stream, count=count)
        )
        return [{k.decode(): v.decode() for k, v in fields.items()} for _, fields in rows]

    async def revoke(self, token_id: UUID) -> bool:
        return bool(await self._call("revoke", lambda: self._revoke(keys=[self.token_key(token_id)])))

    async def list_run(self, run_id: UUID) -> list[StoredToken]:
        """The run's live tokens, oldest first."""

        async def run() -> list[StoredToken]:
            members = cast(
                list[tuple[bytes, float]],
                await self.redis.zrange(self.run_key(run_id), 0, -1, withscores=True),
            )
            if not members:
                return []
            async with self.redis.pipeline(transaction=False) as pipe:
                for member, _ in members:
                    pipe.hmget(self.token_key(member.decode()), "jwt", "fp", "rev", "n")
                rows: list[list[bytes | None]] = await pipe.execute()
            found: list[StoredToken] = []
            gone: list[bytes] = []
            for (member, score), (jwt, fp, rev, n) in zip(members, rows, strict=True):
                if jwt is None:
                    gone.append(member)
                    continue
                uses = _uses(n, fp)
                found.append(
                    StoredToken(member.decode(), jwt.decode(), int(score), uses > 0, rev is not None, uses)
                )
            if gone:
                await self.redis.zrem(self.run_key(run_id), *gone)
            return found

        return await self._call("list", run)
