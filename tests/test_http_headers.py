"""What browsers and logs see: CORS, security headers, HTML escaping, tokens kept out of logs."""

from __future__ import annotations

import base64
import logging
import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import layout
import pytest
from conftest import API_KEY, ROOT, TOKENS, free_port, issue_token, token_of

AUTH = {"X-API-Key": API_KEY}
HTML = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}
ORIGINS = ["https://evil.example", "http://localhost:3000", "null", "https://app.example.com:8443"]
# Public, cacheable on purpose (no secret in them): everything else is no-store.
CACHEABLE = {"/.well-known/jwks.json", "/widget.js"}
# A fixed id: parameters must be the same in every pytest-xdist worker.
SOME_ID = "0b5e4c2e-6d0f-4b8e-9c1a-2f3d4e5f6a7b"


@pytest.fixture
def keys_dir(shared_keys: Path) -> Path:
    return shared_keys


issue = issue_token


def preflight(client, path: str, origin: str, method: str, headers: str = "content-type"):
    return client.options(path, headers={"Origin": origin, "Access-Control-Request-Method": method,
                                         "Access-Control-Request-Headers": headers})


# -- CORS ------------------------------------------------------------------------------------------


@pytest.mark.parametrize("origin", ORIGINS)
@pytest.mark.parametrize("method", ["POST", "GET"])
def test_any_page_may_submit_to_a_token_url_without_credentials(client, origin, method):
    url = f"{TOKENS}/{token_of(issue(client))}"
    r = preflight(client, url, origin, method)
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] == "*"
    assert method in r.headers["access-control-allow-methods"]
    assert "content-type" in r.headers["access-control-allow-headers"].lower()
    assert "access-control-allow-credentials" not in r.headers
    # the request itself, with cookies a browser might attach: readable, but never with credentials
    if method == "POST":
        r = client.post(url, json={"score": 1}, headers={"Origin": origin, "Cookie": "session=abc"})
    else:
        r = client.get(url, params={"score": "1"}, headers={"Origin": origin, "Cookie": "session=abc"})
    assert r.status_code == 200
    assert r.headers["access-control-allow-origin"] in ("*", origin)
    assert "access-control-allow-credentials" not in r.headers


@pytest.mark.parametrize(
    ("path", "method", "headers"),
    [
        (TOKENS, "POST", "content-type,x-api-key"),  # issuance
        (TOKENS, "GET", "x-api-key"),  # listing
        (f"{TOKENS}/{SOME_ID}", "DELETE", "x-api-key"),  # revocation
        (f"{TOKENS}/{SOME_ID}", "DELETE", ""),  # revocation, even without the key header
        (f"{TOKENS}/{SOME_ID}", "POST", "content-type,authorization"),
        (f"{TOKENS}/{SOME_ID}", "PUT", "content-type"),
    ],
)
def test_api_key_endpoints_are_not_callable_cross_origin(client, path, method, headers):
    r = preflight(client, path, "https://evil.example", method, headers)
    allowed_headers = r.headers.get("access-control-allow-headers", "").lower()
    allowed_methods = r.headers.get("access-control-allow-methods", "")
    # A browser goes on only after a 2xx preflight that lists the method and every header.
    refused = (
        not 200 <= r.status_code < 300
        or method not in allowed_methods
        or any(h and h not in allowed_headers for h in headers.split(","))
    )
    assert refused, r.headers
    assert "access-control-allow-credentials" not in r.headers


def test_simple_cross_origin_issuance_without_the_key_is_refused(client, redis_server):
    # A form-like request needs no preflight; without X-API-Key it can do nothing.
    r = client.post(TOKENS, content=b'{"run_id": "%s", "feedback_key": "k"}' % str(uuid.uuid4()).encode(),
                    headers={"Origin": "https://evil.example", "Content-Type": "text/plain",
                             "Cookie": "session=abc"})
    assert r.status_code == 401 and r.json()["code"] == "unauthorized"
    assert "access-control-allow-credentials" not in r.headers
    assert layout.data_keys(redis_server.client()) == []


# -- security headers on every answer ------------------------------------------------------------


