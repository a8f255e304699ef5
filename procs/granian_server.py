"""An ASGI app under granian, in a process group of its own, on a free port.

``Granian`` is ``Uvicorn`` (procs/uvicorn_server.py) with granian's command line: the same
start (``/healthz``), log file, stop (SIGTERM to the group) and description. Its default flags
are the settings ``feedback-tokens serve --server granian`` uses (app/serving.py): the ASGI
interface with the lifespan, uvloop, HTTP/1.1, no websockets. granian always runs a supervisor
and ``workers`` worker processes, all in the one group. ``LiveServer(..., server="granian")``
(procs/live_server.py) is the real app started by ``feedback-tokens serve --server granian``.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from procs.uvicorn_server import Uvicorn

# What app/serving.py passes to granian, as command-line flags.
SERVE_FLAGS = ("--interface", "asgi", "--loop", "uvloop", "--http", "1", "--no-ws")


class Granian(Uvicorn):
    """``granian --interface asgi TARGET`` on 127.0.0.1 and a free port (see ``Uvicorn``)."""

    server = "granian"

    def __init__(
        self,
        target: str,
        env: Mapping[str, str],
        *,
        flags: Sequence[str] = (*SERVE_FLAGS, "--log-level", "warning"),
        **kwargs: Any,
    ) -> None:
        super().__init__(target, env, flags=flags, **kwargs)

