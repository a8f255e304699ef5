"""Issuance: tokens per second through ``POST /api/v1/feedback/tokens`` (typical token, a new
run id each), batches of 100 and single tokens, with wrk (bench/issue.lua) and with a
concurrent httpx client in this process (client-bound for single tokens, so batches only)."""

from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any

from bench.config import BENCH
from bench.load import TOKENS
from bench.registry import Section, measurement
from bench.stats import fmt
from bench.table import Table

if TYPE_CHECKING:
    from bench.harness import Bench

GOAL_PER_WORKER = 5000


@measurement("issuance", "Issuance")
def issuance(bench: Bench) -> Section:
    cfg = bench.cfg
    table = Table(["workers", "batch of 100, wrk", "batch of 100, httpx", "single, wrk", "batch p99 ms (wrk)",
                   "single p99 ms (wrk)", "wrk CPU (cores)"], "rrrrrrr")
    section = Section("Issuance")
    data: dict[int, dict[str, Any]] = {}
    for workers in cfg.workers:
        with bench.serve("submit", workers) as server:
            t0 = time.perf_counter()
            n = 2000 if cfg.quick else 5000
            bench.issue(server, n, batch=100)
            httpx_rate = n / (time.perf_counter() - t0)
            runs = {}
            for name, size, conns in (("batch", 100, 8), ("single", 1, cfg.connections)):
                run = bench.load.wrk(server.url + TOKENS, BENCH / "issue.lua", [bench.api_key, str(size)],
                                     cfg.issue_seconds, cfg.threads, conns).check()
                if run.problems:
                    section.note(f"issuance {name}, {workers} worker(s): " + "; ".join(run.problems))
                runs[name] = (run, size)
        row = {name: run.rps * size for name, (run, size) in runs.items()}
        row["httpx"] = httpx_rate
        data[workers] = row
        table.add(workers, fmt(row["batch"]), fmt(httpx_rate), fmt(row["single"]),
                  f"{runs['batch'][0].p99_ms:.1f}", f"{runs['single'][0].p99_ms:.1f}",
                  f"{runs['batch'][0].cpu.get('wrk'):.2f} / {runs['single'][0].cpu.get('wrk'):.2f}")
        best = max(row["batch"], httpx_rate)
        section.goal(f"issuance >= {GOAL_PER_WORKER:,} tokens/s per worker (batches of 100), {workers} worker(s): "
                     f"{best / workers:,.0f} per worker", best / workers >= GOAL_PER_WORKER)
    bench.commands["issue wrk"] = (
        f"wrk -t{cfg.threads} -c{cfg.connections} (batches: -c8) -d{cfg.issue_seconds}s --latency "
        "-s bench/issue.lua http://127.0.0.1:PORT/api/v1/feedback/tokens -- API_KEY 1|100"
    )
    section.para(
        f"Tokens per second, one {cfg.issue_seconds} s run each (a single run, no spread: issuance is not "
        "on the submit path). wrk: -c8 for batches, "
        f"-c{cfg.connections} for single tokens; httpx: 8 requests in flight from this process."
    ).table(table)
    section.data = {"by_workers": data}
    return section
