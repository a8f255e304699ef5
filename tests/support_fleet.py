"""Fixtures for fleet tests (the helpers they start live in tests/fleet.py). Pull in with
``pytest_plugins = ["support_fleet"]``.

- ``app_server(app)``: the app under uvicorn in a thread of the test process (``fleet.AppServer``),
  stopped at the end of the test; it may be stopped and started again in between, same port.
- ``fault_proxy(redis_server)``: a ``fleet.FaultProxy`` in front of that Redis, stopped at the
  end of the test; its ``url`` is the REDIS_URL to give the service.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator

import pytest
from conftest import RedisServer
from fleet import AppServer, FaultProxy
from starlette.types import ASGIApp


@pytest.fixture
def app_server() -> Iterator[Callable[[ASGIApp], AppServer]]:
    servers: list[AppServer] = []

    def start(app: ASGIApp) -> AppServer:
        server = AppServer(app).start()
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def fault_proxy() -> Iterator[Callable[[RedisServer], FaultProxy]]:
    proxies: list[FaultProxy] = []

    def start(server: RedisServer) -> FaultProxy:
        proxy = FaultProxy(server.port).start()
        proxies.append(proxy)
        return proxy

    yield start
    for proxy in proxies:
        proxy.stop()
