"""SIGTERM under load (issue 9): every request the node has read is answered, nothing is reset,
and what was answered is exactly what the store holds.

A node (FEEDBACK_SHUTDOWN_DRAIN seconds of drain) serves 200 keep-alive connections,
each submitting to a ``many`` token of its own as fast as it is answered. A balancer polls
``/readyz`` and, once it answers 503, no client opens a new connection to the node (as a load
balancer takes it out of rotation); open connections carry on until an answer says
``Connection: close``. Meanwhile SLOW clients have sent a request's headers before the signal and
send its body only once the listener has closed: a request already read must still be answered.

Counted, from the client's side, on raw sockets (so nothing is retried behind our back):

- answered: a whole response came back (if it said ``Connection: close``, the server closing the
  connection afterwards is expected, not a reset);
- reset: a request was sent and the connection ended (EOF or RST) without a whole response;
- closed while idle: the server closed a kept-alive connection between two requests (a client
  sees it and reconnects; at the wrong moment it is a reset instead, which the drain prevents by
  ending every connection with an answer that says so);
- refused: a connection attempt found no listener (after the node closed it): not a reset.

The node runs under uvicorn and under granian (``feedback-tokens serve --server granian``: a
supervisor passing the signal on to its worker, whose event loop dispatches signals itself), and
the signal goes to the server's process (as ``docker stop`` sends it) or to its whole process
group (as systemd does): then a granian worker gets it twice, from the group and from the
supervisor, and must still drain.

Why clients must move away first: a listener closed with connections still waiting in its accept
queue has the kernel reset them, whatever the server does; the drain exists so that none are.
"""

from __future__ import annotations

import asyncio
import json
import random
import signal
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import layout
import pytest
from conftest import LiveServer, RedisServer, issue_token, live_env, path_of

pytest_plugins = ["support_servers"]

CONNECTIONS = 200
SLOW = 10  # of CONNECTIONS
DRAIN = 3.0  # the default
HOST = "127.0.0.1"


@pytest.fixture
def keys_dir(shared_keys: Path) -> Path:
    return shared_keys


@pytest.fixture
def server_kind(any_server: str) -> str:
    return any_server


@dataclass
class Tally:
    answers: list[tuple[str, int, dict[str, Any], bool]] = field(default_factory=list)  # token, status, body, close
    resets: list[str] = field(default_factory=list)
    refused: int = 0
    closed_after_answer: int = 0
    closed_idle: int = 0
    in_rotation: bool = True
    listener_closed: asyncio.Event = field(default_factory=asyncio.Event)


def request_bytes(path: str, body: bytes, *, head_only: bool = False) -> bytes:
    head = (
        f"POST {path} HTTP/1.1\r\nHost: {HOST}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {len(body)}\r\n\r\n"
    ).encode()
    return head if head_only else head + body


