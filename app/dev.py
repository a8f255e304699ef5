"""``make run``: a working service from a fresh checkout, for development.

Creates and activates a signing key when the keyring is empty, keeps a development API key in
``.dev-api-key``, and, when ``REDIS_URL`` is unset, runs a private ``redis-server`` on a unix
socket with its data (append-only file on) under ``.run/redis`` in the checkout.

Stopping: SIGTERM, SIGINT (Ctrl-C) and SIGHUP (the terminal closing) all stop the server
gracefully and then every process this command started (``Processes``), newest first. The
processes run in sessions of their own, so a terminal's signal reaches only this command, which
stops them after the server has drained; anything a dev command starts (Redis servers, more
workers, a cluster's nodes) goes through ``Processes.start`` to be covered the same way.
"""

from __future__ import annotations

import errno
import os
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from types import FrameType, TracebackType
from typing import Any

import redis

from app.keys.key import DEFAULT_ALG
from app.keys.keyring import KeyringDir

STOP_SIGNALS = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)


class Stop(BaseException):
    """A stop signal arrived: unwind, so that every ``finally`` and ``Processes`` runs.

    A BaseException, like KeyboardInterrupt, so that no ``except Exception`` swallows it."""

    def __init__(self, signum: int) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@contextmanager
def stopped_by_signals() -> Iterator[None]:
    """Within: each of STOP_SIGNALS raises ``Stop`` in the main thread. By default SIGHUP and
    SIGTERM end Python at once, skipping every cleanup, and SIGINT raises KeyboardInterrupt
    wherever the main thread happens to be."""

    def handler(signum: int, frame: FrameType | None) -> None:
        raise Stop(signum)

    previous = {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, before in previous.items():
            signal.signal(sig, before)


class Processes:
    """Every process a dev command starts, stopped (newest first) however the command ends."""

    def __init__(self, grace: float = 10.0) -> None:
        self.grace = grace
        self.started: list[subprocess.Popen[bytes]] = []

    def start(self, argv: Sequence[str], **kwargs: Any) -> subprocess.Popen[bytes]:
        # A session of its own: Ctrl-C or a hangup in the terminal reaches only us, and we stop
        # this process after the server that uses it has finished its requests.
        proc: subprocess.Popen[bytes] = subprocess.Popen(argv, start_new_session=True, **kwargs)
        self.started.append(proc)
        return proc

    def stop_all(self) -> None:
        # A second Ctrl-C while stopping must not leave the rest running.
        previous = {sig: signal.signal(sig, signal.SIG_IGN) for sig in STOP_SIGNALS}
        try:
            for proc in reversed(self.started):
                if proc.poll() is None:
                    proc.terminate()
                try:
                    proc.wait(timeout=self.grace)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()
        finally:
            for sig, before in previous.items():
                signal.signal(sig, before)

    def __enter__(self) -> Processes:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, value: BaseException | None, tb: TracebackType | None
    ) -> None:
        self.stop_all()


def _dev_api_key(root: Path) -> str:
    path = root / ".dev-api-key"
    if path.exists():
        return path.read_text().strip()
    key = "dev-" + secrets.token_urlsafe(24)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    return key


def start_private_redis(
    root: Path, processes: Processes | None = None
) -> tuple[str, subprocess.Popen[bytes] | None]:
    """Start (or reuse) the checkout's own Redis. Returns its URL and the process we started."""
    run = (root / ".run").resolve()
    data = run / "redis"
    data.mkdir(parents=True, exist_ok=True)
    sock = run / "redis.sock"
    url = f"unix://{sock}"
    try:
        redis.Redis.from_url(url, socket_timeout=1).ping()
        return url, None  # already running (another `make run` in this checkout)
    except redis.RedisError:
        pass
    if shutil.which("redis-server") is None:
        sys.exit("redis-server is not installed: `apt-get install redis-server`, or set REDIS_URL")
    argv = [
        "redis-server", "--port", "0", "--unixsocket", str(sock), "--unixsocketperm", "700",
        "--dir", str(data), "--appendonly", "yes", "--appendfsync", "everysec",
        "--save", "", "--maxmemory-policy", "noeviction",
        "--logfile", str(run / "redis.log"),
    ]
    proc = processes.start(argv) if processes else subprocess.Popen(argv, start_new_session=True)
    for _ in range(100):
        try:
            redis.Redis.from_url(url, socket_timeout=1).ping()
            return url, proc
        except redis.RedisError:
            if proc.poll() is not None:
                sys.exit(f"redis-server exited; see {run / 'redis.log'}")
            time.sleep(0.05)
    proc.terminate()
    sys.exit("redis-server did not start within 5 s")


