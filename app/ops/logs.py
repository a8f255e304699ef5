"""Logging: configured once per process, as JSON lines or as text, all on stderr.

``configure`` runs where the service is served (``uvicorn app.main:app``, ``feedback-tokens
serve`` and ``dev``), never in ``create_app``: tests and embedders keep their own logging.
It gives the root logger one handler, sends uvicorn's and granian's own lines through it, and
silences ``uvicorn.access`` and ``granian.access``: the access line is ours (``access_line``,
from ``app.ops.middleware``), one per request, with the route template instead of the path, so
no token, token id or query string (GET links carry comments) ever reaches it.

The standard library, not structlog: the service logs one access line per request and a few
others, so what matters is the cost of that line; a formatter over orjson writing a prebuilt
field dict costs about the same as structlog's fastest setup, with no dependency (the README's
libraries table has the figures).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import sys
import time
from typing import Any, BinaryIO, Protocol, TextIO

import orjson

from app.ops.context import CURRENT, Access

FORMATS = ("json", "text")
HANDLER_NAME = "feedback_tokens"
ACCESS = logging.getLogger("feedback_tokens.access")
_configured: tuple[str, bool] | None = None
_direct: _Direct | None = None


class _Timestamps:
    """ISO 8601 UTC with milliseconds: the seconds formatted once per second, the milliseconds
    taken from a table (formatting them was a fifth of an access line's cost)."""

    _MILLIS = tuple(f".{ms:03d}Z" for ms in range(1000))

    def __init__(self) -> None:
        self.second = -1
        self.prefix = ""

    def __call__(self, created: float) -> str:
        second = int(created)
        if second != self.second:
            self.second, self.prefix = second, time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
        return self.prefix + self._MILLIS[int((created - second) * 1000)]


class JsonFormatter(logging.Formatter):
    """One JSON object per line: ``time``, ``level``, ``logger``, ``msg``, the request id of the
    request being handled, ``exc`` with a traceback; access lines add their fields."""

    def __init__(self) -> None:
        super().__init__()
        self.timestamp = _Timestamps()

    def format(self, record: logging.LogRecord) -> str:
        fields = record.__dict__.get("access")
        if fields is not None:
            return self.access(record.created, *fields)
        line: dict[str, Any] = {
            "time": self.timestamp(record.created),
            "level": record.levelname.lower(),
            "logger": record.name,
            "msg": record.getMessage(),
        }
        access = CURRENT.get()
        if access is not None:
            line["request_id"] = access.request_id
        if record.exc_info:
            line["exc"] = self.formatException(record.exc_info)
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return orjson.dumps(line, default=str).decode()

    def _access(
        self, created: float, method: str, route: str, status: int, seconds: float, access: Access
    ) -> dict[str, Any]:
        line = {
            "time": self.timestamp(created),
            "level": "info",
            "logger": ACCESS.name,
            "msg": f"{method} {route} {status}",
            "request_id": access.request_id,
            "method": method,
            "route": route,
            "status": status,
            "duration_ms": int(seconds * 1_000_000) / 1000,
            "token_id": access.token_id,  # a UUID: orjson writes it as its string
            "problem": access.problem,
        }
        if access.outcome is not None:
            line["outcome"] = access.outcome
        return line

    def access(self, created: float, method: str, route: str, status: int, seconds: float, access: Access) -> str:
        return orjson.dumps(self._access(created, method, route, status, seconds, access)).decode()

    def access_bytes(
        self, created: float, method: str, route: str, status: int, seconds: float, access: Access
    ) -> bytes:
        line = self._access(created, method, route, status, seconds, access)
        return orjson.dumps(line, option=orjson.OPT_APPEND_NEWLINE)


class TextFormatter(logging.Formatter):
    """``time LEVEL logger [request id] message``; access lines add ``key=value`` fields."""

    def __init__(self) -> None:
        super().__init__()
        self.timestamp = _Timestamps()

    def format(self, record: logging.LogRecord) -> str:
        fields = record.__dict__.get("access")
        if fields is not None:
            return self.access(record.created, *fields)
        access = CURRENT.get()
        rid = access.request_id if access is not None else "-"
        text = f"{self.timestamp(record.created)} {record.levelname:<7} {record.name} [{rid}] {record.getMessage()}"
        if record.exc_info:
            text += "\n" + self.formatException(record.exc_info)
        if record.stack_info:
            text += "\n" + self.formatStack(record.stack_info)
        return text

    def access(self, created: float, method: str, route: str, status: int, seconds: float, access: Access) -> str:
        text = (
            f"{self.timestamp(created)} INFO    {ACCESS.name} [{access.request_id}] "
            f"{method} {route} {status} {seconds * 1000:.1f}ms"
        )
        for name in ("token_id", "outcome", "problem"):
            value = getattr(access, name)
            if value is not None:
                text += f" {name}={value}"
        return text

    def access_bytes(
        self, created: float, method: str, route: str, status: int, seconds: float, access: Access
    ) -> bytes:
        text = self.access(created, method, route, status, seconds, access) + "\n"
        return text.encode("utf-8", "backslashreplace")


class _Formatter(Protocol):
    def access_bytes(
        self, created: float, method: str, route: str, status: int, seconds: float, access: Access
    ) -> bytes: ...


class _Direct:
    """Access lines into a buffer of our own over the handler's file, written out when it fills
    (64 KiB) or within ``FLUSH_AFTER`` seconds, rather than one write per request.

    What the handler would write, without building a LogRecord (with its caller lookup) and
    walking the handler chain, and without a system call per request: stderr is unbuffered
    underneath (``sys.stderr.buffer`` is the raw file), and a write costs tens of microseconds
    on a busy VM, more than everything else the middleware does. Lines stay in order: our
    handler writes this buffer out before each line of its own. What a killed process had not
    written (at most ``FLUSH_AFTER`` seconds of access lines) is lost; ``flush`` at shutdown
    writes the rest."""

    FLUSH_AFTER = 0.1
    BUFFER = 64 * 1024

    def __init__(self, handler: logging.StreamHandler[TextIO], formatter: _Formatter) -> None:
        self.handler = handler
        self.formatter = formatter
        self.out: BinaryIO | None
        try:
            self.out = open(handler.stream.fileno(), "wb", buffering=self.BUFFER, closefd=False)
        except (AttributeError, OSError, ValueError):  # not a file (a test's StringIO): write through
            self.out = None
        self.scheduled = False

    def __call__(self, method: str, route: str, status: int, seconds: float, access: Access) -> None:
        line = self.formatter.access_bytes(time.time(), method, route, status, seconds, access)
        handler = self.handler
        with handler.lock:  # type: ignore[union-attr]
            if self.out is None:
                handler.stream.write(line.decode())
                handler.stream.flush()
                return
            self.out.write(line)
        if not self.scheduled:
            try:
                asyncio.get_running_loop().call_later(self.FLUSH_AFTER, self.flush)
                self.scheduled = True
            except RuntimeError:  # no event loop here: write it now
                self.flush()

    def flush(self) -> None:
        self.scheduled = False
        if self.out is not None:
            with self.handler.lock:  # type: ignore[union-attr]
                with contextlib.suppress(OSError, ValueError):
                    self.out.flush()


class _Handler(logging.StreamHandler):  # type: ignore[type-arg]
    """stderr, after whatever access lines are still buffered, so lines keep their order."""

    direct: _Direct | None = None

    def emit(self, record: logging.LogRecord) -> None:
        if self.direct is not None:
            self.direct.flush()
        super().emit(record)


def flush() -> None:
    """Write out access lines still buffered (at shutdown)."""
    if _direct is not None:
        _direct.flush()


def configure(fmt: str = "json", access_log: bool = True) -> None:
    """Set up the process's logging; calling it again with the same arguments does nothing."""
    global _configured, _direct
    if fmt not in FORMATS:
        raise ValueError(f"log format must be one of {', '.join(FORMATS)}, not {fmt!r}")
    if _configured == (fmt, access_log):
        return
    handler = _Handler(sys.stderr)
    handler.set_name(HANDLER_NAME)
    formatter = JsonFormatter() if fmt == "json" else TextFormatter()
    handler.setFormatter(formatter)
    root = logging.getLogger()
    for old in root.handlers[:]:
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(logging.WARNING)  # libraries: warnings and worse (httpx logs every request at INFO)
    logging.getLogger("feedback_tokens").setLevel(logging.INFO)
    ACCESS.setLevel(logging.INFO if access_log else logging.CRITICAL + 1)
    for name in ("uvicorn", "uvicorn.error", "_granian"):
        logger = logging.getLogger(name)
        logger.handlers.clear()
        logger.propagate = True
    if logging.getLogger("uvicorn").level == logging.NOTSET:
        logging.getLogger("uvicorn").setLevel(logging.INFO)
    # No handler and no propagation: uvicorn then skips its access log entirely (it checks
    # hasHandlers() per connection), so a request is logged once, by us.
    uvicorn_access = logging.getLogger("uvicorn.access")
    uvicorn_access.handlers.clear()
    uvicorn_access.propagate = False
    granian_access = logging.getLogger("granian.access")  # granian's, should it be turned on
    granian_access.handlers.clear()
    granian_access.propagate = False
    # Fields no formatter here prints; not computing them makes every record cheaper.
    logging.logThreads = False
    logging.logMultiprocessing = False
    _configured = (fmt, access_log)
    _direct = handler.direct = _Direct(handler, formatter)


def access_line(method: str, route: str, status: int, seconds: float, access: Access) -> None:
    """The request's one access line (the caller checked ``ACCESS.isEnabledFor(INFO)``). Where
    ``configure`` set up logging, written directly; elsewhere (tests, an embedding app with its
    own logging) a record like any other, carrying the fields for our formatters."""
    direct = _direct
    if direct is not None:
        try:
            direct(method, route, status, seconds, access)
            return
        except Exception:  # a closed or broken stream: let logging's own error handling see it
            pass
    record = logging.LogRecord(ACCESS.name, logging.INFO, __file__, 0, "%s %s %d", (method, route, status), None)
    record.__dict__["access"] = (method, route, status, seconds, access)
    ACCESS.handle(record)
