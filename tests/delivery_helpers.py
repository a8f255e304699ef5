"""Helpers for the delivery tests: a private PostgreSQL server, deliverer processes, a webhook
receiver that verifies signatures, and submissions made through the real app (the fixtures that
use them are in ``support_delivery``).
"""

from __future__ import annotations

import base64
import glob
import http.server
import json
import os
import pwd
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import psycopg
import pytest
from conftest import ROOT, TOKENS, free_port, issue_token, token_of
from standardwebhooks import Webhook
from starlette.testclient import TestClient

WEBHOOK_SECRET = "whsec_" + base64.b64encode(b"delivery-tests-secret-0123456789").decode()


def wait_for(condition: Callable[[], Any], timeout: float = 60.0, what: str = "condition") -> Any:
    """Poll until ``condition()`` is truthy (generous deadline: the machine is shared)."""
    deadline = time.monotonic() + timeout
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


# -- PostgreSQL ----------------------------------------------------------------------------------


def _pg_bin(name: str) -> str:
    found = sorted(glob.glob(f"/usr/lib/postgresql/*/bin/{name}"))
    if found:
        return found[-1]
    if shutil.which(name):
        return name
    pytest.fail("PostgreSQL is not installed (apt-get install postgresql)")


class PostgresServer:
    """A postgres of our own: data and socket in a temp dir, listening on 127.0.0.1 only."""

    def __init__(self) -> None:
        self.port = free_port()
        self.dir = Path(tempfile.mkdtemp(prefix="fbt-pg-"))
        self.data = self.dir / "data"
        self.user: str | None = None
        if os.geteuid() == 0:  # postgres refuses to run as root
            self.user = "postgres"
            entry = pwd.getpwnam(self.user)
            os.chown(self.dir, entry.pw_uid, entry.pw_gid)
        self._run([_pg_bin("initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres", "--no-sync", "-E", "UTF8"])

    def _run(self, argv: list[str]) -> None:
        if self.user is not None:
            argv = ["runuser", "-u", self.user, "--", *argv]
        result = subprocess.run(argv, capture_output=True, text=True, timeout=120)
        if result.returncode != 0:
            raise RuntimeError(f"{argv} failed: {result.stdout}{result.stderr}")

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def start(self) -> PostgresServer:
        options = f"-p {self.port} -k {self.dir} -c listen_addresses=127.0.0.1 -c fsync=off -c full_page_writes=off"
        self._run([_pg_bin("pg_ctl"), "-D", str(self.data), "-l", str(self.dir / "log"), "-o", options, "-w", "start"])
        return self

    def stop(self, mode: str = "fast") -> None:
        self._run([_pg_bin("pg_ctl"), "-D", str(self.data), "-m", mode, "-w", "stop"])

    def running(self) -> bool:
        return (self.data / "postmaster.pid").exists()

    def new_database(self) -> str:
        name = "t_" + uuid.uuid4().hex[:12]
        with psycopg.connect(self.url, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {name}")
        return f"postgresql://postgres@127.0.0.1:{self.port}/{name}"

    def cleanup(self) -> None:
        if self.running():
            try:
                self.stop("immediate")
            except RuntimeError:
                pass
        shutil.rmtree(self.dir, ignore_errors=True)


def rows(url: str, table: str = "feedback") -> list[dict[str, Any]]:
    with psycopg.connect(url) as conn, conn.cursor(row_factory=psycopg.rows.dict_row) as cur:
        cur.execute(f"SELECT * FROM {table} ORDER BY id, revision")
        return list(cur.fetchall())


def count_rows(url: str, table: str = "feedback") -> int:
    try:
        with psycopg.connect(url, connect_timeout=5) as conn:
            found = conn.execute(f"SELECT count(*) FROM {table}").fetchone()
            return int(found[0]) if found else 0
    except (psycopg.OperationalError, psycopg.errors.UndefinedTable):
        return -1


# -- deliverer processes --------------------------------------------------------------------------


class DelivererProcess:
    """``feedback-tokens deliver`` in its own process: its log (stderr) and its standard output
    each in a file."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.log = tempfile.NamedTemporaryFile(prefix="fbt-deliver-", suffix=".log", delete=False)
        self.out = tempfile.NamedTemporaryFile(prefix="fbt-deliver-", suffix=".out", delete=False)
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "deliver", *args],
            cwd=ROOT, env={**os.environ, **env}, stdout=self.out, stderr=self.log,
        )

    def output(self) -> str:
        return Path(self.log.name).read_text()

    def stdout(self) -> str:
        return Path(self.out.name).read_text()

    def kill(self) -> None:
        """kill -9: no chance to finish, acknowledge or clean up."""
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return int(self.proc.returncode)

    def close(self) -> None:
        self.stop()
        for file in (self.log, self.out):
            file.close()
            os.unlink(file.name)


# -- webhook receiver -------------------------------------------------------------------------------


class Receiver(http.server.ThreadingHTTPServer):
    """Takes webhook batches: checks each signature with the standardwebhooks package, fails a
    share of requests with 500 (before looking at them), refuses batches holding a poisoned
    feedback id with 422, and can hold a request until told to answer."""

    daemon_threads = True

    def __init__(self, fail_rate: float = 0.0, seed: int = 12) -> None:
        super().__init__(("127.0.0.1", free_port()), _Handler)
        self.verifier = Webhook(WEBHOOK_SECRET)
        self.fail_rate = fail_rate
        self.random = random.Random(seed)
        self.lock = threading.Lock()
        self.received: Counter[tuple[str, int]] = Counter()  # (id, revision) -> times accepted
        self.entries: dict[tuple[str, int], dict[str, Any]] = {}
        self.requests = Counter[str]()  # 'ok', 'failed', 'rejected', 'bad_signature'
        self.poison: set[str] = set()
        self.hold: threading.Event | None = None  # set: requests wait on `release`
        self.holding = threading.Event()
        self.release = threading.Event()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/hook"

    def take(self, body: bytes, headers: dict[str, str]) -> int:
        with self.lock:
            fail = self.random.random() < self.fail_rate
        if fail:
            self.requests["failed"] += 1
            return 500
        try:
            payload = self.verifier.verify(body, headers)
        except Exception:
            self.requests["bad_signature"] += 1
            return 401
        if any(item["id"] in self.poison for item in payload["data"]):
            self.requests["rejected"] += 1
            return 422
        with self.lock:
            for item in payload["data"]:
                key = (item["id"], item["revision"])
                self.received[key] += 1
                self.entries[key] = item
            self.requests["ok"] += 1
        if self.hold is not None and self.hold.is_set():
            self.holding.set()
            self.release.wait(60)
        return 204


class _Handler(http.server.BaseHTTPRequestHandler):
    server: Receiver

    def do_POST(self) -> None:  # noqa: N802 - the name http.server calls
        body = self.rfile.read(int(self.headers["content-length"]))
        status = self.server.take(body, dict(self.headers.items()))
        self.send_response(status)
        self.send_header("content-length", "0")
        self.end_headers()

    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - quiet
        pass


# -- submissions through the real app ---------------------------------------------------------------


# Bodies that cover every field type (and look-alike strings) and every use policy.
BODIES: list[dict[str, Any]] = [
    {"score": 1},
    {"score": 0.25, "comment": "fine", "metadata": {"lang": "de", "n": [1, 2]}},
    {"value": "5"},
    {"value": 5},
    {"value": True, "comment": ""},
    {"value": {"label": "good", "nested": {"x": None}}},
    {"value": "", "correction": "null"},
    {"correction": {"text": "better"}, "score": -3},
    {"comment": "ünïcødé ✓", "value": "plain words"},
]


def expected_row(answer: dict[str, Any], token: dict[str, Any], body: dict[str, Any]) -> dict[str, Any]:
    """What a target must hold for one accepted submission (from the service's answer)."""
    return {
        "id": answer["id"],
        "revision": answer.get("revision", 1),
        "token_id": token["id"],
        "run_id": answer["run_id"],
        "feedback_key": answer["feedback_key"],
        "score": body.get("score"),
        "value": body.get("value"),
        "comment": body.get("comment"),
        "correction": body.get("correction"),
        "metadata": body.get("metadata"),
        "created_at": moment(answer["created_at"]),
    }


def moment(value: str | datetime) -> datetime:
    """A timestamp as an aware datetime in UTC, whichever way it was written."""
    when = datetime.fromisoformat(value) if isinstance(value, str) else value
    return when.astimezone(UTC)


def submit_mix(client: TestClient, n: int) -> dict[tuple[str, int], dict[str, Any]]:
    """``n`` accepted submissions through the API, of every policy: 'once' tokens, 'update' tokens
    answered up to three times (revisions), 'many' tokens answered twice (new feedback ids).
    Returns the expected rows by (feedback id, revision)."""
    expected: dict[tuple[str, int], dict[str, Any]] = {}
    i = 0
    while len(expected) < n:
        use = ("once", "update", "many")[i % 3]
        token = issue_token(client, feedback_key=f"key{i % 4}", use=use)
        times = {"once": 1, "update": 3, "many": 2}[use]
        for k in range(times):
            if len(expected) >= n:
                break
            body = BODIES[(i + k) % len(BODIES)]
            if use != "once" and k > 0:
                body = {**body, "comment": f"take {k}"}
            r = client.post(f"{TOKENS}/{token_of(token)}", json=body)
            assert r.status_code == 200 and r.json()["duplicate"] is False, r.text
            answer = r.json()
            expected[(answer["id"], answer.get("revision", 1))] = expected_row(answer, token, body)
        i += 1
    return expected


def as_record(row: dict[str, Any]) -> dict[str, Any]:
    """A delivered entry (JSONL line, webhook item or PostgreSQL row) in expected_row's shape."""
    return {
        "id": str(row["id"]),
        "revision": row["revision"],
        "token_id": str(row["token_id"]),
        "run_id": str(row["run_id"]),
        "feedback_key": row["feedback_key"],
        "score": row["score"],
        "value": row["value"],
        "comment": row["comment"],
        "correction": row["correction"],
        "metadata": row["metadata"],
        "created_at": moment(row["created_at"]),
    }


def read_jsonl(path: Path) -> list[dict[str, Any]]:
    if not path.exists():
        return []
    return [json.loads(line) for line in path.read_text().splitlines()]
