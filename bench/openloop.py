"""An open-loop (constant-rate) HTTP driver, for latency at a fixed fraction of peak throughput.

Debian has no wrk2, and wrk is closed-loop: a slow answer delays the next request, which hides
queueing (coordinated omission). This driver works like wrk2: request i is *due* at
``t0 + i / rate`` whether or not earlier answers have come back, and its latency is measured
from the timer tick at which the driver tried to send it (ticks are 1 ms apart), not from when a
connection got free to send it. So time spent queued (in this driver, for lack of an idle
connection, or in the server) counts; ``send_lag_p99_ms`` says how late the ticks themselves were.

Raw asyncio sockets on uvloop, HTTP/1.1 keep-alive, one request in flight per connection, no
pipelining; each request POSTs ``{"score": 1}`` to the next path of the paths file (a fresh token
each). Requests due in the first ``--warmup`` seconds are sent but left out of the statistics.

    python -m bench.openloop --port P --paths FILE --rate 2000 --duration 5 [--connections 50]

Prints one JSON object: the achieved rate, latency percentiles (ms), status counts, how late the
driver itself sent requests (``send_lag_p99_ms``: large means the driver, not the server, was
the bottleneck), the share of one core the driver used (``driver_cpu``; it shares the machine
with the servers), and whether the paths ran out.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections import Counter, deque
from typing import Any

BODY = b'{"score": 1}'
now = time.perf_counter  # uvloop's loop.time() only has millisecond resolution


def percentile(sorted_values: list[float], p: float) -> float:
    if not sorted_values:
        return float("nan")
    k = min(len(sorted_values) - 1, max(0, int(round(p / 100 * len(sorted_values) + 0.5)) - 1))
    return sorted_values[k]


class Conn(asyncio.Protocol):
    def __init__(self, driver: Driver) -> None:
        self.driver = driver
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.need: int | None = None
        self.body_at = 0
        self.status = 0
        self.due = 0.0
        self.index = -1
        self.busy = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]

    def send(self, request: bytes, due: float, index: int) -> None:
        self.due, self.index, self.busy = due, index, True
        assert self.transport is not None
        self.transport.write(request)

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            if self.need is None:
                end = self.buf.find(b"\r\n\r\n")
                if end < 0:
                    return
                head = bytes(self.buf[:end]).lower()
                self.status = int(head[9:12])
                at = head.find(b"\r\ncontent-length:")
                if at < 0:
                    self.driver.fail("answer without Content-Length")
                    return
                stop = head.find(b"\r\n", at + 2)
                self.body_at = end + 4
                self.need = end + 4 + int(head[at + 17 : stop if stop > 0 else None])
            if len(self.buf) < self.need:
                return
            if 200 <= self.status < 300 and self.buf.find(b'"duplicate":true', self.body_at, self.need) >= 0:
                self.driver.duplicates += 1
            del self.buf[: self.need]
            self.need = None
            self.busy = False
            self.driver.answered(self, self.status, self.due, self.index)

    def connection_lost(self, exc: Exception | None) -> None:
        self.driver.lost(self)


class Driver:
    def __init__(self, host: str, port: int, paths: list[str], rate: float, duration: float, warmup: float) -> None:
        self.loop = asyncio.get_running_loop()
        self.host, self.port = host, port
        self.paths = paths
        self.rate = rate
        self.total = int(rate * (duration + warmup))
        self.first_measured = int(rate * warmup)
        self.idle: deque[Conn] = deque()
        self.backlog: deque[tuple[bytes, float, int]] = deque()
        self.latencies: list[float] = []
        self.send_lags: list[float] = []
        self.statuses: Counter[int] = Counter()
        self.done_count = 0
        self.lost_count = 0
        self.max_backlog = 0
        self.error: str | None = None
        self.finished = asyncio.Event()
        self.last_answer = 0.0
        self.open_conns = 0
        self.duplicates = 0

    def request(self, index: int) -> bytes:
        return (
            f"POST {self.paths[index]} HTTP/1.1\r\nHost: {self.host}:{self.port}\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(BODY)}\r\n\r\n"
        ).encode("ascii") + BODY

    def fail(self, why: str) -> None:
        self.error = self.error or why
        self.finished.set()

    def dispatch(self, conn: Conn, request: bytes, due: float, index: int) -> None:
        conn.send(request, due, index)

    def answered(self, conn: Conn, status: int, due: float, index: int) -> None:
        t = now()
        self.last_answer = t
        if index >= self.first_measured:
            self.latencies.append(t - due)
            self.statuses[status] += 1
        self.done_count += 1
        if self.backlog:
            self.dispatch(conn, *self.backlog.popleft())
        else:
            self.idle.append(conn)
        if self.done_count + self.lost_count >= self.total:
            self.finished.set()

    def lost(self, conn: Conn) -> None:
        if conn.busy:
            conn.busy = False
            self.lost_count += 1
        if conn in self.idle:
            self.idle.remove(conn)
        self.open_conns -= 1
        if not self.finished.is_set() and self.done_count + self.lost_count < self.total:
            self.error = self.error or "the server closed a connection"
            if self.open_conns == 0:
                self.fail("the server closed every connection")

    async def run(self, connections: int) -> dict[str, Any]:
        for _ in range(connections):
            _, conn = await self.loop.create_connection(lambda: Conn(self), self.host, self.port)
            self.idle.append(conn)
            self.open_conns += 1
        total = min(self.total, len(self.paths))
        exhausted = self.total > len(self.paths)
        cpu0 = time.process_time()
        t0 = now() + 0.01
        i = 0
        while i < total and not self.finished.is_set():
            tick = now()
            due_now = min(total, int((tick - t0) * self.rate) + 1)
            while i < due_now:
                # The clock starts at this tick: the moment the driver tries to send. Waiting for
                # a free connection counts; the timer's own lateness (send_lag) does not.
                if i >= self.first_measured:
                    self.send_lags.append(tick - (t0 + i / self.rate))
                req = self.request(i)
                if self.idle:
                    self.dispatch(self.idle.popleft(), req, tick, i)
                else:
                    self.backlog.append((req, tick, i))
                    self.max_backlog = max(self.max_backlog, len(self.backlog))
                i += 1
            # At least 1 ms: uvloop's timers have millisecond resolution, and a shorter sleep
            # returns at once (a busy loop that would steal a core from the server). Requests
            # due within the same millisecond go out together.
            await asyncio.sleep(max(0.001, t0 + i / self.rate - now()))
        sent_until = now()
        self.total = total
        if self.done_count + self.lost_count < total:
            try:
                await asyncio.wait_for(self.finished.wait(), timeout=30)
            except TimeoutError:
                self.error = self.error or "answers still missing 30 s after the last request was due"
        cpu = (time.process_time() - cpu0) / max(1e-9, now() - t0)
        lat = sorted(x * 1000 for x in self.latencies)
        lags = sorted(x * 1000 for x in self.send_lags)
        measured = len(lat)
        span = (self.last_answer - (t0 + self.first_measured / self.rate)) if measured else 0.0
        return {
            "target_rate": self.rate,
            "achieved_rate": measured / span if span > 0 else 0.0,
            "send_rate": (i - self.first_measured) / max(1e-9, sent_until - t0 - self.first_measured / self.rate),
            "requests": measured,
            "p50_ms": percentile(lat, 50),
            "p90_ms": percentile(lat, 90),
            "p99_ms": percentile(lat, 99),
            "p999_ms": percentile(lat, 99.9),
            "max_ms": lat[-1] if lat else float("nan"),
            "statuses": {str(k): v for k, v in sorted(self.statuses.items())},
            "non2xx": sum(v for k, v in self.statuses.items() if not 200 <= k < 300),
            "lost": self.lost_count,
            "duplicates": self.duplicates,
            "send_lag_p99_ms": percentile(lags, 99),
            "max_backlog": self.max_backlog,
            "driver_cpu": cpu,
            "paths_exhausted": exhausted,
            "error": self.error,
        }


async def main_async(args: argparse.Namespace) -> dict[str, Any]:
    with open(args.paths) as f:
        paths = [line.strip() for line in f if line.strip()]
    driver = Driver(args.host, args.port, paths, args.rate, args.duration, args.warmup)
    return await driver.run(args.connections)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--paths", required=True, help="file with one URL path per line, each used once")
    parser.add_argument("--rate", type=float, required=True, help="requests per second")
    parser.add_argument("--duration", type=float, default=5.0, help="measured seconds")
    parser.add_argument("--warmup", type=float, default=1.0, help="seconds sent first and not measured")
    parser.add_argument("--connections", type=int, default=50)
    args = parser.parse_args(argv)
    try:
        import uvloop
    except ImportError:
        result = asyncio.run(main_async(args))
    else:
        result = uvloop.run(main_async(args))
    json.dump(result, sys.stdout)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
