"""The store's coalescing of concurrent submit calls (app/store/store.py ``Coalescer``): one pipeline,
each call still its own atomic script run with its own answer or error."""

from __future__ import annotations

import asyncio
import uuid
from typing import Any

import pytest
from conftest import RedisServer

from app.errors import StoreUnavailable, TokenUsed
from app.store.store import Outcome, Store

FAR = 4_000_000_000


def entry(token_id: str) -> dict[str, str]:
    return {"id": token_id, "token_id": token_id, "score": "1"}


async def submit(store: Store, token_id: str, fp: str = "fp") -> Outcome:
    return await store.submit(token_id, fp, FAR, {"score": 1}, entry(token_id))


def run(redis_server: RedisServer, scenario: Any) -> Any:
    async def go() -> Any:
        store = Store.from_url(redis_server.url, "fbt", timeout=5)
        try:
            return await scenario(store)
        finally:
            await store.close()

    return asyncio.run(go())


def test_concurrent_submissions_share_a_pipeline_and_each_gets_its_answer(redis_server: RedisServer) -> None:
    ids = [str(uuid.uuid4()) for _ in range(40)]
    sizes: list[int] = []

    async def scenario(store: Store) -> list[Any]:
        send = store._submit_batched._send

        async def counting_send(batch: list[Any]) -> list[Any]:
            sizes.append(len(batch))
            return await send(batch)

        store._submit_batched._send = counting_send  # type: ignore[method-assign]
        # Every token twice with the same fingerprint and once with another, all at once.
        calls = [submit(store, t) for t in ids] + [submit(store, t) for t in ids]
        calls += [submit(store, t, "other") for t in ids]
        return await asyncio.gather(*calls, return_exceptions=True)

    results = run(redis_server, scenario)
    assert max(sizes) > 1  # (a fresh Redis answers NOSCRIPT first: the batch is sent again)
    firsts, seconds, others = results[:40], results[40:80], results[80:]
    assert all(isinstance(r, Outcome) and not r.duplicate for r in firsts)
    assert all(isinstance(r, Outcome) and r.duplicate for r in seconds)
    assert all(isinstance(r, TokenUsed) for r in others)
    assert redis_server.client().xlen("{fbt}:feedback") == 40


def test_a_failing_call_fails_alone(redis_server: RedisServer) -> None:
    good, bad = str(uuid.uuid4()), str(uuid.uuid4())
    client = redis_server.client()
    client.set(f"{{fbt}}:t:{bad}", "not a hash")  # the script's HMGET on it fails: WRONGTYPE

    async def scenario(store: Store) -> list[Any]:
        return await asyncio.gather(submit(store, good), submit(store, bad), return_exceptions=True)

    ok, failed = run(redis_server, scenario)
    assert isinstance(ok, Outcome) and not ok.duplicate
    assert isinstance(failed, StoreUnavailable) and failed.status == 503
    assert client.xlen("{fbt}:feedback") == 1


def test_a_lost_script_cache_is_reloaded_and_nothing_is_lost(redis_server: RedisServer) -> None:
    ids = [str(uuid.uuid4()) for _ in range(5)]

    async def scenario(store: Store) -> list[Any]:
        await submit(store, str(uuid.uuid4()))
        await store.redis.script_flush()  # as after a Redis restart
        return await asyncio.gather(*(submit(store, t) for t in ids))

    results = run(redis_server, scenario)
    assert all(not r.duplicate for r in results)
    assert redis_server.client().xlen("{fbt}:feedback") == 6


@pytest.mark.parametrize("n", [1, 600])
def test_batches_above_the_cap_are_split(redis_server: RedisServer, n: int) -> None:
    async def scenario(store: Store) -> list[Any]:
        return await asyncio.gather(*(submit(store, str(uuid.uuid4())) for _ in range(n)))

    assert len(run(redis_server, scenario)) == n
    assert redis_server.client().xlen("{fbt}:feedback") == n


@pytest.mark.parametrize(
    "value",
    [{"score": 0.5, "comment": "ça va ✓", "correction": None}, {"correction": {"n": 10**30}}, [1, "x", True]],
)
def test_answers_encode_as_compact_json(value: Any) -> None:
    import json

    from app import encoding

    assert json.loads(encoding.dumps(value)) == value
    assert encoding.dumps(value) == json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()
