"""Calls of one script from concurrent requests, sent together: one pipeline per Redis node.

A call queues its keys and arguments and waits; the first call of a loop iteration schedules a
flush for when the loop next comes round, which sends everything queued by then: on one Redis as
one non-transactional pipeline, on a cluster as one pipeline per primary (redis-py's cluster
pipeline refuses EVALSHA, so the calls are grouped by the node that owns their slot here). Each
EVALSHA is still atomic on its own and each caller gets its own reply or error.

While a pipeline to a node is under way, calls for that node wait for it and then go together:
under load that doubles the calls per pipeline, and each pipeline costs the service and Redis a
round of system calls. The wait is bounded twice: calls go in a pipeline of their own once
``HOLD`` (20 ms) has passed since the last one was sent, or at once when they fill a pipeline
(``max_batch``), so a slow or hung node delays nobody by more than that, and a queue never grows
past one pipeline before it goes (to the pool's limit, whose exhaustion answers at once).

What goes wrong, and what happens then:

- NOSCRIPT (a restarted or promoted node has no script cache): nothing ran; the script is loaded
  on that node and those calls sent again.
- MOVED / ASK / TRYAGAIN (a slot moved, is moving, or a failover is under way): nothing ran; each
  such call is sent again through the cluster client, which follows the redirection and updates
  its slot map, so the next flush goes to the right node.
- A connection error (a dropped connection, a dead node): the script may or may not have run.
  The client sends the pipeline once more on a fresh connection; on a cluster, if the node stays
  unreachable, the topology is learned again and each call goes through the cluster client. That
  is safe only because every call carries an attempt id that the script remembers: a call that
  already ran answers what it answered the first time (app/store/scripts.py).
- A connection closed under the call that redis-py reports as a transport's AttributeError or
  TypeError (redis-py issue 4287; seen here when a failover replaces a node's connections): it
  is taken for the connection error it is, above.
- A timeout: the node is slow or hung; no retry (it would double the wait), the callers get
  the error and the service answers 503.
"""

from __future__ import annotations

import asyncio
import functools
import logging
import time
from collections.abc import Callable
from typing import Any

import redis.asyncio as aioredis
from redis.asyncio.cluster import RedisCluster
from redis.commands.core import AsyncScript
from redis.exceptions import (
    AskError,
    ClusterDownError,
    ConnectionError,
    MaxConnectionsError,
    MovedError,
    NoScriptError,
    RedisError,
    TryAgainError,
)

from app.store.failures import NOT_REDIS_ERRORS, as_redis_error
from app.store.pipelined import pipeline

log = logging.getLogger("feedback_tokens.store")

Call = tuple[list[Any], list[Any], "asyncio.Future[Any]"]
_REDIRECTS = (MovedError, AskError, TryAgainError)
# How long calls may wait for a node's pipeline under way before they go in one of their own: a
# few round trips of a healthy Redis, and nothing next to the socket timeout of a hung one.
HOLD = 0.02


