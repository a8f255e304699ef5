"""``make run``: a working service from a fresh checkout, for development.

Creates and activates a signing key when the keyring is empty, keeps a development API key in
``.dev-api-key``, and, when ``REDIS_URL`` is unset, runs a private ``redis-server`` on a unix
socket with its data (append-only file on) under ``.run/redis`` in the checkout.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import redis

from app.keys.keyring import DEFAULT_ALG, KeyringDir


def _dev_api_key(root: Path) -> str:
    path = root / ".dev-api-key"
    if path.exists():
        return path.read_text().strip()
    key = "dev-" + secrets.token_urlsafe(24)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(key + "\n")
    return key


def start_private_redis(root: Path) -> tuple[str, subprocess.Popen[bytes] | None]:
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
    proc = subprocess.Popen(
        [
            "redis-server", "--port", "0", "--unixsocket", str(sock), "--unixsocketperm", "700",
            "--dir", str(data), "--appendonly", "yes", "--appendfsync", "everysec",
            "--save", "", "--maxmemory-policy", "noeviction",
            "--logfile", str(run / "redis.log"),
        ]
    )
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


def run_dev(root: Path, port: int, log_format: str | None = None) -> int:
    import uvicorn

    from app.cli import _logging_env

    keys_dir = Path(os.environ.get("FEEDBACK_KEYS_DIR") or root / "keys")
    kid = KeyringDir(keys_dir).init(DEFAULT_ALG)
    if kid:
        print(f"created and activated signing key {kid} in {keys_dir}/")
    api_key = os.environ.get("FEEDBACK_API_KEYS", "").split(",")[0].strip()
    if not api_key:
        api_key = _dev_api_key(root)
        os.environ["FEEDBACK_API_KEYS"] = api_key
    proc = None
    if not os.environ.get("REDIS_URL"):
        os.environ["REDIS_URL"], proc = start_private_redis(root)
        print(f"private Redis at {os.environ['REDIS_URL']} (data in .run/redis, append-only)")
    os.environ["FEEDBACK_KEYS_DIR"] = str(keys_dir)
    base = os.environ.setdefault("FEEDBACK_PUBLIC_URL", f"http://127.0.0.1:{port}")
    print(
        f"\nfeedback-tokens on {base}\n"
        f"development API key: {api_key}\n\n"
        "try:\n"
        f"  curl -s -X POST {base}/api/v1/feedback/tokens -H 'X-API-Key: {api_key}' \\\n"
        "       -H 'Content-Type: application/json' \\\n"
        f"       -d '{{\"run_id\": \"{uuid.uuid4()}\", \"feedback_key\": \"user_score\"}}'\n",
        flush=True,
    )
    # uvicorn re-raises the SIGTERM it handled once it has shut down; turn that into an exit
    # so the private Redis below is stopped with us rather than left running.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    _logging_env(log_format)
    try:
        uvicorn.run("app.main:app", host="127.0.0.1", port=port, log_level="info", log_config=None, access_log=False)
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=10)
    return 0
