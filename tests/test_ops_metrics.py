"""GET /metrics: the node's counts whichever uvicorn worker answers, bounded labels, the key
metrics, the store's hooks, the token that guards it, and FEEDBACK_METRICS=0."""

from __future__ import annotations

import os
import stat
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from conftest import API_KEY, TOKENS, RedisServer, free_port, issue_token, live_env, token_of
from starlette.testclient import TestClient
from support_ops import Served, by_label, cli_args, samples, servers, uvicorn_args, wait_until, worker_of

from app.config import Secret
from app.keys.keyring import KeyringDir
from app.keys.source import DirectorySource, JwksSource
from app.ops import metrics, metrics_directory
from app.store.failures import error_kind


@pytest.fixture
def served() -> Iterator[Callable[..., Served]]:
    yield from servers()


SUBMIT_ROUTE = "/api/v1/feedback/tokens/{token}"
CONTINUOUS = {"type": "continuous", "min": 0, "max": 1}


def node_directories() -> set[str]:
    prefix = f"{metrics_directory.DIR_PREFIX}{os.getuid()}-"
    return {name for name in os.listdir(tempfile.gettempdir()) if name.startswith(prefix)}


def test_two_workers_count_exactly_the_mix_whichever_worker_answers(
    served: Callable[..., Served], redis_server: RedisServer, keys_dir: Path
) -> None:
    server = served(uvicorn_args(workers=2), live_env(redis_server, keys_dir))
    base = server.url
    with httpx.Client(base_url=base) as issuer:
        answers = issue_token(issuer, count=5, feedback_config=CONTINUOUS)
    jwts = [token_of(a) for a in answers]
    expected: dict[str, int] = {}
    answered_by: set[str] = set()

    def submit(token: str, body: dict[str, Any], outcome: str) -> None:
        # A new connection each time (no client kept), so the workers share the requests.
        r = httpx.post(f"{base}{TOKENS}/{token}", json=body)
        got = r.json().get("code") or ("duplicate" if r.json()["duplicate"] else "recorded")
        assert got == outcome, r.text
        expected[outcome] = expected.get(outcome, 0) + 1
        answered_by.add(worker_of(r))

    for jwt in jwts[:3]:
        submit(jwt, {"score": 1}, "recorded")
    submit(jwts[0], {"score": 1}, "duplicate")
    submit(jwts[1], {"score": 1}, "duplicate")
    submit(jwts[0], {"score": 0}, "token_used")
    submit(jwts[2], {"score": 0}, "token_used")
    submit(jwts[3][:-4] + ("AAAA" if not jwts[3].endswith("AAAA") else "BBBB"), {"score": 1}, "token_invalid")
    submit("not.a.token", {"score": 1}, "token_invalid")
    submit(jwts[4], {"score": 5}, "invalid_feedback")  # outside the token's 0..1
    # Both workers must have counted some of it, or "whichever answered" would prove nothing.
    extra = 0
    while len(answered_by) < 2:
        assert extra < 40, "one worker answered every submission"
        with httpx.Client(base_url=base) as issuer:
            token = token_of(issue_token(issuer, feedback_config=CONTINUOUS))
        submit(token, {"score": 1}, "recorded")
        extra += 1

    scraped_by: set[str] = set()
    scrapes = 0
    while scrapes < 6 or len(scraped_by) < 2:
        assert scrapes < 200, "one worker answered every scrape"
        r = httpx.get(f"{base}/metrics")
        assert r.status_code == 200 and r.headers["content-type"].startswith("text/plain")
        scrapes += 1
        scraped_by.add(worker_of(r))
        found = samples(r.text)
        assert by_label(found, "feedback_submissions_total", "outcome") == expected, worker_of(r)
        posted = {
            dict(labels)["status"]: v
            for (name, labels), v in found.items()
            if name == "http_requests_total" and dict(labels)["route"] == SUBMIT_ROUTE
        }
        assert sum(posted.values()) == sum(expected.values())
        assert posted["200"] == expected["recorded"] + expected["duplicate"]
        assert found[("feedback_tokens_issued_total", ())] == 5 + extra
        # Bounded labels: templates and codes, never a token, token id, run id or path.
        secrets = [*jwts, *(j.split(".")[1] for j in jwts), *(a["id"] for a in answers),
                   *(a["run_id"] for a in answers), "not.a.token"]
        for (_, labels), _ in found.items():
            for _, value in labels:
                assert not any(s in value for s in secrets), value
                assert "/tokens/" not in value or value == SUBMIT_ROUTE or value.startswith("/api/v1/feedback/tokens/{")


