"""Issuance requests: parsing and checking ``POST /api/v1/feedback/tokens`` bodies."""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from app.domain import policy
from app.domain.feedback import FeedbackConfig
from app.errors import InvalidRequest

MAX_BATCH = 100
FIELDS = frozenset({"run_id", "feedback_key", "expires_in", "expires_at", "feedback_config", "id"})
# Ours, beyond LangSmith's (app/domain/policy.py): each optional, null meaning the default.
POLICY_FIELDS = frozenset({"use", "max_uses", "confirm", "redirect_url"})
_DELTA_FIELDS = {"days": 86400, "hours": 3600, "minutes": 60}
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


def _uuid(value: object, name: str) -> uuid.UUID:
    if isinstance(value, str):
        try:
            return uuid.UUID(value)
        except ValueError:
            pass
    raise ValueError(f"{name} must be a UUID")


def _feedback_key(value: object) -> str:
    if not isinstance(value, str) or not 1 <= len(value) <= 128:
        raise ValueError("feedback_key must be a string of 1 to 128 characters")
    if any(ord(c) < 32 or 127 <= ord(c) < 160 for c in value):
        raise ValueError("feedback_key may not contain control characters")
    return value


def _expires_in(value: object) -> int:
    if not isinstance(value, dict):
        raise ValueError("expires_in must be an object {days, hours, minutes}")
    unknown = sorted(set(value) - set(_DELTA_FIELDS))
    if unknown:
        raise ValueError(f"expires_in: unknown field(s) {', '.join(unknown)}")
    seconds = 0
    for name, unit in _DELTA_FIELDS.items():
        part = value.get(name)
        if part is None:
            continue
        if type(part) is not int or part < 0 or part > 10**6:
            raise ValueError(f"expires_in.{name} must be a whole number >= 0")
        seconds += part * unit
    if seconds == 0:
        raise ValueError(
            "expires_in is zero: give at least one minute (the LangSmith Python SDK sends a "
            "timedelta shorter than a minute, e.g. timedelta(seconds=30), as all zeros)"
        )
    return seconds


def _expires_at(value: object) -> float:
    if not isinstance(value, str) or len(value) > 64:
        raise ValueError("expires_at must be an ISO 8601 datetime")
    text = value.strip()
    if text.endswith(("Z", "z")):
        text = text[:-1] + "+00:00"
    try:
        when = datetime.fromisoformat(text)
    except ValueError as err:
        raise ValueError("expires_at must be an ISO 8601 datetime") from err
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)  # without an offset it means UTC
    return when.timestamp()


def parse_one(
    raw: object, now: float, default_ttl: int, max_ttl: int, redirect_origins: frozenset[str] = frozenset()
) -> TokenRequest:
    if not isinstance(raw, dict):
        raise ValueError("each token request must be an object")
    unknown = sorted(set(raw) - FIELDS - POLICY_FIELDS)
    if unknown:
        raise ValueError(f"unknown field(s): {', '.join(unknown)}")
    if raw.get("run_id") is None:
        raise ValueError("run_id is required")
    run_id = _uuid(raw["run_id"], "run_id")
    if raw.get("feedback_key") is None:
        raise ValueError("feedback_key is required")
    key = _feedback_key(raw["feedback_key"])
    expires_in, expires_at = raw.get("expires_in"), raw.get("expires_at")
    if expires_in is not None and expires_at is not None:
        raise ValueError("give expires_in or expires_at, not both")
    if expires_at is not None:
        at = _expires_at(expires_at)
        if at <= now:
            raise ValueError("expires_at is in the past")
        if at - now > max_ttl:
            raise ValueError(f"expires_at is more than {duration(max_ttl)} ahead (the maximum)")
        expiry = math.floor(at)
    else:
        ttl = default_ttl if expires_in is None else _expires_in(expires_in)
        if ttl > max_ttl:
            raise ValueError(f"expires_in is longer than the maximum of {duration(max_ttl)}")
        expiry = math.floor(now) + ttl
    config = None
    if raw.get("feedback_config") is not None:
        try:
            config = FeedbackConfig.parse(raw["feedback_config"])
        except ValueError as err:
            raise ValueError(f"feedback_config: {err}") from err
    feedback_id = None if raw.get("id") is None else _uuid(raw["id"], "id")
    use = policy.parse_use(raw.get("use"))
    if use == "many" and feedback_id is not None:
        raise ValueError("id can't be chosen with use 'many': each submission gets its own feedback id")
    return TokenRequest(
        run_id,
        key,
        expiry,
        config,
        feedback_id,
        use=use,
        max_uses=policy.parse_max_uses(raw.get("max_uses"), use),
        confirm=policy.parse_confirm(raw.get("confirm")),
        redirect_url=policy.parse_redirect_url(raw.get("redirect_url"), redirect_origins),
    )


def parse(
    data: Any, now: float, default_ttl: int, max_ttl: int, redirect_origins: frozenset[str] = frozenset()
) -> tuple[list[TokenRequest], bool]:
    """Returns the requests and whether the body was a batch (then the answer is an array)."""
    batch = isinstance(data, list)
    items = data if batch else [data]
    if batch and not 1 <= len(items) <= MAX_BATCH:
        raise InvalidRequest(f"a batch holds 1 to {MAX_BATCH} token requests")
    requests = []
    for i, item in enumerate(items):
        try:
            requests.append(parse_one(item, now, default_ttl, max_ttl, redirect_origins))
        except ValueError as err:
            raise InvalidRequest(f"[{i}]: {err}" if batch else str(err)) from err
    return requests, batch
