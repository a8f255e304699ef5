"""An ASGI app under uvicorn, in a process group of its own, on a free port."""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

import httpx

from procs.group import ProcessGroups, free_port

ROOT = Path(__file__).resolve().parent.parent


class Uvicorn:
    """``uvicorn TARGET`` on 127.0.0.1 and a free port, with ``env`` as its whole environment.

    ``start`` waits until ``/healthz`` answers: with ``healthy_status`` None any HTTP answer will
    do (a bare app may answer 404), otherwise exactly that status. Output goes to ``log`` (a
    temporary file, removed on ``stop``, unless one is given). ``procs.Granian`` is the same
    for granian (``server``: which one, also the start of the process group's description)."""

    server = "uvicorn"

    def __init__(
        self,
        target: str,
        env: Mapping[str, str],
        *,
        workers: int = 1,
        flags: Sequence[str] = ("--log-level", "warning"),
        groups: ProcessGroups | None = None,
        log: Path | None = None,
        healthy_status: int | None = 200,
        python: str = sys.executable,
        cwd: Path = ROOT,
    ) -> None:
        self.target = target
        self.workers = workers
        self.env = dict(env)
        self.groups = groups or ProcessGroups()
        self.port = free_port()
        self.own_log = log is None
        if log is None:
            fd, name = tempfile.mkstemp(prefix="fbt-uvicorn-", suffix=".log")
            os.close(fd)
            log = Path(name)
        self.log = log
        self.healthy_status = healthy_status
        self.cwd = cwd
        self.args = [
            python, "-m", self.server, target, "--host", "127.0.0.1", "--port", str(self.port),
            "--workers", str(workers), *flags,
        ]
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> str:
        """The command line with the interpreter, port and worker count generalised (for reports)."""
        args = [self.server, *self.args[3:]]
        args[args.index("--port") + 1] = "PORT"
        args[args.index("--workers") + 1] = "N"
        return " ".join(args)

    def start(self, timeout: float = 30.0) -> Uvicorn:
        with open(self.log, "ab") as out:
            self.proc = self.groups.popen(
                self.args, f"{self.server} {self.target}", env=self.env, cwd=self.cwd, stdout=out, stderr=out
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.server} {self.target} exited:\n{self.log_tail()}")
            try:
                status = httpx.get(self.url + "/healthz", timeout=1.0).status_code
                if self.healthy_status is None or status == self.healthy_status:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"{self.server} {self.target} did not answer within {timeout:g} s:\n{self.log_tail()}")

    def output(self) -> str:
        try:
            return self.log.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = 30) -> str:
        return "\n".join(self.output().splitlines()[-lines:]) or "(no output)"

    def stop(self) -> None:
        if self.proc is not None:
            self.groups.stop(self.proc)
            self.proc = None
        if self.own_log:
            self.log.unlink(missing_ok=True)
