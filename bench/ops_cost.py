"""What metrics and JSON access logs cost the submit path (issue 13: at most 5 %).

    .venv/bin/python bench/ops_cost.py [--workers 1,2] [--rounds 6] [--duration 5] [--blocks 20]
        [--sequential] [--on all|metrics|log|nothing] [--wait-idle S] [--noisy 0.10]

``--on nothing`` is an A/A run: both sides identical, so what it reports is the bench's own
resolution on this machine at this time; read the real figures against it.

Starts its own redis-server and keyring, then, for each worker count, the real app twice under
uvicorn (uvloop, httptools), side by side on one Redis:

- **on**: ``FEEDBACK_METRICS=1``, ``FEEDBACK_LOG_FORMAT=json``, one access line per request,
  written to a file (as a container's stderr would be);
- **off**: ``FEEDBACK_METRICS=0``, ``FEEDBACK_ACCESS_LOG=0``.

Each round drives both at once, each with its own wrk (-t1 -c25, ``POST {"score": 1}`` on fresh
tokens, one per request, issued through the API before the round): whatever else the machine
does falls on both sides alike, and the scheduler shares the CPU between two busy servers, so
their throughput ratio is the inverse of their CPU cost per request (``--sequential``: one side
at a time, wrk -t2 -c50, the order alternating from round to round). Two figures, each the
median over rounds of on/off: throughput, and the servers' own CPU time per answered request
(from /proc). Before that, unless ``--blocks 0``, the in-process part: the real app called
directly (no server), on and off alternating in blocks in one process, CPU time per submission. A round with a non-2xx
answer, a socket error or a thread out of tokens is invalid and left out. Each run also
measures the share of the machine that other processes used meanwhile (all busy time less that
of what we started); medians are printed over all valid rounds and over the quiet ones (others
under ``--noisy`` in both runs), and ``--wait-idle S`` waits up to S seconds before each round
for the machine to be quiet. At the end, ``feedback_submissions_total{outcome="recorded"}``
scraped from the "on" node must match the 2xx answers wrk read from it: the metrics counted what
they cost. Needs ``wrk`` and ``redis-server``; stops everything it started.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import resource
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

import httpx

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from bench.registry import Section, measurement  # noqa: E402
from bench.table import Table  # noqa: E402

if TYPE_CHECKING:
    from bench.harness import Bench as HarnessBench
CORES = os.cpu_count() or 1
TOKENS = "/api/v1/feedback/tokens"
API_KEY = "bench-ops-" + uuid.uuid4().hex
UVICORN_FLAGS = ["--loop", "uvloop", "--http", "httptools", "--no-access-log", "--log-level", "warning"]
SIDES = {
    "on": {"FEEDBACK_METRICS": "1", "FEEDBACK_LOG_FORMAT": "json", "FEEDBACK_ACCESS_LOG": "1"},
    "off": {"FEEDBACK_METRICS": "0", "FEEDBACK_ACCESS_LOG": "0"},
}
# wrk: POST {"score": 1} to a new path each request. Thread k takes lines k, k+THREADS, ...; a
# thread out of paths sends one request to a 404 path (counted as non-2xx) and stops.
WRK_SCRIPT = r"""
local threads, counter = {}, 0
function setup(thread)
   thread:set("tid", counter); counter = counter + 1; table.insert(threads, thread)