def test_the_workers_directory_is_fresh_private_and_removed_at_exit(
    served: Callable[..., Served], redis_server: RedisServer, keys_dir: Path
) -> None:
    # A node killed earlier left its directory behind: the next start removes it.
    stale = Path(tempfile.gettempdir()) / f"{metrics_directory.DIR_PREFIX}{os.getuid()}-999999999-12345"
    stale.mkdir()
    (stale / "counter_1.db").write_bytes(b"\0" * 8)
    server = served(uvicorn_args(workers=2), live_env(redis_server, keys_dir))
    # Named after the node's supervisor (other tests' servers may make theirs meanwhile).
    name = f"{metrics_directory.DIR_PREFIX}{os.getuid()}-{server.proc.pid}-"
    wait_until(lambda: any(d.startswith(name) for d in node_directories()), "the node's metrics directory")
    (ours,) = [d for d in node_directories() if d.startswith(name)]
    path = Path(tempfile.gettempdir()) / ours
    assert stat.S_IMODE(path.stat().st_mode) == 0o700
    assert not stale.exists()
    httpx.get(f"{server.url}/healthz")
    assert any(p.name.endswith(".db") for p in path.iterdir())
    server.stop()
    assert not path.exists(), "the last worker out removes the directory"


def test_serve_with_workers_makes_and_removes_its_directory(
    served: Callable[..., Served], redis_server: RedisServer, keys_dir: Path
) -> None:
    server = served(cli_args("serve", "--port", "{port}", "--workers", "2"), live_env(redis_server, keys_dir))
    # Named after the node's supervisor (other tests' servers may make theirs meanwhile).
    supervisor = f"{metrics_directory.DIR_PREFIX}{os.getuid()}-{server.proc.pid}-"
    (ours,) = [d for d in node_directories() if d.startswith(supervisor)]
    healthz = ("http_requests_total", (("method", "GET"), ("route", "/healthz"), ("status", "200")))
    before_count = samples(httpx.get(f"{server.url}/metrics").text)[healthz]  # the start-up wait's
    for _ in range(4):
        httpx.get(f"{server.url}/healthz")
    assert samples(httpx.get(f"{server.url}/metrics").text)[healthz] == before_count + 4
    server.stop()
    assert server.proc.returncode == 0
    assert not (Path(tempfile.gettempdir()) / ours).exists()


def test_metrics_off_serves_nothing_and_makes_no_directory(
    served: Callable[..., Served], redis_server: RedisServer, keys_dir: Path
) -> None:
    server = served(uvicorn_args(workers=2), live_env(redis_server, keys_dir, FEEDBACK_METRICS="0"))
    r = httpx.get(f"{server.url}/metrics")
    assert r.status_code == 404 and r.json()["code"] == "not_found"
    # Directories are named after the node's supervisor (other tests' servers may run meanwhile).
    assert [d for d in node_directories() if f"-{server.proc.pid}-" in d] == []


