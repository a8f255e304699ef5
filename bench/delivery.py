#!/usr/bin/env python3
"""Delivery benchmark (issue 12): ``.venv/bin/python bench/delivery.py [--quick]``.

Standalone: it starts its own redis-server and PostgreSQL (Debian's binaries; as the
``postgres`` user when run as root), on free ports in a temp dir, and stops them on the way out.

1. **Throughput per process**: the stream is filled with N entries shaped like the service's
   (XADD in pipelines, fields as ``FeedbackService.record`` writes them), then one deliverer
   (the real ``Deliverer`` with the real target, in this process, ``--batch 500``) delivers
   them all; entries/s = N / (time from its start until the target confirmed the last one).
   Targets: JSONL (a file, fsynced per batch) and PostgreSQL (fsync and synchronous_commit on,
   as shipped); with the stream layout of today (one stream) and with 16 shard streams.
2. **Submit -> target latency** at 1,000 submissions/s: the real service (uvicorn, 1 worker),
   tokens issued through the API beforehand, an open-loop driver in this process sending
   submission i at t0 + i/rate (its latency counts from that due time, so queueing in the
   driver or the server counts), one ``feedback-tokens deliver --to jsonl:FILE`` process, and
   a reader tailing the file. Latency = when the line appeared - when the submission was due
   (includes any queueing before the service answered: if the service can't keep the rate on
   this machine, this grows without bound), and - when the service answered (the delivery
   path alone: stream, deliverer, file). The achieved rate is printed beside them.
3. **XADD -> target latency** at the same rate, entries written straight into the stream (the
   deliverer's own latency, whatever the HTTP service manages on this machine).

Goals: >= 20,000 entries/s to JSONL, >= 5,000/s to PostgreSQL, p99 < 1 s at 1,000/s.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import glob
import json
import os
import pwd
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import httpx  # noqa: E402
import psycopg  # noqa: E402
import redis  # noqa: E402
import redis.asyncio  # noqa: E402

from app.config import Retention  # noqa: E402
from app.delivery.consumer import Deliverer  # noqa: E402
from app.delivery.jsonl import JsonlTarget  # noqa: E402
from app.delivery.options import Options  # noqa: E402
from app.delivery.postgres import PostgresTarget  # noqa: E402
from app.keys.keyring import KeyringDir  # noqa: E402
from app.store.connect import connect  # noqa: E402
from app.store.entry import FeedbackEntry  # noqa: E402
from app.store.keyspace import Keyspace  # noqa: E402
from bench.registry import Section, measurement  # noqa: E402
from bench.table import Table  # noqa: E402

API_KEY = "bench-delivery-api-key"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def percentile(values: Sequence[float], p: float) -> float:
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, int(round(p / 100 * len(ordered) + 0.5)) - 1))
    return ordered[k]


# -- servers ----------------------------------------------------------------------------------------


class Servers:
    """redis-server and PostgreSQL of our own, stopped on exit."""

    def __init__(self) -> None:
        self.dir = Path(tempfile.mkdtemp(prefix="fbt-bench-delivery-"))
        self.redis_port = free_port()
        self.pg_port = free_port()
        self.redis: subprocess.Popen[bytes] | None = None
        self.pg_data = self.dir / "pg"
        self.pg_user = "postgres" if os.geteuid() == 0 else None
        self.pg_started = False

    @property
    def redis_url(self) -> str:
        return f"redis://127.0.0.1:{self.redis_port}/0"

    @property
    def pg_url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.pg_port}/postgres"

    def _pg(self, tool: str, *args: str) -> None:
        found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{tool}"))
        argv = [found[-1] if found else tool, *args]
        if self.pg_user:
            argv = ["runuser", "-u", self.pg_user, "--", *argv]
        subprocess.run(argv, check=True, capture_output=True, timeout=120)

    def start(self) -> Servers:
        self.redis = subprocess.Popen(
            ["redis-server", "--port", str(self.redis_port), "--bind", "127.0.0.1", "--save", "",
             "--appendonly", "no", "--dir", str(self.dir), "--logfile", str(self.dir / "redis.log")],
            start_new_session=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
        client = redis.Redis(port=self.redis_port)
        for _ in range(200):
            with contextlib.suppress(redis.RedisError):
                if client.ping():
                    break
            time.sleep(0.05)
        if self.pg_user:
            entry = pwd.getpwnam(self.pg_user)
            os.chown(self.dir, entry.pw_uid, entry.pw_gid)
        self._pg("initdb", "-D", str(self.pg_data), "-A", "trust", "-U", "postgres", "-E", "UTF8")
        self._pg("pg_ctl", "-D", str(self.pg_data), "-l", str(self.dir / "pg.log"), "-w", "start",
                 "-o", f"-p {self.pg_port} -k {self.dir} -c listen_addresses=127.0.0.1")
        self.pg_started = True
        return self

    def stop(self) -> None:
        if self.redis is not None and self.redis.poll() is None:
            self.redis.terminate()
            self.redis.wait(timeout=10)
        if self.pg_started:
            with contextlib.suppress(subprocess.CalledProcessError):
                self._pg("pg_ctl", "-D", str(self.pg_data), "-m", "fast", "-w", "stop")
        shutil.rmtree(self.dir, ignore_errors=True)


# -- throughput -------------------------------------------------------------------------------------


def fill(url: str, streams: list[str], n: int) -> None:
    """n entries shaped like the service's, spread evenly over ``streams``."""
    client = redis.Redis.from_url(url)
    client.flushall()
    created = time.strftime("%Y-%m-%dT%H:%M:%S.000+00:00", time.gmtime())
    for start in range(0, n, 2000):
        pipe = client.pipeline(transaction=False)
        for i in range(start, min(n, start + 2000)):
            token = uuid.uuid4()
            pipe.xadd(streams[i % len(streams)], {
                "id": str(token), "token_id": str(token), "run_id": str(uuid.uuid4()),
                "feedback_key": "user_score", "score": "1", "value": "",
                "comment": "This response was helpful!", "correction": "",
                "metadata": '{"source":"bench"}', "created_at": created,
            })
        pipe.execute()
    client.close()


