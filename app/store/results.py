"""What the store gives back: a token's use state, a peek at what a submission would do, a
stored token, the submit script's decision. Plain values; their meaning is the domain's."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field

from app.store import scripts


@dataclass(frozen=True, slots=True)
class UseState:
    """What a token's record says of its use (``L:u``), read without changing it."""

    uses: int = 0
    revoked: bool = False
    exhausted: bool = False  # it takes no new submission (the submit script decided, app/store/scripts.py)

    @classmethod
    def parse(cls, raw: bytes | None) -> UseState:
        if raw is None:
            return cls()
        flags, uses, _, _, _ = scripts.STATE.unpack(raw)
        return cls(uses=uses, revoked=bool(flags & scripts.REVOKED), exhausted=bool(flags & scripts.EXHAUSTED))


@dataclass(frozen=True, slots=True)
class Peek:
    """What the submit script would decide now (``PEEK``): ``verdict`` is ``revoked``, ``dup``
    (an identical submission was recorded: ``created_ms`` and ``attempt`` are its), ``used`` (no
    new submission is taken) or ``new``."""

    verdict: str
    uses: int
    created_ms: int = 0
    attempt: str | None = None


@dataclass(frozen=True, slots=True)
class StoredToken:
    """A token as a listing or a lookup finds it: its record and signature, or (issued before
    sharding) its JWT."""

    token_id: uuid.UUID
    record: bytes
    signature: bytes
    state: UseState = field(default_factory=UseState)
    jwt: str | None = None


@dataclass(frozen=True, slots=True)
class SubmitReply:
    """What the submit script decided: ``ok`` (recorded by this attempt), ``dup`` (an identical
    submission was recorded before), or one of ``used``, ``revoked``, ``expired``, ``conflict``."""

    status: str
    uses: int = 0
    created_ms: int = 0
    attempt: str | None = None  # ``dup``: the attempt that recorded it


class RunFull(Exception):
    """Issuing would put more live tokens in a run record than the cap allows."""

    def __init__(self, run_key: str, live: int) -> None:
        super().__init__(run_key)
        self.run_key, self.live = run_key, live
