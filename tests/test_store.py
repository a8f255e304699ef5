"""The store against a real Redis: the submit script's decisions (app/store/scripts.py) and the
batching of concurrent calls (app/store/batching.py): one pipeline, each call still its own atomic
script run with its own answer or error."""

from __future__ import annotations

import asyncio
import os
import time
import uuid
from collections.abc import Awaitable, Callable
from typing import Any

import layout
import pytest
from conftest import RedisServer

from app.errors import StoreUnavailable
from app.store.keyspace import Keyspace, new_token_id
from app.store.results import SubmitReply
from app.store.store import Store

FAR = int(time.time()) + 3600


def attempt() -> str:
    return os.urandom(8).hex()[:11]


async def submit(
    store: Store,
    token_id: uuid.UUID,
    run_id: uuid.UUID,
    fp: bytes = b"f" * 16,
    *,
    use: str = "once",
    tried: str | None = None,
    deadline: int = FAR,
    idempotency: str | None = None,
    cap: int | None = None,
) -> SubmitReply:
    return await store.submit(
        token_id,
        run_id,
        attempt=tried or attempt(),
        fingerprint=fp,
        use=use,
        cap=cap,
        deadline=deadline,
        created_ms=int(time.time() * 1000),
        idempotency=idempotency,
        latest=b"",
        entry=(("id", str(token_id)), ("token_id", str(token_id)), ("score", "1")),
    )


def token() -> tuple[uuid.UUID, uuid.UUID]:
    run_id = uuid.uuid4()
    return new_token_id(3, run_id), run_id


def run(redis_server: RedisServer, scenario: Callable[[Store], Awaitable[Any]]) -> Any:
    async def go() -> Any:
        store = Store(redis_server.url, Keyspace("fbt", 16), timeout=5)
        await store.start()
        try:
            return await scenario(store)
        finally:
            await store.close()

    return asyncio.run(go())


def test_concurrent_submissions_share_a_pipeline_and_each_gets_its_answer(redis_server: RedisServer) -> None:
    tokens = [token() for _ in range(40)]
    sizes: list[int] = []

    async def scenario(store: Store) -> list[Any]:
        store._submit_batched.on_batch = sizes.append
        # Every token twice with the same fingerprint and once with another, all at once.
        calls = [submit(store, *t) for t in tokens] + [submit(store, *t) for t in tokens]
        calls += [submit(store, *t, b"o" * 16) for t in tokens]
        return await asyncio.gather(*calls, return_exceptions=True)

    results = run(redis_server, scenario)
    assert max(sizes) > 1
    firsts, seconds, others = results[:40], results[40:80], results[80:]
    assert [r.status for r in firsts] == ["ok"] * 40
    assert [r.status for r in seconds] == ["dup"] * 40
    assert [r.status for r in others] == ["used"] * 40
    assert layout.feedback_count(redis_server.client()) == 40


def test_a_failing_call_fails_alone(redis_server: RedisServer) -> None:
    good, bad = token(), token()
    client = redis_server.client()
    client.set(Keyspace().record_of(bad[0]) or "", "not a hash")  # the script's HGET on it: WRONGTYPE

    async def scenario(store: Store) -> list[Any]:
        return await asyncio.gather(submit(store, *good), submit(store, *bad), return_exceptions=True)

    ok, failed = run(redis_server, scenario)
    assert isinstance(ok, SubmitReply) and ok.status == "ok"
    assert isinstance(failed, StoreUnavailable) and failed.status == 503
    assert layout.feedback_count(client) == 1


def test_a_lost_script_cache_is_reloaded_and_nothing_is_lost(redis_server: RedisServer) -> None:
    tokens = [token() for _ in range(5)]

    async def scenario(store: Store) -> list[Any]:
        await submit(store, *token())
        await store.redis.script_flush()  # as after a Redis restart
        return await asyncio.gather(*(submit(store, *t) for t in tokens))

    assert [r.status for r in run(redis_server, scenario)] == ["ok"] * 5
    assert layout.feedback_count(redis_server.client()) == 6


