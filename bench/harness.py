"""The benchmark for issue 5. Entry point: ``python bench/run.py`` (``make bench``).

One run:

1. Starts a private redis-server and a temporary keyring (``python -m app.cli keys init``).
2. For 1 worker, then one worker per core: serves the real service and measures issuance
   (single tokens and batches of 100, with wrk and with a concurrent httpx client); issues the
   pool of tokens that the bare and verify-only rounds send; on the first pass, Redis memory
   per live token and per used token, and the token URL lengths.
3. Several alternating rounds of bare app / verify-only app / real submit, each served on its
   own by uvicorn and driven by wrk (-t2 -c50) for a few seconds after a short warm-up. Every
   submission uses a fresh token, issued through the real API just before its round. A round
   with a non-2xx answer, a socket error, or a thread that ran out of tokens is flagged invalid
   and left out of the medians.
4. In each submit round, right after its wrk run and on the same server: latency at a fixed
   fraction (default 80 %) of that round's peak, with the open-loop driver in
   bench/openloop.py (Debian has no wrk2), again on fresh tokens. Once per worker count, the
   same rate against the bare app shows the driver's own floor.
5. Prints a summary and writes bench/RESULTS.md. Everything it started is stopped on exit, on
   error and on Ctrl-C, and checked to be gone.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import contextlib
import functools
import json
import os
import platform
import re
import secrets
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx

from bench.procs import CpuMeter, Procs, RedisServer, Uvicorn, free_port

ROOT = Path(__file__).resolve().parent.parent
BENCH = ROOT / "bench"
TOKENS = "/api/v1/feedback/tokens"
SUBMIT_BODY = {"score": 1}
TARGETS = {
    "bare": "bench.apps:bare_app",
    "verify": "bench.apps:verify_app",
    "submit": "app.main:app",
}
COUNT_DUPLICATES = """
function response(status, headers, body)
   if status >= 200 and status < 300 and body and
      (string.find(body, '"duplicate":true', 1, true) or string.find(body, '"duplicate": true', 1, true)) then
      duplicates = duplicates + 1
   end
