"""The Redis store: run records (tokens, their use state), and the per-shard feedback streams.

Key layout and token ids: app/store/keyspace.py. What the scripts keep and why: app/store/scripts.py.
A submission is one script call: the use state and the stream entry are written together or not at
all, in the token's shard. The store takes and returns plain values (bytes, ints, strings); what
they mean is the domain's business (app/domain/service.py).
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
import uuid
from collections.abc import Awaitable, Callable, Sequence
from datetime import datetime
from typing import Any, TypeVar, cast

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.exceptions import ClusterDownError, RedisError

from app.store import legacy, scripts
from app.store.batching import Batcher
from app.store.connect import (
    MINIMUM_VERSION,
    Client,
    ClusterMode,
    check_version,
    connect,
    discover_streams,
    display_url,
    max_shards_used,
    retry_once,
)
from app.store.failures import NOT_REDIS_ERRORS, as_redis_error, error_kind, unavailable
from app.store.keyspace import Keyspace, local_id, locate, run_hash, token_id_from
from app.store.packing import fast_packing
from app.store.results import Peek, RunFull, StoredToken, SubmitReply, UseState

log = logging.getLogger("feedback_tokens.store")
T = TypeVar("T")

class Store:
    """Created before the event loop runs (the app factory), connected by ``start`` in the app's
    lifespan: whether ``url`` names a cluster is only known once the server answers."""

    # The oldest Redis ``start`` accepts (the scripts' needs; tests raise it to see a refusal).
    minimum_version: tuple[int, ...] = MINIMUM_VERSION

    def __init__(
        self,
        url: str,
        keyspace: Keyspace,
        *,
        cluster: ClusterMode = "auto",
        timeout: float = 2.0,
        pool_size: int = 64,
        retry_after: int = 5,
        grace: int = 90,
        run_cap: int = 1000,
        observe: Callable[[str, float], None] | None = None,
        on_error: Callable[[str], None] | None = None,
        on_batch: Callable[[int], None] | None = None,
    ) -> None:
        """``grace``: seconds past ``exp`` during which some node may still accept a token
        (leeway + the largest clock skew promised); records live at least that long.
        ``observe(op, seconds)``, ``on_error(kind)``, ``on_batch(size)``: hooks for metrics (each
        Redis operation's time, each failure's ``failures.error_kind``, each coalesced pipeline's size)."""
        self.url = url
        self.keyspace = keyspace
        self.cluster_mode: ClusterMode = cluster
        self.timeout = timeout
        self.pool_size = pool_size
        self.retry_after = retry_after
        self.grace = grace
        self.run_cap = run_cap
        self.observe = observe
        self.on_error = on_error
        self.on_batch = on_batch
        self._next_shard = itertools.count(int.from_bytes(uuid.uuid4().bytes[:2], "big"))
        self._groups: list[list[int]] = []
        self._groups_at = 0.0
        self.max_shards = keyspace.shards
        self.version: tuple[int, ...] | None = None
        self._node_clients: dict[str, aioredis.Redis] = {}
        self._attach(aioredis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout))

    def _attach(self, client: Client) -> None:
        self.redis: Client = client
        self.cluster = isinstance(client, RedisCluster)
        self._groups = []
        self._submit = client.register_script(scripts.SUBMIT)
        self._issue = client.register_script(scripts.ISSUE)
        self._list = client.register_script(scripts.LIST)
        self._revoke = client.register_script(scripts.REVOKE)
        self._peek = client.register_script(scripts.PEEK)
        self._submit_batched = Batcher(
            client, self._submit, self._node_client if self.cluster else None, on_batch=self.on_batch
        )

    def _node_client(self, key: str) -> aioredis.Redis:
        """A plain client for the primary that owns ``key`` (cluster: for pipelined EVALSHA)."""
        assert isinstance(self.redis, RedisCluster)
        node = self.redis.get_node_from_key(key)
        if node is None:
            raise ClusterDownError(f"no node serves the slot of {key}")
        client = self._node_clients.get(node.name)
        if client is None:
            client = self._node_clients[node.name] = fast_packing(aioredis.Redis(
                host=node.host,
                port=int(node.port),
                socket_timeout=self.timeout,
                socket_connect_timeout=self.timeout,
                max_connections=self.pool_size,
                retry=retry_once(),
                **{k: v for k, v in node.connection_kwargs.items() if k in ("username", "password", "ssl")},
            ))
        return client

    async def start(self) -> None:
        """Connect (a cluster or one server, per ``cluster``), check the server's version and
        learn how many shards this prefix has used. Raises RedisVersionError for a server that is
        too old and RedisError when it does not answer (``ensure_started`` tries again later)."""
        previous = self.redis
        self._attach(await connect(self.url, self.cluster_mode, self.timeout, self.pool_size))
        await previous.aclose()
        self.version = await check_version(self.redis, self.minimum_version)
        # Loaded now (on every primary of a cluster), so the first submissions don't each pay a
        # NOSCRIPT round trip; a node that loses its cache later is handled by the batcher.
        for script in (self._submit, self._issue, self._list, self._revoke):
            await self.redis.script_load(script.script)
        self.max_shards = await max_shards_used(self.redis, self.keyspace)
        kind = "Redis Cluster" if self.cluster else "Redis"
        log.info("%s at %s answered (version %s)", kind, display_url(self.url), ".".join(map(str, self.version)))

    async def ensure_started(self) -> None:
        """``start`` again if it has not succeeded yet (Redis was down when the node started)."""
        if self.version is None:
            await self.start()

    async def _call(self, what: str, fn: Callable[[], Awaitable[T]]) -> T:
        started = time.perf_counter()
        try:
            try:
                return await fn()
            except NOT_REDIS_ERRORS as err:
                if (lost := as_redis_error(err)) is None:
                    raise
                raise lost from err
        except RedisError as err:
            if self.on_error is not None:
                self.on_error(error_kind(err))
            log.warning("redis %s failed: %s: %s", what, type(err).__name__, err)
            raise unavailable(what, err, self.retry_after) from err
        finally:
            if self.observe is not None:
                self.observe(what, time.perf_counter() - started)

    async def close(self) -> None:
        await self._submit_batched.drain()
        for client in self._node_clients.values():
            await client.aclose()
        await self.redis.aclose()

    async def ping(self) -> bool:
        async def run() -> bool:
            if isinstance(self.redis, RedisCluster):
                replies = await self.redis.ping(target_nodes=RedisCluster.PRIMARIES)
                return bool(replies)
            return bool(await self.redis.ping())

        return await self._call("ping", run)

    async def eviction_policy(self) -> str | None:
        """The server's maxmemory-policy (the first primary's on a cluster), or None where CONFIG
        is not allowed."""
        try:
            if isinstance(self.redis, RedisCluster):
                reply = await self.redis.config_get("maxmemory-policy", target_nodes=RedisCluster.PRIMARIES)
                values = reply.values() if isinstance(reply, dict) else []
                policies = {v.get("maxmemory-policy") if isinstance(v, dict) else None for v in values} or {None}
                policy = next((p for p in policies if p not in (None, "noeviction", b"noeviction")), None)
                value: Any = policy if policy is not None else next(iter(policies))
            else:
                value = (await self.redis.config_get("maxmemory-policy")).get("maxmemory-policy")
        except RedisError:
            return None
        return value.decode() if isinstance(value, bytes) else value

    # -- issuance ---------------------------------------------------------------------------------

    def next_shard(self) -> int:
        """Where the next request's tokens go: round-robin, per process, so that load spreads
        evenly whatever the runs look like (a run hash would put a big run in one place). On a
        cluster the turn goes round the primaries first, then round each primary's shards, so
        primaries get equal shares even when the shards don't divide evenly among them (16 over
        3 primaries is 6, 5 and 5)."""
        turn = next(self._next_shard)
        groups = self._shards_by_primary()
        group = groups[turn % len(groups)]
        return group[(turn // len(groups)) % len(group)]

    def _shards_by_primary(self) -> list[list[int]]:
        now = time.monotonic()
        if self._groups and now - self._groups_at < 5:
            return self._groups
        shards = list(range(self.keyspace.shards))
        groups: dict[str, list[int]] = {}
        if isinstance(self.redis, RedisCluster):
            for shard in shards:
                node = self.redis.get_node_from_key(self.keyspace.stream(shard))
                groups.setdefault(node.name if node is not None else "", []).append(shard)
        self._groups = sorted(groups.values()) if groups else [shards]
        self._groups_at = now
        return self._groups

    async def issue(self, shard: int, tokens: Sequence[tuple[uuid.UUID, bytes, bytes]]) -> None:
        """tokens: (token id, record, signature), all issued into ``shard``. All or nothing;
        RunFull if a run record would pass the cap."""
        keys: list[str] = []
        index: dict[str, int] = {}
        args: list[Any] = [self.run_cap, self.grace]
        for token_id, record, signature in tokens:
            where = locate(token_id)
            if where.shard != shard or where.run_hash is None:
                raise ValueError("token id not issued into this shard")
            key = self.keyspace.run_record(shard, where.run_hash)
            if key not in index:
                keys.append(key)
                index[key] = len(keys)
            args += (index[key], local_id(token_id), record, signature)
        reply = await self._call("issue", lambda: self._issue(keys=keys, args=args))
        if _text(reply[0]) == "full":
            raise RunFull(keys[int(reply[1]) - 1], int(reply[2]))

    # -- submission -------------------------------------------------------------------------------

    def _place(self, token_id: uuid.UUID, run_id: uuid.UUID) -> tuple[str, str, str | None]:
        """(run record, stream, record of the layout before sharding or None) of a token."""
        where = locate(token_id)
        if where.shard is not None and where.run_hash is not None:
            return self.keyspace.run_record(where.shard, where.run_hash), self.keyspace.stream(where.shard), None
        return (
            self.keyspace.run_record(None, run_hash(run_id)),
            self.keyspace.legacy_stream,
            self.keyspace.legacy_record(token_id),
        )

    async def submit(
        self,
        token_id: uuid.UUID,
        run_id: uuid.UUID,
        *,
        attempt: str,
        fingerprint: bytes,
        use: str,
        cap: int | None,
        deadline: int,
        created_ms: int,
        idempotency: str | None,
        latest: bytes,
        entry: Sequence[tuple[str, str]],
    ) -> SubmitReply:
        record_key, stream, old_record = self._place(token_id, run_id)
        args: list[Any] = [
            local_id(token_id),
            attempt,
            fingerprint,
            use,
            cap or 0,
            deadline,
            created_ms,
            idempotency or "",
            latest,
        ]
        for name, value in entry:
            args += (name, value)
        keys = [record_key, stream] if old_record is None else [record_key, stream, old_record]
        reply = await self._call("submit", lambda: self._submit_batched(keys, args))
        status = _text(reply[0])
        if status == "ok":
            return SubmitReply(status, int(reply[1]), int(reply[2]))
        if status == "dup":
            created = int(reply[2])
            if len(reply) > 4 and reply[4]:  # recorded before sharding: only its answer's ISO time
                created = int(datetime.fromisoformat(_text(reply[4])).timestamp() * 1000)
            return SubmitReply(status, int(reply[1]), created, _text(reply[3]))
        return SubmitReply(status)

    async def lookup(self, token_id: uuid.UUID) -> StoredToken | None:
        """The token's record and signature by id (or, for an id issued before sharding, its
        JWT); None when unknown or gone."""
        key = self.keyspace.record_of(token_id)
        if key is None:
            return await self._call("lookup", lambda: legacy.lookup(self.redis, self.keyspace, token_id))
        L = local_id(token_id)
        record, signature = cast(
            list[bytes | None], await self._call("lookup", lambda: self.redis.hmget(key, [L, f"{L}:s"]))
        )
        if record is None or signature is None:
            return None
        return StoredToken(token_id, record, signature)

    async def peek(
        self, token_id: uuid.UUID, run_id: uuid.UUID, *, use: str, cap: int | None, fingerprint: bytes = b""
    ) -> Peek:
        """What submitting ``fingerprint`` (b"": any new submission) would do now; writes nothing."""
        key, _, old_record = self._place(token_id, run_id)
        keys = [key] if old_record is None else [key, old_record]
        args: list[Any] = [local_id(token_id), fingerprint, use, cap or 0]
        verdict, uses, created, attempt, legacy_created = await self._call(
            "state", lambda: self._peek(keys=keys, args=args)
        )
        created = int(created)
        if legacy_created:  # recorded before sharding: only its answer's ISO time
            created = int(datetime.fromisoformat(_text(legacy_created)).timestamp() * 1000)
        return Peek(_text(verdict), int(uses), created, _text(attempt) if attempt else None)

    async def latest(self, token_id: uuid.UUID, run_id: uuid.UUID) -> bytes | None:
        """An 'update' token's latest submitted values (JSON), if any."""
        key, _, _ = self._place(token_id, run_id)
        value = await self._call("state", lambda: self.redis.hget(key, f"{local_id(token_id)}:v"))
        return value if isinstance(value, bytes) else None

    async def revoke(self, token_id: uuid.UUID) -> bool:
        key = self.keyspace.record_of(token_id)
        if key is None:  # issued before sharding: its old record carries the flag
            return await self._call("revoke", lambda: legacy.revoke(self.redis, self.keyspace, token_id))
        return bool(await self._call("revoke", lambda: self._revoke(keys=[key], args=[local_id(token_id)])))

    # -- listing ----------------------------------------------------------------------------------

    async def list_run(self, run_id: uuid.UUID, window: int) -> tuple[int, list[tuple[int, StoredToken]]]:
        """The run's live tokens: how many there are, and the oldest ``window`` of them with
        their creation time (µs), oldest first. A run's tokens may sit in several shards (each
        request goes to one); each shard's script pages its own part, and the parts are merged
        by creation time here (with what the layout before sharding still holds)."""
        rh = run_hash(run_id)
        keys = [self.keyspace.run_record(shard, rh) for shard in range(self.max_shards)]

        async def run() -> tuple[list[Any], list[tuple[int, StoredToken]]]:
            parts = await asyncio.gather(
                *(self._list(keys=[key], args=[run_id.bytes, self.grace, window]) for key in keys),
                legacy.list_run(self.redis, self.keyspace, run_id, window),
            )
            return list(parts[:-1]), parts[-1]

        replies, before_sharding = await self._call("list", run)
        total = len(before_sharding)
        found = list(before_sharding)
        for shard, reply in enumerate(replies):
            total += int(reply[0])
            rows = reply[1:]
            for i in range(0, len(rows), 4):
                local, record, signature, state = rows[i : i + 4]
                created = scripts.RECORD_HEAD.unpack_from(record)[1]
                token_id = token_id_from(run_id, shard, _text(local))
                found.append((created, StoredToken(token_id, record, signature, UseState.parse(state or None))))
        found.sort(key=lambda item: item[0])
        return total, found[:window]

    async def recent(self, count: int) -> list[dict[str, str]]:
        """The newest entries of every shard's stream, newest first (the demo page shows them)."""

        async def run() -> list[Any]:
            streams = self.keyspace.streams(self.max_shards)
            return list(await asyncio.gather(*(self.redis.xrevrange(s, count=count) for s in streams)))

        rows = [row for part in await self._call("recent", run) for row in part]
        rows.sort(key=lambda row: tuple(int(x) for x in _text(row[0]).split("-")), reverse=True)
        return [{k.decode(): v.decode() for k, v in fields.items()} for _, fields in rows[:count]]

    async def streams(self) -> list[str]:
        return await self._call("ping", lambda: discover_streams(self.redis, self.keyspace))


def _text(value: Any) -> str:
    return value.decode() if isinstance(value, bytes) else str(value)
