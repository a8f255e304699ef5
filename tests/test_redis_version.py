"""What a node checks of its Redis at start-up (issue 9): the server's version, with a clear
message below the minimum the scripts need, and the scripts loaded before the first request."""

from __future__ import annotations

import hashlib
from collections.abc import Callable

import pytest
from conftest import RedisServer
from starlette.testclient import TestClient

from app.clock import FrozenClock
from app.config import Settings
from app.main import create_app
from app.store import scripts
from app.store.connect import MINIMUM_VERSION, RedisVersionError, version_of


@pytest.mark.parametrize(
    ("reported", "parsed"),
    [
        ("7.0.15", (7, 0, 15)),
        ("7.2.4", (7, 2, 4)),
        ("10.0.0", (10, 0, 0)),
        ("255.255.255", (255, 255, 255)),
        ("7.2.0-rc1", (7, 2, 0)),  # a release candidate counts as its release
        ("7.0", (7, 0, 0)),
        ("7", (7, 0, 0)),
        ("7.x.1", (7, 0, 0)),  # stops at what it can't read
        ("", (0, 0, 0)),
        ("unknown", (0, 0, 0)),
    ],
)
def test_version_of_reads_major_minor_patch(reported: str, parsed: tuple[int, int, int]) -> None:
    assert version_of({"redis_version": reported}) == parsed


def test_version_of_without_a_version_is_below_any_minimum() -> None:
    assert version_of({}) == (0, 0, 0) < MINIMUM_VERSION


def test_minimum_is_what_the_scripts_need() -> None:
    # EXPIRETIME and TIME before a write in a script (deterministic effects replication) are Redis 7.
    assert MINIMUM_VERSION == (7, 0, 0)
    assert "EXPIRETIME" in scripts.SUBMIT and "TIME" in scripts.SUBMIT


def test_a_node_refuses_to_start_on_a_redis_below_its_minimum(
    settings: Settings, redis_server: RedisServer, clock: FrozenClock
) -> None:
    """No old Redis to install here: the real one is made too old by asking for more than it is."""
    real = version_of(redis_server.client().info("server"))
    app = create_app(settings, clock=clock)
    app.state.service.store.minimum_version = (real[0] + 1, 0, 0)
    with pytest.raises(RedisVersionError) as refused:
        TestClient(app).__enter__()
    have, need = ".".join(map(str, real)), f"{real[0] + 1}.0.0"
    assert str(refused.value) == f"Redis {have} is too old: feedback-tokens needs Redis {need} or newer"


def test_the_same_node_starts_at_the_real_minimum(settings: Settings, redis_server: RedisServer) -> None:
    app = create_app(settings, clock=FrozenClock())
    with TestClient(app) as client:
        assert client.get("/readyz").status_code == 200
        assert app.state.service.store.version == version_of(redis_server.client().info("server"))


def test_scripts_are_loaded_at_start_up(make_app: Callable[..., TestClient], redis_server: RedisServer) -> None:
    redis_server.client().script_flush()
    make_app()
    shas = [hashlib.sha1(s.encode()).hexdigest() for s in (scripts.SUBMIT, scripts.ISSUE, scripts.LIST, scripts.REVOKE)]
    assert redis_server.client().script_exists(*shas) == [True] * 4