end
"""
NOISY = 0.05  # share of the machine used by other processes above which a round is called noisy
LABELS = {"bare": "bare Starlette", "verify": "verify-only", "submit": "submit (verify + Redis)"}


def token_request() -> dict[str, Any]:
    """A typical token: UUID run id, key user_score, continuous 0..1 (SPEC section 2)."""
    return {
        "run_id": str(uuid.uuid4()),
        "feedback_key": "user_score",
        "feedback_config": {"type": "continuous", "min": 0, "max": 1},
    }


_T0 = time.monotonic()


def log(msg: str) -> None:
    lead = len(msg) - len(msg.lstrip("\n"))
    print("\n" * lead + f"[{time.monotonic() - _T0:5.0f}s] " + msg.lstrip("\n"), flush=True)


def median(values: list[float]) -> float:
    return statistics.median(values) if values else float("nan")


# -- configuration ----------------------------------------------------------------------------


@dataclass
class Config:
    quick: bool
    rounds: int
    duration: int
    warmup: int
    workers: list[int]
    threads: int = 2
    connections: int = 50
    load_fraction: float = 0.8
    issue_seconds: int = 2
    pool_tokens: int = 15000
    memory_tokens: int = 5000
    alg: str | None = None
    public_url: str = "https://feedback.example.com"
    out: Path = BENCH / "RESULTS.md"
    write: bool = True
    wait_idle: float = 0.0
    argv: list[str] = field(default_factory=list)


def parse_args(argv: list[str] | None) -> Config:
    p = argparse.ArgumentParser(
        prog="bench/run.py",
        description="Benchmark the submit path against a bare Starlette endpoint and a verify-only variant.",
    )
    p.add_argument("--quick", action="store_true", help="a short smoke run (about a minute)")
    p.add_argument("--rounds", type=int, help="alternating bare/verify/submit rounds per worker count")
    p.add_argument("--duration", type=int, help="measured seconds per wrk run (whole seconds: wrk's unit)")
    p.add_argument("--warmup", type=int, help="seconds of warm-up load before each measured run")
    p.add_argument("--workers", help="comma-separated worker counts (default: 1,<cores>)")
    p.add_argument("--alg", choices=["EdDSA", "ES256"], help="signing key algorithm (default: the app's)")
    p.add_argument("--load-fraction", type=float, default=0.8, help="open-loop rate as a fraction of peak")
    p.add_argument("--public-url", default="https://feedback.example.com", help="FEEDBACK_PUBLIC_URL")
    p.add_argument("--out", type=Path, default=BENCH / "RESULTS.md", help="where to write the results")
    p.add_argument("--no-write", action="store_true", help="print only; leave RESULTS.md alone")
    p.add_argument("--wait-idle", type=float, default=0.0, metavar="S",
                   help="before each round, wait up to S seconds for other processes to leave the machine idle")
    a = p.parse_args(argv)
    cores = os.cpu_count() or 1
    workers = [int(w) for w in a.workers.split(",")] if a.workers else sorted({1, cores})
    quick = a.quick
    return Config(
        quick=quick,
        rounds=a.rounds or (1 if quick else 3),
        duration=a.duration or (2 if quick else 5),
        warmup=a.warmup if a.warmup is not None else 1,
        workers=workers,
        load_fraction=a.load_fraction,
        issue_seconds=1 if quick else 2,
        pool_tokens=4000 if quick else 15000,
        memory_tokens=2000 if quick else 4000,
        alg=a.alg,
        public_url=a.public_url.rstrip("/"),
        out=a.out,
        write=not a.no_write,
        wait_idle=a.wait_idle,
        argv=sys.argv[1:] if argv is None else argv,
    )


# -- results ----------------------------------------------------------------------------------


@dataclass
class WrkRun:
    kind: str
    workers: int
    round: int
    raw: dict[str, Any]
    tokens_issued: int = 0
    stream_added: int | None = None
    problems: list[str] = field(default_factory=list)
    openloop: dict[str, Any] | None = None
    noise: dict[str, float] = field(default_factory=dict)

    @property
    def rps(self) -> float:
        return self.raw["requests"] / (self.raw["duration_us"] / 1e6)

    @property
    def p50_ms(self) -> float:
        return self.raw["p50_us"] / 1000

    @property
    def p99_ms(self) -> float:
        return self.raw["p99_us"] / 1000

    @property
    def valid(self) -> bool:
        return not self.problems


@dataclass
class Results:
    config: Config
    started: datetime
    runs: list[WrkRun] = field(default_factory=list)
    issuance: dict[int, dict[str, Any]] = field(default_factory=dict)
    floor: dict[int, dict[str, Any]] = field(default_factory=dict)
    memory: dict[str, Any] = field(default_factory=dict)
    lengths: dict[str, Any] = field(default_factory=dict)
    commands: dict[str, str] = field(default_factory=dict)
    machine: dict[str, str] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)
    elapsed: float = 0.0
    noise: dict[str, float] = field(default_factory=dict)
    idle_before: dict[str, float] = field(default_factory=dict)

    def select(self, kind: str, workers: int, valid_only: bool = True) -> list[WrkRun]:
        return [r for r in self.runs if r.kind == kind and r.workers == workers and (r.valid or not valid_only)]

    def med(self, kind: str, workers: int, attr: str) -> float:
        return median([getattr(r, attr) for r in self.select(kind, workers)])

    @property
    def invalid(self) -> list[WrkRun]:
        """Rounds whose wrk run, or whose open-loop run, saw errors: their numbers are not used."""
        return [r for r in self.runs if not r.valid or (r.openloop and openloop_problems(r.openloop))]

    def openloops(self, workers: int) -> list[dict[str, Any]]:
        """The open-loop results of the valid submit rounds."""
        return [r.openloop for r in self.select("submit", workers) if r.openloop and not openloop_problems(r.openloop)]

    def openloop_summary(self, workers: int) -> dict[str, Any] | None:
        runs = self.openloops(workers)
        if not runs:
            return None
        out = {k: median([r[k] for r in runs]) for k in
               ("target_rate", "achieved_rate", "p50_ms", "p90_ms", "p99_ms", "p999_ms", "driver_cpu")}
        out["max_ms"] = max(r["max_ms"] for r in runs)
        out["runs"] = len(runs)
        out["overloaded"] = sum(1 for r in runs if r["achieved_rate"] < 0.97 * r["target_rate"])
        return out


def openloop_problems(res: dict[str, Any]) -> list[str]:
    problems = []
    if res.get("non2xx"):
        problems.append(f"{res['non2xx']} non-2xx")
    if res.get("lost"):
        problems.append(f"{res['lost']} lost")
    if res.get("error"):
        problems.append(str(res["error"]))
    if res.get("paths_exhausted"):
        problems.append("ran out of fresh tokens")
    if res.get("duplicates"):
        problems.append(f"{res['duplicates']} answers said duplicate (a token used twice)")
    return problems


# -- the bench ----------------------------------------------------------------------------------


class Bench:
    def __init__(self, cfg: Config) -> None:
        self.cfg = cfg
        self.procs = Procs()
        self.tmp = Path(tempfile.mkdtemp(prefix="fbt-bench-"))
        self.redis = RedisServer(self.procs, self.tmp)
        self.keys_dir = self.tmp / "keys"
        self.api_key = "bench-" + secrets.token_urlsafe(18)
        self.results = Results(cfg, datetime.now(UTC))
        self.pool: list[str] = []  # token URL paths for the bare and verify-only rounds
        self.dead_port = free_port()  # nothing listens here: the verify-only app's REDIS_URL
        self.logs = self.tmp / "logs"
        self.logs.mkdir()
        self.file_counter = 0
        self.cpu = CpuMeter(self.procs)

    # -- environment ----------------------------------------------------------------------

    def env(self, kind: str) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("FEEDBACK_") and k != "REDIS_URL"}
        env["PYTHONPATH"] = os.pathsep.join(p for p in [str(ROOT), env.get("PYTHONPATH", "")] if p)
        env["PYTHONDONTWRITEBYTECODE"] = "1"
        env["REDIS_URL"] = self.redis.url if kind != "verify" else f"redis://127.0.0.1:{self.dead_port}/0"
        env["FEEDBACK_KEYS_DIR"] = str(self.keys_dir)
        env["FEEDBACK_API_KEYS"] = self.api_key
        env["FEEDBACK_PUBLIC_URL"] = self.cfg.public_url
        return env

    def setup(self) -> None:
        self.redis.start()
        self.results.commands["redis"] = " ".join(
            ["redis-server", "--port", "PORT", "--bind", "127.0.0.1", "--save", "''", "--appendonly", "no",
             "--maxmemory-policy", "noeviction"]
        )
        cmd = [sys.executable, "-m", "app.cli", "keys", "--dir", str(self.keys_dir), "init"]
        if self.cfg.alg:
            cmd += ["--alg", self.cfg.alg]
        out = subprocess.run(cmd, cwd=ROOT, env=self.env("submit"), capture_output=True, text=True, timeout=60)
        if out.returncode != 0:
            raise RuntimeError(f"keys init failed:\n{out.stdout}{out.stderr}")
        self.results.commands["keys"] = "python -m app.cli keys --dir KEYS_DIR init" + (
            f" --alg {self.cfg.alg}" if self.cfg.alg else ""
        )
        self.results.machine = machine_info()

    @contextlib.contextmanager
    def serve(self, kind: str, workers: int) -> Iterator[Uvicorn]:
        server = Uvicorn(
            self.procs, sys.executable, TARGETS[kind], workers, self.env(kind), ROOT,
            self.logs / f"{kind}-{workers}.log",
        )
        self.results.commands[f"serve {kind}"] = server.command()
        server.start()
        try:
            yield server
        finally:
            server.stop()

    def paths_file(self, paths: list[str], name: str) -> Path:
        self.file_counter += 1
        path = self.tmp / f"{self.file_counter:03d}-{name}.txt"
        path.write_text("\n".join(paths) + "\n")
        return path

    # -- issuing ----------------------------------------------------------------------------

    def issue(self, base: str, n: int, batch: int = 100, concurrency: int = 8) -> tuple[list[dict[str, Any]], float]:
        """Issue ``n`` tokens through the API; returns the answers (in order) and the seconds taken."""
        bodies = []
        for start in range(0, n, batch):
            items = [token_request() for _ in range(min(batch, n - start))]
            bodies.append(json.dumps(items if batch > 1 else items[0]).encode())
        headers = {"X-API-Key": self.api_key, "Content-Type": "application/json"}

        async def go() -> tuple[list[dict[str, Any]], float]:
            out: list[Any] = [None] * len(bodies)
            queue = list(range(len(bodies)))
            limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
            async with httpx.AsyncClient(base_url=base, limits=limits, timeout=60) as client:

                async def worker() -> None:
                    while queue:
                        i = queue.pop()
                        r = await client.post(TOKENS, content=bodies[i], headers=headers)
                        if r.status_code != 200:
                            raise RuntimeError(f"issuance answered {r.status_code}: {r.text[:300]}")
                        out[i] = r.json()

                t0 = time.perf_counter()
                await asyncio.gather(*(worker() for _ in range(concurrency)))
                elapsed = time.perf_counter() - t0
            answers: list[dict[str, Any]] = []
            for item in out:
                answers.extend(item if isinstance(item, list) else [item])
            return answers, elapsed

        return asyncio.run(go())

    def submit_all(self, base: str, paths: list[str], concurrency: int = 8) -> dict[int, int]:
        """Submit once on each path with httpx; returns the count of each status."""

        async def go() -> dict[int, int]:
            counts: dict[int, int] = {}
            queue = list(paths)
            limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)
            async with httpx.AsyncClient(base_url=base, limits=limits, timeout=60) as client:

                async def worker() -> None:
                    while queue:
                        r = await client.post(queue.pop(), json=SUBMIT_BODY)
                        counts[r.status_code] = counts.get(r.status_code, 0) + 1

                await asyncio.gather(*(worker() for _ in range(concurrency)))
            return counts

        return asyncio.run(go())

    # -- load generators ------------------------------------------------------------------------

    def wrk(self, url: str, script: Path, args: list[str], duration: float, connections: int | None = None) -> dict:
        if duration <= 0:
            return {}
        c = connections or self.cfg.connections
        cmd = [
            "wrk", f"-t{self.cfg.threads}", f"-c{c}", f"-d{duration:g}s", "--latency", "--timeout", "10s",
            "-s", str(script), url, "--", *args,
        ]
        proc = self.procs.popen(cmd, "wrk", stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            out, err = proc.communicate(timeout=duration + 60)
        finally:
            self.procs.stop(proc)
        text = out.decode(errors="replace")
        m = re.search(r"^BENCH_RESULT (\{.*\})$", text, re.M)
        if proc.returncode != 0 or m is None:
            raise RuntimeError(f"wrk failed ({proc.returncode}):\n{text}\n{err.decode(errors='replace')}")
        return json.loads(m.group(1))  # type: ignore[no-any-return]

    def wrk_paths(self, base: str, paths_file: Path, mode: str, duration: float) -> dict:
        script = BENCH / "paths.lua"
        if mode == "once":  # submissions: also count answers that say "duplicate": true
            script = self.tmp / "paths-submit.lua"
            if not script.exists():
                script.write_text((BENCH / "paths.lua").read_text() + COUNT_DUPLICATES)
        return self.wrk(base, script, [str(paths_file), str(self.cfg.threads), mode], duration)

    def openloop(self, port: int, paths_file: Path, rate: float) -> dict[str, Any]:
        cmd = [
            sys.executable, "-m", "bench.openloop", "--port", str(port), "--paths", str(paths_file),
            "--rate", f"{rate:.0f}", "--duration", f"{self.cfg.duration:g}", "--warmup", f"{self.cfg.warmup:g}",
            "--connections", str(self.cfg.connections),
        ]
        proc = self.procs.popen(cmd, "open-loop driver", cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        try:
            out, err = proc.communicate(timeout=self.cfg.duration + self.cfg.warmup + 90)
        finally:
            self.procs.stop(proc)
        if proc.returncode != 0:
            raise RuntimeError(f"open-loop driver failed:\n{err.decode(errors='replace')}")
        return json.loads(out)  # type: ignore[no-any-return]

    @functools.cached_property
    def stream_key(self) -> str:
        """The feedback stream's key, as the app names it under the bench's environment."""
        try:
            from app.config import Settings

            return str(Settings.from_env(self.env("submit")).stream_key)
        except Exception:
            return "{fbt}:feedback"

    def stream_len(self) -> int:
        from redis.exceptions import ResponseError

        try:
            return int(self.redis.client().xlen(self.stream_key))
        except ResponseError:
            return 0

    # -- phases ---------------------------------------------------------------------------------

    def measure_memory(self, server: Uvicorn) -> None:
        n = self.cfg.memory_tokens
        r = self.redis.client()
        r.flushall()
        time.sleep(0.2)
        before = self.redis.used_memory()
        answers, _ = self.issue(server.base, n)
        issued = self.redis.used_memory()
        counts = self.submit_all(server.base, [urlsplit(a["url"]).path for a in answers])
        used = self.redis.used_memory()
        if counts != {200: n}:
            self.results.notes.append(f"memory measurement: submissions answered {counts}, expected {n} x 200")
        self.results.memory = {
            "tokens": n,
            "before": before,
            "per_live": (issued - before) / n,
            "per_used": (used - before) / n,
            "keys": r.dbsize(),
            "stream_entries": self.stream_len(),
        }
        log(f"  redis memory: {self.results.memory['per_live']:.0f} B per live token, "
            f"{self.results.memory['per_used']:.0f} B per used token (token record + stream entry), {n} tokens")

    def measure_issuance(self, server: Uvicorn, workers: int) -> None:
        cfg = self.cfg
        out: dict[str, Any] = {}
        # Batches of 100 with httpx (8 in flight); these tokens become the bare/verify pool.
        want = max(cfg.pool_tokens - len(self.pool), 100 * 20)
        answers, secs = self.issue(server.base, want, batch=100, concurrency=8)
        self.pool.extend(urlsplit(a["url"]).path for a in answers)
        out["batch_httpx"] = len(answers) / secs
        if not self.results.lengths:
            self.record_lengths(answers)
        # Single tokens with httpx, for about issue_seconds. 8 in flight: httpx's connection pool
        # gets slower, not faster, with many more (about 1.5k requests/s at 8, 400 at 50 here).
        answers, secs = self.issue(server.base, 1500 * cfg.issue_seconds, batch=1, concurrency=8)
        out["single_httpx"] = len(answers) / secs
        # The same with wrk: what the server does when the client costs next to nothing.
        url = server.base + TOKENS
        script = BENCH / "issue.lua"
        single = self.wrk(url, script, [self.api_key, "1"], cfg.issue_seconds)
        batch = self.wrk(url, script, [self.api_key, "100"], cfg.issue_seconds, connections=8)
        for name, raw, size in (("single_wrk", single, 1), ("batch_wrk", batch, 100)):
            rps = raw["requests"] / (raw["duration_us"] / 1e6)
            out[name] = rps * size
            out[name + "_p99_ms"] = raw["p99_us"] / 1000
            bad = raw["non2xx"] + raw["connect_errors"] + raw["read_errors"] + raw["write_errors"] + raw["timeouts"]
            if bad:
                self.results.notes.append(f"issuance {name} with {workers} worker(s): {bad} errors/non-2xx")
                out[name + "_errors"] = bad
        self.results.issuance[workers] = out
        self.results.commands["issue wrk"] = (
            f"wrk -t{cfg.threads} -c{cfg.connections} (batches: -c8) -d{cfg.issue_seconds:g}s --latency "
            "-s bench/issue.lua http://127.0.0.1:PORT/api/v1/feedback/tokens -- API_KEY 1|100"
        )
        log(f"  issuance, {workers} worker(s): batch-100 {out['batch_wrk']:,.0f} tokens/s (wrk), "
            f"{out['batch_httpx']:,.0f} (httpx); single {out['single_wrk']:,.0f} tokens/s (wrk), "
            f"{out['single_httpx']:,.0f} (httpx)")

    def record_lengths(self, answers: list[dict[str, Any]]) -> None:
        urls = [a["url"] for a in answers]
        paths = [urlsplit(u).path for u in urls]
        jwts = [p.rsplit("/", 2)[1] for p in paths]  # paths end in <jwt>/<token id>
        header = json.loads(base64.urlsafe_b64decode(jwts[0].split(".")[0] + "=="))
        self.results.lengths = {
            "base": self.cfg.public_url,
            "jwt_median": median([len(j) for j in jwts]),
            "jwt_max": max(len(j) for j in jwts),
            "path_median": median([len(p) for p in paths]),
            "path_max": max(len(p) for p in paths),
            "url_median": median([len(u) for u in urls]),
            "url_max": max(len(u) for u in urls),
            "alg": header.get("alg", "?"),
            "example": urls[0],
        }

    def check_run(self, run: WrkRun) -> None:
        raw = run.raw
        if raw["non2xx"]:
            run.problems.append(f"{raw['non2xx']} non-2xx answers")
        socket_errors = raw["connect_errors"] + raw["read_errors"] + raw["write_errors"] + raw["timeouts"]
        if socket_errors:
            run.problems.append(f"{socket_errors} socket errors/timeouts")
        if raw.get("exhausted"):
            run.problems.append("ran out of fresh tokens (a wrk thread stopped early)")
        if raw.get("duplicates"):
            run.problems.append(f"{raw['duplicates']} answers said duplicate: a token was used twice")
        if run.kind == "submit" and run.stream_added is not None and run.stream_added < raw["requests"] - raw["non2xx"]:
            run.problems.append(
                f"only {run.stream_added} stream entries for {raw['requests'] - raw['non2xx']} accepted submissions"
            )

    def wait_idle(self) -> None:
        deadline = time.monotonic() + self.cfg.wait_idle
        while time.monotonic() < deadline:
            a = self.cpu.sample()
            time.sleep(0.5)
            if self.cpu.foreign(a, self.cpu.sample())["other"] < NOISY:
                return

    def round(self, kind: str, workers: int, rnd: int) -> WrkRun:
        if self.cfg.wait_idle > 0:
            self.wait_idle()
        cpu0 = self.cpu.sample()
        run = self._round(kind, workers, rnd)
        run.noise = self.cpu.foreign(cpu0, self.cpu.sample())
        if run.noise["other"] > NOISY:
            log(f"  [{workers}w r{rnd}]   other processes used {run.noise['other']:.0%} of the machine during this "
                "round: its numbers are noisy")
        return run

    def _round(self, kind: str, workers: int, rnd: int) -> WrkRun:
        cfg = self.cfg
        with self.serve(kind, workers) as server:
            issued = 0
            if kind == "submit":
                estimate = max([r.rps for r in self.results.select("verify", workers, valid_only=False)
                                + self.results.select("submit", workers, valid_only=False)] or [4000.0 * workers])
                # Verify-only is an upper bound of submit; 1.5x covers noise between the two rounds.
                need_warm = int(estimate * 1.5 * cfg.warmup) + 2 * cfg.connections
                need_main = int(estimate * 1.5 * cfg.duration) + 2 * cfg.connections
                answers, _ = self.issue(server.base, need_warm + need_main)
                issued = len(answers)
                paths = [urlsplit(a["url"]).path for a in answers]
                warm_file = self.paths_file(paths[:need_warm], f"submit-warm-w{workers}-r{rnd}")
                main_file = self.paths_file(paths[need_warm:], f"submit-w{workers}-r{rnd}")
                mode = "once"
                self.pool.extend(paths)  # used tokens still verify: fine for verify-only rounds
            else:
                split = min(len(self.pool) // 5, int(4000 * workers * cfg.warmup) + 100)
                warm_file = self.paths_file(self.pool[-split:], f"{kind}-warm-w{workers}-r{rnd}")
                main_file = self.paths_file(self.pool[:-split], f"{kind}-w{workers}-r{rnd}")
                mode = "cycle"
            warm = self.wrk_paths(server.base, warm_file, mode, cfg.warmup)
            before = self.stream_len() if kind == "submit" else None
            raw = self.wrk_paths(server.base, main_file, mode, cfg.duration)
            if before is not None:
                time.sleep(0.2)  # let the last in-flight submissions land
            run = WrkRun(kind, workers, rnd, raw, tokens_issued=issued)
            if before is not None:
                run.stream_added = self.stream_len() - before
            # A warm-up that ran out of tokens is only shorter; its stop request is a 404, not an error.
            if warm and warm["non2xx"] - warm.get("exhausted", 0) > 0:
                run.problems.append(f"warm-up: {warm['non2xx']} non-2xx answers")
            if warm and warm.get("duplicates"):
                run.problems.append(f"warm-up: {warm['duplicates']} answers said duplicate")
            self.check_run(run)
            if kind == "submit" and run.valid and cfg.load_fraction > 0:
                run.openloop = self.at_fraction(server, cfg.load_fraction * run.rps, f"w{workers}-r{rnd}")
        self.results.commands["wrk"] = (
            f"wrk -t{cfg.threads} -c{cfg.connections} -d{cfg.duration:g}s --latency --timeout 10s "
            f"-s bench/paths.lua http://127.0.0.1:PORT -- PATHS_FILE {cfg.threads} once|cycle"
        )
        flag = "" if run.valid else "   INVALID: " + "; ".join(run.problems)
        wraps = f", {raw['wraps']} wraps" if raw.get("wraps") else ""
        log(f"  [{workers}w r{rnd}] {LABELS[kind]:<24} {run.rps:>9,.0f} req/s  p50 {run.p50_ms:6.2f} ms  "
            f"p99 {run.p99_ms:6.2f} ms  non-2xx {raw['non2xx']}{wraps}{flag}")
        if run.openloop:
            ol = run.openloop
            bad = openloop_problems(ol)
            log(f"  [{workers}w r{rnd}]   open loop at {ol['target_rate']:,.0f} req/s ({cfg.load_fraction:.0%}): "
                f"achieved {ol['achieved_rate']:,.0f}, p50 {ol['p50_ms']:.2f} ms, p99 {ol['p99_ms']:.2f} ms, "
                f"p99.9 {ol['p999_ms']:.2f} ms" + ("   INVALID: " + "; ".join(bad) if bad else ""))
        self.results.runs.append(run)
        return run

    def at_fraction(self, server: Uvicorn, rate: float, name: str) -> dict[str, Any]:
        """Open-loop run at ``rate`` on fresh tokens, against the running submit server."""
        cfg = self.cfg
        total = int(rate * (cfg.duration + cfg.warmup) * 1.05) + 100
        answers, _ = self.issue(server.base, total)
        paths = [urlsplit(a["url"]).path for a in answers]
        self.pool.extend(paths)
        res = self.openloop(server.port, self.paths_file(paths, f"openloop-{name}"), rate)
        self.results.commands["open-loop"] = (
            f"python -m bench.openloop --port PORT --paths PATHS_FILE --rate RATE --duration {cfg.duration:g} "
            f"--warmup {cfg.warmup:g} --connections {cfg.connections}"
        )
        return res

    def driver_floor(self, workers: int) -> None:
        """The open-loop driver against the bare app at the median open-loop rate: its own floor."""
        summary = self.results.openloop_summary(workers)
        if summary is None:
            return
        rate = summary["target_rate"]
        with self.serve("bare", workers) as server:
            need = int(rate * (self.cfg.duration + self.cfg.warmup) * 1.05) + 100
            floor = self.openloop(server.port, self.paths_file(self.pool[:need], f"floor-w{workers}"), rate)
        self.results.floor[workers] = floor
        log(f"  [{workers}w] open-loop driver floor: bare app at {rate:,.0f} req/s: p50 {floor['p50_ms']:.2f} ms, "
            f"p99 {floor['p99_ms']:.2f} ms (driver used {floor['driver_cpu']:.0%} of a core)")

    def run(self) -> Results:
        t0 = time.monotonic()
        cfg = self.cfg
        a = self.cpu.sample()
        time.sleep(1.0)
        self.results.idle_before = self.cpu.foreign(a, self.cpu.sample())
        if self.results.idle_before["other"] > NOISY:
            log(f"bench: the machine is not idle: other processes use {self.results.idle_before['other']:.0%} "
                "of its CPU; the numbers will be noisy")
        cpu0 = self.cpu.sample()
        self.setup()
        log(f"bench: {os.cpu_count()} cores, workers {cfg.workers}, {cfg.rounds} round(s) of "
            f"{cfg.duration:g}s (+{cfg.warmup:g}s warm-up), wrk -t{cfg.threads} -c{cfg.connections}")
        for i, workers in enumerate(cfg.workers):
            log(f"\n== {workers} worker(s) ==")
            with self.serve("submit", workers) as server:
                if i == 0:
                    self.measure_memory(server)
                self.measure_issuance(server, workers)
            for rnd in range(1, cfg.rounds + 1):
                for kind in ("bare", "verify", "submit"):
                    self.round(kind, workers, rnd)
            if cfg.load_fraction > 0:
                self.driver_floor(workers)
        self.results.elapsed = time.monotonic() - t0
        self.results.noise = self.cpu.foreign(cpu0, self.cpu.sample())
        return self.results

    def close(self, keep_logs: bool = False) -> list[str]:
        """Stop everything; remove the temp dir (keys, token lists). Server logs are kept, in a
        directory of their own, when asked (after a failure)."""
        self.procs.stop_all()
        left = self.procs.leftovers()
        if keep_logs:
            kept = Path(tempfile.mkdtemp(prefix="fbt-bench-logs-"))
            for f in self.logs.iterdir():
                shutil.copy2(f, kept / f.name)
            with contextlib.suppress(OSError):
                shutil.copy2(self.redis.dir / "redis.log", kept / "redis.log")
            self.logs = kept
        if not left:
            shutil.rmtree(self.tmp, ignore_errors=True)
        return left


# -- reporting ------------------------------------------------------------------------------------


def machine_info() -> dict[str, str]:
    info = {
        "cores": str(os.cpu_count()),
        "platform": platform.platform(),
        "python": platform.python_version(),
    }
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                info["cpu"] = line.split(":", 1)[1].strip()
                break
    for name, cmd in (("wrk", ["wrk", "--version"]), ("redis", ["redis-server", "--version"])):
        with contextlib.suppress(Exception):
            out = subprocess.run(cmd, capture_output=True, text=True, timeout=10)
            info[name] = (out.stdout or out.stderr).splitlines()[0].strip()
    with contextlib.suppress(Exception):
        rev = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True,
                             timeout=10).stdout.strip()
        dirty = subprocess.run(["git", "status", "--porcelain", "--", "app"], cwd=ROOT, capture_output=True,
                               text=True, timeout=10).stdout.strip()
        info["commit"] = rev + (" (app/ has uncommitted changes)" if dirty else "")
    return info


def openloop_cell(ol: dict[str, Any] | None) -> str:
    if not ol:
        return ""
    bad = openloop_problems(ol)
    return (f"{ol['target_rate']:,.0f}, {ol['achieved_rate']:,.0f}, {ol['p50_ms']:.2f}, {ol['p99_ms']:.2f}"
            + (" INVALID: " + "; ".join(bad) if bad else ""))


def fmt(x: float, digits: int = 0) -> str:
    if x != x:
        return "n/a"
    return f"{x:,.{digits}f}"


def ratio(a: float, b: float) -> str:
    if a != a or b != b or not b:
        return "n/a"
    return f"{a / b:.2f}"


def summary_table(res: Results) -> list[str]:
    lines = [
        "| workers | endpoint | req/s (median) | p50 ms | p99 ms | / bare | / verify-only | valid rounds |",
        "|---:|---|---:|---:|---:|---:|---:|---:|",
    ]
    for w in res.config.workers:
        bare = res.med("bare", w, "rps")
        verify = res.med("verify", w, "rps")
        for kind in ("bare", "verify", "submit"):
            rps = res.med(kind, w, "rps")
            valid = len(res.select(kind, w))
            total = len(res.select(kind, w, valid_only=False))
            lines.append(
                f"| {w} | {LABELS[kind]} | {fmt(rps)} | {fmt(res.med(kind, w, 'p50_ms'), 2)} | "
                f"{fmt(res.med(kind, w, 'p99_ms'), 2)} | {ratio(rps, bare) if kind != 'bare' else '1.00'} | "
                f"{ratio(rps, verify) if kind == 'submit' else ''} | {valid}/{total} |"
            )
    return lines


def goals(res: Results) -> list[str]:
    """The goals of issue 5, checked against this run."""
    out = []
    w1 = 1 if 1 in res.config.workers else res.config.workers[0]
    sub, bare, ver = (res.med(k, w1, "rps") for k in ("submit", "bare", "verify"))

    def line(ok: bool | None, text: str) -> None:
        mark = "n/a" if ok is None else ("met" if ok else "NOT met")
        out.append(f"| {text} | {mark} |")

    out += ["| goal (issue 5) | this run |", "|---|---|"]
    r_bare = sub / bare if bare == bare and bare else float("nan")
    r_ver = sub / ver if ver == ver and ver else float("nan")
    line(None if r_bare != r_bare else r_bare >= 0.30, f"submit >= 0.30 x bare, {w1} worker: {r_bare:.2f}")
    line(None if r_ver != r_ver else r_ver >= 0.85, f"submit >= 0.85 x verify-only, {w1} worker: {r_ver:.2f}")
    for w in res.config.workers:
        ol = res.openloop_summary(w)
        if ol is not None:
            over = f" ({ol['overloaded']} of {ol['runs']} runs fell behind the rate)" if ol["overloaded"] else ""
            line(ol["p99_ms"] < 20 and not ol["overloaded"],
                 f"p99 < 20 ms at {res.config.load_fraction:.0%} of peak, {w} worker(s): {ol['p99_ms']:.1f} ms{over}")
    for w, iss in sorted(res.issuance.items()):
        best = max(iss["batch_wrk"], iss["batch_httpx"])
        line(best / w >= 5000, f"issuance >= 5,000 tokens/s per worker (batches of 100), {w} worker(s): "
                               f"{best / w:,.0f} per worker")
    if res.lengths:
        p = res.lengths["path_median"]
        line(p < 400, f"typical token URL path < 400 characters (< 300 stretch): {p:.0f}")
    return out


def render(res: Results) -> str:
    cfg = res.config
    m = res.machine
    L: list[str] = []
    L += [
        "# Benchmark results",
        "",
        "Written by `bench/run.py` (`make bench`); see `bench/README.md` for what each number means.",
        "",
        f"- date: {res.started.strftime('%Y-%m-%d %H:%M UTC')}; run took {res.elapsed:.0f} s"
        + (" (`--quick`: a smoke run, not for comparison)" if cfg.quick else ""),
        f"- machine: {m.get('cores')} cores (`os.cpu_count()`), {m.get('cpu', '?')}, {m.get('platform')}",
        f"- software: Python {m.get('python')}, {m.get('wrk', 'wrk ?')}, {m.get('redis', 'redis ?')}",
        f"- code: commit {m.get('commit', '?')}; signing algorithm {res.lengths.get('alg', '?')}",
        f"- other activity: processes other than the bench's used {res.noise.get('other', 0):.0%} of the machine's CPU "
        f"during the run ({res.idle_before.get('other', 0):.0%} in the second before it), hypervisor steal "
        f"{res.noise.get('steal', 0):.0%}" + (" -- **the machine was busy: numbers are noisy**"
                                              if res.noise.get("other", 0) > NOISY else ""),
        f"- load: wrk -t{cfg.threads} -c{cfg.connections}, {cfg.rounds} alternating round(s) per worker count "
        f"(bare, verify-only, submit), {cfg.duration:g} s measured after {cfg.warmup:g} s of warm-up; "
        "every figure below is the median over the valid rounds",
        "",
        "## Submit throughput and latency",
        "",
        *summary_table(res),
        "",
    ]
    if any(res.openloop_summary(w) for w in cfg.workers):
        L += [
            f"## Latency at {cfg.load_fraction:.0%} of peak (open loop)",
            "",
            "In each submit round, right after the wrk run and on the same server: a constant request rate of "
            f"{cfg.load_fraction:.0%} of that round's req/s from `bench/openloop.py` (wrk2 is not in Debian), "
            f"{cfg.connections} connections, fresh tokens, {cfg.duration:g} s measured after {cfg.warmup:g} s. "
            "Latency counts from the moment each request was due to be sent (1 ms timer ticks), so time spent "
            "waiting for a free connection or queued in the server is included. Medians over the rounds; max is "
            "the largest of any round. The last column is the same driver against the bare app at the same rate: "
            "the driver's own floor on this machine.",
            "",
            "| workers | rate req/s | achieved | p50 ms | p90 ms | p99 ms | p99.9 ms | max ms | runs | fell behind | "
            "bare p99 ms at same rate |",
            "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for w in cfg.workers:
            ol = res.openloop_summary(w)
            if ol is None:
                continue
            fl = res.floor.get(w, {})
            L.append(
                f"| {w} | {fmt(ol['target_rate'])} | {fmt(ol['achieved_rate'])} | {ol['p50_ms']:.2f} | "
                f"{ol['p90_ms']:.2f} | {ol['p99_ms']:.2f} | {ol['p999_ms']:.2f} | {ol['max_ms']:.2f} | "
                f"{ol['runs']} | {ol['overloaded']} | {fl.get('p99_ms', float('nan')):.2f} |"
            )
        L += ["", "\"fell behind\": runs whose achieved rate stayed under 97 % of the target (the server, or the "
              "machine it shares with the driver, could not keep up; latency then grows with the run's length).", ""]
    if res.issuance:
        L += [
            "## Issuance",
            "",
            "Tokens per second through `POST /api/v1/feedback/tokens` (typical token, a new run id each). "
            f"wrk: -c{cfg.connections} for single tokens, -c8 for batches; httpx: a concurrent `AsyncClient` "
            "in this process, 8 requests in flight, which is client-bound (1,000 to 1,500 requests/s here) for single "
            "tokens.",
            "",
            "| workers | batch of 100, wrk | batch of 100, httpx | single, wrk | single, httpx | "
            "batch p99 ms (wrk) | single p99 ms (wrk) |",
            "|---:|---:|---:|---:|---:|---:|---:|",
        ]
        for w, iss in sorted(res.issuance.items()):
            L.append(
                f"| {w} | {fmt(iss['batch_wrk'])} | {fmt(iss['batch_httpx'])} | {fmt(iss['single_wrk'])} | "
                f"{fmt(iss['single_httpx'])} | {iss['batch_wrk_p99_ms']:.1f} | {iss['single_wrk_p99_ms']:.1f} |"
            )
        L.append("")
    if res.lengths or res.memory:
        L += ["## Token size and Redis memory", "", "| measure | value |", "|---|---|"]
        ln = res.lengths
        if ln:
            L += [
                f"| JWT length, median (max) | {ln['jwt_median']:.0f} ({ln['jwt_max']}) characters |",
                f"| token URL path, median (max) | {ln['path_median']:.0f} ({ln['path_max']}) characters |",
                f"| full token URL with base `{ln['base']}`, median (max) | {ln['url_median']:.0f} "
                f"({ln['url_max']}) characters |",
            ]
        mem = res.memory
        if mem:
            L += [
                f"| Redis memory per live (issued, unused) token | {mem['per_live']:.0f} bytes |",
                f"| Redis memory per used token (record + stream entry) | {mem['per_used']:.0f} bytes |",
            ]
        L.append("")
        if mem:
            L += [
                f"Memory: `INFO memory` `used_memory` on an emptied Redis, before and after issuing {mem['tokens']:,} "
                "typical tokens (each with its own run id, so each also creates its run's index), divided by "
                "the count; then again after one submission on each of them.",
                "",
            ]
        if ln:
            L += [f"Example URL: `{ln['example']}`", ""]
    L += ["## Goals", "", *goals(res), ""]
    L += [
        "## Every round",
        "",
        "| workers | round | endpoint | req/s | p50 ms | p99 ms | max ms | requests | non-2xx | tokens issued | "
        "stream entries added | valid | open loop: rate, achieved, p50, p99 ms | other CPU |",
        "|---:|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---|---:|",
    ]
    for r in res.runs:
        L.append(
            f"| {r.workers} | {r.round} | {LABELS[r.kind]} | {fmt(r.rps)} | {r.p50_ms:.2f} | {r.p99_ms:.2f} | "
            f"{r.raw['max_us'] / 1000:.1f} | {r.raw['requests']:,} | {r.raw['non2xx']} | "
            f"{r.tokens_issued or ''} | {'' if r.stream_added is None else r.stream_added} | "
            f"{'yes' if r.valid else 'NO: ' + '; '.join(r.problems)} | {openloop_cell(r.openloop)} | "
            f"{r.noise.get('other', 0):.0%} |"
        )
    L += ["", "## Commands", "", "```"]
    L.append("python bench/run.py " + " ".join(cfg.argv))
    for name in ("redis", "keys", "serve bare", "serve verify", "serve submit", "wrk", "issue wrk", "open-loop"):
        if name in res.commands:
            L.append(res.commands[name])
    L += ["```", ""]
    L += [
        "## Notes",
        "",
        "- Everything runs on the same machine: wrk, Redis, the open-loop driver and the servers share "
        f"its {m.get('cores')} cores, so multi-worker figures are bounded by the load generator too.",
        "- bare: `bench.apps:bare_app`, one Starlette route on the submit URL pattern that reads the body and "
        "answers `{\"ok\": true}`. verify-only: `bench.apps:verify_app`, the real app with `Store.submit` "
        "replaced by a no-op that reports success (its `REDIS_URL` points at a closed port, so any Redis "
        "call would show up as errors). submit: `app.main:app`.",
        "- Every submission in a submit round is on a token issued just before the round and never used "
        "before; wrk threads take disjoint slices of the token list and stop (flagging the round) if they "
        "run out. The bare and verify-only rounds cycle through already-issued tokens (they consume nothing).",
        "- A round with any non-2xx answer, socket error or timeout, or that ran out of tokens, is marked "
        "invalid above and left out of the medians.",
        "- \"other CPU\": the share of the machine (all cores) that processes other than the bench's used during "
        "the round (busy time in /proc/stat minus the bench's own processes). Above "
        f"{NOISY:.0%} the round competed with something else and its figures are noisy.",
        "- wrk's p99 in the saturated runs is queueing at 50 connections. For a CPU-bound handler it has a long "
        "tail under uvicorn here (a bare endpoint that busy-loops 300 us per request shows p50 18 ms, p99 200 ms "
        "at saturation), which is why verify-only's p99 can exceed submit's. The open-loop table is the latency "
        "figure to go by.",
    ]
    for note in res.notes:
        L.append(f"- {note}")
    for r in res.invalid:
        why = r.problems + [f"open loop: {p}" for p in openloop_problems(r.openloop or {})]
        L.append(f"- INVALID round: {r.workers} worker(s), round {r.round}, {LABELS[r.kind]}: {'; '.join(why)}")
    L.append("")
    return "\n".join(L)


def print_summary(res: Results) -> None:
    log("\n" + "\n".join(summary_table(res)))
    for w in res.config.workers:
        ol = res.openloop_summary(w)
        if ol is not None:
            log(f"open loop at {res.config.load_fraction:.0%} of peak, {w} worker(s), median of {ol['runs']}: "
                f"{ol['achieved_rate']:,.0f} req/s -> p50 {ol['p50_ms']:.2f} ms, p99 {ol['p99_ms']:.2f} ms")
    log("\n" + "\n".join(goals(res)))


# -- entry point ---------------------------------------------------------------------------------


def _raise_exit(signum: int, frame: Any) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def main(argv: list[str] | None = None) -> int:
    cfg = parse_args(argv)
    missing = [tool for tool in ("wrk", "redis-server") if shutil.which(tool) is None]
    if missing:
        print(
            f"bench: {' and '.join(missing)} not found on PATH. Install with: "
            f"sudo apt-get install -y {' '.join('redis-server' if t == 'redis-server' else t for t in missing)}",
            file=sys.stderr,
        )
        return 2
    # Explicitly, also for SIGINT: a shell starts background jobs with SIGINT ignored.
    signal.signal(signal.SIGINT, signal.default_int_handler)
    for sig in (signal.SIGTERM, signal.SIGHUP):
        signal.signal(sig, _raise_exit)
    bench = Bench(cfg)
    status = 0
    res: Results | None = None
    try:
        res = bench.run()
    except KeyboardInterrupt:
        print("\nbench: interrupted; stopping everything it started", file=sys.stderr)
        status = 130
    except Exception as err:
        print(f"\nbench: failed: {err}", file=sys.stderr)
        status = 1
    finally:
        signal.signal(signal.SIGINT, signal.SIG_IGN)  # a second Ctrl-C must not cut the cleanup short
        left = bench.close(keep_logs=status == 1)
        signal.signal(signal.SIGINT, signal.default_int_handler)
    if status == 1:
        print(f"bench: server logs kept in {bench.logs}", file=sys.stderr)
    if left:
        print("bench: STILL RUNNING after cleanup: " + ", ".join(left), file=sys.stderr)
        status = status or 1
    else:
        print("bench: stopped everything it started (redis-server, uvicorn, wrk): nothing left running")
    if res is not None:
        print_summary(res)
        if cfg.write:
            cfg.out.write_text(render(res))
            log(f"\nwrote {cfg.out.relative_to(ROOT) if cfg.out.is_relative_to(ROOT) else cfg.out}")
        if res.invalid:
            print(f"bench: {len(res.invalid)} round(s) invalid (see the table); their numbers are not used",
                  file=sys.stderr)
            status = status or 1
    return status