end
function init(args)
   local n = tonumber(args[2]); paths = {}; local i = 0
   for line in io.lines(args[1]) do
      if line ~= "" then
         if i % n == tid then paths[#paths + 1] = line end
         i = i + 1
      end
   end
   pos, exhausted = 0, 0
   headers = {["Content-Type"] = "application/json"}
end
function request()
   pos = pos + 1
   if pos > #paths then
      exhausted = 1; wrk.thread:stop()
      return wrk.format("POST", "/__out_of_tokens__", headers, '{"score": 1}')
   end
   return wrk.format("POST", paths[pos], headers, '{"score": 1}')
end
function done(summary, latency, requests)
   local exh = 0
   for _, t in ipairs(threads) do exh = exh + (t:get("exhausted") or 0) end
   local e = summary.errors
   io.write(string.format('RESULT {"requests": %d, "duration_us": %d, "non2xx": %d, "errors": %d, ' ..
      '"p50_us": %d, "p99_us": %d, "exhausted": %d}\n', summary.requests, summary.duration, e.status,
      e.connect + e.read + e.write + e.timeout, latency:percentile(50), latency:percentile(99), exh))
end
"""


_TICK = os.sysconf("SC_CLK_TCK")


def machine_busy() -> float:
    """CPU seconds the whole machine spent busy (user, nice, system) since boot."""
    with open("/proc/stat") as f:
        fields = [int(x) for x in f.readline().split()[1:4]]
    return sum(fields) / _TICK


def group_cpu(groups: set[int]) -> float:
    """CPU seconds of the live processes in these process groups."""
    total = 0.0
    for pid in os.listdir("/proc"):
        if not pid.isdigit():
            continue
        try:
            with open(f"/proc/{pid}/stat") as f:
                rest = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(rest[2]) in groups:
            total += (int(rest[11]) + int(rest[12])) / _TICK
    return total


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Group:
    """A process started in a session of its own, stopped with everything it started."""

    def __init__(self, args: list[str], **kw: object) -> None:
        self.proc = subprocess.Popen(args, start_new_session=True, **kw)  # type: ignore[call-overload]

    def stop(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(timeout=15)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=5)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # uvicorn's workers may outlive their supervisor briefly
            try:
                os.killpg(self.proc.pid, 0)
            except ProcessLookupError:
                return
            time.sleep(0.05)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)


def wait_http(url: str, proc: subprocess.Popen[bytes], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"{what} exited with status {proc.returncode}")
        try:
            httpx.get(url, timeout=1.0)
            return
        except httpx.HTTPError:
            time.sleep(0.05)
    raise RuntimeError(f"{what} did not answer within {timeout} s")


@dataclass
class Run:
    side: str
    workers: int
    round: int
    result: dict[str, int]
    other: float = 0.0  # share of the machine other processes used meanwhile
    problems: list[str] = field(default_factory=list)

    @property
    def rps(self) -> float:
        return self.result["requests"] / (self.result["duration_us"] / 1e6)

    @property
    def cpu_us(self) -> float:
        """The server's CPU time (all its workers) per answered request: what the feature costs,
        much less disturbed by other load on the machine than throughput is."""
        return self.result["server_cpu_us"] / max(1, self.result["requests"])


class Bench:
    def __init__(self, args: argparse.Namespace) -> None:
        self.args = args
        self.work = Path(tempfile.mkdtemp(prefix="fbt-ops-bench-"))
        self.groups: list[Group] = []
        self.lua = self.work / "submit.lua"
        self.lua.write_text(WRK_SCRIPT)
        self.runs: list[Run] = []
        self.on_2xx = 0
        self.fastest = 0.0
        self.miscounted: list[str] = []
        self.summary: dict[str, object] = {}  # the figures, printed as the last line (RESULT_JSON)

    def start(self, args: list[str], log: Path, env: dict[str, str] | None = None) -> Group:
        with open(log, "ab") as out:
            group = Group(args, cwd=ROOT, env=env or os.environ.copy(), stdout=out, stderr=out)
        self.groups.append(group)
        return group

    def stop(self, group: Group) -> None:
        group.stop()
        self.groups.remove(group)

    def close(self) -> None:
        for group in list(self.groups):
            with contextlib.suppress(Exception):
                self.stop(group)
        shutil.rmtree(self.work, ignore_errors=True)

    def redis(self) -> str:
        port = free_port()
        args = ["redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(self.work), "--save", "",
                "--appendonly", "no", "--maxmemory-policy", "noeviction"]
        group = self.start(args, self.work / "redis.log")
        deadline = time.monotonic() + 10
        while True:
            try:
                with socket.create_connection(("127.0.0.1", port), timeout=1) as s:
                    s.sendall(b"PING\r\n")
                    if s.recv(16).startswith(b"+PONG"):
                        return f"redis://127.0.0.1:{port}/0"
            except OSError:
                pass
            if group.proc.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError("redis-server did not start")
            time.sleep(0.05)

    def serve(self, side: str, workers: int, redis_url: str, keys: Path) -> tuple[Group, str]:
        port = free_port()
        env = {**os.environ, "REDIS_URL": redis_url, "FEEDBACK_KEYS_DIR": str(keys), "FEEDBACK_API_KEYS": API_KEY,
               "FEEDBACK_PUBLIC_URL": f"http://127.0.0.1:{port}", **SIDES[side]}
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        args = [sys.executable, "-m", "uvicorn", "app.main:app", "--host", "127.0.0.1", "--port", str(port),
                "--workers", str(workers), *UVICORN_FLAGS]
        group = self.start(args, self.work / f"{side}-{workers}.log", env)
        base = f"http://127.0.0.1:{port}"
        wait_http(base + "/healthz", group.proc, f"uvicorn ({side})")
        return group, base

    def tokens(self, base: str, count: int) -> Path:
        """``count`` fresh token paths, issued through the API in batches of 100."""
        paths: list[str] = []
        with httpx.Client(base_url=base, headers={"X-API-Key": API_KEY}, timeout=30) as client:
            while len(paths) < count:
                batch = [{"run_id": str(uuid.uuid4()), "feedback_key": "user_score",
                          "feedback_config": {"type": "continuous", "min": 0, "max": 1}}
                         for _ in range(min(100, count - len(paths)))]
                r = client.post(TOKENS, json=batch)
                r.raise_for_status()
                paths += [httpx.URL(t["url"]).path for t in r.json()]
        out = self.work / f"paths-{uuid.uuid4().hex}.txt"
        out.write_text("\n".join(paths) + "\n")
        return out

    def ours(self) -> float:
        """CPU seconds used by what we started (and reaped) and by this process."""
        own = sum(getattr(resource.getrusage(who), f) for who in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
                  for f in ("ru_utime", "ru_stime"))
        return own + group_cpu({g.proc.pid for g in self.groups})

    def other_share(self, seconds: float) -> float:
        """Over ``seconds`` of sleep: the share of the machine that other processes used."""
        b0, o0, t0 = machine_busy(), self.ours(), time.monotonic()
        time.sleep(seconds)
        return max(0.0, (machine_busy() - b0) - (self.ours() - o0)) / ((time.monotonic() - t0) * CORES)

    def wait_idle(self) -> None:
        deadline = time.monotonic() + self.args.wait_idle
        while time.monotonic() < deadline and self.other_share(1.0) > self.args.noisy:
            pass

    def wrk(self, base: str, paths: Path, seconds: int, server: Group | None = None) -> dict[str, int]:
        args = ["wrk", f"-t{self.args.threads}", f"-c{self.args.connections}", f"-d{seconds}s", "--latency",
                "-s", str(self.lua), base, "--", str(paths), str(self.args.threads)]
        group = {server.proc.pid} if server is not None else set()
        b0, o0, s0, t0 = machine_busy(), self.ours(), group_cpu(group), time.monotonic()
        out = subprocess.run(args, capture_output=True, text=True, timeout=seconds + 60, check=True).stdout
        other = max(0.0, (machine_busy() - b0) - (self.ours() - o0)) / ((time.monotonic() - t0) * CORES)
        server_cpu = group_cpu(group) - s0
        match = re.search(r"^RESULT (\{.*\})$", out, re.M)
        if match is None:
            raise RuntimeError(f"wrk printed no result:\n{out}")
        paths.unlink()
        result: dict[str, int] = json.loads(match.group(1))
        result["other_permille"] = int(other * 1000)
        result["server_cpu_us"] = int(server_cpu * 1e6)
        return result

    def together(self, workers: int, n: int, servers: dict[str, tuple[Group, str]]) -> list[Run]:
        """One round with both sides driven at once, each by its own wrk with half the threads
        and connections: whatever else the machine does then falls on both alike, and the
        scheduler shares the CPU between two always-busy servers, so the throughput ratio is
        the inverse of their CPU cost per request."""
        threads, conns = max(1, self.args.threads // 2), max(1, self.args.connections // 2)
        pool = int(self.fastest * self.args.duration * 2) + 1000
        paths = {side: self.tokens(base, pool) for side, (_, base) in servers.items()}
        groups = {side: group.proc.pid for side, (group, _) in servers.items()}
        b0, o0, t0 = machine_busy(), self.ours(), time.monotonic()
        s0 = {side: group_cpu({pid}) for side, pid in groups.items()}
        procs = {
            side: subprocess.Popen(
                ["wrk", f"-t{threads}", f"-c{conns}", f"-d{self.args.duration}s", "--latency", "-s", str(self.lua),
                 base, "--", str(paths[side]), str(threads)], stdout=subprocess.PIPE, text=True)
            for side, (_, base) in servers.items()
        }
        outs = {side: proc.communicate(timeout=self.args.duration + 60)[0] for side, proc in procs.items()}
        cpu = {side: group_cpu({pid}) - s0[side] for side, pid in groups.items()}
        other = max(0.0, (machine_busy() - b0) - (self.ours() - o0)) / ((time.monotonic() - t0) * CORES)
        runs = []
        for side, out in outs.items():
            match = re.search(r"^RESULT (\{.*\})$", out, re.M)
            if match is None:
                raise RuntimeError(f"wrk printed no result:\n{out}")
            paths[side].unlink()
            res = json.loads(match.group(1))
            res["server_cpu_us"] = int(cpu[side] * 1e6)
            run = Run(side, workers, n, res, other=other)
            if res["non2xx"] or res["errors"]:
                run.problems.append(f"{res['non2xx']} non-2xx, {res['errors']} socket errors")
            if res["exhausted"]:
                run.problems.append("a wrk thread ran out of tokens")
            if side == "on":
                self.on_2xx += res["requests"] - res["non2xx"]
            self.fastest = max(self.fastest, run.rps * 2)
            runs.append(run)
        return runs

    def round(self, workers: int, n: int, side: str, server: Group, base: str) -> Run:
        # Twice what the fastest run so far would use: a thread out of tokens spoils a round.
        pool = int(self.fastest * self.args.duration * 2) + 1000
        warmed = {"requests": 0, "non2xx": 0}
        if self.args.warmup:
            warmed = self.wrk(base, self.tokens(base, int(self.fastest * self.args.warmup * 2) + 500), self.args.warmup)
        paths = self.tokens(base, pool)
        res = self.wrk(base, paths, self.args.duration, server)
        run = Run(side, workers, n, res, other=res["other_permille"] / 1000)
        if res["non2xx"] or res["errors"]:
            run.problems.append(f"{res['non2xx']} non-2xx, {res['errors']} socket errors")
        if res["exhausted"]:
            run.problems.append("a wrk thread ran out of tokens")
        if side == "on":
            self.on_2xx += sum(r["requests"] - r["non2xx"] for r in (warmed, res))
        self.fastest = max(self.fastest, run.rps)
        return run

    def recorded(self, base: str) -> float:
        text = httpx.get(base + "/metrics", timeout=10).text
        match = re.search(r'^feedback_submissions_total\{outcome="recorded"\} (\S+)$', text, re.M)
        return float(match.group(1)) if match else 0.0

    def measure(self, workers: int, redis_url: str, keys: Path) -> None:
        servers = {side: self.serve(side, workers, redis_url, keys) for side in SIDES}
        # A first guess at the rate, for the size of the token pools: a short run on each side.
        self.fastest = 0.0
        for _, base in servers.values():
            probe = self.wrk(base, self.tokens(base, 8000 * workers), 2)
            self.fastest = max(self.fastest, probe["requests"] / 2)
        self.on_2xx = 0
        before = self.recorded(servers["on"][1])
        for n in range(self.args.rounds):
            if self.args.wait_idle:
                self.wait_idle()
            if self.args.sequential:
                order = ("on", "off") if n % 2 == 0 else ("off", "on")
                done = [self.round(workers, n, side, *servers[side]) for side in order]
            else:
                done = self.together(workers, n, servers)
            for run in done:
                self.runs.append(run)
                flag = "" if not run.problems else "  INVALID: " + "; ".join(run.problems)
                print(f"  workers={workers} round {n + 1} {run.side:>3}: {run.rps:8,.0f} req/s  "
                      f"p50 {run.result['p50_us'] / 1000:.2f} ms  p99 {run.result['p99_us'] / 1000:.2f} ms  "
                      f"server CPU {run.cpu_us:5.0f} us/request  other CPU {100 * run.other:3.0f} %{flag}",
                      flush=True)
        counted = self.recorded(servers["on"][1]) - before
        # wrk counts the answers it read; requests in flight when a run stops are recorded too.
        slack = self.args.connections * 2 * self.args.rounds
        print(f"  workers={workers}: the 'on' node's /metrics counted {counted:,.0f} recorded submissions; "
              f"wrk read {self.on_2xx:,} 2xx answers from it (+ up to {slack} in flight at the stops)", flush=True)
        if not self.on_2xx <= counted <= self.on_2xx + slack:
            self.miscounted.append(f"{workers} worker(s): counted {counted:,.0f}, answered {self.on_2xx:,}")
        for group, _ in servers.values():
            self.stop(group)

    def run(self) -> int:
        if shutil.which("wrk") is None or shutil.which("redis-server") is None:
            print("needs wrk and redis-server on PATH (apt-get install -y wrk redis-server)", file=sys.stderr)
            return 2
        keys = self.work / "keys"
        subprocess.run([sys.executable, "-m", "app.cli", "keys", "--dir", str(keys), "init"], cwd=ROOT, check=True,
                       capture_output=True)
        redis_url = self.redis()
        if self.args.blocks:
            inprocess(self, redis_url, keys)
        for workers in self.args.workers if self.args.rounds else []:
            self.measure(workers, redis_url, keys)
        return self.report() if self.args.rounds else 0

    def report(self) -> int:
        print(f"\nmetrics + JSON access logs, on vs off (wrk -t{self.args.threads} -c{self.args.connections}, "
              f"{self.args.rounds} paired rounds of {self.args.duration} s, median of per-round on/off):")
        bad = 0
        for workers in self.args.workers:
            pairs: dict[int, dict[str, Run]] = {}
            for run in self.runs:
                if run.workers == workers:
                    pairs.setdefault(run.round, {})[run.side] = run
            valid = [p for p in pairs.values() if len(p) == 2 and not p["on"].problems and not p["off"].problems]
            bad += len(pairs) - len(valid)
            if not valid:
                print(f"  {workers} worker(s): no valid round")
                continue
            quiet = [p for p in valid if max(p["on"].other, p["off"].other) <= self.args.noisy]
            for label, chosen in (("all valid rounds", valid), ("quiet rounds", quiet)):
                if not chosen:
                    print(f"  {workers} worker(s), {label}: none")
                    continue
                ratios = [p["on"].rps / p["off"].rps for p in chosen]
                on = statistics.median(p["on"].rps for p in chosen)
                off = statistics.median(p["off"].rps for p in chosen)
                ratio = statistics.median(ratios)
                if label == "all valid rounds":
                    self.summary[f"{workers}_workers"] = {
                        "rounds": len(chosen), "on_rps": round(on), "off_rps": round(off), "rps_ratio": round(ratio, 3),
                        "cpu_ratio": round(statistics.median(p["on"].cpu_us / p["off"].cpu_us for p in chosen), 3),
                    }
                print(f"  {workers} worker(s), {label} ({len(chosen)}): on {on:,.0f} req/s, off {off:,.0f} req/s; "
                      f"on/off median {ratio:.3f} (cost {100 * (1 - ratio):.1f} %); "
                      f"rounds {', '.join(f'{r:.3f}' for r in ratios)}")
                cpu = [p["on"].cpu_us / p["off"].cpu_us for p in chosen]
                print(f"      server CPU per request: on {statistics.median(p['on'].cpu_us for p in chosen):.0f} us, "
                      f"off {statistics.median(p['off'].cpu_us for p in chosen):.0f} us; on/off median "
                      f"{statistics.median(cpu):.3f} (cost {100 * (statistics.median(cpu) - 1):.1f} %); "
                      f"rounds {', '.join(f'{r:.3f}' for r in cpu)}")
                # The least disturbed run of each side: on a busy machine, closest to what the code costs.
                best_on, best_off = max(p["on"].rps for p in chosen), max(p["off"].rps for p in chosen)
                low_on, low_off = min(p["on"].cpu_us for p in chosen), min(p["off"].cpu_us for p in chosen)
                print(f"      best of rounds: on {best_on:,.0f} / off {best_off:,.0f} req/s "
                      f"= {best_on / best_off:.3f}; "
                      f"least CPU per request: on {low_on:.0f} / off {low_off:.0f} us = {low_on / low_off:.3f}")
        for problem in self.miscounted:
            print(f"  METRICS MISCOUNTED: {problem}")
        return 1 if bad or self.miscounted else 0


# -- in process: CPU time per request, on and off alternating in one process -------------------

INPROCESS = r"""
import asyncio, contextlib, json, os, statistics, sys, tempfile, time, uuid
from dataclasses import replace
from pathlib import Path

mode, redis_url, keys, api_key, log_path, blocks, per_block = sys.argv[1:8]
blocks, per_block = int(blocks), int(per_block)
if mode == "multiprocess":  # as under several workers: samples go to mmapped files
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = tempfile.mkdtemp(prefix="fbt-ops-bench-mp-")
log = open(log_path, "w")
os.dup2(log.fileno(), 2)
sys.stderr = open(2, "w", closefd=False)

from app.config import Secret, Settings
from app.main import create_app
from app.ops import logs, metrics

logs.configure("json", True)
base = Settings(redis_url=redis_url, keys_dir=Path(keys), api_keys=(Secret(api_key),), public_url="http://bench")
apps = {"on": create_app(replace(base, metrics=True)),
        "off": create_app(replace(base, metrics=False, access_log=False))}


async def call(app, method, path, body, headers=()):
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": method, "scheme": "http",
             "path": path, "raw_path": path.encode(), "query_string": b"", "root_path": "", "client": ("127.0.0.1", 1),
             "server": ("bench", 80), "headers": [(b"host", b"bench"), (b"content-type", b"application/json"),
                                                 (b"content-length", str(len(body)).encode()), *headers]}
    messages = [{"type": "http.request", "body": body, "more_body": False}]
    out = {}

    async def receive():
        return messages.pop() if messages else {"type": "http.disconnect"}

    async def send(message):
        if message["type"] == "http.response.start":
            out["status"] = message["status"]
        elif message["type"] == "http.response.body":
            out["body"] = out.get("body", b"") + message.get("body", b"")

    await app(scope, receive, send)
    return out["status"], out.get("body", b"")


