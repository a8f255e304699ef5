"""The throughput measurement's report section: medians of paired rounds with their spread,
where the CPU went, Redis per submission, the goals of issues 11 and 16, and every round."""

from __future__ import annotations

from collections.abc import Callable

from bench.cpu import NOISY
from bench.load import WrkRun
from bench.registry import Section
from bench.stats import Spread, fmt, paired
from bench.table import Table
from bench.throughput import BARE, CLUSTER, HS256, SUBMIT, VERIFY, Kind, Round, Throughput

Pick = Callable[[Round], float | None]
CORES_FLOOR = 0.05  # CPU shares within 0.05 cores of each other agree, however small


def high_rps(r: Round) -> float | None:
    return r.high.rps if r.high is not None else None


def per_core(*roles: str) -> Pick:
    """Requests per CPU-second of ``roles`` (default the server) in the -c50 run. On a shared
    machine the server gets a varying share of the cores, but each request costs about the same
    CPU: this is the figure that a second run reproduces. A 1-worker server on an idle machine
    uses one whole core, so there it equals req/s."""
    roles = roles or ("server",)

    def pick(r: Round) -> float | None:
        if r.high is None:
            return None
        cores = sum(r.high.cpu.get(role) for role in roles)
        return r.high.rps / cores if cores > 0.02 else None

    return pick


def _run_attr(run: str, attr: str) -> Pick:
    def pick(r: Round) -> float | None:
        w: WrkRun | None = getattr(r, run)
        return None if w is None else float(getattr(w, attr))

    return pick


def quiet(run: str, pick: Pick) -> Pick:
    """``pick``, only for rounds whose ``run`` (high or low) was not shared with busy neighbours."""

    def q(r: Round) -> float | None:
        w: WrkRun | None = getattr(r, run)
        return pick(r) if w is not None and not w.cpu.noisy else None

    return q


def spread(t: Throughput, kind: Kind, workers: int, pick: Pick, floor: float = 0.0) -> Spread:
    return Spread.of((pick(r) for r in t.select(kind, workers)), floor)


def pair(t: Throughput, a: Kind, b: Kind, workers: int, pick: Pick) -> Spread:
    """Per round: ``pick`` of ``a`` over ``pick`` of ``b``, both valid, same round."""
    numbers = sorted({r.number for r in t.rounds if r.workers == workers})
    by = {(r.kind.name, r.number): r for r in t.rounds if r.workers == workers and r.valid}
    num = [pick(by[a.name, n]) if (a.name, n) in by else None for n in numbers]
    den = [pick(by[b.name, n]) if (b.name, n) in by else None for n in numbers]
    return paired(num, den)


def goal(section: Section, text: str, s: Spread, target: float, at_most: bool = False) -> None:
    if not s.values:
        section.goal(f"{text}: not measured", None)
    elif s.stable is False:
        section.goal(f"{text}: unstable ({fmt(s.lo, 2)}-{fmt(s.hi, 2)})", None)
    else:
        ok = s.median <= target if at_most else s.median >= target
        section.goal(f"{text}: {s.cell(2)}", ok)


