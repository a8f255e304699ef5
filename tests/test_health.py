"""Keys and health endpoints (SPEC 3.6), the OpenAPI document, and `make run`'s dev server."""

from __future__ import annotations

import json
import os
import re
import shlex
import subprocess
import sys
import time
import uuid
from pathlib import Path

import httpx
import pytest
from conftest import ROOT, TOKENS, RedisServer, free_port

from app.keys.keyring import KeyringDir


def test_healthz(client):
    r = client.get("/healthz")
    assert r.status_code == 200 and r.json() == {"status": "ok"}


def test_readyz_ok_then_503_when_redis_goes(make_app, redis_factory):
    own = redis_factory()
    client = make_app(redis_url=own.url)
    r = client.get("/readyz")
    assert r.status_code == 200 and r.json()["checks"]["redis"] == {"ok": True}
    own.stop()
    r = client.get("/readyz")
    assert r.status_code == 503 and r.json()["checks"]["redis"]["ok"] is False


def test_readyz_503_without_keys(make_app, tmp_path):
    client = make_app(keys_dir=tmp_path / "empty")
    r = client.get("/readyz")
    assert r.status_code == 503 and r.json()["checks"]["keys"]["ok"] is False


def test_jwks_publishes_pending_and_active_public_keys(client, keys_dir):
    ring = KeyringDir(keys_dir)
    active = ring.load().active.kid
    pending = ring.new("EdDSA")
    retired = ring.new()
    ring.retire(retired)
    client.app.state.service.keys.reload()
    r = client.get("/.well-known/jwks.json")
    # Caches must revalidate: a retired key has to leave edge nodes within seconds.
    assert "no-cache" in r.headers["cache-control"] and "max-age" not in r.headers["cache-control"]
    jwks = r.json()
    by_kid = {k["kid"]: k for k in jwks["keys"]}
    assert set(by_kid) == {active, pending}
    assert by_kid[active]["kty"] == "EC" and by_kid[active]["crv"] == "P-256"
    assert by_kid[pending]["kty"] == "OKP" and by_kid[pending]["crv"] == "Ed25519"
    assert all("d" not in k for k in jwks["keys"])  # never private material


def test_openapi_document_describes_every_route(client):
    doc = client.get("/openapi.json").json()
    assert doc["openapi"].startswith("3.")
    # Every route the app serves (the demo is off), with each of its methods; HEAD is GET's.
    routes = {route.path: route.methods - {"HEAD"} for route in client.app.routes}
    documented = {path: {m.upper() for m in item if m != "parameters"} for path, item in doc["paths"].items()}
    assert documented == routes
    # Token URLs as issued: the id last, submissions naming an Idempotency-Key.
    as_issued = doc["paths"]["/api/v1/feedback/tokens/{token}/{token_id}"]
    assert [p["name"] for p in as_issued["parameters"]] == ["token", "token_id"]
    for path in ("/api/v1/feedback/tokens/{token}", "/api/v1/feedback/tokens/{token}/{token_id}"):
        headers = [p["name"] for p in doc["paths"][path]["post"]["parameters"] if p["in"] == "header"]
        assert headers == ["Idempotency-Key"]
    codes = set(doc["components"]["schemas"]["Problem"]["properties"]["code"]["enum"])
    spec_codes = {"token_invalid", "token_not_found", "token_expired", "token_revoked", "token_used",
                  "invalid_body", "invalid_feedback", "body_too_large", "store_unavailable",
                  "unauthorized", "invalid_request", "signing_disabled"}
    assert spec_codes <= codes


def test_unknown_route_and_method_are_problems(client):
    r = client.get("/nope")
    assert r.status_code == 404 and r.json()["code"] == "not_found"
    r = client.put(TOKENS)
    assert r.status_code == 405 and r.json()["code"] == "method_not_allowed"


@pytest.fixture
def dev_root(tmp_path: Path) -> Path:
    root = tmp_path / "checkout"
    root.mkdir()
    return root


def test_make_run_dev_server_serves_and_its_curl_line_works(dev_root: Path):
    """`feedback-tokens dev` (what `make run` starts): key, API key, private Redis, curl line."""
    port = free_port()
    env = {k: v for k, v in os.environ.items() if k not in ("REDIS_URL", "FEEDBACK_API_KEYS", "FEEDBACK_KEYS_DIR")}
    proc = subprocess.Popen(
        [sys.executable, "-m", "app.cli", "dev", "--root", str(dev_root), "--port", str(port)],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    out = ""
    try:
        base = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            try:
                if httpx.get(f"{base}/readyz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.1)
        else:
            pytest.fail("dev server did not become ready")
        assert (dev_root / "keys" / "keyring.json").exists()
        api_key = (dev_root / ".dev-api-key").read_text().strip()
        assert os.stat(dev_root / ".dev-api-key").st_mode & 0o077 == 0
        assert (dev_root / ".run" / "redis" / "appendonlydir").is_dir()  # AOF on, under the checkout
        # Run the curl line it printed, as printed.
        proc_out = proc.stdout
        assert proc_out is not None
        lines = []
        while not any(line.strip().startswith("-d ") for line in lines):
            lines.append(proc_out.readline())
        out = "".join(lines)
        assert api_key in out
        command = re.search(r"(curl .*?)\n\s*\n|(curl [\s\S]*-d '.*?')", out + "\n\n")
        assert command is not None
        text = (command.group(1) or command.group(2)).replace("\\\n", " ")
        result = subprocess.run(shlex.split(text), capture_output=True, text=True, timeout=20)
        answer = json.loads(result.stdout)
        assert answer["url"].startswith(f"{base}/api/v1/feedback/tokens/")
        r = httpx.get(answer["url"], params={"score": "1"})
        assert r.status_code == 200 and r.json()["duplicate"] is False
    finally:
        proc.terminate()
        proc.wait(timeout=15)
    # Its Redis is gone with it, and its data stays under the checkout.
    sock = dev_root / ".run" / "redis.sock"
    assert not sock.exists() or subprocess.run(
        ["redis-cli", "-s", str(sock), "ping"], capture_output=True, text=True
    ).stdout.strip() != "PONG"


def test_uuid_path_lengths_are_not_mistaken_for_tokens(client):
    # 32 hex digits and 36-character UUIDs are ids; anything else is a JWT candidate.
    assert client.post(f"{TOKENS}/{uuid.uuid4().hex}", json={"score": 1}).json()["code"] == "token_not_found"
    assert client.post(f"{TOKENS}/{'a' * 36}", json={"score": 1}).json()["code"] == "token_invalid"


def test_redis_server_fixture_is_ours():
    server = RedisServer().start()
    try:
        assert server.client().ping() is True and server.port != 6379
    finally:
        server.cleanup()