def test_a_metrics_token_is_required_as_a_bearer_token(make_app: Callable[..., TestClient]) -> None:
    client = make_app(metrics_token=Secret("scrape-me-0123"))
    for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic scrape-me-0123"},
                    {"Authorization": "scrape-me-0123"}, {"X-API-Key": API_KEY}):
        r = client.get("/metrics", headers=headers)
        assert r.status_code == 401, headers
        assert r.json()["code"] == "unauthorized" and r.headers["www-authenticate"].startswith("Bearer")
        assert "feedback_" not in r.text
    r = client.get("/metrics", headers={"Authorization": "Bearer scrape-me-0123"})
    assert r.status_code == 200 and "http_requests_total" in r.text
    assert make_app().get("/metrics").status_code == 200  # no token set: open


def test_metrics_off_in_the_settings(make_app: Callable[..., TestClient]) -> None:
    client = make_app(metrics=False)
    assert client.get("/metrics").status_code == 404
    assert metrics.current() is None
    metrics.observe_redis("submit", 0.001)  # the store's hooks are no-ops then
    make_app()  # and back on for the next app
    assert metrics.current() is not None


def test_issued_revoked_and_cors_preflight_are_counted(make_app: Callable[..., TestClient]) -> None:
    client = make_app()
    before = samples(client.get("/metrics").text)
    auth = {"X-API-Key": API_KEY}
    answers = issue_token(client, count=3)
    assert client.delete(f"{TOKENS}/{answers[0]['id']}", headers=auth).status_code == 204
    assert client.delete(f"{TOKENS}/{uuid.uuid4()}", headers=auth).status_code == 404  # not counted
    preflight = client.options(f"{TOKENS}/{token_of(answers[1])}",
                               headers={"Origin": "https://a.example", "Access-Control-Request-Method": "POST"})
    assert preflight.status_code == 200
    client.get("/no/such/path")
    after = samples(client.get("/metrics").text)

    def delta(name: str, labels: tuple[tuple[str, str], ...] = ()) -> float:
        return after.get((name, labels), 0) - before.get((name, labels), 0)

    assert delta("feedback_tokens_issued_total") == 3
    assert delta("feedback_tokens_revoked_total") == 1
    assert delta("http_requests_total", (("method", "OPTIONS"), ("route", SUBMIT_ROUTE), ("status", "200"))) == 1
    assert delta("http_requests_total", (("method", "GET"), ("route", "unmatched"), ("status", "404"))) == 1
    # The DELETEs were no submissions.
    assert by_label(after, "feedback_submissions_total", "outcome") == by_label(
        before, "feedback_submissions_total", "outcome")


def test_key_metrics_follow_the_keyring(make_app: Callable[..., TestClient], keys_dir: Path) -> None:
    client = make_app()
    found = samples(client.get("/metrics").text)
    (active,) = [e for e in KeyringDir(keys_dir).entries() if e["state"] == "active"]
    info = {labels: v for (name, labels), v in found.items() if name == "feedback_signing_key_info"}
    assert info == {(("alg", active["alg"]), ("kid", active["kid"])): 1.0}
    assert found[("feedback_keys_loaded", ())] == 1
    assert 0 <= found[("feedback_keyring_age_seconds", ())] < float("inf")
    assert ("feedback_jwks_age_seconds", ()) not in found

    # A verify-only node (public keys only): no signing key.
    public = keys_dir.parent / "public"
    public.mkdir()
    (public / "keyring.json").write_bytes((keys_dir / "keyring.json").read_bytes())
    for pem in keys_dir.glob("*.pub.pem"):
        (public / pem.name).write_bytes(pem.read_bytes())
    found = samples(make_app(keys_dir=public).get("/metrics").text)
    assert not [name for (name, _) in found if name == "feedback_signing_key_info"]
    assert found[("feedback_keys_loaded", ())] == 1


def test_a_jwks_node_that_never_loaded_is_infinitely_stale(
    settings: Any, clock: Any, redis_server: RedisServer
) -> None:
    from app.main import create_app

    closed = f"http://127.0.0.1:{free_port()}/.well-known/jwks.json"  # nothing listens there
    app = create_app(settings, clock=clock, keys=JwksSource(closed, refresh=60, timeout=0.5))
    with TestClient(app) as client:
        found = samples(client.get("/metrics").text)
    assert found[("feedback_jwks_age_seconds", ())] == float("inf")
    assert found[("feedback_keys_loaded", ())] == 0
    assert ("feedback_keyring_age_seconds", ()) not in found


