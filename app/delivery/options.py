"""The deliverer's options: one dataclass, read by the loop (``consumer``), the reader (``reader``)
and the courier (``courier``). ``feedback-tokens deliver`` fills it from its flags (``runner``)."""

from __future__ import annotations

import socket
from dataclasses import dataclass, field


@dataclass
class Options:
    group: str
    consumer: str = field(default_factory=socket.gethostname)
    batch: int = 500
    max_failures: int = 5
    claim_idle: float = 60.0  # seconds an entry sits unacknowledged before another consumer takes it
    # Pause when the streams had nothing more than what was read: a caught-up deliverer reads
    # ~20 times a second (so entries wait at most this long) instead of spinning on tiny batches.
    poll: float = 0.05
    backoff: float = 0.5  # first retry delay; doubles per failed attempt, with jitter
    max_backoff: float = 30.0
    rediscover: float = 1.0
    recheck: float = 30.0
    trim_every: float = 1.0
    stats_every: float = 5.0
    grace: float = 10.0  # once asked to stop, how long the batch in hand may take to finish
