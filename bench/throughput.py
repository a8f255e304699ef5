"""Submit throughput and latency in paired rounds (issues 5, 14, 16; the cluster run of 11).

Each round serves, one after another and each on its own uvicorn: the bare Starlette endpoint,
the verify-only app, the real service with ES256 keys, with HS256 keys and (1 worker) on a local
3-primary Redis Cluster. Each is driven by wrk at -t2 -c50 (saturating) and, with 1 worker, at
-t1 -c4 (a latency figure that does not need the load generator to saturate the machine). The
order rotates from round to round; ratios are taken within a round (paired) and the figure is
their median, with the spread. Every submission is on a fresh token issued through the API just
before; a run with an error answer, a socket error, a token used twice, a thread out of tokens,
or fewer stream entries than accepted submissions is invalid and left out.

During each -c50 run of the real service, Redis's own CPU time (INFO cpu) and the submit
script's statistics (INFO commandstats) are read; and the CPU of the server, wrk, Redis and
everything else on the machine is taken from /proc (bench/cpu.py).
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import urlsplit

import redis

from bench.console import log
from bench.load import WrkRun, openloop_problems
from bench.redis_meter import RedisCost, RedisMeter, stream_entries
from bench.registry import Section, measurement

if TYPE_CHECKING:
    from bench.harness import Bench
    from procs import Uvicorn


@dataclass(frozen=True)
class Kind:
    name: str
    label: str
    app: str  # bench.harness.APPS
    redis: str = "single"  # single | cluster | dead
    alg: str = "ES256"
    env: tuple[tuple[str, str], ...] = ()  # more settings for the server, e.g. (("FEEDBACK_METRICS", "0"),)
    server: str = "uvicorn"  # or granian (bench/servers.py)

    @property
    def consumes(self) -> bool:
        """Whether each request uses up a token (the real service) or not (bare, verify-only)."""
        return self.app == "submit"


BARE = Kind("bare", "bare Starlette", "bare")
VERIFY = Kind("verify", "verify-only (ES256)", "verify", redis="dead")
SUBMIT = Kind("submit", "submit (ES256, default)", "submit")
HS256 = Kind("hs256", "submit (HS256 keys)", "submit", alg="HS256")
CLUSTER = Kind("cluster", "submit (ES256) on a 3-primary cluster", "submit", redis="cluster")
KINDS = (BARE, VERIFY, SUBMIT, HS256, CLUSTER)


@dataclass
class Round:
    kind: Kind
    workers: int
    number: int
    high: WrkRun | None = None  # -t2 -c50
    low: WrkRun | None = None  # -t1 -c4
    issued: int = 0
    stream_added: int | None = None
    accepted: int = 0
    redis: RedisCost | None = None  # over the -c50 run
    redis_submissions: int = 0  # recorded during the -c50 run
    openloop: dict[str, Any] | None = None
    problems: list[str] = field(default_factory=list)

    @property
    def all_problems(self) -> list[str]:
        runs = [("", self.high), ("-c4: ", self.low)]
        out = list(self.problems) + [f"{where}{p}" for where, run in runs if run is not None for p in run.problems]
        if self.openloop is not None:
            out += [f"open loop: {p}" for p in openloop_problems(self.openloop)]
        return out

    @property
    def valid(self) -> bool:
        return self.high is not None and not self.all_problems

    @property
    def ran_out(self) -> bool:
        return any(run is not None and run.raw.get("exhausted") for run in (self.high, self.low))


def path_of(answer: dict[str, Any]) -> str:
    return urlsplit(str(answer["url"])).path


class Throughput:
    """Paired rounds of ``kinds`` (default: every kind above with 1 worker, bare / verify-only /
    submit with more) for each of ``workers`` (default: ``--workers``). Another measurement can
    compare its own variants the same way, e.g. a setting on and off::

        on, off = Kind("on", "metrics on", "submit"), Kind("off", "metrics off", "submit",
                                                          env=(("FEEDBACK_METRICS", "0"),))
        t = Throughput(bench, kinds=[off, on], workers=[1]); t.run()
        pair(t, on, off, 1, high_rps)  # bench.throughput_report: the paired ratio, with its spread
    """

    def __init__(self, bench: Bench, kinds: list[Kind] | None = None, workers: list[int] | None = None) -> None:
        self.bench = bench
        self.cfg = bench.cfg
        self.only = kinds
        self.workers = workers or self.cfg.workers
        self.rounds: list[Round] = []
        self.pool: list[str] = []  # token URL paths the bare and verify-only rounds cycle through

    def kinds(self, workers: int) -> list[Kind]:
        if self.only is not None:
            return self.only
        if workers != 1:
            return [BARE, VERIFY, SUBMIT]
        return [k for k in KINDS if k is not CLUSTER or self.cfg.cluster]

    def select(self, kind: Kind, workers: int, valid_only: bool = True) -> list[Round]:
        return [r for r in self.rounds if r.kind == kind and r.workers == workers and (r.valid or not valid_only)]

    def run(self) -> None:
        if any(not k.consumes for w in self.workers for k in self.kinds(w)):
            with self.bench.serve("submit") as server:
                self.pool = [path_of(a) for a in self.bench.issue(server, self.cfg.pool_tokens)]
        for workers in self.workers:
            kinds = self.kinds(workers)
            for number in range(1, (self.cfg.rounds if workers == 1 else self.cfg.multi_rounds) + 1):
                shift = (number - 1) % len(kinds)
                for kind in kinds[shift:] + kinds[:shift]:
                    rnd = self.round(kind, workers, number)
                    for boost in (2.0, 4.0):  # the machine sped up past the estimate: again, with more tokens
                        if not rnd.ran_out:
                            break
                        log(f"  [{workers}w r{number}] {kind.label}: out of fresh tokens; again with {boost:g}x")
                        rnd = self.round(kind, workers, number, boost=boost)
                    self.rounds.append(rnd)

    def estimate(self, kind: Kind, workers: int) -> float:
        """Requests per second to issue fresh tokens for: the best seen for this kind so far
        (either concurrency), else verify-only's (an upper bound of submit), with a margin wide
        enough for a shared machine, where rounds differ by half."""
        seen = [run.rps for r in self.rounds if r.kind == kind and r.workers == workers for run in (r.high, r.low)
                if run is not None]
        if not seen:  # more workers do at least what fewer did; verify-only bounds submit from above
            seen = [run.rps for r in self.rounds if r.workers <= workers and (r.kind.consumes or r.kind is VERIFY)
                    for run in (r.high, r.low) if run is not None]
        return max(seen) * 1.6 if seen else 6000.0 * workers

    def fresh(self, server: Uvicorn, rate: float, seconds: int, connections: int, name: str) -> tuple[Path, int]:
        """A paths file of tokens issued now, enough for ``seconds`` at ``rate``."""
        paths = [path_of(a) for a in self.bench.issue(server, int(rate * seconds) + 2 * connections)]
        return self.bench.load.paths_file(paths, name), len(paths)

    def clients(self, kind: Kind) -> list[redis.Redis]:
        if kind.redis == "cluster":
            return [node.client() for node in self.bench.cluster().primaries()]
        return [self.bench.redis.client()]

    def round(self, kind: Kind, workers: int, number: int, boost: float = 1.0) -> Round:
        cfg, load = self.cfg, self.bench.load
        rnd = Round(kind, workers, number)
        low = workers == 1
        tag = f"{kind.name}-w{workers}-r{number}"
        with self.bench.serve(kind.app, workers, kind.redis, kind.alg, dict(kind.env), kind.server) as server:
            if kind.consumes:
                rate = self.estimate(kind, workers) * boost
                warm_file, n_warm = self.fresh(server, rate, cfg.warmup, cfg.connections, f"{tag}-warm")
                high_file, n_high = self.fresh(server, rate, cfg.duration, cfg.connections, tag)
                rnd.issued = n_warm + n_high
                mode = "once"
            else:
                split = min(len(self.pool) // 5, int(6000 * workers * cfg.warmup) + 100)
                high_file = load.paths_file(self.pool[:-split], tag)
                warm_file = load.paths_file(self.pool[-split:], f"{tag}-warm")
                mode = "cycle"
            warm = load.paths(server.url, warm_file, mode, cfg.warmup, cfg.threads, cfg.connections)
            rnd.problems += warm.check(warmup=True).problems
            clients = self.clients(kind) if kind.consumes else []
            before = stream_entries(clients)
            meter = RedisMeter(clients).start()
            rnd.high = load.paths(server.url, high_file, mode, cfg.duration, cfg.threads, cfg.connections).check()
            if kind.consumes:
                time.sleep(0.3)  # the last submissions in flight land
                rnd.redis = meter.stop()
                rnd.redis_submissions = stream_entries(clients) - before
                rnd.accepted = rnd.high.accepted
            if low:
                low_file = high_file
                if kind.consumes:
                    rate = max(self.estimate(kind, workers), rnd.high.rps * 1.6) * boost
                    low_file, n_low = self.fresh(server, rate, cfg.duration, cfg.low_connections, f"{tag}-c4")
                    rnd.issued += n_low
                rnd.low = load.paths(server.url, low_file, mode, cfg.duration, 1, cfg.low_connections).check()
            if kind.consumes:
                time.sleep(0.3)
                rnd.stream_added = stream_entries(clients) - before
                rnd.accepted += rnd.low.accepted if rnd.low is not None else 0
                if rnd.stream_added < rnd.accepted:
                    rnd.problems.append(
                        f"only {rnd.stream_added} stream entries for {rnd.accepted} accepted submissions"
                    )
            if kind is SUBMIT and cfg.open_loop > 0 and rnd.valid and rnd.high is not None:
                rnd.openloop = self.open_loop(server, cfg.open_loop * rnd.high.rps, tag)
        self.bench.commands["wrk"] = (
            f"wrk -t{cfg.threads} -c{cfg.connections} -d{cfg.duration}s --latency --timeout 10s "
            f"-s bench/paths.lua http://127.0.0.1:PORT -- PATHS_FILE {cfg.threads} once|cycle; "
            f"and with -t1 -c{cfg.low_connections} (1 worker)"
        )
        self.log(rnd)
        return rnd

    def open_loop(self, server: Uvicorn, rate: float, tag: str) -> dict[str, Any]:
        cfg = self.cfg
        answers = self.bench.issue(server, int(rate * (cfg.duration + cfg.warmup) * 1.05) + 100)
        paths_file = self.bench.load.paths_file([path_of(a) for a in answers], f"openloop-{tag}")
        self.bench.commands["open-loop"] = (
            f"python -m bench.openloop --port PORT --paths PATHS_FILE --rate RATE --duration {cfg.duration} "
            f"--warmup {cfg.warmup} --connections {cfg.connections}"
        )
        return self.bench.load.openloop(server.port, paths_file, rate, cfg.duration, cfg.warmup, cfg.connections)

    def log(self, rnd: Round) -> None:
        h, lo = rnd.high, rnd.low
        text = f"  [{rnd.workers}w r{rnd.number}] {rnd.kind.label:<40}"
        if h is not None:
            text += (f" {h.rps:>7,.0f} req/s p99 {h.p99_ms:6.2f} ms | server {h.cpu.get('server'):.2f} "
                     f"wrk {h.cpu.get('wrk'):.2f} redis {h.cpu.get('redis'):.2f} others {h.cpu.other:.2f} cores")
        if lo is not None:
            text += f" | -c{self.cfg.low_connections}: {lo.rps:,.0f} req/s p99 {lo.p99_ms:.2f} ms"
        if rnd.redis is not None:
            us = rnd.redis.script_us_per_call
            text += f" | script {us:.1f} us/call" if us is not None else ""
        if not rnd.valid:
            text += "   INVALID: " + "; ".join(rnd.all_problems)
        log(text)


@measurement("throughput", "Submit throughput and latency")
def throughput(bench: Bench) -> Section:
    from bench.throughput_report import section

    t = Throughput(bench)
    t.run()
    return section(t)
