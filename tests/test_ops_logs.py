"""Logs: JSON lines (or text), one access line per request with the request id the client sent,
the route template and the token id, and never a JWT, a query string or a comment."""

from __future__ import annotations

import base64
import json
import logging
import re
import subprocess
import sys
import tempfile
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import layout
import pytest
from conftest import ROOT, TOKENS, RedisServer, issue_token, live_env, token_of
from starlette.testclient import TestClient
from support_ops import Served, cli_args, servers, uvicorn_args, wait_until

from app.ops.logs import JsonFormatter

SUBMIT_ROUTE = "/api/v1/feedback/tokens/{token}"
HTML = {"Accept": "text/html"}


@pytest.fixture
def served() -> Iterator[Callable[..., Served]]:
    yield from servers()


def access_lines(lines: list[str]) -> list[dict[str, Any]]:
    parsed = [json.loads(line) for line in lines]
    return [p for p in parsed if p["logger"] == "feedback_tokens.access"]


def test_json_access_lines_hold_ids_and_templates_and_no_secret(
    served: Callable[..., Served], redis_server: RedisServer, keys_dir: Path
) -> None:
    server = served(uvicorn_args(), live_env(redis_server, keys_dir))
    base = server.url
    secrets = [f"comment-{uuid.uuid4().hex}" for _ in range(4)]
    with httpx.Client(base_url=base) as http:
        answers = issue_token(http, count=3, headers={"X-Request-ID": "issue-1"})
    first, second, third = (token_of(a) for a in answers)
    sent: dict[str, httpx.Response] = {}

    def send(rid: str, method: str, path: str, **kw: Any) -> httpx.Response:
        headers = {"X-Request-ID": rid, **kw.pop("headers", {})}
        sent[rid] = r = httpx.request(method, f"{base}{path}", headers=headers, **kw)
        assert r.headers["x-request-id"] == rid
        return r

    assert send("post-1", "POST", f"{TOKENS}/{first}", json={"score": 1, "comment": secrets[0]}).status_code == 200
    assert send("get-1", "GET", f"{TOKENS}/{second}", params={"score": "1", "comment": secrets[1]}).status_code == 200
    page = send("get-html-1", "GET", f"{TOKENS}/{second}", params={"score": "0", "comment": secrets[2]}, headers=HTML)
    assert page.status_code == 409 and page.headers["content-type"].startswith("text/html")
    bad = send("bad-1", "POST", f"{TOKENS}/{first[:-6]}", json={"score": 1})
    assert bad.status_code == 401 and bad.json()["request_id"] == "bad-1"
    assert send("head-1", "HEAD", f"{TOKENS}/{third}?score=1").status_code == 200  # as GET would; records nothing
    assert send("by-id-1", "POST", f"{TOKENS}/{answers[2]['id']}", json={"comment": secrets[3]}).status_code == 200
    assert send("nothing-1", "GET", "/nothing/here").status_code == 404
    unnamed = httpx.get(f"{base}/healthz")
    generated = unnamed.headers["x-request-id"]
    rids = ["issue-1", *sent, generated]
    wait_until(lambda: {a["request_id"] for a in access_lines(server.lines())} >= set(rids), "the access lines")
    log = server.stop()

    lines = server.lines()
    assert lines, "nothing was logged"
    access = access_lines(lines)  # every line parses as JSON, uvicorn's own included
    by_rid = {a["request_id"]: a for a in access}
    for rid in rids:
        assert [a["request_id"] for a in access].count(rid) == 1, f"{rid}: not exactly one access line"
    for a in access:
        assert {"time", "level", "request_id", "method", "route", "status", "duration_ms", "token_id",
                "problem"} <= a.keys()
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", a["time"]) and a["level"] == "info"
        assert isinstance(a["duration_ms"], float | int) and a["duration_ms"] >= 0
    expect = {
        "issue-1": ("POST", "/api/v1/feedback/tokens", 200, None, None, None),
        "post-1": ("POST", SUBMIT_ROUTE, 200, answers[0]["id"], None, "recorded"),
        "get-1": ("GET", SUBMIT_ROUTE, 200, answers[1]["id"], None, "recorded"),
        "get-html-1": ("GET", SUBMIT_ROUTE, 409, answers[1]["id"], "token_used", None),
        "bad-1": ("POST", SUBMIT_ROUTE, 401, None, "token_invalid", None),
        "by-id-1": ("POST", SUBMIT_ROUTE, 200, answers[2]["id"], None, "recorded"),
        "head-1": ("HEAD", SUBMIT_ROUTE, 200, answers[2]["id"], None, None),
        "nothing-1": ("GET", "unmatched", 404, None, "not_found", None),
        generated: ("GET", "/healthz", 200, None, None, None),
    }
    for rid, (method, route, status, token_id, problem, outcome) in expect.items():
        a = by_rid[rid]
        assert (a["method"], a["route"], a["status"], a["token_id"], a["problem"], a.get("outcome")) == (
            method, route, status, token_id, problem, outcome), rid
    # Nothing from a path, a query string or a body.
    for token in (first, second, third):
        assert token not in log and token.split(".")[1] not in log and token.split(".")[2] not in log
    for secret in secrets:
        assert secret not in log
    assert "comment=" not in log and "score=" not in log and "/nothing/here" not in log
    # uvicorn's own access log is off: each request is logged once, by us.
    assert "HTTP/1.1" not in log