class Timed:
    """Wraps a target: counts what it confirmed, notes when the last of n was confirmed."""

    def __init__(self, target: Any, n: int) -> None:
        self.target = target
        self.n = n
        self.count = 0
        self.done = asyncio.Event()
        self.finished = 0.0

    async def deliver(self, batch: Sequence[FeedbackEntry]) -> None:
        await self.target.deliver(batch)
        self.count += len(batch)
        if self.count >= self.n and not self.done.is_set():
            self.finished = time.perf_counter()
            self.done.set()

    async def aclose(self) -> None:
        await self.target.aclose()


async def deliver_all(url: str, target: Any, n: int, batch: int) -> tuple[float, float]:
    """(entries per second of wall time, entries per second of this process's CPU time)."""
    client = await connect(url, pool_size=8)
    timed = Timed(target, n)
    deliverer = Deliverer(client, Keyspace("fbt"), timed, Options(group="bench", batch=batch), Retention("off"))
    stop = asyncio.Event()
    started, cpu = time.perf_counter(), time.process_time()
    running = asyncio.create_task(deliverer.run(stop))
    await asyncio.wait_for(timed.done.wait(), 600)
    cpu = time.process_time() - cpu
    stop.set()
    await running
    await client.aclose()
    if timed.count != n:
        raise RuntimeError(f"delivered {timed.count} of {n}")
    return n / (timed.finished - started), n / cpu


def throughput(servers: Servers, target: str, n: int, shards: int, batch: int) -> tuple[float, float]:
    keyspace = Keyspace("fbt")
    streams = [keyspace.legacy_stream] if shards == 1 else keyspace.streams(shards)
    fill(servers.redis_url, streams, n)
    if target == "jsonl":
        path = servers.dir / "out.jsonl"
        path.unlink(missing_ok=True)
        sink: Any = JsonlTarget(str(path))
    else:
        with psycopg.connect(servers.pg_url, autocommit=True) as conn:
            conn.execute("DROP TABLE IF EXISTS feedback")
        sink = PostgresTarget(servers.pg_url)
    rates = asyncio.run(deliver_all(servers.redis_url, sink, n, batch))
    if target == "postgresql":
        with psycopg.connect(servers.pg_url) as conn:
            found = conn.execute("SELECT count(*) FROM feedback").fetchone()
        assert found is not None and found[0] == n, found
    return rates


# -- latency ----------------------------------------------------------------------------------------