def every_kind_of_answer(client, make_app) -> list[tuple[str, httpx.Response]]:
    used = issue(client)
    used_url = f"{TOKENS}/{token_of(used)}"
    fresh = f"{TOKENS}/{token_of(issue(client))}"
    html_token = f"{TOKENS}/{token_of(issue(client))}"
    expired = issue(client, expires_in={"minutes": 1})
    dead = make_app(redis_url=f"redis://127.0.0.1:{free_port()}/0")
    answers = [
        ("healthz", client.get("/healthz")),
        ("readyz", client.get("/readyz")),
        ("readyz-503", dead.get("/readyz")),
        ("openapi", client.get("/openapi.json")),
        ("jwks", client.get("/.well-known/jwks.json")),
        ("widget", client.get("/widget.js")),
        ("issue", client.post(TOKENS, json={"run_id": str(uuid.uuid4()), "feedback_key": "k"}, headers=AUTH)),
        ("issue-401", client.post(TOKENS, json={})),
        ("issue-422", client.post(TOKENS, json={}, headers=AUTH)),
        ("issue-415", client.post(TOKENS, content=b"x", headers={**AUTH, "Content-Type": "text/html"})),
        ("list", client.get(TOKENS, params={"run_id": used["run_id"]}, headers=AUTH)),
        ("submit", client.post(used_url, json={"score": 1})),
        ("submit-duplicate", client.post(used_url, json={"score": 1})),
        ("submit-409", client.post(used_url, json={"score": 0})),
        ("submit-401", client.post(f"{TOKENS}/not.a.token", json={"score": 1})),
        ("submit-404", client.post(f"{TOKENS}/{uuid.uuid4()}", json={"score": 1})),
        ("submit-400", client.post(fresh, content=b"{", headers={"Content-Type": "application/json"})),
        ("submit-413", client.post(fresh, content=b" " * (65 * 1024), headers={"Content-Type": "application/json"})),
        ("submit-422", client.post(fresh, json={})),
        ("submit-503", dead.post(fresh, json={"score": 1})),
        ("info", client.get(f"{fresh}/info")),
        ("head", client.head(fresh)),
        ("link", client.get(fresh, params={"score": "1"})),
        ("html-picker", client.get(html_token, headers=HTML)),
        ("html-thanks", client.get(html_token, params={"score": "1"}, headers=HTML)),
        ("html-409", client.get(html_token, params={"score": "0"}, headers=HTML)),
        ("html-401", client.get(f"{TOKENS}/x.y.z", params={"score": "1"}, headers=HTML)),
        ("html-503", dead.get(fresh, params={"score": "1"}, headers=HTML)),
        ("prefetch", client.get(fresh, params={"score": "1"}, headers={**HTML, "Sec-Purpose": "prefetch"})),
        ("revoke", client.delete(f"{TOKENS}/{expired['id']}", headers=AUTH)),
        ("not-found", client.get("/nope")),
        ("method-not-allowed", client.put(TOKENS)),
        ("preflight", preflight(client, fresh, "https://evil.example", "POST")),
    ]
    client.app.state.service.clock.advance(120)
    answers.append(("html-410", client.get(f"{TOKENS}/{token_of(expired)}", params={"score": "1"}, headers=HTML)))
    return answers


def test_every_answer_carries_nosniff_and_no_store(client, make_app):
    answers = every_kind_of_answer(client, make_app)
    statuses = {r.status_code for _, r in answers}
    assert statuses >= {200, 204, 400, 401, 404, 405, 409, 410, 413, 415, 422, 425, 503}
    for name, r in answers:
        assert r.headers.get("x-content-type-options") == "nosniff", name
        assert r.headers.get("referrer-policy") == "no-referrer", name
        if str(r.request.url.path) in CACHEABLE:
            assert "no-store" not in r.headers["cache-control"] and "public" in r.headers["cache-control"]
        else:
            assert r.headers.get("cache-control") == "no-store", (name, r.headers.get("cache-control"))


def test_html_answers_forbid_framing_and_referrers(client, make_app):
    pages = [(n, r) for n, r in every_kind_of_answer(client, make_app)
             if r.headers.get("content-type", "").startswith("text/html")]
    assert {n for n, _ in pages} >= {"html-picker", "html-thanks", "html-409", "html-401", "html-503", "html-410"}
    for name, r in pages:
        csp = r.headers["content-security-policy"]
        assert "frame-ancestors 'none'" in csp and "default-src 'none'" in csp, name
        assert "script-src" not in csp, name  # no script at all on these pages
        assert r.headers["x-frame-options"] == "DENY", name
        assert r.headers["referrer-policy"] == "no-referrer", name