def test_an_app_log_line_carries_the_request_id(
    served: Callable[..., Served], redis_factory: Callable[..., RedisServer], keys_dir: Path
) -> None:
    own = redis_factory()
    server = served(uvicorn_args(), live_env(own, keys_dir))
    with httpx.Client(base_url=server.url) as http:
        answer = issue_token(http)
    own.stop()
    r = httpx.post(f"{server.url}{TOKENS}/{token_of(answer)}", json={"score": 1}, headers={"X-Request-ID": "down-1"})
    assert r.status_code == 503 and r.json()["request_id"] == "down-1"

    def warned() -> list[dict[str, Any]]:
        parsed = [json.loads(line) for line in server.lines()]
        return [p for p in parsed if p["level"] == "warning" and "redis submit failed" in p["msg"]]

    def access() -> list[dict[str, Any]]:
        return [a for a in access_lines(server.lines()) if a["request_id"] == "down-1"]

    # The access line is buffered (written within 0.1 s), the warning written at once.
    wait_until(lambda: bool(warned()) and bool(access()), "the store's warning and the access line")
    assert [w["request_id"] for w in warned()] == ["down-1"]
    assert warned()[0]["logger"] == "feedback_tokens.store"
    lines = server.lines()  # in the order things happened: the warning came first
    warning = next(i for i, x in enumerate(lines) if "redis submit failed" in x)
    assert warning < next(i for i, x in enumerate(lines) if "feedback_tokens.access" in x and "down-1" in x)
    (line,) = access()
    assert line["problem"] == "store_unavailable" and line["status"] == 503


def test_serve_writes_text_when_told(
    served: Callable[..., Served], redis_server: RedisServer, keys_dir: Path
) -> None:
    server = served(cli_args("serve", "--port", "{port}", "--log-format", "text"), live_env(redis_server, keys_dir))
    with httpx.Client(base_url=server.url) as http:
        token = token_of(issue_token(http))
    httpx.post(f"{server.url}{TOKENS}/{token}", json={"score": 1}, headers={"X-Request-ID": "text-1"})
    wait_until(lambda: "[text-1]" in server.output(), "the access line")
    (line,) = [line for line in server.lines() if "[text-1]" in line]
    assert re.fullmatch(
        r"\S+Z INFO +feedback_tokens\.access \[text-1\] POST /api/v1/feedback/tokens/\{token\} 200 "
        r"[\d.]+ms token_id=[0-9a-f-]{36} outcome=recorded", line), line
    for other in server.lines():
        with pytest.raises(json.JSONDecodeError):
            json.loads(other)
    assert token not in server.output()


def test_make_run_logs_text_by_default(
    served: Callable[..., Served], redis_server: RedisServer, keys_dir: Path
) -> None:
    with tempfile.TemporaryDirectory(prefix="fbt-dev-") as root:
        server = served(cli_args("dev", "--root", root, "--port", "{port}"), live_env(redis_server, keys_dir))
        httpx.get(f"{server.url}/healthz", headers={"X-Request-ID": "dev-1"})
        wait_until(lambda: "[dev-1] GET /healthz 200" in server.output(), "the access line")
        server.stop()


