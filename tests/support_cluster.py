"""A real Redis Cluster for tests: 3 primaries and 3 replicas, ``redis-server --cluster-enabled
yes`` on free ports, joined with ``redis-cli --cluster create`` (about 2 s), one per session.

- ``redis_cluster``: the session's cluster, emptied before each test that uses it.
- ``ClusterServer`` offers what tests use of a single ``RedisServer``: ``url`` (one node's; the
  service finds the rest), ``client()`` (a cluster client), plus the nodes, for faults.
"""

from __future__ import annotations

import contextlib
import random
import shutil
import socket
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import redis
from conftest import RedisServer
from redis.cluster import RedisCluster


def cluster_port(count: int = 1) -> int:
    """The first of ``count`` free ports in a row whose cluster bus ports (10000 higher) are free
    too. Both below the kernel's ephemeral range, which the suite's own outgoing connections take
    ports from: a port found free there may be some client's by the time a node binds it."""
    ephemeral_low = 32768
    with contextlib.suppress(OSError, ValueError):
        ephemeral_low = int(Path("/proc/sys/net/ipv4/ip_local_port_range").read_text().split()[0])
    highest = ephemeral_low - 10000 - count
    for _ in range(200):
        port = random.randint(min(10000, highest - 1000), highest)
        try:
            for candidate in [p + bus for p in range(port, port + count) for bus in (0, 10000)]:
                with socket.socket() as s:
                    s.bind(("127.0.0.1", candidate))
        except OSError:
            continue
        return port
    raise RuntimeError("no free port pair for a cluster node")


class ClusterNode(RedisServer):
    def __init__(self, *extra: str) -> None:
        super().__init__(*extra)
        self.port = cluster_port()


class ClusterServer:
    def __init__(self, primaries: int = 3, replicas: int = 1) -> None:
        if shutil.which("redis-cli") is None:
            pytest.fail("redis-cli is not installed (apt-get install redis-tools)")
        self.nodes: list[RedisServer] = [
            ClusterNode(
                "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                "--cluster-node-timeout", "1500", "--appendonly", "no",
                "--maxmemory-policy", "noeviction",
            )
            for _ in range(primaries * (1 + replicas))
        ]
        self.replicas = replicas

    @property
    def url(self) -> str:
        return self.nodes[0].url

    def start(self) -> ClusterServer:
        for node in self.nodes:
            node.start()
        subprocess.run(
            ["redis-cli", "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in self.nodes),
             "--cluster-replicas", str(self.replicas), "--cluster-yes"],
            check=True, capture_output=True, timeout=60,
        )
        self.wait_ok()
        return self

    def wait_ok(self, timeout: float = 30) -> None:
        """Until every live node says the cluster is ok and every replica is in sync."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                states = [n.client().cluster("info") for n in self.live()]
                if all(s.get("cluster_state") == "ok" for s in states) and self._replicas_synced():
                    return
            except redis.RedisError:
                pass
            time.sleep(0.1)
        raise RuntimeError("the cluster did not become ok")

    def _replicas_synced(self) -> bool:
        for node in self.live():
            info = node.client().info("replication")
            if info.get("role") == "slave" and info.get("master_link_status") != "up":
                return False
        return True

    def live(self) -> list[RedisServer]:
        return [n for n in self.nodes if n.proc is not None and n.proc.poll() is None]

    def primaries(self) -> list[RedisServer]:
        return [n for n in self.live() if n.client().info("replication").get("role") == "master"]

    def client(self) -> RedisCluster:
        live = self.live()[0]
        return RedisCluster(host="127.0.0.1", port=live.port, socket_timeout=5)

    def flush(self) -> None:
        for node in self.primaries():
            node.client().flushall()
            node.client().config_resetstat()

    def cleanup(self) -> None:
        for node in self.nodes:
            node.cleanup()


@pytest.fixture(scope="session")
def _session_cluster() -> Iterator[ClusterServer]:
    cluster = ClusterServer().start()
    yield cluster
    cluster.cleanup()


@pytest.fixture
def redis_cluster(_session_cluster: ClusterServer) -> ClusterServer:
    _session_cluster.wait_ok()
    _session_cluster.flush()
    return _session_cluster


@pytest.fixture
def fresh_cluster() -> Iterator[ClusterServer]:
    """A cluster of this test's own, for faults that leave it changed (a killed primary, a slot
    moved)."""
    cluster = ClusterServer().start()
    yield cluster
    cluster.cleanup()


@pytest.fixture(params=["redis", "cluster"])
def either_redis(request: pytest.FixtureRequest, _session_redis: RedisServer) -> RedisServer | ClusterServer:
    """One Redis, then a Redis Cluster: a module that names this in its ``redis_server`` runs its
    tests on both (the same tests, not copies)."""
    if request.param == "redis":
        if _session_redis.proc is None or _session_redis.proc.poll() is not None:
            _session_redis.start()
        _session_redis.client().flushall()
        return _session_redis
    cluster: ClusterServer = request.getfixturevalue("_session_cluster")
    cluster.wait_ok()
    cluster.flush()
    return cluster