def section(t: Throughput) -> Section:
    cfg = t.cfg
    out = Section("Submit throughput and latency")
    more = ", ".join(map(str, t.workers[1:])) or "more"
    out.para(
        f"wrk -t{cfg.threads} -c{cfg.connections} for {cfg.duration} s after {cfg.warmup} s of warm-up, "
        f"{cfg.rounds} paired round(s) with 1 worker and {cfg.multi_rounds} with {more} "
        "worker(s), the order rotating each round. Each cell: the median over the valid rounds, then (min-max). "
        "Ratios are taken within each round, then their median. A figure whose rounds disagree by more than "
        "±30 % of their median is shown as `unstable: min-max` instead of a result. *Per server core*: req/s "
        "divided by the CPU the server's processes used meanwhile (cores, from /proc), i.e. requests per "
        "CPU-second; on a shared machine the server gets a varying share of the cores but each request costs "
        "about the same CPU, so this is the figure a second run reproduces. The goals use it."
    )
    main = Table(["workers", "endpoint", "req/s", "req/s per server core", "/ bare", "/ bare per core",
                  "/ verify-only", "/ verify-only per core", "p50 ms", "p99 ms", "valid rounds"], "rlrrrrrrrrr")
    core = per_core()
    for w in t.workers:
        for kind in t.kinds(w):
            total = len(t.select(kind, w, valid_only=False))
            main.add(
                w, kind.label, spread(t, kind, w, high_rps).cell(), spread(t, kind, w, core).cell(),
                "1" if kind is BARE else pair(t, kind, BARE, w, high_rps).cell(2),
                "1" if kind is BARE else pair(t, kind, BARE, w, core).cell(2),
                pair(t, kind, VERIFY, w, high_rps).cell(2) if kind.consumes else "",
                pair(t, kind, VERIFY, w, core).cell(2) if kind.consumes else "",
                spread(t, kind, w, _run_attr("high", "p50_ms")).cell(2),
                spread(t, kind, w, _run_attr("high", "p99_ms")).cell(2),
                f"{len(t.select(kind, w))}/{total}",
            )
    out.table(main)
    out.para(
        f"**Latency at -c{cfg.low_connections}** (1 worker, wrk -t1 -c{cfg.low_connections}): few connections, so "
        "the load generator needs little CPU; ratios are paired with bare Starlette's p99 at the same "
        "concurrency in the same round. A tail latency depends on whether the server gets a core when a "
        f"request comes, so the last columns use only *quiet* runs: those in which other processes used under "
        f"{NOISY:.0%} of the machine (`--wait-idle S` waits for such moments before each run)."
    )
    low = Table(["endpoint", "req/s", "p50 ms", "p99 ms", "p99 / bare's p99", "quiet runs", "p99 ms, quiet",
                 "p99 / bare's, quiet"], "lrrrrrrr")
    p99 = _run_attr("low", "p99_ms")
    for kind in t.kinds(1):
        low.add(kind.label, spread(t, kind, 1, _run_attr("low", "rps")).cell(),
                spread(t, kind, 1, _run_attr("low", "p50_ms")).cell(2), spread(t, kind, 1, p99).cell(2),
                "1" if kind is BARE else pair(t, kind, BARE, 1, p99).cell(1),
                f"{len(spread(t, kind, 1, quiet('low', p99)).values)}/{len(t.select(kind, 1))}",
                spread(t, kind, 1, quiet("low", p99)).cell(2),
                "1" if kind is BARE else pair(t, kind, BARE, 1, quiet("low", p99)).cell(1))
    if 1 in t.workers:
        out.table(low)
    open_loop(out, t)
    out.para(
        f"**Where the CPU went** during the -c{cfg.connections} runs, in cores (1.00 = one core busy the whole "
        "run; this machine has as many as it has cores): the server's processes, wrk, Redis, this driver, and "
        "every other process on the machine (from /proc)."
    )
    cpu = Table(["workers", "endpoint", "server", "wrk", "Redis", "driver", "others"], "rlrrrrr")
    for w in t.workers:
        for kind in t.kinds(w):
            def role(name: str) -> Pick:
                return lambda r: r.high.cpu.get(name) if r.high is not None else None
            cpu.add(w, kind.label,
                    *(spread(t, kind, w, role(n), CORES_FLOOR).cell(2) for n in ("server", "wrk", "redis", "driver")),
                    spread(t, kind, w, lambda r: r.high.cpu.other if r.high is not None else None, CORES_FLOOR).cell(2))
    out.table(cpu)
    out.para(
        "**Redis per submission** (1 worker, during the -c50 runs): the submit script's own time per call "
        "(`INFO commandstats`, EVALSHA `usec_per_call`, the commands it runs included) and Redis's whole CPU "
        "time (`INFO cpu`, user + sys: parsing, networking, the script) divided by the submissions recorded, "
        "summed over the primaries on the cluster."
    )
    per = Table(["endpoint", "script µs per call", "Redis CPU µs per submission", "Redis cores"], "lrrr")
    for kind in (SUBMIT, HS256, CLUSTER):
        rows = t.select(kind, 1)
        if not rows:
            continue
        per.add(kind.label,
                Spread.of(r.redis.script_us_per_call for r in rows if r.redis).cell(1),
                Spread.of(r.redis.cpu_us_per(r.redis_submissions) for r in rows if r.redis).cell(1),
                Spread.of((r.high.cpu.get("redis") for r in rows if r.high), CORES_FLOOR).cell(2))
    if len(per):
        out.table(per)
    add_goals(out, t)
    every = Table(["workers", "round", "endpoint", "req/s", "p99 ms", f"-c{cfg.low_connections} req/s",
                   f"-c{cfg.low_connections} p99 ms", "tokens issued", "stream entries / accepted",
                   "CPU: server, wrk, Redis, others", "valid"], "rrlrrrrrrll")
    for r in t.rounds:
        h, lo = r.high, r.low
        every.add(
            r.workers, r.number, r.kind.label, fmt(h.rps if h else None), fmt(h.p99_ms if h else None, 2),
            fmt(lo.rps) if lo else "", fmt(lo.p99_ms, 2) if lo else "", r.issued or "",
            f"{r.stream_added} / {r.accepted}" if r.stream_added is not None else "",
            (f"{h.cpu.get('server'):.2f}, {h.cpu.get('wrk'):.2f}, {h.cpu.get('redis'):.2f}, {h.cpu.other:.2f}"
             if h else ""),
            "yes" if r.valid else "NO: " + "; ".join(r.all_problems),
        )
    out.para("**Every round**").table(every)
    out.data = {"invalid": [r for r in t.rounds if not r.valid], "rounds": t.rounds}
    return out