def test_loaded_at_moves_only_when_the_keyring_loads_or_is_found_current(keys_dir: Path) -> None:
    source = DirectorySource(KeyringDir(keys_dir))
    assert source.loaded_at is None
    t0 = time.time()
    assert source.reload()
    first = source.loaded_at
    assert first is not None and t0 <= first <= time.time()
    assert not source.reload()  # unchanged, and found current
    second = source.loaded_at
    assert second is not None and second >= first
    manifest = keys_dir / "keyring.json"
    good = manifest.read_bytes()
    manifest.write_text("not json")
    assert not source.reload() and source.error
    assert source.loaded_at == second  # a failed load is no load
    manifest.write_bytes(good)
    source.reload()
    assert source.error is None and source.loaded_at is not None and source.loaded_at >= second


def test_store_hooks_and_redis_error_kinds(
    make_app: Callable[..., TestClient], redis_factory: Callable[..., RedisServer]
) -> None:
    client = make_app()
    before = samples(client.get("/metrics").text)
    own = redis_factory()
    kinds = []
    try:
        redis.Redis(port=own.port, socket_timeout=5).execute_command("NO-SUCH-COMMAND")
    except redis.RedisError as err:
        kinds.append(error_kind(err))
    pool = redis.ConnectionPool(port=own.port, max_connections=1)
    try:
        pool.get_connection()
        pool.get_connection()  # one more than the pool may hold
    except redis.RedisError as err:
        kinds.append(error_kind(err))
    finally:
        pool.disconnect()
    own.pause()
    try:
        redis.Redis(port=own.port, socket_timeout=0.2).ping()
    except redis.RedisError as err:
        kinds.append(error_kind(err))
    own.resume()
    own.stop()
    try:
        redis.Redis(port=own.port, socket_timeout=1).ping()
    except redis.RedisError as err:
        kinds.append(error_kind(err))
    assert kinds == ["response", "pool", "timeout", "connection"]
    for kind in [*kinds, "made-up"]:
        metrics.redis_error(kind)
    metrics.observe_redis("submit", 0.0004)
    metrics.observe_redis("submit", 0.003)
    metrics.observe_submit_batch(3)
    after = samples(client.get("/metrics").text)

    def delta(name: str, labels: tuple[tuple[str, str], ...] = ()) -> float:
        return after.get((name, labels), 0) - before.get((name, labels), 0)

    for kind in ("response", "timeout", "connection", "pool", "other"):
        assert delta("feedback_redis_errors_total", (("kind", kind),)) == 1, kind
    assert delta("feedback_redis_duration_seconds_count", (("op", "submit"),)) == 2
    assert delta("feedback_redis_duration_seconds_bucket", (("le", "0.0005"), ("op", "submit"))) == 1
    assert delta("feedback_redis_duration_seconds_bucket", (("le", "0.005"), ("op", "submit"))) == 2
    assert delta("feedback_submit_batch_size_bucket", (("le", "2.0"),)) == 0
    assert delta("feedback_submit_batch_size_bucket", (("le", "4.0"),)) == 1


def test_a_foreign_directory_is_not_used(tmp_path: Path) -> None:
    shared = tmp_path / "shared"
    shared.mkdir(mode=0o777)
    os.chmod(shared, 0o777)
    assert not metrics_directory._private_directory(str(shared))
    link = tmp_path / "link"
    link.symlink_to(tmp_path / "elsewhere")
    assert not metrics_directory._private_directory(str(link))
    fresh = tmp_path / "fresh"
    assert metrics_directory._private_directory(str(fresh)) and stat.S_IMODE(fresh.stat().st_mode) == 0o700
    assert metrics_directory._private_directory(str(fresh))  # ours already: accepted
