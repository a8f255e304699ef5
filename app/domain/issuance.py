"""Issuance requests: ``POST /api/v1/feedback/tokens`` bodies, checked against
``shapes.ISSUANCE``, then against the clock and the settings (the shape's ``expiry-window`` and
``redirect-origin`` rules, which need them)."""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass
from typing import Any

from app.domain import policy, shapes
from app.domain.feedback import FeedbackConfig
from app.errors import InvalidRequest
from app.schema import Invalid

MAX_BATCH = shapes.MAX_BATCH
_SECONDS = {"days": 86400, "hours": 3600, "minutes": 60}
_UNITS = (("day", 86400), ("hour", 3600), ("minute", 60), ("second", 1))


def duration(seconds: int) -> str:
    """``2592000`` as "30 days": the largest unit that divides it exactly, as a person says it."""
    name, size = next((name, size) for name, size in _UNITS if seconds % size == 0)
    count = seconds // size
    return f"{count} {name}{'' if count == 1 else 's'}"


@dataclass(frozen=True, slots=True)
class TokenRequest:
    run_id: uuid.UUID
    feedback_key: str
    expires_at: int
    config: FeedbackConfig | None
    feedback_id: uuid.UUID | None
    use: policy.Use = "once"
    max_uses: int | None = None
    confirm: bool = False
    redirect_url: str | None = None


def _expiry(checked: dict[str, Any], now: float, default_ttl: int, max_ttl: int) -> int:
    at, expires_in = checked["expires_at"], checked["expires_in"]
    if at is not None:
        if at <= now:
            raise ValueError("expires_at is in the past")
        if at - now > max_ttl:
            raise ValueError(f"expires_at is more than {duration(max_ttl)} ahead (the maximum)")
        return math.floor(float(at))
    ttl = default_ttl if expires_in is None else sum((expires_in[n] or 0) * s for n, s in _SECONDS.items())
    if ttl > max_ttl:
        raise ValueError(f"expires_in is longer than the maximum of {duration(max_ttl)}")
    return math.floor(now) + ttl


def _request(
    checked: dict[str, Any], now: float, default_ttl: int, max_ttl: int, redirect_origins: frozenset[str]
) -> TokenRequest:
    config = checked["feedback_config"]
    return TokenRequest(
        checked["run_id"],
        checked["feedback_key"],
        _expiry(checked, now, default_ttl, max_ttl),
        None if config is None else FeedbackConfig.from_checked(config),
        checked["id"],
        use=checked["use"],
        max_uses=checked["max_uses"],
        confirm=checked["confirm"],
        redirect_url=policy.parse_redirect_url(checked["redirect_url"], redirect_origins),
    )


def parse(
    data: Any, now: float, default_ttl: int, max_ttl: int, redirect_origins: frozenset[str] = frozenset()
) -> tuple[list[TokenRequest], bool]:
    """Returns the requests and whether the body was a batch (then the answer is an array)."""
    batch = type(data) is list
    try:
        checked = shapes.ISSUANCE.check(data)
    except Invalid as err:
        raise InvalidRequest(err.describe("body")) from None
    requests = []
    for i, item in enumerate(checked if batch else [checked]):
        try:
            requests.append(_request(item, now, default_ttl, max_ttl, redirect_origins))
        except ValueError as err:
            raise InvalidRequest(f"[{i}]: {err}" if batch else str(err)) from err
    return requests, batch
