"""``feedback-tokens serve --server granian``: the option starts the service as ``serve`` does under
uvicorn (lifespan: Redis connected, keys loaded; the node's metrics shared by its workers; every
log line in the service's format, one access line per request) and stops cleanly on SIGTERM,
after the drain. The hostile suite, the SDK tests and the drain under load run under granian
too (``support_servers``)."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
import pytest
from conftest import API_KEY, ROOT, TOKENS, RedisServer, live_env, path_of
from support_ops import Served, by_label, cli_args, samples, servers, wait_until

from app.ops.metrics_directory import node_directory


@pytest.fixture
def served() -> Iterator[Callable[..., Served]]:
    yield from servers()


def issue(base: str, n: int) -> list[dict[str, str]]:
    body = [{"run_id": str(uuid.uuid4()), "feedback_key": "k"} for _ in range(n)]
    r = httpx.post(f"{base}{TOKENS}", json=body, headers={"X-API-Key": API_KEY})
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def test_serve_under_granian_starts_serves_and_stops_on_sigterm(
    served: Callable[..., Served], redis_server: RedisServer, keys_dir: Path
) -> None:
    env = live_env(redis_server, keys_dir, FEEDBACK_SHUTDOWN_DRAIN="1")
    server = served(cli_args("serve", "--server", "granian", "--port", "{port}", "--workers", "2"), env)
    ready = httpx.get(f"{server.url}/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json()["checks"]["redis"]["ok"] and ready.json()["checks"]["keys"]["signing"]
    assert ready.headers["server"] == "granian"

    tokens = issue(server.url, 20)
    for i, token in enumerate(tokens):
        r = httpx.post(f"{server.url}{path_of(token)}", json={"score": 1}, headers={"X-Request-ID": f"g-{i}"})
        assert r.status_code == 200 and r.json()["duplicate"] is False, r.text
    # The two workers count into one directory: any of them answers with the node's total.
    directory = Path(node_directory(server.proc.pid))
    assert directory.is_dir()
    for _ in range(4):
        found = samples(httpx.get(f"{server.url}/metrics").text)
        assert by_label(found, "feedback_submissions_total", "outcome")["recorded"] == 20

    # Every line is the service's JSON, granian's own included; one access line per request
    # (ours, with the route template), none from granian.
    wait_until(lambda: "g-19" in server.output(), "the access lines")
    lines = [json.loads(line) for line in server.lines()]
    assert any(line["logger"] == "_granian" for line in lines)
    access = [line for line in lines if line["logger"] == "feedback_tokens.access"]
    assert sorted(a["request_id"] for a in access if a["request_id"].startswith("g-")) == sorted(
        f"g-{i}" for i in range(20)
    )
    assert {a["route"] for a in access if a["request_id"].startswith("g-")} == {
        "/api/v1/feedback/tokens/{token}/{token_id}"
    }
    assert not any("granian.access" == line["logger"] for line in lines)

    started = time.monotonic()
    server.proc.send_signal(signal.SIGTERM)
    time.sleep(0.3)
    draining = httpx.get(f"{server.url}/readyz")  # still serving, out of rotation
    assert draining.status_code == 503 and draining.headers["connection"] == "close"
    assert server.proc.wait(timeout=20) == 0, server.output()
    assert 1.0 <= time.monotonic() - started < 10
    out = server.output()
    assert out.count("draining for 1.0 s") == 2  # each worker, told by the supervisor
    assert "Traceback" not in out and '"level":"error"' not in out, out
    assert not directory.exists()  # the node's metrics directory is gone with it
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"{server.url}/healthz")


def test_serve_under_granian_without_granian_says_how_to_get_it() -> None:
    hide = (
        "import sys; sys.modules['granian'] = None; from app.cli import main; "
        "sys.exit(main(['serve', '--server', 'granian', '--port', '1']))"
    )
    done = subprocess.run([sys.executable, "-c", hide], cwd=ROOT, capture_output=True, text=True, timeout=60,
                          env={**os.environ, "FEEDBACK_API_KEYS": API_KEY})
    assert done.returncode == 2, done.stderr
    assert "pip install 'feedback-tokens[granian]'" in done.stderr


def test_serve_refuses_an_unknown_server() -> None:
    done = subprocess.run(cli_args("serve", "--server", "hypercorn"), cwd=ROOT, capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 2 and "invalid choice: 'hypercorn'" in done.stderr