@contextlib.contextmanager
def process(argv: list[str], env: dict[str, str], log: Path) -> Iterator[subprocess.Popen[bytes]]:
    with log.open("wb") as out:
        proc = subprocess.Popen(argv, cwd=ROOT, env={**os.environ, **env}, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    try:
        yield proc
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def issue_tokens(base: str, n: int) -> list[tuple[str, str]]:
    """(token id, URL path) for n fresh 'once' tokens, issued 100 a request."""
    tokens = []
    with httpx.Client(base_url=base, headers={"X-API-Key": API_KEY}, timeout=30) as http:
        for start in range(0, n, 100):
            body = [{"run_id": str(uuid.uuid4()), "feedback_key": "user_score"} for _ in range(min(100, n - start))]
            answer = http.post("/api/v1/feedback/tokens", json=body)
            answer.raise_for_status()
            tokens += [(t["id"], httpx.URL(t["url"]).path) for t in answer.json()]
    return tokens


async def tail(path: Path, n: int, seen: dict[str, float]) -> None:
    """Note when each feedback id's line appears in the file, until n have."""
    offset, partial = 0, b""
    while len(seen) < n:
        with path.open("rb") as f:
            f.seek(offset)
            chunk = f.read()
        now = time.monotonic()
        offset += len(chunk)
        lines = (partial + chunk).split(b"\n")
        partial = lines.pop()
        for line in lines:
            seen.setdefault(json.loads(line)["id"], now)
        await asyncio.sleep(0.002)


async def produce(url: str, n: int, rate: float, path: Path) -> list[float]:
    """Open loop straight into the stream (XADD at ``rate``, the service's entry shape): the
    delivery path's latency without the HTTP service's capacity in the way."""
    client = redis.asyncio.Redis.from_url(url)
    due: dict[str, float] = {}
    seen: dict[str, float] = {}
    path.touch()
    tailer = asyncio.create_task(tail(path, n, seen))
    stream = Keyspace("fbt").legacy_stream
    t0 = time.monotonic() + 0.2
    for i in range(n):
        at = t0 + i / rate
        await asyncio.sleep(max(0.0, at - time.monotonic()))
        fid = str(uuid.uuid4())
        due[fid] = at
        await client.xadd(stream, {"id": fid, "token_id": fid, "run_id": fid, "feedback_key": "user_score",
                                   "score": "1", "value": "", "comment": "", "correction": "", "metadata": "",
                                   "created_at": "2026-01-01T00:00:00.000+00:00"})
    await asyncio.wait_for(tailer, 120)
    await client.aclose()
    return [seen[fid] - due[fid] for fid in due]


async def drive(port: int, tokens: list[tuple[str, str]], rate: float, path: Path) -> dict[str, Any]:
    """Open loop: submission i is due at t0 + i / rate and goes out on the first idle one of 32
    keep-alive connections (plain asyncio streams: an HTTP client library costs more CPU per
    request than the server here). Returns when the deliverer wrote every submission's line."""
    due: dict[str, float] = {}
    answered: dict[str, float] = {}
    seen: dict[str, float] = {}
    statuses: dict[int, int] = {}
    queue: asyncio.Queue[tuple[str, str, float]] = asyncio.Queue()

    async def connection() -> None:
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            while True:
                token_id, url, at = await queue.get()
                writer.write(
                    f"POST {url} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\n"
                    f"Content-Length: 12\r\n\r\n{{\"score\": 1}}".encode()
                )
                head = await reader.readuntil(b"\r\n\r\n")
                length = 0
                for line in head.split(b"\r\n"):
                    if line.lower().startswith(b"content-length:"):
                        length = int(line.split(b":", 1)[1])
                await reader.readexactly(length)
                answered[token_id] = time.monotonic()
                status = int(head.split(b" ", 2)[1])
                statuses[status] = statuses.get(status, 0) + 1
                queue.task_done()
        finally:
            writer.close()

    path.touch()
    tailer = asyncio.create_task(tail(path, len(tokens), seen))
    senders = [asyncio.create_task(connection()) for _ in range(32)]
    t0 = time.monotonic() + 0.2
    for i, (token_id, url) in enumerate(tokens):
        at = t0 + i / rate
        await asyncio.sleep(max(0.0, at - time.monotonic()))
        due[token_id] = at
        queue.put_nowait((token_id, url, at))
    await queue.join()
    sent = time.monotonic() - t0
    await asyncio.wait_for(tailer, 120)
    for sender in senders:
        sender.cancel()
    order = [tid for tid, _ in tokens]
    return {
        "from_due": [seen[tid] - due[tid] for tid in order],
        "from_answer": [seen[tid] - answered[tid] for tid in order],
        "statuses": statuses,
        "achieved_rate": len(tokens) / sent,
    }


def latency(servers: Servers, rate: float, seconds: float, warmup: float) -> dict[str, Any]:
    redis.Redis.from_url(servers.redis_url).flushall()
    keys = servers.dir / "keys"
    if not keys.exists():
        KeyringDir(keys).init()
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = {"REDIS_URL": servers.redis_url, "FEEDBACK_KEYS_DIR": str(keys), "FEEDBACK_API_KEYS": API_KEY,
           "FEEDBACK_PUBLIC_URL": base}
    out = servers.dir / "latency.jsonl"
    out.unlink(missing_ok=True)
    server_argv = [sys.executable, "-m", "uvicorn", "app.main:app", "--host", "127.0.0.1", "--port", str(port),
                   "--workers", "1", "--no-access-log", "--log-level", "warning"]
    with process(server_argv, env, servers.dir / "uvicorn.log"):
        for _ in range(400):
            with contextlib.suppress(httpx.HTTPError):
                if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                    break
            time.sleep(0.05)
        n = int(rate * (seconds + warmup))
        tokens = issue_tokens(base, n)
        deliver_argv = [sys.executable, "-m", "app.cli", "deliver", "--to", f"jsonl:{out}", "--batch", "500"]
        with process(deliver_argv, env, servers.dir / "deliver.log"):
            time.sleep(1.0)  # let the deliverer start and create its group
            result = asyncio.run(drive(port, tokens, rate, out))
    skip = int(rate * warmup)
    summary: dict[str, Any] = {
        "submissions": len(tokens) - skip,
        "achieved_rate": round(result["achieved_rate"]),
        "statuses": result["statuses"],
    }
    for name in ("from_due", "from_answer"):
        measured = result[name][skip:]
        summary[name] = {
            "p50_ms": round(percentile(measured, 50) * 1000, 1),
            "p99_ms": round(percentile(measured, 99) * 1000, 1),
            "max_ms": round(max(measured) * 1000, 1),
        }
    return summary


def stream_latency(servers: Servers, rate: float, seconds: float, warmup: float) -> dict[str, Any]:
    redis.Redis.from_url(servers.redis_url).flushall()
    out = servers.dir / "stream-latency.jsonl"
    out.unlink(missing_ok=True)
    argv = [sys.executable, "-m", "app.cli", "deliver", "--to", f"jsonl:{out}", "--batch", "500"]
    with process(argv, {"REDIS_URL": servers.redis_url}, servers.dir / "deliver-stream.log"):
        time.sleep(1.0)
        measured = asyncio.run(produce(servers.redis_url, int(rate * (seconds + warmup)), rate, out))
    measured = measured[int(rate * warmup):]
    return {"entries": len(measured), "p50_ms": round(percentile(measured, 50) * 1000, 1),
            "p99_ms": round(percentile(measured, 99) * 1000, 1), "max_ms": round(max(measured) * 1000, 1)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--quick", action="store_true", help="smaller runs (a smoke test)")
    parser.add_argument("--batch", type=int, default=500)
    parser.add_argument("--rate", type=float, default=1000.0)
    parser.add_argument("--parts", default="throughput,latency,stream", help="what to measure (comma-separated)")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    # SIGTERM (a timeout, Ctrl-C's cousin) unwinds like an exception, so every server is stopped.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    n_jsonl, n_pg, seconds = (20_000, 10_000, 3.0) if args.quick else (100_000, 50_000, 10.0)
    servers = Servers().start()
    results: dict[str, Any] = {"batch": args.batch}
    try:
        for target, n in (("jsonl", n_jsonl), ("postgresql", n_pg)) if "throughput" in parts else ():
            for shards in (1, 16):
                rate, per_cpu = throughput(servers, target, n, shards, args.batch)
                name = f"{target}_{shards}_stream{'s' if shards > 1 else ''}"
                results[f"{name}_per_s"], results[f"{name}_per_cpu_s"] = round(rate), round(per_cpu)
                print(f"{target:<10} {shards:>2} stream(s)  {n:>7} entries  {rate:>9,.0f} entries/s  "
                      f"({per_cpu:,.0f} per CPU second of the deliverer)", flush=True)
        if "stream" in parts:
            st = stream_latency(servers, args.rate, seconds, warmup=2.0)
            results["stream_latency"] = st
            print(f"XADD -> jsonl at {args.rate:.0f}/s ({st['entries']} entries measured): p50 {st['p50_ms']} ms, "
                  f"p99 {st['p99_ms']} ms, max {st['max_ms']} ms", flush=True)
        if "latency" not in parts:
            print(json.dumps(results))
            return 0
        lat = latency(servers, args.rate, seconds, warmup=2.0)
        results["latency"] = lat
        print(f"submit -> jsonl at {lat['achieved_rate']}/s of {args.rate:.0f}/s asked ({lat['submissions']} "
              f"submissions measured, statuses {lat['statuses']}):", flush=True)
        for name, what in (("from_due", "from when each was due (open loop)"),
                           ("from_answer", "from the service's answer")):
            m = lat[name]
            print(f"  {what:<36} p50 {m['p50_ms']:>8} ms  p99 {m['p99_ms']:>8} ms  max {m['max_ms']:>8} ms",
                  flush=True)
    finally:
        servers.stop()
    print(json.dumps(results))
    return 0


if TYPE_CHECKING:
    from bench.harness import Bench


@measurement("delivery", "Delivery: throughput and latency", quick=False)
def delivery(bench: Bench) -> Section:
    """``make bench``'s part: this script in a process of its own (its own Redis and PostgreSQL),
    ``--quick`` sizes under a quick bench; the figures into the report."""
    done = subprocess.run([sys.executable, str(Path(__file__).resolve()), *(["--quick"] if bench.cfg.quick else [])],
                          cwd=ROOT, capture_output=True, text=True, timeout=1800)
    last = done.stdout.strip().splitlines()[-1:] if done.returncode == 0 else []
    if not last or not last[0].startswith("{"):
        raise RuntimeError(f"bench/delivery.py failed (exit {done.returncode}): {done.stderr[-2000:]}")
    r = json.loads(last[0])
    section = Section("Delivery: throughput and latency")
    section.para(f"One deliverer process (`--batch {r['batch']}`) draining a stream filled beforehand: entries "
                 "per second until the target confirmed the last one, and per CPU second of the deliverer. "
                 "JSONL is fsynced per batch; PostgreSQL runs with fsync and synchronous_commit on.")
    rates = Table(["target", "streams", "entries/s", "per CPU second"], "lrrr")
    for target in ("jsonl", "postgresql"):
        for shards in (1, 16):
            name = f"{target}_{shards}_stream{'s' if shards > 1 else ''}"
            if f"{name}_per_s" in r:
                rates.add(target, shards, f"{r[f'{name}_per_s']:,}", f"{r[f'{name}_per_cpu_s']:,}")
    section.table(rates)
    latency = Table(["path at 1,000/s", "p50 ms", "p99 ms", "max ms"], "lrrr")
    if "stream_latency" in r:
        st = r["stream_latency"]
        latency.add("XADD -> JSONL line", st["p50_ms"], st["p99_ms"], st["max_ms"])
    for key, what in (("from_answer", "submit answered -> JSONL line"), ("from_due", "submit due -> JSONL line")):
        if key in r.get("latency", {}):
            m = r["latency"][key]
            latency.add(what, m["p50_ms"], m["p99_ms"], m["max_ms"])
    section.table(latency)
    section.data.update(r)
    best_jsonl = max(r.get("jsonl_1_stream_per_s", 0), r.get("jsonl_16_streams_per_s", 0))
    best_pg = max(r.get("postgresql_1_stream_per_s", 0), r.get("postgresql_16_streams_per_s", 0))
    section.goal("at least 20,000 entries/s to JSONL (one deliverer)", best_jsonl >= 20_000)
    section.goal("at least 5,000 entries/s to PostgreSQL (one deliverer)", best_pg >= 5_000)
    if "stream_latency" in r:
        section.goal("XADD -> JSONL p99 under 1 s at 1,000/s", r["stream_latency"]["p99_ms"] < 1000)
    if "latency" in r:
        section.note(f"The service itself answered {r['latency'].get('achieved_rate')}/s of the 1,000/s asked "
                     "on this machine; the 'due' row includes any queueing in front of it.")
    return section


if __name__ == "__main__":
    sys.exit(main())
