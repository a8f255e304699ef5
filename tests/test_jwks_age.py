"""A verify-only node whose issuer disappears fails closed (issue 9).

The issuer is the real app under uvicorn in a thread (tests/fleet.py ``AppServer``), logging
every JWKS request it answers; the node is a real uvicorn process on ``FEEDBACK_JWKS_URL``. The
node refreshes conditionally (``If-None-Match``; the issuer answers 304 and the copy's age starts
over), stays ready for FEEDBACK_JWKS_MAX_AGE after the issuer last answered, then answers
``/readyz`` 503 and submissions 503 ``keys_stale`` with ``Retry-After``; and it is back as soon
as the returning issuer answers a fetch.

Plus the rules around it: FEEDBACK_JWKS_URL is https:// (plain http:// to loopback only), and
refreshes are spread by jitter.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import TOKENS, LiveServer, RedisServer, issue_token, live_env, path_of
from fleet import AppServer, Seen

from app.config import ConfigError, Settings
from app.keys.source import JwksSource
from app.main import create_app

pytest_plugins = ["support_fleet"]

MAX_AGE = 4.0
REFRESH = 0.5
JWKS = "/.well-known/jwks.json"


@pytest.fixture
def keys_dir(shared_keys: Path) -> Path:
    return shared_keys


def wait_for(what: str, check: Callable[[], Any], timeout: float = 30) -> Any:
    deadline = time.monotonic() + timeout
    while not (result := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)
    return result


def ready(node: LiveServer) -> tuple[float, float, int, dict[str, Any]]:
    """(sent, answered, status, body) of one /readyz, times monotonic."""
    sent = time.monotonic()
    r = httpx.get(f"{node.url}/readyz", timeout=30)
    return sent, time.monotonic(), r.status_code, r.json()


def fetches(issuer: AppServer, since: int = 0) -> list[Seen]:
    return [s for s in issuer.seen[since:] if s.path == JWKS]


def submit(node: LiveServer, where: str) -> httpx.Response:
    return httpx.post(f"{node.url}{where}", json={"score": 1}, timeout=30)


def test_a_node_cut_off_from_its_issuer_fails_closed_then_recovers_on_one_fetch(
    app_server: Callable[..., AppServer],
    live_server: Callable[..., LiveServer],
    settings: Settings,
    redis_server: RedisServer,
    keys_dir: Path,
) -> None:
    issuer = app_server(create_app(replace(settings, public_url="http://issuer.invalid")))
    node = live_server(live_env(
        redis_server, keys_dir, FEEDBACK_JWKS_URL=f"{issuer.url}{JWKS}",
        FEEDBACK_JWKS_MAX_AGE=str(MAX_AGE), FEEDBACK_JWKS_REFRESH=str(REFRESH),
    ))
    with httpx.Client(base_url=issuer.url, timeout=30) as http:
        tokens = issue_token(http, count=4)
    assert submit(node, path_of(tokens[0])).status_code == 200

    # Conditional refreshes: one full fetch, then If-None-Match and 304s; on 304s alone the node
    # stays ready well past FEEDBACK_JWKS_MAX_AGE (each 304 starts the copy's age over).
    wait_for("304s for longer than the maximum age",
             lambda: (f := fetches(issuer)) and f[-1].at - f[0].at > MAX_AGE + 1)
    seen = fetches(issuer)
    assert [s.status for s in seen] == [200] + [304] * (len(seen) - 1)
    assert seen[0].if_none_match is None and len({s.if_none_match for s in seen[1:]}) == 1
    assert seen[0].etag and seen[1].if_none_match == seen[0].etag
    assert ready(node)[2] == 200

    issuer.stop()
    last = fetches(issuer)[-1].at  # the last moment the node heard from its issuer
    polls = []
    while (poll := ready(node))[2] == 200:
        polls.append(poll)
        assert poll[0] < last + MAX_AGE + 30, "never went stale"
        time.sleep(0.05)
    # Still ready once the issuer was gone, and for the whole maximum age (a 503 answered before
    # it would be a node failing early); then not (a node that never got there fails above).
    assert polls, "not ready even before the maximum age had passed"
    assert poll[1] >= last + MAX_AGE, f"stale {poll[1] - last:.2f} s after the last fetch"
    detail = poll[3]["checks"]["keys"]["detail"]
    assert f"{issuer.url}{JWKS}" in detail and "FEEDBACK_JWKS_MAX_AGE" in detail
    for where in (path_of(tokens[1]), f"{TOKENS}/{tokens[1]['id']}"):  # by JWT and by id
        refused = submit(node, where)
        assert refused.status_code == 503 and refused.json()["code"] == "keys_stale", refused.text
        assert int(refused.headers["Retry-After"]) > 0
    print(f"stale {poll[1] - last:.2f} s after the issuer last answered (FEEDBACK_JWKS_MAX_AGE {MAX_AGE} s)")

    before = len(issuer.seen)
    issuer.start()  # back, same port, same keys
    returned = time.monotonic()
    wait_for("ready again", lambda: ready(node)[2] == 200)
    back = fetches(issuer, before)
    # Back on one conditional fetch: the issuer only ever said "not modified" since it returned.
    assert back and {s.status for s in back} == {304}
    print(f"ready again {time.monotonic() - returned:.2f} s after the issuer returned "
          f"({len(back)} fetch(es), refresh {REFRESH} s)")
    for token in tokens[1:3]:
        assert submit(node, path_of(token)).status_code == 200


def test_refreshes_are_spread_by_jitter() -> None:
    """Nodes started together must not fetch together for ever: each wait is drawn afresh from
    refresh ± 20 %."""
    source = JwksSource("https://issuer.example/.well-known/jwks.json", refresh=4.0)
    delays = [source.next_delay() for _ in range(2000)]
    assert all(3.2 <= d <= 4.8 for d in delays)
    assert min(delays) < 3.4 and max(delays) > 4.6  # spread across the range, not one value
    assert len(set(delays)) > 1900


@pytest.mark.parametrize(
    "url",
    [
        "https://issuer.example/.well-known/jwks.json",
        "https://10.0.0.7:8443/.well-known/jwks.json",
        "http://127.0.0.1:8000/.well-known/jwks.json",
        "http://[::1]:8000/.well-known/jwks.json",
        "http://localhost:8000/.well-known/jwks.json",
        "HTTP://LOCALHOST/.well-known/jwks.json",
    ],
)
def test_jwks_url_https_or_loopback_http_is_accepted(url: str) -> None:
    assert Settings.from_env({"FEEDBACK_JWKS_URL": url}).jwks_url == url


@pytest.mark.parametrize(
    "url",
    [
        "http://issuer.example/.well-known/jwks.json",
        "http://10.0.0.7/.well-known/jwks.json",
        "http://localhost.issuer.example/.well-known/jwks.json",
        "http://127.0.0.1@issuer.example/.well-known/jwks.json",
        "file:///etc/keys.json",
        "ftp://issuer.example/jwks.json",
        "https:///no-host",
        "http://[::1/jwks.json",
    ],
)
def test_jwks_url_anything_else_is_refused_with_a_clear_error(url: str) -> None:
    with pytest.raises(ConfigError, match="FEEDBACK_JWKS_URL") as refused:
        Settings.from_env({"FEEDBACK_JWKS_URL": url})
    assert url in str(refused.value)
    if url.startswith("http://") and "[" not in url:
        assert "https://" in str(refused.value) and "127.0.0.1" in str(refused.value)
