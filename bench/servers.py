"""uvicorn against granian, the same app, the same wrk load (``feedback-tokens serve --server``).

Paired rounds (``bench.throughput.Throughput``, 1 worker, the order rotating each round) of four
servers: bare Starlette and the real service (submit, ES256 keys) each under uvicorn (uvloop,
httptools: the baseline, as in the throughput measurement) and under granian (the ASGI interface,
uvloop, HTTP/1.1: the settings ``serve --server granian`` uses). Every ratio is taken within a
round against bare Starlette on uvicorn, then the median over rounds; "granian / uvicorn" pairs
the same app on the two servers. Per server core counts the CPU of every process of the server
(granian's supervisor, its worker and the worker's Rust threads; uvicorn's one process).

    .venv/bin/python bench/servers.py [--quick] [--rounds N] [--duration S]
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import TYPE_CHECKING

if __package__ in (None, ""):  # run as a script: python bench/servers.py
    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.registry import Section, measurement
from bench.table import Table
from bench.throughput import BARE, SUBMIT, Kind, Throughput

if TYPE_CHECKING:
    from bench.harness import Bench

BARE_GRANIAN = Kind("bare-granian", "bare Starlette", "bare", server="granian")
SUBMIT_GRANIAN = Kind("submit-granian", "submit (ES256, default)", "submit", server="granian")
KINDS = [BARE, BARE_GRANIAN, SUBMIT, SUBMIT_GRANIAN]
SAME_APP = {BARE_GRANIAN.name: BARE, SUBMIT_GRANIAN.name: SUBMIT}
WINS = 1.10  # granian / uvicorn on submit, per server core, that would make granian the faster choice


def section(t: Throughput) -> Section:
    from bench.throughput_report import _run_attr, high_rps, pair, per_core, quiet, spread

    cfg = t.cfg
    core = per_core()
    out = Section("uvicorn and granian")
    out.para(
        f"The same apps under uvicorn (uvloop, httptools) and under granian (ASGI interface, uvloop, HTTP/1.1: "
        f"`feedback-tokens serve --server granian`), 1 worker, wrk -t{cfg.threads} -c{cfg.connections} for "
        f"{cfg.duration} s after {cfg.warmup} s of warm-up and -t1 -c{cfg.low_connections}, {cfg.rounds} paired "
        "round(s), the order rotating. Ratios are per round against **bare Starlette on uvicorn** (the baseline), "
        "then the median (min-max); *granian / uvicorn* pairs the same app on the two servers. *Per server "
        "core*: req/s over the CPU of all the server's processes and threads, the figure a shared machine "
        "reproduces."
    )
    table = Table(["server", "endpoint", "req/s", "req/s per server core", "/ bare on uvicorn",
                   "/ bare on uvicorn, per core", "granian / uvicorn, per core", "granian / uvicorn",
                   "p99 ms", f"p99 ms at -c{cfg.low_connections}", f"p99 at -c{cfg.low_connections}, quiet",
                   "valid rounds"], "llrrrrrrrrrr")
    p99_low = _run_attr("low", "p99_ms")
    for kind in KINDS:
        same = SAME_APP.get(kind.name)
        total = len(t.select(kind, 1, valid_only=False))
        table.add(
            kind.server, kind.label, spread(t, kind, 1, high_rps).cell(), spread(t, kind, 1, core).cell(),
            "1" if kind is BARE else pair(t, kind, BARE, 1, high_rps).cell(2),
            "1" if kind is BARE else pair(t, kind, BARE, 1, core).cell(2),
            pair(t, kind, same, 1, core).cell(2) if same else "",
            pair(t, kind, same, 1, high_rps).cell(2) if same else "",
            spread(t, kind, 1, _run_attr("high", "p99_ms")).cell(2), spread(t, kind, 1, p99_low).cell(2),
            spread(t, kind, 1, quiet("low", p99_low)).cell(2), f"{len(t.select(kind, 1))}/{total}",
        )
    out.table(table)
    cpu = Table(["server", "endpoint", "server cores", "wrk cores", "Redis cores", "others"], "llrrrr")
    for kind in KINDS:
        cpu.add(kind.server, kind.label,
                *(spread(t, kind, 1, lambda r, n=n: r.high.cpu.get(n) if r.high else None, 0.05).cell(2)
                  for n in ("server", "wrk", "redis")),
                spread(t, kind, 1, lambda r: r.high.cpu.other if r.high else None, 0.05).cell(2))
    out.para(f"**Where the CPU went** during the -c{cfg.connections} runs, in cores.").table(cpu)
    every = Table(["round", "server", "endpoint", "req/s", "server cores", "req/s per core", "p99 ms",
                   f"-c{cfg.low_connections} p99 ms", "valid"], "rllrrrrrl")
    for r in t.rounds:
        h, lo = r.high, r.low
        every.add(r.number, r.kind.server, r.kind.label, f"{h.rps:,.0f}" if h else "",
                  f"{h.cpu.get('server'):.2f}" if h else "", f"{core(r):,.0f}" if core(r) else "",
                  f"{h.p99_ms:.2f}" if h else "", f"{lo.p99_ms:.2f}" if lo else "",
                  "yes" if r.valid else "NO: " + "; ".join(r.all_problems))
    out.para("**Every round**").table(every)
    # The question: does granian win? Only a margin beyond the bench's resolution on a
    # shared machine (a few per cent) would be a reason to choose it for speed.
    submit = pair(t, SUBMIT_GRANIAN, SUBMIT, 1, core)
    out.goal(f"granian wins: submit on granian >= {WINS:.2f} x submit on uvicorn, per server core: "
             f"{submit.cell(2) if submit.values else 'not measured'}",
             None if not submit.values or submit.stable is False else submit.median >= WINS)
    out.data = {"invalid": [r for r in t.rounds if not r.valid], "rounds": t.rounds}
    return out


@measurement("servers", "uvicorn and granian", quick=False)
def servers(bench: Bench) -> Section:
    t = Throughput(bench, kinds=KINDS, workers=[1])
    t.run()
    return section(t)


if __name__ == "__main__":
    from bench.harness import standalone

    raise SystemExit(standalone("servers"))
