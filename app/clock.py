"""The clock, injected so tests can freeze and advance time instead of sleeping."""

from __future__ import annotations

import time
from datetime import UTC, datetime


class Clock:
    def now(self) -> float:
        """Seconds since the epoch."""
        return time.time()

    def utcnow(self) -> datetime:
        return datetime.fromtimestamp(self.now(), UTC)


class FrozenClock(Clock):
    """A clock that moves only when told to."""

    def __init__(self, at: float | None = None) -> None:
        self.at = time.time() if at is None else at

    def now(self) -> float:
        return self.at

    def advance(self, seconds: float) -> None:
        self.at += seconds


def isoformat(ts: float) -> str:
    """ISO 8601 in UTC with a `Z`-free explicit offset, as clients parse it most easily."""
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="milliseconds")


_second: list[tuple[int, str]] = [(0, "")]


def iso_ms(ms: int) -> str:
    """``isoformat(ms / 1000)`` for a whole number of milliseconds since the epoch (what the
    submit path formats twice a request): the date and time of its second are kept for the next
    call in the same second. The same text: at today's times a double holds ``ms / 1000`` to
    within a quarter of a microsecond, so ``fromtimestamp`` rounds it back to ``ms`` exactly."""
    seconds, millis = divmod(ms, 1000)
    last_second, prefix = _second[0]
    if seconds != last_second or not prefix:
        prefix = datetime.fromtimestamp(seconds, UTC).isoformat(timespec="seconds")[:19]
        _second[0] = (seconds, prefix)
    return f"{prefix}.{millis:03d}+00:00"