@pytest.mark.parametrize("n", [1, 600])
def test_batches_above_the_cap_are_split(redis_server: RedisServer, n: int) -> None:
    sizes: list[int] = []

    async def scenario(store: Store) -> list[Any]:
        store._submit_batched.on_batch = sizes.append
        return await asyncio.gather(*(submit(store, *token()) for _ in range(n)))

    assert len(run(redis_server, scenario)) == n
    assert max(sizes) <= 512 and sum(sizes) >= n
    assert layout.feedback_count(redis_server.client()) == n


@pytest.mark.parametrize("use", ["once", "update", "many"])
def test_the_same_attempt_run_twice_counts_once_and_answers_as_first(redis_server: RedisServer, use: str) -> None:
    """What a retry after a lost reply does: the script remembers the attempt."""
    t = token()
    same = attempt()

    async def scenario(store: Store) -> list[SubmitReply]:
        first = await submit(store, *t, use=use, tried=same)
        if use != "once":  # others use the token in between
            await submit(store, *t, b"x" * 16, use=use)
        again = await submit(store, *t, use=use, tried=same)
        return [first, again]

    first, again = run(redis_server, scenario)
    assert first.status == again.status == "ok"
    assert (again.uses, again.created_ms) == (first.uses, first.created_ms) == (1, first.created_ms)
    assert layout.feedback_count(redis_server.client()) == (1 if use == "once" else 2)


def test_no_record_is_written_past_its_deadline(redis_server: RedisServer) -> None:
    """A node whose clock lags Redis's by more than the promised skew gets 'expired', and nothing
    is written (a record already past its deadline would be dropped at once, reopening the token)."""
    t = token()

    async def scenario(store: Store) -> SubmitReply:
        return await submit(store, *t, deadline=int(time.time()) - 1)

    assert run(redis_server, scenario).status == "expired"
    assert layout.data_keys(redis_server.client()) == []


def test_an_idempotency_key_names_one_submission(redis_server: RedisServer) -> None:
    t = token()

    async def scenario(store: Store) -> list[SubmitReply]:
        first = await submit(store, *t, use="many", idempotency="k1")
        same = await submit(store, *t, use="many", idempotency="k1")
        other_body = await submit(store, *t, b"b" * 16, use="many", idempotency="k1")
        other_key = await submit(store, *t, use="many", idempotency="k2")
        no_key = await submit(store, *t, use="many")
        return [first, same, other_body, other_key, no_key]

    first, same, other_body, other_key, no_key = run(redis_server, scenario)
    assert first.status == "ok" and same.status == "dup" and same.uses == first.uses == 1
    assert other_body.status == "conflict"
    assert (other_key.status, other_key.uses, no_key.status, no_key.uses) == ("ok", 2, "ok", 3)
    assert layout.feedback_count(redis_server.client()) == 3


def test_a_cap_on_uses_is_kept(redis_server: RedisServer) -> None:
    t = token()

    async def scenario(store: Store) -> list[str]:
        replies = await asyncio.gather(*(submit(store, *t, os.urandom(16), use="many", cap=3) for _ in range(10)))
        return [r.status for r in replies]

    statuses = run(redis_server, scenario)
    assert statuses.count("ok") == 3 and statuses.count("used") == 7
    assert layout.feedback_count(redis_server.client()) == 3


@pytest.mark.parametrize(
    "value",
    [{"score": 0.5, "comment": "ça va ✓", "correction": None}, {"correction": {"n": 10**30}}, [1, "x", True]],
)
def test_answers_encode_as_compact_json(value: Any) -> None:
    import json

    from app import encoding

    assert json.loads(encoding.dumps(value)) == value
    assert encoding.dumps(value) == json.dumps(value, separators=(",", ":"), ensure_ascii=False).encode()


