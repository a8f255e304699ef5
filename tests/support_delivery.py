"""Fixtures for the delivery tests, pulled in with ``pytest_plugins = ["support_delivery"]``
(the helpers they use are in ``delivery_helpers``):

- ``postgres_server``: one PostgreSQL for the session (Debian's binaries, run as the unprivileged
  ``postgres`` user when the tests run as root), in a temp dir, on a free port, trust auth.
- ``pg_url``: a fresh database on it for one test.
- ``deliverers``: start ``feedback-tokens deliver`` processes; all are stopped after the test.
- ``webhook_receiver``: a real HTTP server that verifies every Standard Webhooks signature.
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from delivery_helpers import DelivererProcess, PostgresServer, Receiver


@pytest.fixture(scope="session")
def postgres_server() -> Iterator[PostgresServer]:
    server = PostgresServer().start()
    yield server
    server.cleanup()


@pytest.fixture
def pg_url(postgres_server: PostgresServer) -> str:
    if not postgres_server.running():
        postgres_server.start()
    return postgres_server.new_database()


@pytest.fixture
def deliverers() -> Iterator[Callable[..., DelivererProcess]]:
    started: list[DelivererProcess] = []

    def start(*args: str, env: dict[str, str]) -> DelivererProcess:
        process = DelivererProcess(list(args), env)
        started.append(process)
        return process

    yield start
    for process in started:
        process.close()


@pytest.fixture
def webhook_receiver() -> Iterator[Callable[..., Receiver]]:
    servers: list[Receiver] = []

    def start(**kwargs: Any) -> Receiver:
        server = Receiver(**kwargs)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.release.set()
        server.shutdown()
        server.server_close()
