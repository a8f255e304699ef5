"""`make run` and `make demo` as a person runs them: stopped by SIGTERM, SIGINT or SIGHUP, they
leave nothing running; HOST and PORT choose where they listen; a busy port is said at once.

Each test runs the real `make` target in a process group of its own, with DEV_ROOT (see the
Makefile) pointing at a fresh directory so the checkout's own `.run/` and keys stay untouched.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
import redis
from conftest import ROOT, free_port, issue_token
from support_cluster import cluster_port

DEADLINE = 60  # seconds: a bound on each wait, never a measured assertion


@dataclass(frozen=True)
class Proc:
    pid: int
    ppid: int
    argv: str


def processes() -> dict[int, Proc]:
    found = {}
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            stat = (entry / "stat").read_text()
            argv = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace").strip()
        except OSError:
            continue
        fields = stat.rsplit(")", 1)[1].split()
        if fields[0] == "Z":  # a zombie has stopped; only its parent's wait is missing
            continue
        found[int(entry.name)] = Proc(int(entry.name), int(fields[1]), argv)
    return found


def descendants(pid: int) -> list[Proc]:
    table = processes()
    out, todo = [], [pid]
    while todo:
        parent = todo.pop()
        children = [p for p in table.values() if p.ppid == parent]
        out += children
        todo += [c.pid for c in children]
    return out


def alive(pids: list[int]) -> list[int]:
    table = processes()
    return [pid for pid in pids if pid in table]


@pytest.fixture
def dev_root() -> Iterator[Path]:
    root = Path(tempfile.mkdtemp(prefix="fbt-dev-"))  # short: the unix socket path has a limit
    yield root
    sock = root / ".run" / "redis.sock"
    if sock.exists():  # a failed test: stop what it left
        try:
            redis.Redis(unix_socket_path=str(sock), socket_timeout=1).shutdown(nosave=True)
        except redis.RedisError:
            pass
    shutil.rmtree(root, ignore_errors=True)


def make(target: str, dev_root: Path, *variables: str) -> subprocess.Popen[str]:
    env = {k: v for k, v in os.environ.items()
           if k not in ("REDIS_URL", "FEEDBACK_API_KEYS", "FEEDBACK_KEYS_DIR", "FEEDBACK_PUBLIC_URL", "MAKEFLAGS")}
    return subprocess.Popen(
        ["make", "--no-print-directory", target, f"DEV_ROOT={dev_root}", *variables],
        cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
        start_new_session=True,  # a process group of its own, as a terminal gives a command
    )


def wait_ready(proc: subprocess.Popen[str], base: str) -> None:
    deadline = time.monotonic() + DEADLINE
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            pytest.fail(f"make exited {proc.returncode}:\n{proc.stdout.read() if proc.stdout else ''}")
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        time.sleep(0.1)
    pytest.fail("the dev server never became ready")


CASES = [
    ("run", signal.SIGTERM, "make"),  # kill <pid of make>, as a process manager does
    ("run", signal.SIGTERM, "group"),
    ("run", signal.SIGINT, "group"),  # Ctrl-C in the terminal
    ("run", signal.SIGHUP, "group"),  # the terminal closed
    ("demo", signal.SIGTERM, "make"),
    ("cluster", signal.SIGTERM, "make"),
    ("cluster", signal.SIGINT, "group"),
]


@pytest.mark.parametrize(("target", "sig", "to"), CASES, ids=lambda v: getattr(v, "name", v))
def test_a_signal_stops_everything_it_started(dev_root, target, sig, to):
    port = free_port()
    extra = [f"CLUSTER_PORT={cluster_port(3)}"] if target == "cluster" else []
    proc = make(target, dev_root, f"PORT={port}", *extra)
    try:
        base = f"http://127.0.0.1:{port}"
        wait_ready(proc, base)
        tree = descendants(proc.pid)
        # make runs the server itself (no shell left in between), and the server its Redis.
        [server] = [p for p in tree if "feedback-tokens dev" in p.argv]
        assert server.ppid == proc.pid, tree
        assert any(p.argv.startswith("redis-server") and p.ppid == server.pid for p in tree), tree
        if target == "demo":
            assert httpx.get(f"{base}/demo").status_code == 200
        if target == "cluster":  # three nodes, and the service knows it runs on a cluster
            assert len([p for p in tree if p.argv.startswith("redis-server") and "cluster" not in p.argv]) == 0
            assert len([p for p in tree if p.argv.startswith("redis-server")]) == 3
        started = [p.pid for p in tree]
        os.killpg(proc.pid, sig) if to == "group" else proc.send_signal(sig)
        proc.wait(timeout=DEADLINE)
    finally:
        if proc.poll() is None:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
    deadline = time.monotonic() + DEADLINE
    while alive(started) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert alive(started) == [], [p for p in tree if p.pid in alive(started)]
    output = proc.stdout.read() if proc.stdout else ""
    assert "Application shutdown complete" in output, output  # stopped gracefully, not killed
    assert f"stopped by {sig.name}" in output, output
    if target == "cluster":
        assert "private Redis Cluster of 3 primaries" in output, output
    with pytest.raises(httpx.ConnectError):
        httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)


def test_host_and_port_choose_where_it_listens(dev_root):
    port = free_port()
    proc = make("run", dev_root, "HOST=127.0.0.2", f"PORT={port}")
    try:
        base = f"http://127.0.0.2:{port}"
        wait_ready(proc, base)
        key = (dev_root / ".dev-api-key").read_text().strip()
        with httpx.Client(base_url=base) as http:
            answer = issue_token(http, api_key=key, run_id="5a0ba8b4-7a7e-4a7a-9a52-5f2d2c1a2b3c")
        assert answer["url"].startswith(f"{base}/api/v1/feedback/tokens/")
        with pytest.raises(httpx.ConnectError):
            httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=2)
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=DEADLINE)


def test_a_busy_port_is_said_with_another_to_pick_before_anything_starts(dev_root):
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        proc = make("run", dev_root, f"PORT={port}")
        output, _ = proc.communicate(timeout=DEADLINE)
    assert proc.returncode != 0
    assert f"port {port} on 127.0.0.1 is already in use" in output, output
    suggested = output.split("`make run PORT=", 1)[1].split("`", 1)[0]
    assert suggested.isdigit() and int(suggested) != port
    assert "development API key" not in output  # no banner for a server that never ran
    assert not (dev_root / ".run").exists()  # and no Redis started for it