def test_redirect_after_success_sends_no_referrer(make_app):
    client = make_app(redirect_origins=("https://app.example.com",))
    token = token_of(issue(client, redirect_url="https://app.example.com/thanks"))
    r = client.get(f"{TOKENS}/{token}", params={"score": "1"}, headers=HTML, follow_redirects=False)
    assert r.status_code in (302, 303) and r.headers["location"] == "https://app.example.com/thanks"
    # The token is in this page's URL: the page we send the browser to must not get it as Referer.
    assert r.headers["referrer-policy"] == "no-referrer"
    assert r.headers["cache-control"] == "no-store"


# -- HTML escapes what it echoes ------------------------------------------------------------------

XSS = "<script>alert(1)</script>"
XSS_ATTR = "\"'><img src=x onerror=alert(1)>"
XSS_SVG = "</textarea><svg onload=alert(1)>"


def assert_inert(html: str) -> None:
    low = html.lower()
    assert "<script" not in low and "<img" not in low and "<svg" not in low, html


def test_html_pages_escape_everything_they_echo(client):
    config = {"type": "categorical", "categories": [{"value": 1, "label": XSS}, {"value": 2, "label": XSS_ATTR}]}
    picked = issue(client, feedback_key=XSS, feedback_config=config, confirm=True)
    url = f"{TOKENS}/{token_of(picked)}"
    seen = []

    picker = client.get(url, headers=HTML)  # the choices, labels and all
    assert picker.status_code == 200 and "&lt;script&gt;alert(1)&lt;/script&gt;" in picker.text
    seen.append(picker.text)
    confirm = client.get(url, params={"value": XSS_ATTR, "comment": XSS_SVG}, headers=HTML)
    assert confirm.status_code == 200 and "&lt;svg onload=alert(1)&gt;" in confirm.text
    seen.append(confirm.text)
    wrong = client.get(url, params={"value": XSS + "?", "comment": XSS}, headers=HTML)  # 422: names the labels
    assert wrong.status_code == 422
    seen.append(wrong.text)

    free = token_of(issue(client, feedback_key=XSS, feedback_config={"type": "freeform"}, confirm=True))
    free_confirm = client.get(f"{TOKENS}/{free}", params={"value": XSS_ATTR, "comment": XSS}, headers=HTML)
    assert free_confirm.status_code == 200 and "&#x27;&gt;&lt;img src=x" in free_confirm.text
    seen.append(free_confirm.text)
    done = client.post(f"{TOKENS}/{free}", content=f"value={XSS}&comment={XSS_SVG}".encode(),
                       headers={**HTML, "Content-Type": "application/x-www-form-urlencoded"})
    assert done.status_code == 200
    seen.append(done.text)
    again = client.post(f"{TOKENS}/{free}", content=b"value=other", headers={
        **HTML, "Content-Type": "application/x-www-form-urlencoded"})
    assert again.status_code == 409
    seen.append(again.text)
    for html in seen:
        assert_inert(html)


# -- the token never appears in full in a log ---------------------------------------------------


