"""Fixtures: real redis-server processes, real keyrings, the real app over HTTP.

- ``redis_server``: one Redis for the session, flushed before each test that uses it.
- ``redis_factory``: start private Redis servers that a test may stop, restart or configure.
- ``keys_dir``: a keyring directory with one active key of the default algorithm (ES256).
- ``make_app`` / ``client``: the app (``create_app``) behind Starlette's TestClient, lifespan run.
- ``live_server``: the app under uvicorn in a subprocess, for concurrency and multi-node tests.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import layout
import pytest
import redis
from starlette.testclient import TestClient

from app.clock import FrozenClock
from app.config import Secret, Settings
from app.keys.keyring import KeyringDir
from app.main import create_app

ROOT = Path(__file__).resolve().parent.parent
# Fixtures of their own modules, for every test: a Redis Cluster (tests/support_cluster.py).
pytest_plugins = ["support_cluster"]
API_KEY = "test-api-key-0123456789"
TOKENS = "/api/v1/feedback/tokens"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class RedisServer:
    """A redis-server process of our own, on a free port, with its data in a temp dir."""

    def __init__(self, *extra: str) -> None:
        if shutil.which("redis-server") is None:
            pytest.fail("redis-server is not installed (apt-get install redis-server)")
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="fbt-redis-"))
        self.extra = extra
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def client(self) -> redis.Redis:
        return redis.Redis(port=self.port, socket_timeout=5)

    def start(self) -> RedisServer:
        self.proc = subprocess.Popen(
            [
                "redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                "--dir", str(self.dir), "--save", "", "--appendonly", "no",
                "--logfile", str(self.dir / "redis.log"), *self.extra,
            ],
        )
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            try:
                if self.client().ping():
                    return self
            except redis.RedisError:
                time.sleep(0.02)
        raise RuntimeError(f"redis-server on {self.port} did not start")

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=10)
        self.proc = None

    def pause(self) -> None:
        """SIGSTOP: the server holds its connections but answers nothing (a hung Redis)."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGCONT)

    def cleanup(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
        self.stop()
        shutil.rmtree(self.dir, ignore_errors=True)


@pytest.fixture(scope="session")
def _session_redis() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.cleanup()


@pytest.fixture
def redis_server(_session_redis: RedisServer) -> RedisServer:
    if _session_redis.proc is None or _session_redis.proc.poll() is not None:
        _session_redis.start()
    _session_redis.client().flushall()
    return _session_redis


@pytest.fixture
def redis_factory() -> Iterator[Callable[..., RedisServer]]:
    started: list[RedisServer] = []

    def make(*extra: str) -> RedisServer:
        server = RedisServer(*extra).start()
        started.append(server)
        return server

    yield make
    for server in started:
        server.cleanup()


@pytest.fixture
def keys_dir(tmp_path: Path) -> Path:
    path = tmp_path / "keys"
    KeyringDir(path).init()
    return path


@pytest.fixture
def clock() -> FrozenClock:
    return FrozenClock()


@pytest.fixture
def settings(redis_server: RedisServer, keys_dir: Path) -> Settings:
    return Settings(
        redis_url=redis_server.url,
        public_url="http://testserver",
        keys_dir=keys_dir,
        api_keys=(Secret(API_KEY), Secret("second-key")),
        redis_timeout=1.0,
    )


@pytest.fixture
def make_app(settings: Settings, clock: FrozenClock) -> Iterator[Callable[..., TestClient]]:
    clients: list[TestClient] = []

    def make(**overrides: Any) -> TestClient:
        app = create_app(replace(settings, **overrides), clock=clock)
        client = TestClient(app, raise_server_exceptions=True)
        client.__enter__()
        clients.append(client)
        return client

    yield make
    for client in clients:
        client.__exit__(None, None, None)


@pytest.fixture
def client(make_app: Callable[..., TestClient]) -> TestClient:
    return make_app()


@pytest.fixture
def issue(client: TestClient) -> Callable[..., dict[str, Any]]:
    """Issue one token (extra fields go into the request body) and return the answer."""

    def issue_one(**fields: Any) -> dict[str, Any]:
        body = {"run_id": str(uuid.uuid4()), "feedback_key": "user_score", **fields}
        response = client.post(TOKENS, json=body, headers={"X-API-Key": API_KEY})
        assert response.status_code == 200, response.text
        return response.json()  # type: ignore[no-any-return]

    return issue_one


def issue_token(client: TestClient, **fields: Any) -> dict[str, Any]:
    """Issue one token through the API (extra fields go into the request body)."""
    body = {"run_id": str(uuid.uuid4()), "feedback_key": "k", **fields}
    r = client.post(TOKENS, json=body, headers={"X-API-Key": API_KEY})
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def submit_score(client: TestClient, token: str) -> tuple[int, str | None]:
    r = client.post(f"{TOKENS}/{token}", json={"score": 1})
    return r.status_code, r.json().get("code")


@pytest.fixture(scope="module")
def shared_keys(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """One keyring for a module whose tests don't change it (override ``keys_dir`` with it)."""
    path = tmp_path_factory.mktemp("keys") / "keys"
    KeyringDir(path).init()
    return path


def token_of(answer: dict[str, Any]) -> str:
    """The JWT of an issued token (its URL is ``.../tokens/<jwt>/<token id>``)."""
    return str(answer["url"]).rsplit("/", 2)[1]


def path_of(answer: dict[str, Any]) -> str:
    """The path of an issued token's URL (the JWT, then the token id)."""
    return "/" + str(answer["url"]).split("/", 3)[3]


def stream_entries(server: RedisServer, prefix: str = "fbt") -> list[dict[str, str]]:
    """Every feedback entry in every shard's stream, oldest first."""
    return [entry for _, entry in layout.stream_rows(server.client(), prefix)]


class LiveServer:
    """The real app under uvicorn, in its own process (group).

    ``prefix``: a command the server runs under (e.g. ``faketime -f -6s``; tests/support_fleet.py).
    The process gets a session of its own and ``stop`` signals the whole group, since such a
    wrapper may fork and not pass signals on. The drain on SIGTERM is off unless ``env`` sets
    ``FEEDBACK_SHUTDOWN_DRAIN``, so stopping a server doesn't wait for it.
    """

    def __init__(self, env: dict[str, str], workers: int = 1, prefix: Sequence[str] = ()) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        full_env = {**os.environ, "FEEDBACK_PUBLIC_URL": self.url, "FEEDBACK_SHUTDOWN_DRAIN": "0", **env}
        self.log = tempfile.NamedTemporaryFile(prefix="fbt-uvicorn-", suffix=".log", delete=False)
        self.proc = subprocess.Popen(
            [
                *prefix, sys.executable, "-m", "uvicorn", "app.main:app", "--host", "127.0.0.1",
                "--port", str(self.port), "--workers", str(workers), "--log-level", "warning",
            ],
            cwd=ROOT, env=full_env, stdout=self.log, stderr=subprocess.STDOUT, start_new_session=True,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"uvicorn exited: {Path(self.log.name).read_text()[-2000:]}")
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError("uvicorn did not start")

    def output(self) -> str:
        return Path(self.log.name).read_text()

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the server's process group (the server and any wrapper around it)."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)

    def stopped(self, timeout: float = 10) -> bool:
        """Wait until every process of the group has exited."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                try:
                    os.killpg(self.proc.pid, 0)
                except ProcessLookupError:
                    return True
            time.sleep(0.05)
        return False

    def stop(self) -> None:
        self.signal(signal.SIGTERM)
        if not self.stopped():
            self.signal(signal.SIGKILL)
            self.proc.wait()
        self.log.close()
        os.unlink(self.log.name)


@pytest.fixture
def live_server() -> Iterator[Callable[..., LiveServer]]:
    servers: list[LiveServer] = []

    def start(env: dict[str, str], workers: int = 1, prefix: Sequence[str] = ()) -> LiveServer:
        server = LiveServer(env, workers, prefix)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


def live_env(redis_server: RedisServer, keys_dir: Path, **extra: str) -> dict[str, str]:
    return {
        "REDIS_URL": redis_server.url,
        "FEEDBACK_KEYS_DIR": str(keys_dir),
        "FEEDBACK_API_KEYS": API_KEY,
        **extra,
    }