@pytest.mark.parametrize(("use", "cap"), [("once", None), ("update", None), ("many", None), ("many", 2)])
def test_peek_foretells_what_submit_decides(redis_server: RedisServer, use: str, cap: int | None) -> None:
    """The use policy is decided in one place (``decide`` in the scripts): what PEEK says of a
    submission is what SUBMIT then does with it, and the state's exhausted flag agrees."""
    t = token()
    bodies = [b"a" * 16, b"a" * 16, b"b" * 16, b"c" * 16, b"b" * 16]
    expected = {"new": "ok", "dup": "dup", "used": "used"}

    async def scenario(store: Store) -> list[tuple[str, str, bool]]:
        seen = []
        for fp in bodies:
            peek = await store.peek(*t, use=use, cap=cap, fingerprint=fp)
            reply = await submit(store, *t, fp, use=use, cap=cap)
            after = await store.peek(*t, use=use, cap=cap)
            seen.append((peek.verdict, reply.status, after.verdict == "used"))
        return seen

    seen = run(redis_server, scenario)
    assert [expected[verdict] for verdict, _, _ in seen] == [status for _, status, _ in seen]
    state = layout.token_fields(redis_server.client(), t[0])
    assert state["uses"] == {"once": 1, "update": 4, "many": 5 if cap is None else 2}[use]  # update: a, b, c, b
    assert seen[-1][2] is (use == "once" or cap is not None)  # exhausted at the end


def _closed_connection_error() -> AttributeError:
    """An AttributeError raised inside redis-py, as a connection closed under a call raises it
    (redis-py issue 4287: ``'NoneType' object has no attribute 'writelines'``)."""
    from redis.asyncio.connection import Connection

    try:
        Connection.is_connected.fget(object())  # type: ignore[attr-defined]
    except AttributeError as err:
        return err
    raise AssertionError("redis-py no longer raises here; pick another of its internals")


def test_a_connection_closed_under_a_call_is_a_503_and_a_bug_of_ours_is_not(redis_server: RedisServer) -> None:
    lost = _closed_connection_error()

    async def closed() -> None:
        raise lost

    async def ours() -> None:
        raise AttributeError("a bug in this service")

    async def scenario(store: Store) -> tuple[BaseException | None, BaseException | None]:
        outcomes: list[BaseException | None] = []
        for fn in (closed, ours):
            try:
                await store._call("submit", fn)
                outcomes.append(None)
            except Exception as err:  # noqa: BLE001 - which kind is the assertion
                outcomes.append(err)
        return outcomes[0], outcomes[1]

    unavailable, bug = run(redis_server, scenario)
    assert isinstance(unavailable, StoreUnavailable) and unavailable.status == 503
    assert "connection" in unavailable.detail and "send the same submission again" in unavailable.detail
    assert isinstance(bug, AttributeError) and str(bug) == "a bug in this service"


def test_a_call_with_no_node_for_its_slot_fails_alone_and_at_once(redis_server: RedisServer) -> None:
    """Mid-failover the cluster client may know no node for a slot (``SlotNotCoveredError``, not
    a RedisError): that call answers 503 at once, the others of its batch are recorded."""
    from redis.exceptions import SlotNotCoveredError

    good, bad = token(), token()

    async def scenario(store: Store) -> list[Any]:
        batcher = store._submit_batched
        plain = store.redis
        bad_record = store._place(*bad)[0]

        def node_for(key: str) -> Any:
            if key == bad_record:
                raise SlotNotCoveredError("Slot 1234 is not covered by the cluster")
            return plain

        batcher.node_client = node_for
        return await asyncio.wait_for(
            asyncio.gather(submit(store, *good), submit(store, *bad), return_exceptions=True), timeout=10
        )

    ok, failed = run(redis_server, scenario)
    assert isinstance(ok, SubmitReply) and ok.status == "ok"
    assert isinstance(failed, StoreUnavailable) and failed.status == 503, failed
    assert layout.feedback_count(redis_server.client()) == 1


