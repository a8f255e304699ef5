"""Redis memory per token (issue 11): live (issued, unused) and used (its record after one
submission, plus its stream entry), for one token per run and for batches of 10 per run.

On an emptied Redis, ``INFO memory`` ``used_memory`` is read before issuing N typical tokens,
after the first half, after all, after submitting once on the first half and after all. The
whole deltas divided by N include fixed costs that do not grow with the count (the service's
connections' buffers, the keyspace's hash tables); the *marginal* figure, from the second half
alone, is what each further token costs, the one to plan capacity with. Beside it, ``MEMORY
USAGE`` of a sample run record (per token it holds) and of the feedback streams (per entry)."""

from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

from app.store.keyspace import Keyspace
from bench.load import submit_all
from bench.redis_meter import memory_usage, stream_keys, used_memory
from bench.registry import Section, measurement
from bench.stats import fmt
from bench.table import Table

if TYPE_CHECKING:
    from bench.harness import Bench
    from procs import Uvicorn

LIVE_GOAL, USED_GOAL = 350, 800


def one_layout(bench: Bench, server: Uvicorn, n: int, per_run: int) -> dict[str, Any]:
    r = bench.redis.client()
    half = n // 2
    r.flushall()
    m0 = used_memory(r)
    first = bench.issue(server, half, batch=100, per_run=per_run)
    m1 = used_memory(r)
    second = bench.issue(server, n - half, batch=100, per_run=per_run)
    m2 = used_memory(r)
    sample = Keyspace().record_of(uuid.UUID(second[0]["id"]))
    if sample is None:
        raise RuntimeError(f"token id {second[0]['id']} does not locate its record")
    record_live = memory_usage(r, sample)
    counts: dict[int, int] = {}
    marks = []
    for batch in (first, second):
        for status, count in submit_all(server.url, [urlsplit(a["url"]).path for a in batch]).items():
            counts[status] = counts.get(status, 0) + count
        marks.append(used_memory(r))
    if counts != {200: n}:
        bench.notes.append(f"memory ({per_run} per run): submissions answered {counts}, expected {n} x 200")
    m3, m4 = marks
    streams = stream_keys(r)
    entries = sum(int(r.xlen(k)) for k in streams)
    live_marginal = (m2 - m1) / (n - half)
    return {
        "tokens": n,
        "live": (m2 - m0) / n,
        "used": (m4 - m0) / n,
        "live_marginal": live_marginal,
        "used_marginal": live_marginal + (m4 - m3) / (n - half),
        "record_live": record_live / per_run,
        "record_used": memory_usage(r, sample) / per_run,
        "entry": sum(memory_usage(r, k) for k in streams) / entries if entries else float("nan"),
    }


@measurement("memory", "Redis memory per token")
def memory(bench: Bench) -> Section:
    n = bench.cfg.memory_tokens
    table = Table(["tokens per run", "live token, marginal (all N)", "used token, marginal (all N)",
                   "run record per token, live / used", "stream entry"], "rrrrr")
    data: dict[str, Any] = {}
    with bench.serve("submit") as server:
        for per_run in (1, 10):
            row = data[f"per_run_{per_run}"] = one_layout(bench, server, n, per_run)
            table.add(per_run, f"{fmt(row['live_marginal'])} B ({fmt(row['live'])} B)",
                      f"{fmt(row['used_marginal'])} B ({fmt(row['used'])} B)",
                      f"{fmt(row['record_live'])} / {fmt(row['record_used'])} B", f"{fmt(row['entry'])} B")
        bench.redis.client().flushall()
    section = Section("Redis memory per token").para(
        f"{n:,} typical tokens issued through the API on an emptied Redis ({Keyspace().shards} shards, 100 tokens "
        "per request), then one submission on each (its stream entry included). `used_memory` deltas: marginal "
        "is the second half's cost per token (what each further token costs); in brackets the whole delta over "
        f"all {n:,}, which also holds fixed costs such as the service's connection buffers. `MEMORY USAGE` "
        "(exact, `SAMPLES 0`): one sample run record divided by the tokens it holds, and all feedback streams "
        "divided by their entries."
    ).table(table)
    section.data = data
    worst_live = max(d["live_marginal"] for d in data.values())
    worst_used = max(d["used_marginal"] for d in data.values())
    section.goal(f"<= {LIVE_GOAL} B per live token, marginal, worst layout: {worst_live:,.0f} B",
                 worst_live <= LIVE_GOAL)
    section.goal(f"<= {USED_GOAL} B per used token incl. its stream entry, marginal, worst layout: "
                 f"{worst_used:,.0f} B", worst_used <= USED_GOAL)
    bench.commands["memory"] = "python bench/run.py --only memory"
    return section