async def tokens(app, n):
    paths = []
    while len(paths) < n:
        batch = [{"run_id": str(uuid.uuid4()), "feedback_key": "k"} for _ in range(min(100, n - len(paths)))]
        status, body = await call(app, "POST", "/api/v1/feedback/tokens", json.dumps(batch).encode(),
                                  [(b"x-api-key", api_key.encode())])
        assert status == 200, body
        # The token URL's path as issued (<jwt>/<token id>): the path a link or the SDK posts to.
        paths += ["/api/v1/feedback/tokens/" + t["url"].split("/api/v1/feedback/tokens/", 1)[1]
                  for t in json.loads(body)]
    return paths


async def main():
    times = {"on": [], "off": []}
    async with contextlib.AsyncExitStack() as stack:
        for app in apps.values():
            await stack.enter_async_context(app.router.lifespan_context(app))
        for n in range(blocks):
            for side in (("on", "off") if n % 2 == 0 else ("off", "on")):
                paths = await tokens(apps["off"], per_block)
                metrics.setup(side == "on")  # process-wide, like the setting in a real process
                t0 = time.process_time()
                for path in paths:
                    status, _ = await call(apps[side], "POST", path, b'{"score": 1}')
                    assert status == 200, status
                times[side].append((time.process_time() - t0) / per_block * 1e6)
    print(json.dumps(times))

