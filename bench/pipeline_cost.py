"""What the Redis step of a submission costs the service's process: the store's batched submit
through ``app/store/pipelined.py`` against the same batches through redis-py's ``Pipeline`` (what
the batcher sent them with before), in alternating rounds in one process, on a private Redis.

    .venv/bin/python bench/pipeline_cost.py [--rounds 20] [--batches 40] [--batch 24]

Each round runs ``--batches`` groups of ``--batch`` concurrent ``Store.submit`` calls (each on a
token never used before, with a typical stream entry, so each group goes out as one pipeline),
once per side in a rotating order, and takes this process's CPU time (``time.process_time``: the
client's work, not Redis's). Printed: the median and the spread of microseconds of CPU per
submission on each side, and their ratio as the median of the per-round (paired) ratios, so a
round that ran slow for both does not skew it. Both sides must record every submission (checked
against the streams' lengths) or the run fails.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import types
import uuid
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from app.store.batching import Batcher, Call  # noqa: E402
from app.store.keyspace import Keyspace, new_token_id  # noqa: E402
from app.store.store import Store  # noqa: E402
from procs import RedisServer  # noqa: E402

SHARDS = 16


async def redis_py_pipeline(self: Batcher, node: Any, batch: list[Call]) -> list[Any]:
    """The batcher's send before app/store/pipelined.py (commit 0e23fe2)."""
    async with node.pipeline(transaction=False) as pipe:
        for keys, args, _ in batch:
            pipe.evalsha(self.script.sha, len(keys), *keys, *args)
        return await pipe.execute(raise_on_error=False)


async def submit(store: Store) -> str:
    run_id = uuid.uuid4()
    token_id = new_token_id(store.next_shard(), run_id)
    now = int(time.time() * 1000)
    reply = await store.submit(
        token_id, run_id, attempt="a" + uuid.uuid4().hex[:10], fingerprint=uuid.uuid4().bytes, use="once",
        cap=None, deadline=now // 1000 + 3600, created_ms=now, idempotency=None, latest=b"",
        entry=(
            ("id", str(token_id)), ("token_id", str(token_id)), ("run_id", str(run_id)),
            ("feedback_key", "user_score"), ("score", "1"), ("value", ""), ("comment", ""),
            ("correction", ""), ("metadata", ""), ("created_at", "2026-11-27T23:00:00.000Z"),
        ),
    )
    return reply.status


async def measure(store: Store, batches: int, batch: int) -> float:
    started = time.process_time()
    for _ in range(batches):
        statuses = await asyncio.gather(*(submit(store) for _ in range(batch)))
        if set(statuses) != {"ok"}:
            raise SystemExit(f"pipeline_cost: a submission was not recorded: {statuses}")
    return (time.process_time() - started) / (batches * batch) * 1e6


async def recorded(store: Store) -> int:
    total = 0
    for stream in store.keyspace.streams(SHARDS):
        total += await store.redis.xlen(stream)
    return total


async def main_async(rounds: int, batches: int, batch: int) -> int:
    redis = RedisServer("--maxmemory-policy", "noeviction").start()
    try:
        store = Store(redis.url, Keyspace("bench", SHARDS), timeout=5)
        await store.start()
        batcher = store._submit_batched
        old_send = types.MethodType(redis_py_pipeline, batcher)
        sides = {"pipelined.py": batcher._send, "redis-py Pipeline": old_send}
        results: dict[str, list[float]] = {name: [] for name in sides}
        submitted = 0
        for number in range(rounds + 1):  # round 0 warms both sides up and is not counted
            order = list(sides) if number % 2 else list(sides)[::-1]
            for name in order:
                batcher._send = sides[name]  # type: ignore[method-assign]
                cost = await measure(store, batches, batch)
                submitted += batches * batch
                if number:
                    results[name].append(cost)
        held = await recorded(store)
        if held != submitted:
            raise SystemExit(f"pipeline_cost: the streams hold {held} entries for {submitted} submissions")
        await store.close()
    finally:
        redis.cleanup()
    new, old = results["pipelined.py"], results["redis-py Pipeline"]
    ratios = [n / o for n, o in zip(new, old, strict=True)]
    print(f"{rounds} paired rounds of {batches} pipelines of {batch} submissions; CPU of this process")
    for name, costs in results.items():
        print(f"  {name:<18} {statistics.median(costs):6.1f} µs per submission ({min(costs):.1f}-{max(costs):.1f})")
    print(f"  pipelined.py / redis-py Pipeline: {statistics.median(ratios):.2f} "
          f"({min(ratios):.2f}-{max(ratios):.2f})")
    return 0


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rounds", type=int, default=20)
    parser.add_argument("--batches", type=int, default=40)
    parser.add_argument("--batch", type=int, default=24, help="submissions per pipeline (24: -c50's mean)")
    args = parser.parse_args(argv)
    return asyncio.run(main_async(args.rounds, args.batches, args.batch))


if __name__ == "__main__":
    sys.exit(main())