@pytest.mark.parametrize("given", ["a", "A" * 64, "0f3c9a1e-5b7d-4c2a-9e8f-1a2b3c4d5e6f", "trace:1/2+x=y_z.w"])
def test_a_safe_request_id_is_kept(client: TestClient, given: str) -> None:
    token = token_of(issue_token(client))
    ok = client.post(f"{TOKENS}/{token}", json={"score": 1}, headers={"X-Request-ID": given})
    assert ok.headers["x-request-id"] == given
    used = client.post(f"{TOKENS}/{token}", json={"score": 0}, headers={"X-Request-ID": given})
    assert used.status_code == 409 and used.json()["request_id"] == given == used.headers["x-request-id"]


@pytest.mark.parametrize("given", ["", "A" * 65, "has space", "quote\"d", "semi;colon", "é"])
def test_an_unsafe_request_id_is_replaced(client: TestClient, given: str) -> None:
    headers = {"X-Request-ID": given.encode()}
    first = client.get("/nothing", headers=headers)
    second = client.get("/nothing", headers=headers)
    for r in (first, second):
        rid = r.headers["x-request-id"]
        assert rid != given and re.fullmatch(r"[0-9a-f]{12}-[0-9a-f]+", rid)
        assert r.json()["request_id"] == rid
    assert first.headers["x-request-id"] != second.headers["x-request-id"]


def test_html_pages_and_500s_carry_the_request_id(
    settings: Any, clock: Any, redis_server: RedisServer
) -> None:
    from app.main import create_app

    with TestClient(create_app(settings, clock=clock), raise_server_exceptions=False) as client:
        answer = issue_token(client, use="update")
        token = token_of(answer)
        page = client.get(f"{TOKENS}/{token}", params={"score": "1"}, headers={**HTML, "X-Request-ID": "page-1"})
        assert page.status_code == 200 and page.headers["x-request-id"] == "page-1"
        fields = layout.token_fields(redis_server.client(), answer["id"])  # damage the latest answer
        local = base64.urlsafe_b64encode(uuid.UUID(answer["id"]).bytes[8:]).rstrip(b"=").decode()
        redis_server.client().hset(fields["key"], f"{local}:v", "not json")
        r = client.get(f"{TOKENS}/{token}/info", headers={"X-Request-ID": "boom-1"})
    assert r.status_code == 500 and r.json()["code"] == "internal_error"
    assert r.json()["request_id"] == "boom-1" == r.headers["x-request-id"]


def test_without_our_logging_the_access_line_is_an_ordinary_record(
    client: TestClient, caplog: pytest.LogCaptureFixture
) -> None:
    """An embedding app (or pytest) keeps its own logging: access lines reach it as records,
    which our formatter renders like the direct path does."""
    token = token_of(issue_token(client))
    with caplog.at_level(logging.INFO, logger="feedback_tokens.access"):
        client.post(f"{TOKENS}/{token}", json={"score": 1, "comment": "private words"}, headers={"X-Request-ID": "e-1"})
    (record,) = [r for r in caplog.records if r.name == "feedback_tokens.access"]
    assert record.getMessage() == f"POST {SUBMIT_ROUTE} 200"
    line = json.loads(JsonFormatter().format(record))
    assert line["request_id"] == "e-1" and line["route"] == SUBMIT_ROUTE and line["outcome"] == "recorded"
    assert token not in caplog.text and "private words" not in caplog.text


FORK = """
import os
from app.ops.context import request_id
print(request_id(None), flush=True)
pid = os.fork()
if pid == 0:
    print(request_id(None), flush=True)
    os._exit(0)
os.waitpid(pid, 0)
"""


def test_a_forked_process_makes_request_ids_of_its_own() -> None:
    # In a fresh interpreter: forking the test process (threads running) is asking for trouble.
    out = subprocess.run([sys.executable, "-c", FORK], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True)
    parent, child = out.stdout.split()
    assert parent.endswith("-1") and child.endswith("-1")
    assert parent.rsplit("-", 1)[0] != child.rsplit("-", 1)[0]
