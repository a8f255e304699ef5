"""The lean submit path (app/http/fastpath.py) answers exactly as the router and the middleware do.

Two apps on one Redis and one keyring: the default one (lean path on) and one built with
``lean=False``. Each scenario runs on both, each on tokens of its own issued alike (same run, same
feedback id, a frozen clock), so the answers can be compared whole: status, body bytes and every
header in order, the request id included when the client sends one. What each request counts
(metrics) and logs (the access line) is compared too, and the lean app must have served through
the lean path exactly the requests it should.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import API_KEY, TOKENS, token_of
from starlette.testclient import TestClient

from app.http import fastpath
from app.main import create_app
from app.ops import logs, metrics

RUN = str(uuid.uuid4())
FEEDBACK_ID = str(uuid.uuid4())
UNKNOWN_ID = str(uuid.uuid4())
JSON = {"Content-Type": "application/json"}
RID = {"X-Request-ID": "compare-2"}
ORIGIN = {"Origin": "https://page.example"}


@pytest.fixture
def keys_dir(shared_keys: Path) -> Path:
    return shared_keys


@dataclass
class Side:
    """One app and what it did: the requests its lean path served, what it counted and logged."""

    client: TestClient
    lean_served: list[str] = field(default_factory=list)
    counted: list[tuple[Any, ...]] = field(default_factory=list)
    logged: list[tuple[Any, ...]] = field(default_factory=list)

    def issue(self, **fields: Any) -> dict[str, Any]:
        body = {"run_id": RUN, "feedback_key": "k", "id": FEEDBACK_ID, **fields}
        if fields.get("use") == "many":
            del body["id"]
        r = self.client.post(TOKENS, json=body, headers={"X-API-Key": API_KEY, "X-Request-ID": "issue"})
        assert r.status_code == 200, r.text
        return r.json()  # type: ignore[no-any-return]


class Recorder:
    """Stands in for the process's metrics: what ``app.ops.middleware.record`` counts."""

    def __init__(self, sink: Callable[[], list[tuple[Any, ...]]]) -> None:
        self.sink = sink

    def request(self, route: str, method: str, status: int, seconds: float) -> None:
        assert seconds > 0
        self.sink().append(("request", route, method, status))

    def submission(self, outcome: str) -> None:
        self.sink().append(("submission", outcome))


class Pair(dict[str, Side]):
    """The two apps; ``active`` is the one whose counts and access lines are being collected."""

    active: Side