async def read_response(reader: asyncio.StreamReader) -> tuple[int, dict[str, str], bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    status = int(lines[0].split(" ", 2)[1])
    headers = {}
    for line in lines[1:]:
        if line:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
    body = await reader.readexactly(int(headers.get("content-length", "0")))
    return status, headers, body


async def exchange(
    tally: Tally, reader: asyncio.StreamReader, token: dict[str, Any], what: str
) -> bool | None:
    """Read one answer; True if the connection may be used again, False if the server closes it,
    None if it ended without an answer (counted as a reset)."""
    try:
        status, headers, raw = await read_response(reader)
    except (asyncio.IncompleteReadError, ConnectionError) as err:
        tally.resets.append(f"{what}: {type(err).__name__}")
        return None
    close = headers.get("connection", "").lower() == "close"
    tally.answers.append((token["id"], status, json.loads(raw), close))
    if close:
        tally.closed_after_answer += 1
    return not close


async def client(tally: Tally, port: int, token: dict[str, Any], n: int) -> None:
    path, seq = path_of(token), 0
    while tally.in_rotation:
        try:
            reader, writer = await asyncio.open_connection(HOST, port)
        except ConnectionRefusedError:
            tally.refused += 1
            return
        try:
            again: bool | None = True
            while again:
                if seq:  # a client thinks between requests; like any HTTP client, it doesn't send on
                    # a connection it has seen the server close
                    await asyncio.sleep(random.uniform(0, 0.2))
                    if reader.at_eof() or reader.exception() is not None:
                        tally.closed_idle += 1
                        break
                seq += 1
                body = json.dumps({"score": 1, "comment": f"client {n} #{seq}"}).encode()
                writer.write(request_bytes(path, body))
                again = await exchange(tally, reader, token, f"client {n} #{seq}")
                if again is None:
                    return
        finally:
            writer.close()


async def slow_client(tally: Tally, port: int, token: dict[str, Any], n: int, sent: asyncio.Event) -> None:
    """Headers before the signal, the body after the listener closed."""
    reader, writer = await asyncio.open_connection(HOST, port)
    body = json.dumps({"score": 0, "comment": f"slow {n}"}).encode()
    writer.write(request_bytes(path_of(token), body, head_only=True))
    await writer.drain()
    sent.set()
    await tally.listener_closed.wait()
    writer.write(body)
    await exchange(tally, reader, token, f"slow {n}")
    writer.close()


async def balancer(tally: Tally, url: str) -> None:
    async with httpx.AsyncClient(timeout=10) as http:
        while tally.in_rotation:
            try:
                ready = (await http.get(f"{url}/readyz", headers={"Connection": "close"})).status_code == 200
            except httpx.HTTPError:
                ready = False
            tally.in_rotation = ready
            await asyncio.sleep(0.05)


async def watch_listener(tally: Tally, port: int) -> None:
    while True:
        try:
            _, writer = await asyncio.open_connection(HOST, port)
        except ConnectionRefusedError:
            tally.listener_closed.set()
            return
        writer.close()
        await asyncio.sleep(0.02)


async def load(live: LiveServer, tokens: list[dict[str, Any]], to: str) -> tuple[Tally, float]:
    tally = Tally()
    slow_sent = [asyncio.Event() for _ in range(SLOW)]
    watcher = asyncio.ensure_future(balancer(tally, live.url))
    tasks = [asyncio.ensure_future(slow_client(tally, live.port, tokens[i], i, slow_sent[i])) for i in range(SLOW)]
    tasks += [asyncio.ensure_future(client(tally, live.port, tokens[i], i)) for i in range(SLOW, CONNECTIONS)]
    for event in slow_sent:
        await event.wait()
    deadline = time.monotonic() + 60
    while len({token for token, *_ in tally.answers}) < CONNECTIONS - SLOW:  # every client under way
        assert time.monotonic() < deadline, "the load never got going"
        await asyncio.sleep(0.05)
    if to == "group":
        live.signal(signal.SIGTERM)
    else:
        live.proc.send_signal(signal.SIGTERM)
    signalled = time.monotonic()
    listener = asyncio.ensure_future(watch_listener(tally, live.port))
    await asyncio.wait_for(asyncio.gather(*tasks), timeout=60)
    await asyncio.wait_for(listener, timeout=60)
    watcher.cancel()
    return tally, time.monotonic() - signalled


@pytest.mark.parametrize("to", ["server", "group"])
def test_sigterm_under_load_answers_every_request_and_resets_none(
    live_server: Callable[..., LiveServer], redis_factory: Callable[..., RedisServer], keys_dir: Path,
    server_kind: str, to: str,
) -> None:
    own = redis_factory()
    live = live_server(live_env(own, keys_dir, FEEDBACK_SHUTDOWN_DRAIN=str(DRAIN)))
    with httpx.Client(base_url=live.url, timeout=30) as http:  # batches of 100, the most one may hold
        tokens = [t for _ in range(CONNECTIONS // 100) for t in issue_token(http, count=100, use="many")]
    tally, took = asyncio.run(load(live, tokens, to))
    # uvicorn raises the signal again once it has shut down cleanly, so the exit says SIGTERM;
    # granian's supervisor exits 0 once its workers have.
    expected = -signal.SIGTERM if server_kind == "uvicorn" else 0
    assert live.proc.wait(timeout=30) == expected, live.output()

    statuses = Counter(status for _, status, _, _ in tally.answers)
    print(f"{server_kind}, SIGTERM to the {to} under {CONNECTIONS} connections: {len(tally.answers)} answered "
          f"{dict(statuses)}, "
          f"{tally.closed_after_answer} closed after an answer (Connection: close), {tally.closed_idle} closed "
          f"while idle, {tally.refused} refused, "
          f"{len(tally.resets)} reset; all clients done {took:.2f} s after the signal (drain {DRAIN} s)")
    assert tally.resets == []
    assert tally.closed_idle == 0
    assert statuses == {200: len(tally.answers)}, statuses
    assert tally.closed_after_answer >= CONNECTIONS  # every connection was told, none just dropped
    slow = [a for a in tally.answers if a[2]["comment"].startswith("slow")]
    assert len(slow) == SLOW and all(close for *_, close in slow)  # read before the close, answered after

    # Nothing half-written: the stream holds every answered submission and nothing else, and each
    # token's use count is its number of entries.
    direct = own.client()
    streamed = [entry for _, entry in layout.stream_rows(direct)]
    assert sorted(e["id"] for e in streamed) == sorted(body["id"] for _, _, body, _ in tally.answers)
    per_token = Counter(e["token_id"] for e in streamed)
    for token in tokens:
        assert layout.token_fields(direct, token["id"])["uses"] == per_token[token["id"]]
    assert "Traceback" not in live.output() and "ERROR" not in live.output(), live.output()