class Batcher:
    def __init__(
        self,
        client: aioredis.Redis | RedisCluster,
        script: AsyncScript,
        node_client: Callable[[str], aioredis.Redis] | None = None,
        max_batch: int = 512,
        on_batch: Callable[[int], None] | None = None,
        hold: float = HOLD,
    ) -> None:
        """``node_client(key)``: on a cluster, a plain client for the primary that owns ``key``.
        ``hold``: how long calls may wait for a node's pipeline under way (0: never wait)."""
        self.client = client
        self.script = script
        self.node_client = node_client
        self.max_batch = max_batch
        self.on_batch = on_batch
        self.hold = hold
        self._queue: list[Call] = []
        self._scheduled = False
        self._flushes: set[asyncio.Task[None]] = set()  # strong references until done
        # By node client: pipelines under way, and when the newest of them was sent.
        self._out: dict[int, tuple[int, float]] = {}
        self._timer: asyncio.TimerHandle | None = None

    async def __call__(self, keys: list[Any], args: list[Any]) -> Any:
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Any] = loop.create_future()
        self._queue.append((keys, args, future))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._kick)
        return await future

    async def drain(self) -> None:
        """Wait for every flush under way (shutdown: no caller is left without an answer)."""
        while self._queue or self._flushes:
            if self._queue and not self._scheduled:
                self._kick()
            await asyncio.gather(*self._flushes, return_exceptions=True)
            await asyncio.sleep(0)

    def _kick(self) -> None:
        self._scheduled = False
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        queue, self._queue = self._queue, []
        groups: dict[int, tuple[aioredis.Redis, list[Call]]] = {}
        for call in queue:
            try:
                node = self._client_for(call[0][0])
            except Exception as err:  # no node for its slot (mid-failover): this call fails alone
                if not call[2].done():
                    call[2].set_exception(as_redis_error(err) or err)
                continue
            groups.setdefault(id(node), (node, []))[1].append(call)
        now = time.monotonic()
        wait = 0.0
        for key, (node, calls) in groups.items():
            out, sent = self._out.get(key, (0, 0.0))
            held = self.hold - (now - sent)
            if out and held > 0 and len(calls) < self.max_batch:
                # A pipeline to this node is under way and was sent a moment ago: these calls
                # wait for it (or for the hold to end) and then go together, in one pipeline
                # instead of several small ones (each costs the service and Redis a round of
                # system calls). At most ``hold`` seconds and at most one pipeline's worth.
                self._queue.extend(calls)
                wait = held if not wait else min(wait, held)
                continue
            for start in range(0, len(calls), self.max_batch):
                out += 1
                task = asyncio.ensure_future(self._flush(node, calls[start : start + self.max_batch]))
                self._flushes.add(task)
                task.add_done_callback(self._flushes.discard)
                task.add_done_callback(functools.partial(self._returned, key))
            self._out[key] = (out, now)
        if wait:
            self._timer = asyncio.get_running_loop().call_later(wait, self._kick)

    def _returned(self, key: int, _: object = None) -> None:
        """A node's pipeline came back: the calls it held go now."""
        out, sent = self._out.get(key, (1, 0.0))
        if out > 1:
            self._out[key] = (out - 1, sent)
        else:
            self._out.pop(key, None)
        if self._queue and not self._scheduled:
            self._scheduled = True
            asyncio.get_running_loop().call_soon(self._kick)

    def _client_for(self, key: Any) -> aioredis.Redis:
        if self.node_client is None:
            assert isinstance(self.client, aioredis.Redis)
            return self.client
        return self.node_client(key)

    async def _send(self, node: aioredis.Redis, batch: list[Call]) -> list[Any]:
        try:
            sha = self.script.sha
            return await pipeline(node, [("EVALSHA", sha, len(keys), *keys, *args) for keys, args, _ in batch])
        except NOT_REDIS_ERRORS as err:
            if (lost := as_redis_error(err)) is None:
                raise
            raise lost from err

    async def _send_retrying(self, node: aioredis.Redis, batch: list[Call]) -> list[Any]:
        """The node's client already sent the pipeline once more on a broken connection; on a
        cluster, a node that stays unreachable may have been replaced: learn the topology again
        and send each call through the cluster client, which goes where the slot is now."""
        try:
            return await self._send(node, batch)
        except MaxConnectionsError:
            raise  # the pool is exhausted: answer at once, don't queue more work
        except ConnectionError as err:
            if not isinstance(self.client, RedisCluster):
                raise
            # May have run: safe to send again only because each call carries its attempt id.
            log.warning("redis node lost during a batch of %d (%s); asking the cluster where to go", len(batch), err)
            await self._refresh_topology()
            return await asyncio.gather(*(self._single(c) for c in batch), return_exceptions=True)

    async def _refresh_topology(self) -> None:
        assert isinstance(self.client, RedisCluster)
        try:
            await self.client.nodes_manager.initialize()
        except RedisError as err:
            log.warning("redis cluster topology refresh failed: %s", err)

    async def _single(self, call: Call) -> Any:
        """One call through the cluster client, which follows MOVED / ASK and retries TRYAGAIN."""
        keys, args, _ = call
        try:
            try:
                return await self.client.evalsha(self.script.sha, len(keys), *keys, *args)
            except NoScriptError:
                await self.client.script_load(self.script.script)
                return await self.client.evalsha(self.script.sha, len(keys), *keys, *args)
        except NOT_REDIS_ERRORS as err:
            if (lost := as_redis_error(err)) is None:
                raise
            raise lost from err

    async def _flush(self, node: aioredis.Redis, batch: list[Call]) -> None:
        started = time.perf_counter()
        try:
            replies = await self._send_retrying(node, batch)
            missing = [i for i, reply in enumerate(replies) if isinstance(reply, NoScriptError)]
            if missing:
                # This node lost its script cache (a restart, SCRIPT FLUSH, a promoted replica).
                await node.script_load(self.script.script)
                retried = await self._send(node, [batch[i] for i in missing])
                for i, reply in zip(missing, retried, strict=True):
                    replies[i] = reply
            moved = [i for i, reply in enumerate(replies) if isinstance(reply, (*_REDIRECTS, ClusterDownError))]
            if moved and isinstance(self.client, RedisCluster):
                again = await asyncio.gather(*(self._single(batch[i]) for i in moved), return_exceptions=True)
                for i, reply in zip(moved, again, strict=True):
                    replies[i] = reply
        except BaseException as err:  # noqa: B036 - every waiter must hear of it, then re-raise
            for _, _, future in batch:
                if not future.done():
                    future.set_exception(err if isinstance(err, Exception) else RedisError(repr(err)))
            if not isinstance(err, Exception):
                raise
            return
        finally:
            if self.on_batch is not None:
                self.on_batch(len(batch))
            log.debug("batch of %d in %.1f ms", len(batch), (time.perf_counter() - started) * 1000)
        for (_, _, future), reply in zip(batch, replies, strict=True):
            if future.done():  # its request went away (cancelled); the reply has no reader
                continue
            if isinstance(reply, BaseException):
                future.set_exception(reply if isinstance(reply, Exception) else RedisError(repr(reply)))
            else:
                future.set_result(reply)
