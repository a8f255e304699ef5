"""The bench's options: ``python bench/run.py --help`` (``make bench BENCH_ARGS=...``)."""

from __future__ import annotations

import argparse
import os
import sys
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
RUNS = BENCH / "runs"
RESULTS = BENCH / "RESULTS.md"


@dataclass
class Config:
    quick: bool = False
    rounds: int = 5
    multi_rounds: int = 3  # rounds with more than one worker (throughput only)
    duration: int = 4  # measured seconds per wrk run (whole seconds: wrk's unit)
    warmup: int = 1
    workers: list[int] = field(default_factory=lambda: sorted({1, os.cpu_count() or 1}))
    threads: int = 2
    connections: int = 50
    low_connections: int = 4  # the latency measure that does not saturate the load generator
    open_loop: float = 0.0  # fraction of peak for the open-loop driver (0: off)
    issue_seconds: int = 2
    pool_tokens: int = 12000
    memory_tokens: int = 4000
    cluster: bool = True
    public_url: str = "https://feedback.example.com"
    out: Path | None = None  # where this run's report goes (default: bench/runs/<timestamp>.md)
    update_results: bool = False  # also write bench/RESULTS.md
    wait_idle: float = 0.0
    only: list[str] = field(default_factory=list)
    skip: list[str] = field(default_factory=list)
    argv: list[str] = field(default_factory=list)
    started: datetime = field(default_factory=lambda: datetime.now(UTC))

    @property
    def run_file(self) -> Path:
        return self.out or RUNS / f"{self.started.strftime('%Y%m%dT%H%M%SZ')}{'-quick' if self.quick else ''}.md"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="bench/run.py",
        description="Benchmark the service: submit against bare Starlette and verify-only, latency at "
                    "low concurrency, Redis CPU and memory per token, token URL length, a cluster run.",
    )
    p.add_argument("--quick", action="store_true", help="a short smoke run (about two minutes)")
    p.add_argument("--rounds", type=int, help="paired rounds with 1 worker (default 5; --quick 2)")
    p.add_argument("--duration", type=int, help="measured seconds per wrk run (default 4; --quick 2)")
    p.add_argument("--warmup", type=int, help="seconds of warm-up load before each measured run (default 1)")
    p.add_argument("--workers", help="comma-separated worker counts (default: 1,<cores>)")
    p.add_argument("--open-loop", type=float, default=0.0, metavar="FRACTION",
                   help="also measure latency at this fraction of peak with the open-loop driver (off by default)")
    p.add_argument("--no-cluster", action="store_true", help="skip the Redis Cluster rounds")
    p.add_argument("--only", default="", help="comma-separated measurements to run (see --list)")
    p.add_argument("--skip", default="", help="comma-separated measurements to leave out")
    p.add_argument("--list", action="store_true", help="list the measurements and exit")
    p.add_argument("--public-url", default="https://feedback.example.com", help="FEEDBACK_PUBLIC_URL")
    p.add_argument("--out", type=Path, help="where to write this run's report (default bench/runs/<UTC time>.md)")
    p.add_argument("--update-results", action="store_true",
                   help="also write the report to bench/RESULTS.md (tracked: only for a run meant to be kept)")
    p.add_argument("--wait-idle", type=float, default=0.0, metavar="S",
                   help="before each measured run, wait up to S seconds for other processes to leave the machine idle")
    return p


def parse_args(argv: list[str] | None = None) -> tuple[Config, bool]:
    """The configuration, and whether ``--list`` was asked."""
    a = parser().parse_args(argv)
    quick = a.quick
    cfg = Config(
        quick=quick,
        rounds=a.rounds or (2 if quick else 5),
        multi_rounds=1 if quick else 3,
        duration=a.duration or (2 if quick else 4),
        warmup=a.warmup if a.warmup is not None else 1,
        open_loop=a.open_loop,
        issue_seconds=1 if quick else 2,
        pool_tokens=4000 if quick else 12000,
        memory_tokens=1000 if quick else 4000,
        cluster=not a.no_cluster,
        public_url=a.public_url.rstrip("/"),
        out=a.out,
        update_results=a.update_results,
        wait_idle=a.wait_idle,
        only=[x for x in a.only.split(",") if x],
        skip=[x for x in a.skip.split(",") if x],
        argv=sys.argv[1:] if argv is None else list(argv),
    )
    if a.workers:
        cfg.workers = [int(w) for w in a.workers.split(",")]
    return cfg, a.list
