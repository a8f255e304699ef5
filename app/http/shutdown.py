"""Leaving a fleet without dropping anyone: drain, then stop.

On SIGTERM (or SIGINT) a node does not stop at once. For ``FEEDBACK_SHUTDOWN_DRAIN`` seconds it
keeps serving while ``/readyz`` answers 503 (load balancers take it out of rotation) and every
answer carries ``Connection: close`` (clients stop reusing their connections to it, so none is
closed under a request the client has just sent). Then the server's own shutdown runs: the
listener closes, requests under way finish and are answered, and the store sends what it has
queued before its connections close. A second signal stops at once.

The server's signal handler is wrapped in the app's lifespan, so this works the same under
``uvicorn app.main:app`` and ``feedback-tokens serve``, one worker or several.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
from collections.abc import Callable
from types import FrameType
from typing import Any

log = logging.getLogger("feedback_tokens")

SIGNALS = (signal.SIGTERM, signal.SIGINT)


class Drain:
    """The node's shutdown state, read on every answer (one attribute)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.draining = False
        self._restore: list[tuple[int, Any]] = []

    def install(self) -> None:
        """Wrap the handlers the server installed for SIGTERM/SIGINT (main thread only: under a
        test client there is no server and nothing to wrap)."""
        if threading.current_thread() is not threading.main_thread() or self.seconds <= 0:
            return
        loop = asyncio.get_running_loop()
        for sig in SIGNALS:
            previous = signal.getsignal(sig)
            if not callable(previous):
                continue
            self._restore.append((sig, previous))
            signal.signal(sig, self._handler(loop, previous))

    def uninstall(self) -> None:
        for sig, previous in self._restore:
            signal.signal(sig, previous)
        self._restore.clear()

    def _handler(
        self, loop: asyncio.AbstractEventLoop, previous: Callable[[int, FrameType | None], Any]
    ) -> Callable[[int, FrameType | None], None]:
        def handle(signum: int, frame: FrameType | None) -> None:
            if self.draining:  # a second signal: stop now
                previous(signum, frame)
                return
            self.draining = True
            log.info("signal %d: draining for %.1f s (not ready, Connection: close), then stopping",
                     signum, self.seconds)
            loop.call_soon_threadsafe(loop.call_later, self.seconds, previous, signum, frame)

        return handle
