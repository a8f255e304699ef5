"""Which Redis: said at start-up, and named with the operation in every 503 while it is away."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from conftest import API_KEY, ROOT, TOKENS, free_port, issue_token, token_of

from app.store.connect import display_url

AUTH = {"X-API-Key": API_KEY}


class Served:
    """``feedback-tokens serve`` (the production entry point, with its logging) in a subprocess."""

    def __init__(self, env: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = tempfile.NamedTemporaryFile(prefix="fbt-serve-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "serve", "--port", str(self.port)],
            cwd=ROOT, env={**os.environ, "FEEDBACK_PUBLIC_URL": self.url, **env},
            stdout=self.log, stderr=subprocess.STDOUT,
        )

    def output(self) -> str:
        return Path(self.log.name).read_text()

    def wait_for(self, text: str) -> str:
        deadline = time.monotonic() + 30
        while text not in self.output():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                pytest.fail(f"{text!r} never logged:\n{self.output()}")
            time.sleep(0.05)
        return self.output()

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(timeout=15)
        os.unlink(self.log.name)


@pytest.fixture
def serve(keys_dir: Path) -> Iterator[type[Served]]:
    started: list[Served] = []

    def start(redis_url: str) -> Served:
        env = {"REDIS_URL": redis_url, "FEEDBACK_KEYS_DIR": str(keys_dir), "FEEDBACK_API_KEYS": API_KEY}
        server = Served(env)
        started.append(server)
        return server

    yield start  # type: ignore[misc]
    for server in started:
        server.stop()


def test_redis_at_nothing_is_said_at_start_and_the_service_still_serves(serve):
    nowhere = f"redis://127.0.0.1:{free_port()}/0"
    server = serve(nowhere)
    out = server.wait_for("Application startup complete")
    assert f"Redis at {nowhere} did not answer" in out and "REDIS_URL" in out
    assert httpx.get(f"{server.url}/healthz").status_code == 200
    ready = httpx.get(f"{server.url}/readyz")
    assert ready.status_code == 503 and ready.json()["checks"]["redis"]["ok"] is False
    with httpx.Client(base_url=server.url) as http:
        refused = issue_token(http, expect=503)
    assert "issuing tokens" in refused["detail"]
    assert "submission" not in refused["detail"]


def test_a_redis_that_answers_is_named_without_its_password(serve, redis_factory):
    own = redis_factory()
    own.client().config_set("requirepass", "s3cret-word")
    url = f"redis://:s3cret-word@127.0.0.1:{own.port}/0"
    server = serve(url)
    out = server.wait_for("Application startup complete")
    assert f"Redis at redis://:***@127.0.0.1:{own.port}/0 answered" in out
    assert "s3cret-word" not in out
    assert httpx.get(f"{server.url}/readyz").status_code == 200


@pytest.mark.parametrize(
    ("url", "shown"),
    [
        ("redis://127.0.0.1:6379/0", "redis://127.0.0.1:6379/0"),
        ("redis://user:pw@host:1/2", "redis://user:***@host:1/2"),
        ("rediss://:pw@host/0?ssl_cert_reqs=none", "rediss://:***@host/0?ssl_cert_reqs=none"),
        ("unix:///run/redis.sock?db=1&password=pw", "unix:///run/redis.sock?db=1&password=***"),
    ],
)
def test_display_url_hides_passwords(url, shown):
    assert display_url(url) == shown


def test_every_503_names_the_operation_that_failed(make_app, redis_factory):
    own = redis_factory()
    client = make_app(redis_url=own.url)
    answer = issue_token(client)
    own.stop()

    def detail(response: httpx.Response) -> str:
        assert response.status_code == 503, response.text
        assert response.json()["code"] == "store_unavailable" and response.headers["retry-after"]
        return str(response.json()["detail"])

    run = {"run_id": str(uuid.uuid4()), "feedback_key": "k"}
    assert "issuing tokens" in detail(client.post(TOKENS, json=run, headers=AUTH))
    assert "listing the run's tokens" in detail(client.get(TOKENS, params={"run_id": answer["run_id"]}, headers=AUTH))
    assert "revoking the token" in detail(client.delete(f"{TOKENS}/{answer['id']}", headers=AUTH))
    submitted = detail(client.post(f"{TOKENS}/{token_of(answer)}", json={"score": 1}))
    assert "recording the submission" in submitted and "same submission again" in submitted
    assert "looking up the token id" in detail(client.post(f"{TOKENS}/{answer['id']}", json={"score": 1}))
    assert "reading the token's state" in detail(client.get(f"{TOKENS}/{token_of(answer)}/info"))