class InfoServer:
    """uvicorn at --log-level info (access log on), output kept for reading."""

    def __init__(self, env: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        fd, self.log_path = tempfile.mkstemp(prefix="fbt-info-", suffix=".log")
        with os.fdopen(fd, "wb") as log:
            self.proc = subprocess.Popen(
                [sys.executable, "-m", "uvicorn", "app.main:app", "--host", "127.0.0.1", "--port", str(self.port),
                 "--log-level", "info"],
                cwd=ROOT, env={**os.environ, "FEEDBACK_PUBLIC_URL": self.url, **env},
                stdout=log, stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 20
        while True:
            assert self.proc.poll() is None and time.monotonic() < deadline, self.output()
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.05)

    def output(self) -> str:
        return Path(self.log_path).read_text()

    def stop(self) -> str:
        self.proc.terminate()
        self.proc.wait(timeout=10)
        out = self.output()
        os.unlink(self.log_path)
        return out


@pytest.fixture
def info_server(redis_server, keys_dir) -> Iterator[InfoServer]:
    server = InfoServer({"REDIS_URL": redis_server.url, "FEEDBACK_KEYS_DIR": str(keys_dir),
                         "FEEDBACK_API_KEYS": API_KEY})
    try:
        yield server
    finally:
        if server.proc.poll() is None:
            server.stop()


def test_access_log_never_holds_a_whole_token(info_server, redis_server):
    base = info_server.url
    with httpx.Client(base_url=base) as http:
        answers = [issue_token(http) for _ in range(3)]
    first, second, third = (token_of(a) for a in answers)
    httpx.post(f"{base}{TOKENS}/{first}", json={"score": 1})
    httpx.post(f"{base}{TOKENS}/{first}", json={"score": 0})  # 409
    httpx.get(f"{base}{TOKENS}/{second}", params={"score": "1", "comment": "hi"})
    httpx.head(f"{base}{TOKENS}/{third}")
    httpx.get(f"{base}{TOKENS}/{third}/info")
    httpx.get(f"{base}{TOKENS}/{third}=")  # an equivalent spelling
    httpx.post(f"{base}{TOKENS}/{answers[2]['id']}", json={"score": 1})  # by id: also a bearer secret
    httpx.get(f"{base}{TOKENS}/{third[:-5]}", params={"score": "1"})  # a mangled token, 401
    redis_server.stop()
    httpx.post(f"{base}{TOKENS}/{first}", json={"score": 1})  # 503: the store's warning is logged
    redis_server.start()
    log = info_server.stop()
    access_lines = [line for line in log.splitlines() if "/api/v1/feedback/tokens/" in line]
    assert len(access_lines) >= 9, log  # the access log is on: the requests are in it
    for answer, token in zip(answers, (first, second, third), strict=True):
        assert token not in log
        assert token[:-5] not in log and token.split(".")[1] not in log and token.split(".")[2] not in log
        assert answer["id"] in log  # the token id (jti) correlates instead, from the verified token
    assert "redis submit failed" in log  # our own warning was logged, without the token


def test_our_own_log_lines_never_hold_a_whole_token(make_app, redis_factory, caplog):
    own = redis_factory()
    client = make_app(redis_url=own.url)
    answer = issue(client)
    token = token_of(answer)
    with caplog.at_level(logging.DEBUG):
        client.post(f"{TOKENS}/{token}", json={"score": 1})
        client.post(f"{TOKENS}/{token[:-3]}", json={"score": 1})
        client.get(f"{TOKENS}/{token}/nothing-here")
        own.stop()
        client.post(f"{TOKENS}/{token}", json={"score": 0})
        client.get("/readyz")
    # The service's loggers (the test client's own httpx logger prints the URLs it requests).
    ours = [r for r in caplog.records if r.name.startswith(("feedback_tokens", "uvicorn", "starlette"))]
    assert len(ours) >= 2, "nothing was logged: the check below would prove nothing"
    text = "\n".join(f"{r.getMessage()} {r.exc_text or ''}" for r in ours)
    assert token not in text and token[:-3] not in text and answer["id"] not in text


def test_an_unexpected_failure_is_a_problem_with_the_same_headers(settings, clock, redis_server, caplog):
    """A 500 is answered outside the middleware stack (Starlette's outermost error handler): it
    must still be a problem document with no-store and nosniff, and log no token."""
    from starlette.testclient import TestClient

    from app.main import create_app

    with TestClient(create_app(settings, clock=clock), raise_server_exceptions=False) as client:
        answer = issue(client, use="update")
        token = token_of(answer)
        assert client.post(f"{TOKENS}/{token}", json={"score": 1}).status_code == 200
        # Damage the stored latest answer, as a bad migration or a hand edit would.
        fields = layout.token_fields(redis_server.client(), answer["id"])
        local = base64.urlsafe_b64encode(uuid.UUID(answer["id"]).bytes[8:]).rstrip(b"=").decode()
        redis_server.client().hset(fields["key"], f"{local}:v", "not json")
        with caplog.at_level(logging.ERROR, logger="feedback_tokens"):
            r = client.get(f"{TOKENS}/{token}/info")
    assert r.status_code == 500
    assert r.headers["content-type"] == "application/problem+json" and r.json()["code"] == "internal_error"
    assert r.headers["cache-control"] == "no-store"
    assert r.headers["x-content-type-options"] == "nosniff"
    assert "unhandled error" in caplog.text and token not in caplog.text and token[:12] in caplog.text