@pytest.fixture
def sides(settings, clock, monkeypatch, caplog) -> Iterator[Pair]:
    pair = Pair(
        lean=Side(TestClient(create_app(settings, clock=clock), raise_server_exceptions=False)),
        plain=Side(TestClient(create_app(settings, clock=clock, lean=False), raise_server_exceptions=False)),
    )
    pair.active = pair["lean"]
    served = fastpath.LeanSubmit.submit

    async def spy(self: fastpath.LeanSubmit, scope: Any, *args: Any) -> None:
        pair.active.lean_served.append(scope["path"])
        await served(self, scope, *args)

    monkeypatch.setattr(fastpath.LeanSubmit, "submit", spy)
    monkeypatch.setattr(metrics, "current", lambda: Recorder(lambda: pair.active.counted))

    class Access(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            method, route, status, seconds, access = record.__dict__["access"]
            pair.active.logged.append((method, route, status, access.request_id, access.submission,
                                       access.outcome, access.problem, access.token_id is not None))

    handler = Access()
    logs.ACCESS.addHandler(handler)
    caplog.set_level(logging.INFO, logger=logs.ACCESS.name)
    for side in pair.values():
        side.client.__enter__()
    try:
        yield pair
    finally:
        logs.ACCESS.removeHandler(handler)
        for side in pair.values():
            side.client.__exit__(None, None, None)


def comparable(r: Any, same_request_id: bool) -> tuple[int, Any, list[tuple[bytes, bytes]]]:
    headers = [(k, v) for k, v in r.headers.raw if same_request_id or k.lower() != b"x-request-id"]
    body: Any = r.content
    if not same_request_id and r.headers.get("content-type") == "application/problem+json":
        body = json.loads(body)
        body.pop("request_id", None)
    return r.status_code, body, headers


def run_both(pair: Pair, scenario: Callable[[Side], list[Any]], same_request_id: bool = True) -> None:
    answers = {}
    for name, side in pair.items():
        pair.active = side
        answers[name] = [comparable(r, same_request_id) for r in scenario(side)]
    assert answers["lean"] == answers["plain"]
    lean, plain = pair["lean"], pair["plain"]
    if not same_request_id:
        for side in pair.values():
            side.logged = [row[:3] + row[4:] for row in side.logged]
    assert lean.counted == plain.counted and lean.counted
    assert lean.logged == plain.logged and lean.logged
    assert plain.lean_served == []


@dataclass
class Answer:
    """An answer read from the app's ASGI messages, shaped as ``comparable`` reads an httpx one."""

    status_code: int
    content: bytes
    raw: list[tuple[bytes, bytes]]

    @property
    def headers(self) -> Any:
        return httpx.Headers(self.raw)


def in_pieces(side: Side, path: str, pieces: list[bytes], **headers: str) -> Answer:
    """POST a body that comes in several ``http.request`` messages (which the test client never
    sends: it reads a streamed body whole), with a Content-Length."""
    messages = [{"type": "http.request", "body": piece, "more_body": i < len(pieces) - 1}
                for i, piece in enumerate(pieces)]
    raw = [(b"content-type", b"application/json"), (b"content-length", str(sum(map(len, pieces))).encode()),
           *((k.lower().replace("_", "-").encode(), v.encode()) for k, v in headers.items())]
    scope = {"type": "http", "asgi": {"version": "3.0"}, "http_version": "1.1", "method": "POST",
             "scheme": "http", "path": path, "raw_path": path.encode(), "root_path": "", "query_string": b"",
             "headers": raw, "client": ("127.0.0.1", 1234), "server": ("testserver", 80)}
    sent: list[dict[str, Any]] = []

    async def receive() -> dict[str, Any]:
        return messages.pop(0) if messages else {"type": "http.disconnect"}

    async def send(message: dict[str, Any]) -> None:
        sent.append(message)

    assert side.client.portal is not None
    side.client.portal.call(side.client.app, scope, receive, send)
    return Answer(sent[0]["status"], b"".join(m.get("body", b"") for m in sent[1:]), list(sent[0]["headers"]))


def post(side: Side, path: str, body: bytes | Any = b'{"score": 1}', **headers: str) -> Any:
    headers.setdefault("X-Request-ID", "compare-1")
    content = body if isinstance(body, bytes) else json.dumps(body).encode()
    hdrs = {"Content-Type": "application/json", **{k.replace("_", "-"): v for k, v in headers.items()}}
    return side.client.post(path, content=content, headers=hdrs)


def url_path(answer: dict[str, Any]) -> str:
    return "/" + answer["url"].split("/", 3)[3]


SCENARIOS: dict[str, tuple[Callable[[Side], list[Any]], int]] = {
    # name: (the requests, how many of them the lean path serves)
    "recorded, then a duplicate, then 409 used": (lambda s: (lambda p: [
        post(s, p), post(s, p, Origin="https://page.example"), post(s, p, b'{"score": 0}')
    ])(url_path(s.issue())), 3),
    "the old <jwt> form and the token id form": (lambda s: (lambda a: [
        post(s, f"{TOKENS}/{token_of(a)}"), post(s, f"{TOKENS}/{a['id']}", Origin="null"),
    ])(s.issue()), 2),
    "404, 401 (not a token, bad id segment, another token's id, tampered)": (lambda s: (lambda a: [
        post(s, f"{TOKENS}/{UNKNOWN_ID}"), post(s, f"{TOKENS}/not-a-token", Origin="https://x.example"),
        post(s, f"{TOKENS}/{token_of(a)}/nope"), post(s, f"{TOKENS}/{token_of(a)}/{UNKNOWN_ID}"),
        post(s, f"{TOKENS}/{token_of(a)[:-4]}AAAA/{a['id']}"),
    ])(s.issue()), 5),
    "413 declared and streamed, 415, 422, 400, a form": (lambda s: (lambda p: [
        post(s, p, b'{"comment": "' + b"x" * 70_000 + b'"}'),
        s.client.post(p, content=iter([b'{"comment": "', b"x" * 70_000, b'"}']), headers={**JSON, **RID}),
        post(s, p, Content_Type="text/xml", Origin="https://page.example"),
        post(s, p, {"score": "high"}), post(s, p, b'{"score": 1, "score": 2}'), post(s, p, b"{"),
        post(s, p, b"score=1", Content_Type="application/x-www-form-urlencoded"),
        post(s, p, {"score": 1}, Content_Type="application/vnd.api+json; charset=utf-8"),
        post(s, p, {"score": 1}, Expect="100-continue"),
    ])(url_path(s.issue())), 4),
    "a body in pieces goes to the router, with what was read of it": (lambda s: (lambda p: [
        in_pieces(s, p, [b'{"score"', b": 1}"], x_request_id="p-1"),
        in_pieces(s, p, [b'{"score": 1}', b""], x_request_id="p-2", origin="null"),
        in_pieces(s, p, [b"", b'{"score": 0}'], x_request_id="p-3"),
        in_pieces(s, p, [b'{"score": 1}'], x_request_id="p-4"),  # one piece: the lean path's
    ])(url_path(s.issue())), 1),
    "Idempotency-Key: the same, a conflict, a bad one": (lambda s: (lambda p: [
        post(s, p, Idempotency_Key="k-1"), post(s, p, Idempotency_Key="k-1", Origin="https://page.example"),
        post(s, p, {"score": 0}, Idempotency_Key="k-1"), post(s, p, Idempotency_Key="x" * 300),
    ])(url_path(s.issue())), 4),
    "revoked": (lambda s: (lambda a: [
        s.client.delete(f"{TOKENS}/{a['id']}", headers={"X-API-Key": API_KEY, "X-Request-ID": "r"}),
        post(s, url_path(a)), post(s, url_path(a), Origin="https://page.example"),
    ])(s.issue()), 2),
    # The router answers these; the slashes are redirected and the redirect followed to a path the
    # lean path serves, as is <token>/info (the router takes it for <token>/<token id>).
    "other methods and paths stay with the router": (lambda s: (lambda p: [
        s.client.options(p, headers={**ORIGIN, **RID, "Access-Control-Request-Method": "POST"}),
        s.client.get(p, headers={"X-Request-ID": "g"}), post(s, f"{TOKENS}/a/b/extra"),
        post(s, f"{TOKENS}/{UNKNOWN_ID}/"), post(s, f"{TOKENS}/a//"), post(s, f"{TOKENS}//a"),
        post(s, TOKENS, {"run_id": RUN, "feedback_key": "k"}), post(s, f"{TOKENS}/a/info"),
    ])(url_path(s.issue())), 3),
}


@pytest.mark.parametrize("name", list(SCENARIOS))
def test_the_lean_path_answers_as_the_router_does(sides, name):
    scenario, lean = SCENARIOS[name]
    run_both(sides, scenario)
    assert len(sides["lean"].lean_served) == lean


def test_answers_match_without_a_request_id(sides):
    def scenario(s: Side) -> list[Any]:
        p = url_path(s.issue())
        return [s.client.post(p, json={"score": 1}), s.client.post(p, json={"score": 0}, headers=ORIGIN),
                s.client.post(f"{TOKENS}/not-a-token", json={"score": 1}, headers={"X-Request-ID": "bad id!"})]

    run_both(sides, scenario, same_request_id=False)
    assert len(sides["lean"].lean_served) == 3


def test_answers_match_for_an_expired_token(sides, clock):
    def scenario(s: Side) -> list[Any]:
        p = url_path(s.issue(expires_in={"minutes": 1}))
        clock.advance(3600)
        try:
            return [post(s, p), post(s, p, Origin="https://page.example")]
        finally:
            clock.advance(-3600)

    run_both(sides, scenario)
    assert len(sides["lean"].lean_served) == 2


def test_answers_match_while_draining(sides):
    def scenario(s: Side) -> list[Any]:
        p, drain = url_path(s.issue()), s.client.app.state.readiness.drain  # type: ignore[attr-defined]
        answers = [post(s, f"{TOKENS}/{UNKNOWN_ID}")]
        drain.draining = True
        answers += [post(s, f"{TOKENS}/{UNKNOWN_ID}"), post(s, p), post(s, p, Origin="https://page.example")]
        drain.draining = False
        return [*answers, post(s, p), post(s, f"{TOKENS}/{UNKNOWN_ID}", Origin="https://page.example")]

    run_both(sides, scenario)
    assert len(sides["lean"].lean_served) == 6


def test_answers_match_when_redis_is_down_and_on_an_unexpected_error(sides, redis_server, monkeypatch):
    answers = {name: url_path(side.issue()) for name, side in sides.items()}
    for side in sides.values():
        side.counted.clear()
        side.logged.clear()

    def down(s: Side) -> list[Any]:
        p = answers["lean" if s is sides["lean"] else "plain"]
        redis_server.stop()
        try:
            return [post(s, p), post(s, p, Origin="https://page.example")]
        finally:
            redis_server.start()

    run_both(sides, down)
    for side in sides.values():
        async def broken(*args: Any, **kwargs: Any) -> Any:
            raise RuntimeError("a bug of ours")

        monkeypatch.setattr(side.client.app.state.service, "submit", broken)  # type: ignore[attr-defined]
    run_both(sides, lambda s: [post(s, answers["lean"]), post(s, answers["lean"], Origin="https://page.example")])
    assert len(sides["lean"].lean_served) == 4
