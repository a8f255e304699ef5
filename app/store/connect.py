"""Connecting to Redis: one server or a Redis Cluster, found from one URL.

``REDIS_URL`` may name a single Redis or any node of a cluster. With ``FEEDBACK_REDIS_CLUSTER``
at ``auto`` (the default) the first connection asks the server (``INFO cluster``) and, if it
runs in cluster mode, the client becomes redis-py's ``RedisCluster``, which learns the other
nodes and the slot map from it. ``yes`` / ``no`` skip the question.

Both kinds of client have a bounded pool: when every connection is busy a call fails at once
(``ConnectionError: Too many connections``), which the store answers with 503, instead of
queueing without end behind a slow Redis.
"""

from __future__ import annotations

import logging
import re
from typing import Any, Literal
from urllib.parse import parse_qsl, urlsplit

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.asyncio.retry import Retry
from redis.backoff import NoBackoff
from redis.exceptions import ClusterDownError, RedisError
from redis.exceptions import ConnectionError as RedisConnectionError

from app.store.keyspace import MAX_SHARDS, Keyspace
from app.store.packing import fast_packing

log = logging.getLogger("feedback_tokens.store")

Client = aioredis.Redis | RedisCluster
ClusterMode = Literal["auto", "yes", "no"]
# Below this the scripts don't run: EXPIRETIME (7.0) and Lua's redis.setresp / TIME in scripts.
MINIMUM_VERSION = (7, 0, 0)


class RedisVersionError(RuntimeError):
    """The server is older than the scripts need."""


async def is_cluster(url: str, timeout: float) -> bool:
    probe = aioredis.Redis.from_url(url, socket_timeout=timeout, socket_connect_timeout=timeout)
    try:
        info = await probe.info("cluster")
    finally:
        await probe.aclose()
    return bool(info.get("cluster_enabled"))


def retry_once(*errors: type[RedisError]) -> Retry:
    """One immediate retry on a broken connection (a pooled connection that died with a Redis
    restart or a failover), never on a timeout (a slow Redis would hold a request twice as long).
    Safe because every call the store makes may run twice: reads, idempotent scripts, and the
    submit script, which recognises a second run of the same attempt (app/store/scripts.py)."""
    return Retry(NoBackoff(), 1, supported_errors=(RedisConnectionError, *errors))


def _common(timeout: float) -> dict[str, Any]:
    return {"socket_timeout": timeout, "socket_connect_timeout": timeout}


async def connect(url: str, mode: ClusterMode = "auto", timeout: float = 2.0, pool_size: int = 64) -> Client:
    """A client for ``url``. ``auto`` asks the server whether it is a cluster node; if the server
    can't be reached, a single-server client is returned (and the question asked again by
    ``reconnect_if_cluster`` once it answers)."""
    cluster = mode == "yes"
    if mode == "auto":
        try:
            cluster = await is_cluster(url, timeout)
        except RedisError as err:
            log.warning("Redis at %s did not answer (%s); assuming a single server for now", url, err)
    if cluster:
        return RedisCluster.from_url(
            url, max_connections=pool_size, retry=retry_once(ClusterDownError), **_common(timeout)
        )
    return fast_packing(aioredis.Redis.from_url(
        url, max_connections=pool_size, health_check_interval=30, retry=retry_once(), **_common(timeout)
    ))


def display_url(url: str) -> str:
    """A Redis URL as logs may show it: any password replaced by stars."""
    parts = urlsplit(url)
    netloc = parts.netloc
    if parts.password is not None:
        netloc = f"{parts.username or ''}:***@{netloc.rsplit('@', 1)[1]}"
    query = "&".join(
        f"{name}=***" if name.lower() == "password" else f"{name}={value}"
        for name, value in parse_qsl(parts.query, keep_blank_values=True)
    )
    return f"{parts.scheme}://{netloc}{parts.path}" + (f"?{query}" if query else "")


def version_of(info: dict[str, object]) -> tuple[int, ...]:
    """(major, minor, patch) from ``INFO server``: "7.0.15" -> (7, 0, 15), "7.2.0-rc1" -> (7, 2, 0),
    "7.0" -> (7, 0, 0); (0, 0, 0) when it can't be read, which every minimum refuses."""
    parts: list[int] = []
    for part in str(info.get("redis_version", "")).split(".")[:3]:
        digits = re.match(r"\d+", part)
        if digits is None:
            break
        parts.append(int(digits.group()))
    return tuple(parts + [0] * (3 - len(parts)))


async def check_version(client: Client, minimum: tuple[int, ...] = MINIMUM_VERSION) -> tuple[int, ...]:
    """The server's version; RedisVersionError if it is below ``minimum``."""
    if isinstance(client, RedisCluster):
        infos = await client.info("server", target_nodes=RedisCluster.PRIMARIES)
        versions = [version_of(info) for info in infos.values()] if isinstance(infos, dict) else []
        version = min(versions) if versions else (0,)
    else:
        version = version_of(await client.info("server"))
    if version < minimum:
        need = ".".join(map(str, minimum))
        have = ".".join(map(str, version))
        raise RedisVersionError(f"Redis {have} is too old: feedback-tokens needs Redis {need} or newer")
    return version


async def max_shards_used(client: Client, keyspace: Keyspace) -> int:
    """The largest shard count any node has used with this prefix (kept in the meta hash), and
    record ours. Shards beyond the current setting may still hold live tokens and entries."""
    try:
        raw = await client.hget(keyspace.meta, "shards")
        seen = int(raw) if raw else 0
        if keyspace.shards > seen:
            await client.hset(keyspace.meta, "shards", keyspace.shards)
        return max(seen, keyspace.shards)
    except (RedisError, ValueError):
        return keyspace.shards


async def discover_streams(client: Client, keyspace: Keyspace) -> list[str]:
    """Every feedback stream a consumer must read: the configured shards', those of a larger
    shard count used before, and the legacy single stream if it still exists."""
    upto = min(await max_shards_used(client, keyspace), MAX_SHARDS)
    streams = keyspace.streams(upto)
    if await client.exists(keyspace.legacy_stream):
        streams.append(keyspace.legacy_stream)
    return streams
