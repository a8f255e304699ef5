"""Fixtures: real redis-server processes, real keyrings, the real app over HTTP.

- ``redis_server``: one Redis for the session, flushed before each test that uses it.
- ``redis_factory``: start private Redis servers that a test may stop, restart or configure.
- ``keys_dir``: a keyring directory with one active key of the default algorithm (ES256).
- ``make_app`` / ``client``: the app (``create_app``) behind Starlette's TestClient, lifespan run.
- ``live_server``: the app under uvicorn in a subprocess, for concurrency and multi-node tests;
  under ``server_kind`` (uvicorn here; a module that overrides it with ``any_server`` from
  ``support_servers`` runs under granian too).

The process launchers (``RedisServer``, ``LiveServer``, ``free_port``) live in ``procs/``, shared
with the benchmark; they are imported here so that tests keep importing them from conftest.
"""

from __future__ import annotations

import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any, overload

import httpx
import layout
import pytest
from starlette.testclient import TestClient

from app.clock import FrozenClock
from app.config import Secret, Settings
from app.keys.keyring import KeyringDir
from app.main import create_app
from procs import LiveServer as LiveServer  # re-exported: tests import the launchers from here
from procs import RedisServer as RedisServer
from procs import free_port as free_port

ROOT = Path(__file__).resolve().parent.parent
# Fixtures of their own modules, for every test: a Redis Cluster (tests/support_cluster.py).
pytest_plugins = ["support_cluster"]
API_KEY = "test-api-key-0123456789"
TOKENS = "/api/v1/feedback/tokens"


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
    """``issue_token`` on ``client``, with ``feedback_key="user_score"`` unless a test says otherwise."""

    def issue_one(**fields: Any) -> dict[str, Any]:
        return issue_token(client, **{"feedback_key": "user_score", **fields})

    return issue_one


# What issue_token posts through: the app's TestClient, or httpx against a live server.
Poster = TestClient | httpx.Client


@overload
def issue_token(
    client: Poster,
    *,
    count: None = None,
    api_key: str | None = API_KEY,
    expect: int = 200,
    headers: Mapping[str, str] | None = None,
    **fields: Any,
) -> dict[str, Any]: ...


@overload
def issue_token(
    client: Poster,
    *,
    count: int,
    api_key: str | None = API_KEY,
    expect: int = 200,
    headers: Mapping[str, str] | None = None,
    **fields: Any,
) -> list[dict[str, Any]]: ...


def issue_token(
    client: Poster,
    *,
    count: int | None = None,
    api_key: str | None = API_KEY,
    expect: int = 200,
    headers: Mapping[str, str] | None = None,
    **fields: Any,
) -> Any:
    """Issue a token through the API and return the parsed answer: the tests' one helper for that.

    ``client``: the app's TestClient, or an ``httpx.Client(base_url=<live server>)``; either way
    the call is ``client.post(TOKENS, ...)``. The body is a fresh ``run_id`` and
    ``feedback_key="k"``, then ``fields``.

    - ``count``: send a batch (a JSON array) of that many such bodies, each with its own
      ``run_id`` unless ``fields`` has one; the answer is then a list.
    - ``api_key``: the ``X-API-Key`` header (``None``: no header).
    - ``headers``: more headers to send (an ``X-Request-ID``, say).
    - ``expect``: the status the call must answer; 200 unless a test wants a refusal, whose
      problem document is then the answer.
    """

    def one() -> dict[str, Any]:
        return {"run_id": str(uuid.uuid4()), "feedback_key": "k", **fields}

    body: Any = one() if count is None else [one() for _ in range(count)]
    sent = {**({} if api_key is None else {"X-API-Key": api_key}), **(headers or {})}
    r = client.post(TOKENS, json=body, headers=sent)
    assert r.status_code == expect, f"issuing answered {r.status_code}, not {expect}: {r.text}"
    return r.json()


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


@pytest.fixture
def server_kind() -> str:
    """The server ``live_server`` starts the app under (procs.SERVERS)."""
    return "uvicorn"


@pytest.fixture
def live_server(server_kind: str) -> Iterator[Callable[..., LiveServer]]:
    servers: list[LiveServer] = []

    def start(env: dict[str, str], workers: int = 1, prefix: Sequence[str] = ()) -> LiveServer:
        server = LiveServer(env, workers, prefix=prefix, server=server_kind)
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
