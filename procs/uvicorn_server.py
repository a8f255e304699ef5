"""An ASGI app under uvicorn, in a process group of its own, on a free port."""

from __future__ import annotations

import contextlib
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
    temporary file, removed on ``stop``, unless one is given)."""

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
            python, "-m", "uvicorn", target, "--host", "127.0.0.1", "--port", str(self.port),
            "--workers", str(workers), *flags,
        ]
        self.proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def command(self) -> str:
        """The command line with the interpreter, port and worker count generalised (for reports)."""
        args = ["uvicorn", *self.args[3:]]
        args[args.index("--port") + 1] = "PORT"
        args[args.index("--workers") + 1] = "N"
        return " ".join(args)

    def start(self, timeout: float = 30.0) -> Uvicorn:
        with open(self.log, "ab") as out:
            self.proc = self.groups.popen(
                self.args, f"uvicorn {self.target}", env=self.env, cwd=self.cwd, stdout=out, stderr=out
            )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"uvicorn {self.target} exited:\n{self.log_tail()}")
            try:
                status = httpx.get(self.url + "/healthz", timeout=1.0).status_code
                if self.healthy_status is None or status == self.healthy_status:
                    return self
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"uvicorn {self.target} did not answer within {timeout:g} s:\n{self.log_tail()}")

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


class LiveServer(Uvicorn):
    """The real app (``app.main:app``) under uvicorn, started at once, for tests: ``env`` is added
    to this process's environment, and the public URL is the server's own unless ``env`` says.

    ``prefix``: a command the server runs under (e.g. ``faketime -f -6s``); stopping signals the
    whole process group, since such a wrapper may fork and not pass signals on. The drain on
    SIGTERM (app/http/shutdown.py) is off unless ``env`` sets ``FEEDBACK_SHUTDOWN_DRAIN``, so
    stopping a server doesn't wait for it."""

    def __init__(
        self,
        env: Mapping[str, str],
        workers: int = 1,
        groups: ProcessGroups | None = None,
        prefix: Sequence[str] = (),
    ) -> None:
        super().__init__("app.main:app", {}, workers=workers, groups=groups)
        self.args = [*prefix, *self.args]
        self.env = {**os.environ, "FEEDBACK_PUBLIC_URL": self.url, "FEEDBACK_SHUTDOWN_DRAIN": "0", **env}
        self.start(timeout=20.0)

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the server's process group (the server and any wrapper around it)."""
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)