def open_loop(out: Section, t: Throughput) -> None:
    """``--open-loop F``: latency at a constant F x each submit round's rate (bench/openloop.py)."""
    for w in t.workers:
        runs = [r.openloop for r in t.select(SUBMIT, w) if r.openloop is not None]
        if not runs:
            continue
        out.para(
            f"**Open loop at {t.cfg.open_loop:.0%} of peak** ({w} worker(s), submit): a constant rate from "
            "`bench/openloop.py`, latency counted from when each request was due, so queueing counts; "
            "driver CPU is the share of one core the driver itself used."
        )
        table = Table(["rate req/s", "achieved", "p50 ms", "p90 ms", "p99 ms", "p99.9 ms", "driver CPU"], "rrrrrrr")
        table.add(*(Spread.of(r[k] for r in runs).cell(2 if k.endswith("ms") else 0)
                    for k in ("target_rate", "achieved_rate", "p50_ms", "p90_ms", "p99_ms", "p999_ms")),
                  Spread.of((r["driver_cpu"] for r in runs), CORES_FLOOR).cell(2))
        out.table(table)


def add_goals(out: Section, t: Throughput) -> None:
    cfg = t.cfg
    if 1 not in t.workers:
        return
    core = per_core()
    goal(out, "submit >= 0.25 x bare Starlette per server core, 1 worker (0.30 stretch)",
         pair(t, SUBMIT, BARE, 1, core), 0.25)
    goal(out, "submit with HS256 keys >= 0.40 x bare Starlette per server core, 1 worker",
         pair(t, HS256, BARE, 1, core), 0.40)
    goal(out, "submit >= 0.90 x verify-only per server core, 1 worker", pair(t, SUBMIT, VERIFY, 1, core), 0.90)
    goal(out, f"submit p99 at -c{cfg.low_connections} within 4 x bare's p99 at -c{cfg.low_connections} (quiet rounds)",
         pair(t, SUBMIT, BARE, 1, quiet("low", _run_attr("low", "p99_ms"))), 4.0, at_most=True)
    if cfg.cluster:
        stack = per_core("server", "redis")
        goal(out, "single-Redis submit not below the cluster's, per core of server + Redis (single / cluster), "
             "1 worker", pair(t, SUBMIT, CLUSTER, 1, stack), 1.0)
