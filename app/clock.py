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
