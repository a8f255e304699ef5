"""What a fleet has and one process doesn't, for the tests that need it (fixtures that start these:
tests/support_fleet.py).

- ``skewed(seconds)``: a command prefix for ``LiveServer`` that runs the node under Debian's
  ``faketime`` with its wall clock ``seconds`` off. Only the wall clock moves: the monotonic
  clock (asyncio's timers, uvicorn's, timeouts) is left alone (``--exclude-monotonic``), and the
  multi-threaded build of libfaketime is used, since the server runs threads.
- ``clock_offset(url)``: how far a node's clock is from ours, read from its ``Date`` header
  (1 s resolution; uvicorn refreshes it about once a second).
- ``AppServer``: the real app (``create_app``) under uvicorn in a thread, on a port that stays
  its own across ``stop`` and ``start`` (an issuer that goes away and comes back), with a log of
  the requests it answered.
- ``FaultProxy``: a TCP proxy between the service and Redis that lets a command *run* and then
  makes the service miss the answer, which is the case where a retry can count twice (stopping
  or freezing Redis can't show it):

  - ``drop(n, marker)``: the next ``n`` requests whose bytes contain ``marker`` reach Redis; when
    Redis answers, the proxy closes the service's connection instead of passing the reply on.
  - ``delay(seconds, n, marker)``: those replies are held ``seconds`` before they are passed on
    (past FEEDBACK_REDIS_TIMEOUT, the service has given up by then).

  Everything else passes through untouched. ``faults`` counts the replies lost or held so far.
"""

from __future__ import annotations

import asyncio
import contextlib
import threading
import time
from dataclasses import dataclass
from email.utils import parsedate_to_datetime

import httpx
import uvicorn
from conftest import free_port
from starlette.types import ASGIApp, Message, Receive, Scope, Send

FAKETIME_ENV = {"FAKETIME_NO_CACHE": "1"}  # read the offset on every call, not once per 10 s


def skewed(seconds: int) -> list[str]:
    return ["faketime", "-m", "--exclude-monotonic", "-f", f"{seconds:+d}s"]


def clock_offset(url: str) -> float:
    """The node's clock minus ours, in seconds (within about 1.5 s)."""
    before = time.time()
    response = httpx.get(f"{url}/healthz", timeout=10)
    after = time.time()
    return parsedate_to_datetime(response.headers["date"]).timestamp() + 0.5 - (before + after) / 2


@dataclass(frozen=True)
class Seen:
    path: str
    status: int
    if_none_match: str | None
    etag: str | None  # of the answer
    at: float  # monotonic


class AppServer:
    """An ASGI app under uvicorn in a thread of the test process, on a fixed port."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.seen: list[Seen] = []
        self._server: uvicorn.Server | None = None
        self._thread: threading.Thread | None = None

    async def _logged(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = dict(scope["headers"])

        async def record(message: Message) -> None:
            if message["type"] == "http.response.start":
                inm, etag = headers.get(b"if-none-match"), dict(message.get("headers", [])).get(b"etag")
                self.seen.append(Seen(
                    scope["path"], message["status"], inm.decode() if inm else None,
                    etag.decode() if etag else None, time.monotonic(),
                ))
            await send(message)

        await self.app(scope, receive, record)

    def start(self) -> AppServer:
        config = uvicorn.Config(
            self._logged, host="127.0.0.1", port=self.port, log_level="warning", interface="asgi3"
        )
        self._server = uvicorn.Server(config)
        self._thread = threading.Thread(target=self._server.run, daemon=True, name=f"app-{self.port}")
        self._thread.start()
        deadline = time.monotonic() + 20
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError(f"the app on port {self.port} did not start")
            time.sleep(0.02)
        return self

    def stop(self) -> None:
        if self._server is not None and self._thread is not None:
            self._server.should_exit = True
            self._thread.join(timeout=20)
        self._server = self._thread = None


@dataclass
class _Rule:
    kind: str  # 'drop' | 'delay'
    left: int
    marker: bytes
    seconds: float = 0.0


class FaultProxy:
    def __init__(self, upstream_port: int) -> None:
        self.upstream_port = upstream_port
        self.port = 0
        self.faults = 0
        self._rules: list[_Rule] = []
        self._lock = threading.Lock()
        self._loop = asyncio.new_event_loop()
        self._server: asyncio.Server | None = None
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name="fault-proxy")

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> FaultProxy:
        self._thread.start()
        self._server = asyncio.run_coroutine_threadsafe(
            asyncio.start_server(self._serve, "127.0.0.1", 0), self._loop
        ).result(timeout=10)
        self.port = int(self._server.sockets[0].getsockname()[1])
        return self

    def stop(self) -> None:
        async def close() -> None:
            assert self._server is not None
            self._server.close()
            for task in asyncio.all_tasks():
                if task is not asyncio.current_task():
                    task.cancel()

        asyncio.run_coroutine_threadsafe(close(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)

    def drop(self, count: int, marker: bytes) -> None:
        with self._lock:
            self._rules.append(_Rule("drop", count, marker))

    def delay(self, seconds: float, count: int, marker: bytes) -> None:
        with self._lock:
            self._rules.append(_Rule("delay", count, marker, seconds))

    def _match(self, data: bytes) -> _Rule | None:
        with self._lock:
            for rule in self._rules:
                if rule.left > 0 and rule.marker in data:
                    rule.left -= 1
                    return rule
        return None

    async def _serve(self, client_r: asyncio.StreamReader, client_w: asyncio.StreamWriter) -> None:
        try:
            redis_r, redis_w = await asyncio.open_connection("127.0.0.1", self.upstream_port)
        except OSError:
            client_w.close()
            return
        pending: list[_Rule] = []  # faults armed by requests on this connection, oldest first

        async def requests() -> None:
            tail = b""
            while data := await client_r.read(65536):
                rule = self._match(tail + data)
                if rule is not None:
                    pending.append(rule)
                tail = data[-64:]  # a marker split across two reads is still found
                redis_w.write(data)
                await redis_w.drain()

        async def replies() -> None:
            while data := await redis_r.read(65536):
                if pending:
                    rule = pending.pop(0)
                    self.faults += 1
                    if rule.kind == "drop":  # Redis ran it; the service never hears
                        client_w.transport.abort()
                        return
                    await asyncio.sleep(rule.seconds)
                client_w.write(data)
                await client_w.drain()

        tasks = [asyncio.ensure_future(requests()), asyncio.ensure_future(replies())]
        try:
            await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in tasks:
                task.cancel()
            for writer in (client_w, redis_w):
                writer.transport.abort()
            with contextlib.suppress(BaseException):
                await asyncio.gather(*tasks, return_exceptions=True)
