"""The real app over HTTP for tests, under either server the service ships with."""

from __future__ import annotations

import contextlib
import os
import sys
from collections.abc import Mapping, Sequence

from procs.group import ProcessGroups
from procs.uvicorn_server import Uvicorn

SERVERS = ("uvicorn", "granian")  # app/serving.py's choices


class LiveServer(Uvicorn):
    """The real app (``app.main:app``), started at once, for tests: ``env`` is added to this
    process's environment, and the public URL is the server's own unless ``env`` says.

    ``server``: ``uvicorn`` (``uvicorn app.main:app``, one process per worker) or ``granian``
    (``feedback-tokens serve --server granian``, as users start it: a supervisor and its
    workers). ``prefix``: a command the server runs under (e.g. ``faketime -f -6s``); stopping
    signals the whole process group, since such a wrapper may fork and not pass signals on. The
    drain on SIGTERM (app/http/shutdown.py) is off unless ``env`` sets
    ``FEEDBACK_SHUTDOWN_DRAIN``, so stopping a server doesn't wait for it."""

    def __init__(
        self,
        env: Mapping[str, str],
        workers: int = 1,
        groups: ProcessGroups | None = None,
        prefix: Sequence[str] = (),
        server: str = "uvicorn",
    ) -> None:
        if server not in SERVERS:
            raise ValueError(f"server must be one of {', '.join(SERVERS)}, not {server!r}")
        super().__init__("app.main:app", {}, workers=workers, groups=groups)
        self.server = server
        if server == "granian":
            self.args = [
                sys.executable, "-m", "app.cli", "serve", "--server", "granian", "--host", "127.0.0.1",
                "--port", str(self.port), "--workers", str(workers),
            ]
        self.args = [*prefix, *self.args]
        self.env = {**os.environ, "FEEDBACK_PUBLIC_URL": self.url, "FEEDBACK_SHUTDOWN_DRAIN": "0", **env}
        self.start(timeout=20.0)

    def signal(self, sig: int) -> None:
        """Send ``sig`` to the server's process group (the server and any wrapper around it)."""
        if self.proc is not None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, sig)
