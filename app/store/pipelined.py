"""A pipeline of commands on one pooled connection, with less of redis-py around it.

The batcher sends every coalesced submission as one pipeline per Redis node. redis-py's
``Pipeline`` costs about as much of the service's CPU per command as the rest of the Redis step:
a command stack, per-command option handling, an asyncio timer per reply, observability hooks
and the bookkeeping of transactions and WATCH, none of which a non-transactional batch of
EVALSHA uses (``make bench``; the in-process comparison is in CHANGELOG.md). ``pipeline`` keeps
what matters of it and nothing else:

- the commands go in one write, encoded by the connection (hiredis: app/store/packing.py);
- the replies are read in order, as Redis sent them (no response callbacks: EVALSHA has none); a
  reply that is an error (NOSCRIPT, MOVED, a script's error) takes its place in the list, as with
  ``execute(raise_on_error=False)``;
- the connection comes from the client's pool and goes back to it; a full pool raises
  ``MaxConnectionsError`` at once, as before;
- a broken connection is retried as the client's ``Retry`` says (once, on a fresh connection:
  app/store/connect.py ``retry_once``), the connection disconnected first, as redis-py does;
  that includes a connection that closed after the pool checked it, which uvloop reports as a
  RuntimeError (app/store/failures.py);
- the replies are read under one deadline, the client's ``socket_timeout``, for the whole
  pipeline instead of one per reply. A Redis that stops answering mid-pipeline fails it with
  redis-py's ``TimeoutError`` after that long, and the connection is dropped (its unread replies
  would otherwise answer the next caller).
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import Sequence
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.connection import AbstractConnection
from redis.exceptions import ResponseError
from redis.exceptions import TimeoutError as RedisTimeoutError

from app.store.failures import as_redis_error


async def pipeline(client: aioredis.Redis, commands: Sequence[tuple[Any, ...]]) -> list[Any]:
    """Send ``commands`` together on one of ``client``'s connections; each one's reply (or the
    ``ResponseError`` it got), in order."""
    pool = client.connection_pool
    conn: AbstractConnection = await pool.get_connection()  # type: ignore[no-untyped-call]
    try:
        packed = conn.pack_commands(commands)
        count = len(commands)

        async def disconnect(error: Exception) -> None:
            await conn.disconnect()

        replies: list[Any] = await conn.retry.call_with_retry(lambda: _exchange(conn, packed, count), disconnect)
        return replies
    finally:
        await pool.release(conn)


async def _exchange(conn: AbstractConnection, packed: list[bytes], count: int) -> list[Any]:
    try:
        await conn.send_packed_command(packed)
    except RuntimeError as err:  # uvloop: the connection closed after the pool checked it
        if (lost := as_redis_error(err)) is None:
            raise
        raise lost from err  # a ConnectionError: sent again once, on a fresh connection
    replies: list[Any] = []
    try:
        async with asyncio.timeout(conn.socket_timeout):
            for _ in range(count):
                try:
                    # math.inf: no timer of its own (the deadline above covers it).
                    replies.append(await conn.read_response(timeout=math.inf))
                except ResponseError as err:
                    replies.append(err)
    except TimeoutError:  # asyncio's deadline; read_response already dropped the connection
        await conn.disconnect(nowait=True)
        raise RedisTimeoutError(f"Timeout reading from {_where(conn)}") from None
    return replies


def _where(conn: AbstractConnection) -> str:
    path = getattr(conn, "path", None)  # a unix socket
    return str(path) if path else f"{getattr(conn, 'host', '?')}:{getattr(conn, 'port', '?')}"