try:
    asyncio.run(main())
finally:
    if mode == "multiprocess":
        import shutil
        shutil.rmtree(os.environ["PROMETHEUS_MULTIPROC_DIR"], ignore_errors=True)
"""


def inprocess(bench: Bench, redis_url: str, keys: Path) -> None:
    """Per-request CPU of the real app called directly (no server, no network), metrics and
    access log on against off, alternating blocks in one process: the code's own cost, which
    a busy machine disturbs least. Single-process metrics, then multiprocess mode."""
    print(f"\nin process ({bench.args.blocks} alternating blocks of {bench.args.per_block} sequential submissions; "
          "CPU time per submission, median and least of blocks):")
    for mode in ("single", "multiprocess"):
        out = subprocess.run(
            [sys.executable, "-c", INPROCESS, mode, redis_url, str(keys), API_KEY, str(bench.work / "inprocess.log"),
             str(bench.args.blocks), str(bench.args.per_block)],
            cwd=ROOT, capture_output=True, text=True, timeout=1800, check=True,
        ).stdout
        times = json.loads(out)
        on, off = statistics.median(times["on"]), statistics.median(times["off"])
        bench.summary[f"inprocess_{mode}"] = {"on_us": round(on, 1), "off_us": round(off, 1),
                                              "cost_pct": round(100 * (on / off - 1), 1)}
        low_on, low_off = min(times["on"]), min(times["off"])
        print(f"  {mode:>12} metrics: on {on:.0f} us, off {off:.0f} us (median, cost {on - off:.1f} us = "
              f"{100 * (on / off - 1):.1f} %); least: on {low_on:.0f} us, off {low_off:.0f} us "
              f"(cost {low_on - low_off:.1f} us = {100 * (low_on / low_off - 1):.1f} %)", flush=True)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="bench/ops_cost.py", description=__doc__.split("\n")[0])
    p.add_argument("--workers", default="1,2", help="comma-separated worker counts (default 1,2)")
    p.add_argument("--rounds", type=int, default=6, help="paired wrk rounds per worker count (0: skip that part)")
    p.add_argument("--duration", type=int, default=5, help="measured seconds per run (whole seconds)")
    p.add_argument("--warmup", type=int, default=1, help="seconds of load before each measured run (0: none)")
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--connections", type=int, default=50)
    p.add_argument("--noisy", type=float, default=0.10,
                   help="a round where other processes used more than this share of the machine is noisy")
    p.add_argument("--wait-idle", type=float, default=0.0, metavar="S",
                   help="before each round, wait up to S seconds until other processes leave the machine quiet")
    p.add_argument("--sequential", action="store_true",
                   help="drive one side at a time, alternating (default: both at once, each with half the load)")
    p.add_argument("--blocks", type=int, default=20, help="in-process blocks per side (0: skip that part)")
    p.add_argument("--per-block", type=int, default=300, help="submissions per in-process block")
    p.add_argument("--on", choices=("all", "metrics", "log", "nothing"), default="all",
                   help="what the 'on' side turns on: metrics and access log (default), one of them alone, "
                   "or nothing (an A/A run: how far apart two identical servers measure)")
    args = p.parse_args(argv)
    if args.on == "metrics":
        SIDES["on"] = {**SIDES["on"], "FEEDBACK_ACCESS_LOG": "0"}
    elif args.on == "log":
        SIDES["on"] = {**SIDES["on"], "FEEDBACK_METRICS": "0"}
    elif args.on == "nothing":
        SIDES["on"] = dict(SIDES["off"])
    args.workers = [int(w) for w in args.workers.split(",")]
    bench = Bench(args)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        status = bench.run()
        print(RESULT_JSON, json.dumps(bench.summary), flush=True)
        return status
    finally:
        bench.close()


RESULT_JSON = "RESULT_JSON"


@measurement("ops_cost", "Metrics and access logs: what they cost", quick=False)
def ops_cost(harness: HarnessBench) -> Section:
    """``make bench``'s part: this script in a process of its own (it starts its own Redis and
    servers), 1 worker, fewer rounds than a standalone run; the figures into the report."""
    rounds, blocks = (2, 6) if harness.cfg.quick else (4, 12)
    done = subprocess.run(
        [sys.executable, str(Path(__file__).resolve()), "--workers", "1", "--rounds", str(rounds),
         "--blocks", str(blocks)], cwd=ROOT, capture_output=True, text=True, timeout=1800,
    )
    lines = [line for line in done.stdout.splitlines() if line.startswith(RESULT_JSON)]
    if not lines:
        raise RuntimeError(f"bench/ops_cost.py gave no figures (exit {done.returncode}): {done.stderr[-2000:]}")
    figures = json.loads(lines[-1].removeprefix(RESULT_JSON))
    section = Section("Metrics and access logs: what they cost")
    section.para("Metrics (`FEEDBACK_METRICS=1`) and a JSON access line per request against both off, "
                 "on one Redis. Served: two uvicorn servers side by side under the same load, the ratio of "
                 "their throughput and of their CPU time per request (median of paired rounds). In process: "
                 "the app called directly, CPU time per submission (median of alternating blocks).")
    table = Table(["measure", "on", "off", "on/off"], "lrrr")
    served = figures.get("1_workers")
    if isinstance(served, dict):
        table.add(f"served, req/s ({served['rounds']} rounds)", f"{served['on_rps']:,}", f"{served['off_rps']:,}",
                  f"{served['rps_ratio']:.3f}")
        table.add("served, CPU per request", "", "", f"{served['cpu_ratio']:.3f}")
    for mode in ("single", "multiprocess"):
        inproc = figures.get(f"inprocess_{mode}")
        if isinstance(inproc, dict):
            table.add(f"in process ({mode} metrics), µs per submission", f"{inproc['on_us']}",
                      f"{inproc['off_us']}", f"{1 + inproc['cost_pct'] / 100:.3f}")
    section.table(table)
    section.data.update(figures)
    if isinstance(served, dict):
        section.goal("metrics + access log cost at most 5 % of throughput (1 worker)", served["rps_ratio"] >= 0.95)
    if done.returncode != 0:
        section.note(f"bench/ops_cost.py exited {done.returncode}: a round was invalid or the metrics miscounted "
                     "(run `python bench/ops_cost.py` alone to see which)")
    return section


if __name__ == "__main__":
    sys.exit(main())
