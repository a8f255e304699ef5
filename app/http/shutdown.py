"""Leaving a fleet without dropping anyone: drain, then stop.

On SIGTERM (or SIGINT) a node does not stop at once. For ``FEEDBACK_SHUTDOWN_DRAIN`` seconds it
keeps serving while ``/readyz`` answers 503 (load balancers take it out of rotation) and every
answer carries ``Connection: close`` (clients stop reusing their connections to it, so none is
closed under a request the client has just sent). Then the server's own shutdown runs: the
listener closes, requests under way finish and are answered, and the store sends what it has
queued before its connections close. A second signal stops at once.

The server's signal handling is wrapped in the app's lifespan, so this works the same under
``uvicorn app.main:app``, ``granian --interface asgi app.main:app`` and ``feedback-tokens serve``,
one worker or several. Servers hear signals one of two ways, and the drain holds back either:

- a Python handler (``signal.signal``; uvicorn): wrapped; the server's handler is called once
  the drain is over;
- the event loop (``loop.add_signal_handler``; granian's workers): the loop learns of a signal
  from the byte the C-level handler writes to its wakeup fd, whatever Python handler is
  installed, so wrapping that handler holds nothing back. Instead the main thread blocks the
  signals (threads started later, such as the server's, inherit the mask), a thread of the
  drain takes them with ``sigtimedwait``, and once the drain is over the main thread unblocks
  them and raises the signal again, which the loop then hears as usual. That needs the signal
  blocked in every thread that exists when the lifespan starts, which in a granian worker is
  the main thread alone; a process-directed signal going to an older thread would reach the
  loop at once, undrained (as without the drain). A process started meanwhile would inherit
  the blocked mask too; the service starts none.

A worker under a supervisor often gets a signal twice: from the terminal or a ``kill`` of the
process group, and again from the supervisor passing it on. A repeat within ``SAME_SIGNAL``
seconds of the first is taken as the same one; a later one stops at once.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import threading
import time
from collections.abc import Callable
from types import FrameType
from typing import Any

log = logging.getLogger("feedback_tokens")

SIGNALS = (signal.SIGTERM, signal.SIGINT)
SAME_SIGNAL = 1.0  # seconds


def _loop_owned(handler: Any, loop: asyncio.AbstractEventLoop) -> bool:
    """Whether ``handler`` is the Python-level stub of an event loop that dispatches the signal
    itself (asyncio's module-level no-op, or a method of the loop: uvloop's)."""
    return getattr(handler, "__self__", None) is loop or (
        getattr(handler, "__name__", "") == "_sighandler_noop" and handler.__module__.startswith("asyncio")
    )


class Drain:
    """The node's shutdown state, read on every answer (one attribute)."""

    def __init__(self, seconds: float) -> None:
        self.seconds = seconds
        self.draining = False
        self._since = 0.0
        self._restore: list[tuple[int, Any]] = []
        self._blocked: set[int] = set()
        self._waiter: threading.Thread | None = None
        self._stop = threading.Event()
        self._loop: asyncio.AbstractEventLoop | None = None

    def install(self) -> None:
        """Take over the server's SIGTERM/SIGINT handling (main thread only: under a test client
        there is no server and nothing to wrap)."""
        if threading.current_thread() is not threading.main_thread() or self.seconds <= 0:
            return
        loop = self._loop = asyncio.get_running_loop()
        for sig in SIGNALS:
            previous = signal.getsignal(sig)
            if not callable(previous):
                continue
            if _loop_owned(previous, loop):
                self._blocked.add(sig)
            else:
                self._restore.append((sig, previous))
                signal.signal(sig, self._handler(loop, previous))
        if self._blocked:
            signal.pthread_sigmask(signal.SIG_BLOCK, self._blocked)
            self._stop.clear()
            self._waiter = threading.Thread(target=self._wait, name="feedback-tokens-drain", daemon=True)
            self._waiter.start()

    def uninstall(self) -> None:
        for sig, previous in self._restore:
            signal.signal(sig, previous)
        self._restore.clear()
        if self._waiter is not None:
            self._stop.set()
            self._waiter.join(timeout=1.0)
            self._waiter = None
        if self._blocked:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, self._blocked)
            self._blocked.clear()

    def _begin(self, signum: int, stop: Callable[[int], Any]) -> None:
        """On the loop: start the drain and ``stop(signum)`` after it; a later second signal stops now."""
        assert self._loop is not None
        now = time.monotonic()
        if self.draining:
            if now - self._since >= SAME_SIGNAL:  # a second signal: stop now
                stop(signum)
            return
        self.draining, self._since = True, now
        log.info("signal %d: draining for %.1f s (not ready, Connection: close), then stopping",
                 signum, self.seconds)
        self._loop.call_later(self.seconds, stop, signum)

    # -- a Python handler (uvicorn) ---------------------------------------------------------------

    def _handler(
        self, loop: asyncio.AbstractEventLoop, previous: Callable[[int, FrameType | None], Any]
    ) -> Callable[[int, FrameType | None], None]:
        def stop(signum: int) -> None:
            previous(signum, None)

        def handle(signum: int, frame: FrameType | None) -> None:
            loop.call_soon_threadsafe(self._begin, signum, stop)

        return handle

    # -- the loop's own handler (granian) -----------------------------------------------------------

    def _wait(self) -> None:
        """A thread with the signals blocked (inherited): take each as it comes."""
        while not self._stop.is_set():
            got = signal.sigtimedwait(self._blocked, 0.1)
            if got is not None and self._loop is not None:
                self._loop.call_soon_threadsafe(self._begin, got.si_signo, self._raise)

    def _raise(self, signum: int) -> None:
        """On the loop (the main thread): let the signals through and raise this one again."""
        if self._blocked:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, self._blocked)
        signal.raise_signal(signum)
