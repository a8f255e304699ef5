"""How ``feedback-tokens serve`` runs the app: under uvicorn (the default) or granian.

Both serve ``app.main:app`` (built in each worker from the environment, which configures that
worker's logging) with its lifespan: start-up connects Redis and loads the keys, shutdown drains
(``app/http/shutdown.py``) and closes the store. Neither writes an access log of its own: the app
writes one line per request. Their own lines go through the app's logging (JSON or text).

- **uvicorn** (uvloop, httptools): one process with ``--workers 1``, else a supervisor and N
  worker processes. ``proxy_headers`` is on (``X-Forwarded-*`` from ``FORWARDED_ALLOW_IPS``,
  127.0.0.1 by default); the app reads neither the client address nor the scheme.
- **granian** (``pip install 'feedback-tokens[granian]'``): a Rust HTTP server; its ASGI
  interface with the lifespan, HTTP/1.1, uvloop, one Python thread per worker. Always a
  supervisor and N worker processes (also with ``--workers 1``): the supervisor passes SIGTERM
  and SIGINT on to the workers and waits for them, so the drain works the same.
"""

from __future__ import annotations

from typing import Any

SERVERS = ("uvicorn", "granian")
TARGET = "app.main:app"

# granian's own loggers: "_granian" (its lines, the Rust side's too) goes to the root logger,
# which app.ops.logs configures; "granian.access" stays silent (the app writes access lines).
GRANIAN_LOGGING: dict[str, Any] = {
    "version": 1,
    "disable_existing_loggers": False,
    "formatters": {},
    "handlers": {},
    "loggers": {
        "_granian": {"handlers": [], "propagate": True},
        "granian.access": {"handlers": [], "propagate": False},
    },
}


class ServerMissing(RuntimeError):
    """The chosen server is not installed."""


def run(server: str, host: str, port: int, workers: int) -> None:
    """Serve the app on ``host:port`` with ``workers`` processes until a stop signal."""
    if server == "granian":
        _granian(host, port, workers)
    elif server == "uvicorn":
        _uvicorn(host, port, workers)
    else:
        raise ValueError(f"server must be one of {', '.join(SERVERS)}, not {server!r}")


def _uvicorn(host: str, port: int, workers: int) -> None:
    import uvicorn

    uvicorn.run(
        TARGET,
        host=host,
        port=port,
        workers=workers,
        proxy_headers=True,
        log_level="info",
        log_config=None,  # ours (app.ops.logs), in this process and in each worker
        access_log=False,  # the app writes one access line per request itself
    )


def _granian(host: str, port: int, workers: int) -> None:
    try:
        from granian import Granian
        from granian.constants import HTTPModes, Interfaces, Loops
        from granian.log import LogLevels
    except ImportError as err:
        raise ServerMissing(
            "granian is not installed: pip install 'feedback-tokens[granian]' (or choose --server uvicorn)"
        ) from err

    Granian(
        TARGET,
        address=host,
        port=port,
        interface=Interfaces.ASGI,  # with the lifespan (ASGINL would skip it)
        workers=workers,
        loop=Loops.uvloop,
        http=HTTPModes.http1,
        websockets=False,
        log_level=LogLevels.info,
        log_dictconfig=GRANIAN_LOGGING,
        log_access=False,
        respawn_failed_workers=True,  # as uvicorn's supervisor does
    ).serve()
