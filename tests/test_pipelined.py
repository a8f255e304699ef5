"""app/store/pipelined.py: the batcher's pipeline, against a real Redis, next to redis-py's own."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any

import pytest
import redis.asyncio as aioredis
from conftest import RedisServer
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from app.store.connect import retry_once
from app.store.packing import fast_packing
from app.store.pipelined import pipeline

# Holds Redis for ARGV[1] milliseconds, then answers 1.
BUSY = """local t = redis.call('TIME'); local start = t[1] * 1000000 + t[2]
while true do
  local n = redis.call('TIME'); if n[1] * 1000000 + n[2] - start > tonumber(ARGV[1]) * 1000 then break end
end
return 1"""

# Replies of every shape, and errors of three kinds between them; commands for which redis-py has no
# response callback (``pipeline`` hands replies on as Redis sent them: the batcher's EVALSHA has none).
MIXED: list[tuple[Any, ...]] = [
    ("EVAL", "return redis.call('SET', KEYS[1], '1')", 1, "pl:a"),
    ("ECHO", "héllo"),
    ("EVAL", "return {1, 'two', {3}, false}", 0),
    ("GET", "pl:missing"),
    ("EVAL", "return redis.error_reply('MINE went wrong')", 0),
    ("EVALSHA", "0" * 40, 0),
    ("INCR", "pl:a"),
    ("EVAL", "return redis.call('HSET', KEYS[1], 'f', 'v')", 1, "pl:a"),  # WRONGTYPE
    ("EVAL", "return redis.status_reply('FINE')", 0),
    ("NOSUCHCOMMAND", "x"),
    ("EVAL", "return 2^53", 0),
]


def run(redis_server: RedisServer, scenario: Callable[[aioredis.Redis], Awaitable[Any]], **kwargs: Any) -> Any:
    async def go() -> Any:
        options = {"socket_timeout": 5.0, "max_connections": 8, "retry": retry_once(), **kwargs}
        client = fast_packing(aioredis.Redis.from_url(redis_server.url, **options))
        try:
            return await scenario(client)
        finally:
            await client.aclose()

    return asyncio.run(go())


def shown(replies: list[Any]) -> list[Any]:
    return [(type(r).__name__, str(r)) if isinstance(r, Exception) else r for r in replies]


def in_use(client: aioredis.Redis) -> int:
    return len(client.connection_pool._in_use_connections)


def test_replies_and_errors_come_back_in_order_as_redis_pys_pipeline_gives_them(redis_server: RedisServer) -> None:
    async def scenario(client: aioredis.Redis) -> tuple[list[Any], list[Any], int]:
        ours = await pipeline(client, MIXED)
        await client.delete("pl:a")
        async with client.pipeline(transaction=False) as pipe:
            for command in MIXED:
                pipe.execute_command(*command)
            theirs = await pipe.execute(raise_on_error=False)
        return ours, theirs, in_use(client)

    ours, theirs, busy = run(redis_server, scenario)
    assert shown(ours) == shown(theirs)
    assert ours[1] == "héllo".encode() and ours[3] is None and ours[6] == 2
    kinds = [type(r).__name__ for r in ours if isinstance(r, Exception)]
    assert kinds == ["ResponseError", "NoScriptError", "ResponseError", "ResponseError"]
    assert all(isinstance(r, ResponseError) for r in ours if isinstance(r, Exception))
    assert busy == 0  # the connection went back to the pool


def test_a_redis_that_stops_answering_mid_pipeline_times_out_and_leaves_no_stale_reply(
    redis_server: RedisServer,
) -> None:
    timeout = 0.3

    async def scenario(client: aioredis.Redis) -> tuple[float, BaseException | None, list[Any], int]:
        await pipeline(client, [("PING",)])  # a pooled connection to reuse afterwards
        started = time.monotonic()
        failure: BaseException | None = None
        try:
            await pipeline(client, [("ECHO", "first"), ("EVAL", BUSY, 0, 900), ("ECHO", "late")])
        except Exception as err:  # noqa: BLE001 - which kind is the assertion
            failure = err
        took = time.monotonic() - started
        await asyncio.sleep(1.0)  # Redis is done with the script and has answered "late" by now
        after = await pipeline(client, [("ECHO", "next")])
        return took, failure, after, in_use(client)

    took, failure, after, busy = run(redis_server, scenario, socket_timeout=timeout)
    assert isinstance(failure, RedisTimeoutError), failure
    assert timeout <= took < timeout + 0.5  # one deadline for the pipeline, no retry of a timeout
    assert after == [b"next"]  # not "late": the timed-out connection was dropped
    assert busy == 0


def test_a_connection_killed_between_pipelines_is_replaced_and_the_pipeline_sent_once_more(
    redis_server: RedisServer,
) -> None:
    async def scenario(client: aioredis.Redis) -> tuple[list[Any], list[Any], int]:
        (first_id,) = await pipeline(client, [("CLIENT", "ID")])
        killer = aioredis.Redis.from_url(redis_server.url)
        try:
            assert await killer.execute_command("CLIENT", "KILL", "ID", first_id) == 1
        finally:
            await killer.aclose()
        replies = await pipeline(client, [("INCR", "pl:count"), ("CLIENT", "ID")])
        return [first_id], replies, in_use(client)

    (first_id,), replies, busy = run(redis_server, scenario)
    assert replies[0] == 1  # sent once on the fresh connection: counted once
    assert replies[1] != first_id
    assert busy == 0


@pytest.mark.parametrize("size", [1, 600])
def test_a_full_pool_is_refused_at_once_and_large_pipelines_go_whole(redis_server: RedisServer, size: int) -> None:
    from redis.exceptions import MaxConnectionsError

    async def scenario(client: aioredis.Redis) -> tuple[list[Any], BaseException | None]:
        commands = [("ECHO", str(i)) for i in range(size)]
        held = await client.connection_pool.get_connection()
        try:
            refused: BaseException | None = None
            try:
                await pipeline(client, commands)
            except Exception as err:  # noqa: BLE001 - which kind is the assertion
                refused = err
        finally:
            await client.connection_pool.release(held)
        return await pipeline(client, commands), refused

    replies, refused = run(redis_server, scenario, max_connections=1)
    assert isinstance(refused, MaxConnectionsError)
    assert replies == [str(i).encode() for i in range(size)]


class _ClosingPool(aioredis.ConnectionPool):
    """Hands out its first connection with its transport closed right after the pool's own check
    of it: a node that dies between that check and the write."""

    closed = 0

    async def get_connection(self, *args: Any, **kwargs: Any) -> Any:
        conn = await super().get_connection(*args, **kwargs)  # type: ignore[no-untyped-call]
        if not self.closed:
            self.closed += 1
            conn._writer.transport.close()
            await asyncio.sleep(0)
        return conn


def test_a_connection_closed_after_the_pools_check_is_replaced_under_uvloop(redis_server: RedisServer) -> None:
    """uvloop refuses the write with a RuntimeError ("the handler is closed"), not a RedisError:
    it is a lost connection, so the pipeline goes once more on a fresh one."""
    import uvloop

    async def go() -> tuple[list[Any], int, int]:
        pool = _ClosingPool.from_url(redis_server.url, socket_timeout=5.0, max_connections=4, retry=retry_once())
        client = fast_packing(aioredis.Redis(connection_pool=pool))
        try:
            replies = await pipeline(client, [("INCR", "pl:closed"), ("ECHO", "x")])
            return replies, pool.closed, in_use(client)
        finally:
            await client.aclose()
            await pool.disconnect()  # a pool handed to the client is not closed with it

    replies, closed, busy = uvloop.run(go())
    assert closed == 1
    assert replies == [1, b"x"]  # sent once, on the fresh connection
    assert busy == 0


def test_only_a_closed_transport_under_redis_py_counts_as_a_lost_connection(redis_server: RedisServer) -> None:
    import uvloop
    from redis.exceptions import ConnectionError as RedisConnectionError

    from app.store.failures import as_redis_error

    async def go() -> BaseException:
        client = aioredis.Redis.from_url(redis_server.url, socket_timeout=5.0)
        try:
            conn = await client.connection_pool.get_connection()  # type: ignore[no-untyped-call]
            conn._writer.transport.close()
            await asyncio.sleep(0)
            try:
                await conn.send_packed_command([b"*1\r\n$4\r\nPING\r\n"])
            except BaseException as err:  # noqa: BLE001 - which kind is the assertion
                return err
            raise AssertionError("uvloop wrote on a closed transport")
        finally:
            await client.aclose()

    real = uvloop.run(go())
    assert isinstance(real, RuntimeError) and "the handler is closed" in str(real)
    assert isinstance(as_redis_error(real), RedisConnectionError)
    try:
        raise RuntimeError("unable to perform operation on <ours>; the handler is closed")
    except RuntimeError as ours:  # the same words from this service's own code: a bug, not Redis
        assert as_redis_error(ours) is None