# Holds Redis for ``ms`` milliseconds (one script runs at a time), so a pipeline sent meanwhile
# stays under way for as long as the test needs.
BUSY = """local t = redis.call('TIME'); local start = t[1] * 1000000 + t[2]
while true do
  local n = redis.call('TIME'); if n[1] * 1000000 + n[2] - start > tonumber(ARGV[1]) * 1000 then break end
end
return 1"""


async def busy(redis_server: RedisServer, ms: int) -> None:
    import redis.asyncio as aioredis

    client = aioredis.Redis.from_url(redis_server.url)
    try:
        await client.eval(BUSY, 0, ms)
    finally:
        await client.aclose()


async def out_while_busy(redis_server: RedisServer, store: Store, ms: int, *then: int) -> list[list[Any]]:
    """Redis busy for ``ms``; one call sent meanwhile; then, 30 ms apart, groups of calls of the
    given sizes. The answers of each group."""
    hold = asyncio.ensure_future(busy(redis_server, ms))
    await asyncio.sleep(0.02)
    groups = [asyncio.ensure_future(asyncio.gather(submit(store, *token())))]
    for size in then:
        await asyncio.sleep(0.03)
        groups.append(asyncio.ensure_future(asyncio.gather(*(submit(store, *token()) for _ in range(size)))))
    await hold
    return [list(r) for r in await asyncio.gather(*groups)]


def test_calls_made_while_a_pipeline_is_out_wait_for_it_and_go_together(redis_server: RedisServer) -> None:
    sizes: list[int] = []

    async def scenario(store: Store) -> tuple[list[list[Any]], int]:
        batcher = store._submit_batched
        batcher.on_batch, batcher.hold = sizes.append, 10.0
        answers = await out_while_busy(redis_server, store, 300, 4, 6)
        return answers, len(batcher._flushes)

    answers, left = run(redis_server, scenario)
    assert [[a.status for a in group] for group in answers] == [["ok"], ["ok"] * 4, ["ok"] * 6]
    assert sizes == [1, 10]  # the 4 and the 6 waited for the first, then went as one pipeline
    assert left == 0 and layout.feedback_count(redis_server.client()) == 11


def test_a_pipeline_under_way_holds_calls_back_only_briefly(redis_server: RedisServer) -> None:
    """Redis stuck for longer than the hold: the calls made meanwhile go in their own pipeline
    once the hold is over, not after the first comes back."""
    sent: list[float] = []

    async def scenario(store: Store) -> list[list[Any]]:
        batcher = store._submit_batched
        batcher.hold = 0.05
        flush = batcher._flush

        async def timed(node: Any, batch: list[Any]) -> None:
            sent.append(time.monotonic())
            await flush(node, batch)

        batcher._flush = timed  # type: ignore[method-assign]
        return await out_while_busy(redis_server, store, 600, 3)

    started = time.monotonic()
    answers = run(redis_server, scenario)
    assert [[a.status for a in group] for group in answers] == [["ok"], ["ok"] * 3]
    assert len(sent) == 2 and sent[1] - sent[0] < 0.3, [t - started for t in sent]


def test_a_full_pipeline_is_never_held(redis_server: RedisServer) -> None:
    sizes: list[int] = []

    async def scenario(store: Store) -> tuple[list[list[Any]], int]:
        batcher = store._submit_batched
        batcher.on_batch, batcher.hold = sizes.append, 10.0
        pending = asyncio.ensure_future(out_while_busy(redis_server, store, 400, 600))
        await asyncio.sleep(0.2)  # Redis still busy: the 600 went out at once, in two pipelines
        out = len(batcher._flushes)
        return await pending, out

    answers, out = run(redis_server, scenario)
    assert [len(group) for group in answers] == [1, 600] and all(a.status == "ok" for a in answers[1])
    assert out == 3 and sorted(sizes) == [1, 88, 512]