CLUSTER_PORT = 30001


def _cluster_ok(port: int) -> bool:
    try:
        info = redis.Redis(port=port, socket_timeout=1).cluster("info")
    except redis.RedisError:
        return False
    return bool(info.get("cluster_state") == "ok")


def start_private_cluster(root: Path, processes: Processes, first_port: int = CLUSTER_PORT) -> str:
    """``make cluster``: a local Redis Cluster of three primaries (no replicas) on ``first_port``
    and the two ports after it (30001-30003 by default; their cluster bus ports, 10000 higher, must
    be free too), with its data (append-only) under ``.run/cluster``. Reused if it already runs.
    Returns the URL of one node: the service learns the others from it."""
    ports = tuple(range(first_port, first_port + 3))
    url = f"redis://127.0.0.1:{ports[0]}/0"
    if all(_cluster_ok(port) for port in ports):
        return url  # already running (another `make cluster` in this checkout)
    for tool in ("redis-server", "redis-cli"):
        if shutil.which(tool) is None:
            sys.exit(f"{tool} is not installed: `apt-get install redis-server redis-tools`")
    base = (root / ".run" / "cluster").resolve()
    fresh = False
    for port in ports:
        data = base / str(port)
        data.mkdir(parents=True, exist_ok=True)
        fresh = fresh or not (data / "nodes.conf").exists()
        for taken in (port, port + 10000):
            probe = _bindable("127.0.0.1", taken)
            if probe is None:
                sys.exit(
                    f"port {taken} is in use: `make cluster` needs {first_port}-{first_port + 2} and "
                    f"{first_port + 10000}-{first_port + 10002} free (pick others: `make cluster CLUSTER_PORT=...`)"
                )
            probe.close()
        processes.start([
            "redis-server", "--port", str(port), "--bind", "127.0.0.1", "--dir", str(data),
            "--cluster-enabled", "yes", "--cluster-config-file", "nodes.conf", "--cluster-node-timeout", "2000",
            "--appendonly", "yes", "--appendfsync", "everysec", "--save", "",
            "--maxmemory-policy", "noeviction", "--logfile", str(data / "redis.log"),
        ])
    for port in ports:
        for _ in range(100):
            try:
                redis.Redis(port=port, socket_timeout=1).ping()
                break
            except redis.RedisError:
                time.sleep(0.05)
        else:
            sys.exit(f"redis-server on {port} did not start; see {base / str(port) / 'redis.log'}")
    if fresh:
        subprocess.run(
            ["redis-cli", "--cluster", "create", *(f"127.0.0.1:{p}" for p in ports),
             "--cluster-replicas", "0", "--cluster-yes"],
            check=True, capture_output=True, timeout=60,
        )
    deadline = time.monotonic() + 30
    while not all(_cluster_ok(port) for port in ports):
        if time.monotonic() > deadline:
            sys.exit(f"the cluster did not come up; see the logs under {base}")
        time.sleep(0.1)
    return url


def _bindable(host: str, port: int) -> socket.socket | None:
    family = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)[0][0]
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError as err:
        sock.close()
        if err.errno == errno.EADDRINUSE:
            return None
        raise
    return sock


def listen(host: str, port: int) -> socket.socket:
    """The server's socket, bound before anything starts: a busy port is said at once, with a
    free one to use instead, and there is no window in which another program takes it."""
    try:
        sock = _bindable(host, port)
    except OSError as err:
        sys.exit(f"can't listen on {host}:{port}: {err.strerror or err}")
    if sock is None:
        free = None
        for candidate in range(port + 1, min(port + 50, 65536)):
            probe = _bindable(host, candidate)
            if probe is not None:
                probe.close()
                free = candidate
                break
        pick = f"`make run PORT={free}`" if free else "`make run PORT=<another port>`"
        sys.exit(
            f"port {port} on {host} is already in use (another `make run`, or another program). "
            f"Pick another port: {pick} (or `feedback-tokens dev --port ...`)."
        )
    sock.listen(2048)
    return sock


