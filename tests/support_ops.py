"""Helpers for the observability tests (tests/test_ops_*.py): reading the exposition format,
telling uvicorn workers apart, and serving the app with its log kept for reading.

- ``samples(text)``: every sample of a ``/metrics`` answer, parsed by prometheus_client's own
  parser, as ``{(name, ((label, value), ...)): value}``.
- ``worker_of(response)``: which process answered, from the prefix of the request id it made.
- ``Served``: ``feedback-tokens ...`` or ``uvicorn ...`` as a subprocess on a free port, its
  stderr kept in a file (``lines()``), stopped by SIGTERM like a supervisor would be;
  ``servers()`` is the body of the ``served`` fixture of the modules that use it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import httpx
from conftest import ROOT, free_port
from prometheus_client.parser import text_string_to_metric_families

Sample = tuple[str, tuple[tuple[str, str], ...]]


def samples(text: str) -> dict[Sample, float]:
    out: dict[Sample, float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def by_label(found: dict[Sample, float], name: str, label: str) -> dict[str, float]:
    """One metric's samples keyed by one label's value (the metric has no other label)."""
    return {dict(labels)[label]: value for (n, labels), value in found.items() if n == name}


def worker_of(response: httpx.Response) -> str:
    """The answering process: generated request ids are ``<per-process prefix>-<counter>``."""
    return response.headers["x-request-id"].rsplit("-", 1)[0]


def wait_until(condition: Callable[[], bool], what: str, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.05)


class Served:
    """A server command with ``{port}`` in its arguments, on a free port, stderr kept."""

    def __init__(self, args: list[str], env: dict[str, str]) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        fd, self.log_path = tempfile.mkstemp(prefix="fbt-ops-", suffix=".log")
        with os.fdopen(fd, "wb") as log:
            self.proc = subprocess.Popen(
                [a.format(port=self.port) for a in args],
                cwd=ROOT, env={**os.environ, "FEEDBACK_PUBLIC_URL": self.url, **env},
                stdout=log, stderr=subprocess.STDOUT,
            )
        deadline = time.monotonic() + 30
        while True:
            assert self.proc.poll() is None, f"exited with {self.proc.returncode}:\n{self.output()}"
            assert time.monotonic() < deadline, f"did not answer within 30 s:\n{self.output()}"
            try:
                if httpx.get(f"{self.url}/healthz", timeout=1).status_code == 200:
                    return
            except httpx.HTTPError:
                time.sleep(0.05)

    def output(self) -> str:
        return Path(self.log_path).read_text()

    def lines(self) -> list[str]:
        return [line for line in self.output().splitlines() if line.strip()]

    def stop(self) -> str:
        """SIGTERM, wait, and return everything it wrote."""
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.output()


def servers() -> Iterator[Callable[..., Served]]:
    """The body of a ``served`` fixture: start servers, stop them all afterwards."""
    started: list[Served] = []

    def start(args: list[str], env: dict[str, str]) -> Served:
        server = Served(args, env)
        started.append(server)
        return server

    yield start
    for server in started:
        server.stop()
        os.unlink(server.log_path)


def uvicorn_args(workers: int = 1) -> list[str]:
    return [sys.executable, "-m", "uvicorn", "app.main:app", "--host", "127.0.0.1", "--port", "{port}",
            "--workers", str(workers)]


def cli_args(*args: str) -> list[str]:
    return [sys.executable, "-m", "app.cli", *args]
