"""Private Redis servers: one on a free port, or a local Redis Cluster of several of them."""

from __future__ import annotations

import shutil
import signal
import subprocess
import tempfile
import time
from pathlib import Path

import redis

from procs.group import ProcessGroups, free_port


class RedisMissing(RuntimeError):
    """A Redis program the launcher needs is not on PATH."""


def _need(program: str) -> None:
    if shutil.which(program) is None:
        raise RedisMissing(f"{program} is not installed (apt-get install redis-server)")


class RedisServer:
    """A redis-server process of our own: a free port on 127.0.0.1, no persistence, its data and
    log in a directory of its own (a temp dir unless ``workdir`` is given). ``extra`` are more
    redis-server options, e.g. ``"--maxmemory-policy", "noeviction"``."""

    def __init__(self, *extra: str, groups: ProcessGroups | None = None, workdir: Path | None = None) -> None:
        _need("redis-server")
        self.port = free_port()
        self.own_dir = workdir is None
        self.dir = Path(tempfile.mkdtemp(prefix="fbt-redis-")) if workdir is None else workdir
        self.dir.mkdir(parents=True, exist_ok=True)
        self.extra = extra
        self.groups = groups or ProcessGroups()
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    @property
    def log(self) -> Path:
        return self.dir / "redis.log"

    def client(self, timeout: float = 5.0) -> redis.Redis:
        return redis.Redis(host="127.0.0.1", port=self.port, socket_timeout=timeout)

    def start(self, timeout: float = 10.0) -> RedisServer:
        args = [
            "redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
            "--dir", str(self.dir), "--save", "", "--appendonly", "no",
            "--logfile", str(self.log), *self.extra,
        ]
        self.proc = self.groups.popen(args, f"redis-server :{self.port}")
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"redis-server on {self.port} exited; see {self.log}")
            try:
                if self.client().ping():
                    return self
            except redis.RedisError:
                time.sleep(0.02)
        raise RuntimeError(f"redis-server on {self.port} did not answer within {timeout:g} s")

    def stop(self) -> None:
        if self.proc is not None:
            self.groups.stop(self.proc)
        self.proc = None

    def pause(self) -> None:
        """SIGSTOP: the server holds its connections but answers nothing (a hung Redis)."""
        if self.proc is None:
            raise RuntimeError("redis-server is not running")
        self.proc.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        if self.proc is None:
            raise RuntimeError("redis-server is not running")
        self.proc.send_signal(signal.SIGCONT)

    def cleanup(self) -> None:
        """Stop (a paused server too) and remove the data directory if it is ours."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.send_signal(signal.SIGCONT)
        self.stop()
        if self.own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)


class LocalCluster:
    """A Redis Cluster on this machine: ``primaries`` + ``primaries * replicas`` redis-server
    processes with ``--cluster-enabled yes``, joined by ``redis-cli --cluster create``. ``url``
    names the first node; a cluster client learns the rest from it."""

    def __init__(
        self,
        primaries: int = 3,
        replicas: int = 0,
        *extra: str,
        groups: ProcessGroups | None = None,
        workdir: Path | None = None,
    ) -> None:
        _need("redis-cli")
        self.groups = groups or ProcessGroups()
        self.own_dir = workdir is None
        self.dir = Path(tempfile.mkdtemp(prefix="fbt-cluster-")) if workdir is None else workdir
        self.replicas = replicas
        options = ("--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf",
                   "--cluster-node-timeout", "2000", *extra)
        # The cluster bus port defaults to the port + 10000, which fails for ports above 55535.
        self.nodes = [
            RedisServer(*options, "--cluster-port", str(free_port()), groups=self.groups, workdir=self.dir / f"node{i}")
            for i in range(primaries * (1 + replicas))
        ]

    @property
    def url(self) -> str:
        return self.nodes[0].url

    def start(self, timeout: float = 30.0) -> LocalCluster:
        for node in self.nodes:
            node.start()
        create = [
            "redis-cli", "--cluster", "create", *(f"127.0.0.1:{n.port}" for n in self.nodes),
            "--cluster-replicas", str(self.replicas), "--cluster-yes",
        ]
        done = subprocess.run(create, capture_output=True, text=True, timeout=timeout)
        if done.returncode != 0:
            raise RuntimeError(f"redis-cli --cluster create failed:\n{done.stdout}{done.stderr}")
        deadline = time.monotonic() + timeout
        while not self.ready():
            if time.monotonic() > deadline:
                raise RuntimeError(f"the cluster did not settle within {timeout:g} s")
            time.sleep(0.1)
        return self

    def ready(self) -> bool:
        """Every node says the cluster is ok, knows every other node and sees every slot served."""
        try:
            for node in self.nodes:
                info = node.client().cluster("info")
                if (
                    info.get("cluster_state") != "ok"
                    or int(info.get("cluster_known_nodes", 0)) != len(self.nodes)
                    or int(info.get("cluster_slots_ok", 0)) != 16384
                ):
                    return False
        except redis.RedisError:
            return False
        return True

    def primaries(self) -> list[RedisServer]:
        """The nodes that are primaries now (a failover changes which)."""
        out = []
        for node in self.nodes:
            try:
                if node.client().role()[0] in (b"master", "master"):
                    out.append(node)
            except redis.RedisError:
                continue
        return out

    def stop(self) -> None:
        for node in reversed(self.nodes):
            node.stop()

    def cleanup(self) -> None:
        for node in reversed(self.nodes):
            node.cleanup()
        if self.own_dir:
            shutil.rmtree(self.dir, ignore_errors=True)