def public_base(host: str, port: int) -> str:
    if host in ("0.0.0.0", "::", ""):
        host = "127.0.0.1"  # listening everywhere; this machine's own address is one of them
    elif ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{port}"


def serve(sock: socket.socket, log_format: str | None = None) -> None:
    """uvicorn on ``sock`` until a stop signal, which it answers by finishing the requests in
    flight. uvicorn itself handles SIGINT and SIGTERM (and re-raises them once stopped, which
    ``stopped_by_signals`` turns into ``Stop``); SIGHUP gets the same graceful stop here. Logs are
    the service's own (app/ops/logs.py: text unless told otherwise), one access line per request."""
    import uvicorn

    from app.cli import _logging_env

    os.environ.setdefault("FEEDBACK_LOG_FORMAT", "text")
    _logging_env(log_format)
    config = uvicorn.Config("app.main:app", log_level="info", log_config=None, access_log=False)
    server = uvicorn.Server(config)
    hangups: list[int] = []

    def on_hangup(signum: int, frame: FrameType | None) -> None:
        hangups.append(signum)
        server.should_exit = True

    previous = signal.signal(signal.SIGHUP, on_hangup)
    try:
        server.run(sockets=[sock])
    finally:
        signal.signal(signal.SIGHUP, previous)
    if hangups:
        raise Stop(hangups[0])


def run_dev(
    root: Path,
    port: int,
    host: str = "127.0.0.1",
    demo: bool = False,
    cluster: int | None = None,
    log_format: str | None = None,
) -> int:
    """``cluster``: the first port of a private Redis Cluster to run instead of one Redis."""
    try:
        with stopped_by_signals(), Processes() as processes:
            _run(root, port, host, demo, processes, cluster, log_format)
    except Stop as stop:
        print(f"stopped by {signal.Signals(stop.signum).name}; everything `make run` started is stopped", flush=True)
        # End the way the signal would have ended us, so whoever sent it sees that.
        signal.signal(stop.signum, signal.SIG_DFL)
        os.kill(os.getpid(), stop.signum)
    return 0


def _run(
    root: Path,
    port: int,
    host: str,
    demo: bool,
    processes: Processes,
    cluster: int | None = None,
    log_format: str | None = None,
) -> None:
    sock = listen(host, port)
    keys_dir = Path(os.environ.get("FEEDBACK_KEYS_DIR") or root / "keys")
    kid = KeyringDir(keys_dir).init(DEFAULT_ALG)
    if kid:
        print(f"created and activated signing key {kid} in {keys_dir}/")
    api_key = os.environ.get("FEEDBACK_API_KEYS", "").split(",")[0].strip()
    if not api_key:
        api_key = _dev_api_key(root)
        os.environ["FEEDBACK_API_KEYS"] = api_key
    if demo:
        os.environ["FEEDBACK_DEMO"] = "1"
    if cluster is not None:
        os.environ["REDIS_URL"] = start_private_cluster(root, processes, cluster)
        print(f"private Redis Cluster of 3 primaries at 127.0.0.1:{cluster}-{cluster + 2} "
              f"(data in {root / '.run' / 'cluster'})")
    elif not os.environ.get("REDIS_URL"):
        os.environ["REDIS_URL"], _ = start_private_redis(root, processes)
        print(f"private Redis at {os.environ['REDIS_URL']} (data in {root / '.run' / 'redis'}, append-only)")
    os.environ["FEEDBACK_KEYS_DIR"] = str(keys_dir)
    base = os.environ.setdefault("FEEDBACK_PUBLIC_URL", public_base(host, port))
    print(
        f"\nfeedback-tokens on {base}" + (f" (demo: {base}/demo)" if demo else "") + "\n"
        f"development API key: {api_key}\n\n"
        "try:\n"
        f"  curl -s -X POST {base}/api/v1/feedback/tokens -H 'X-API-Key: {api_key}' \\\n"
        "       -H 'Content-Type: application/json' \\\n"
        f"       -d '{{\"run_id\": \"{uuid.uuid4()}\", \"feedback_key\": \"user_score\"}}'\n",
        flush=True,
    )
    serve(sock, log_format)
