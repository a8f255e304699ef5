"""What the service takes and gives besides tokens: references to a token as URLs name it, the
outcome of a submission, the steps of following a link, and the small rules of identity that a
submission carries (its attempt, its Idempotency-Key, the feedback id under 'many')."""

from __future__ import annotations

import base64
import hashlib
import json
import uuid
from dataclasses import dataclass
from typing import Any, Literal

from app.domain import shapes
from app.domain.feedback import Submission
from app.domain.tokens import TokenClaims
from app.errors import InvalidRequest, TokenInvalid
from app.schema import Invalid


@dataclass(frozen=True, slots=True)
class Outcome:
    """A recorded submission: the answer, and whether an identical one was recorded before."""

    answer: dict[str, Any]
    duplicate: bool
    uses: int = 1


@dataclass(frozen=True, slots=True)
class TokenRef:
    """A token as a URL names it: ``<jwt>/<token id>`` (both), ``<jwt>`` alone (URLs issued before
    they ended in the id), or ``<token id>`` alone (the LangSmith SDK's way: looked up)."""

    jwt: str | None
    token_id: uuid.UUID | None

    @classmethod
    def parse(cls, segment: str, id_segment: str | None = None) -> TokenRef:
        if id_segment is not None:
            tid = as_uuid(id_segment)
            if tid is None:
                raise TokenInvalid("the last segment of a token URL must be the token id")
            return cls(segment, tid)
        tid = as_uuid(segment)
        return cls(None, tid) if tid is not None else cls(segment, None)


@dataclass(frozen=True, slots=True)
class LinkStep:
    """Where following a link leads (a GET, a HEAD, or the form POST of a page), decided once
    here; endpoints only render it:

    choose        a browser's visit to a link without an answer: the page of choices
    confirm       a token issued with ``confirm``: the confirmation page (or its JSON), nothing recorded
    would_record  HEAD where GET would record: GET's status, nothing recorded
    recorded      recorded now, or found recorded before (``outcome.duplicate``)

    ``redirect_url`` is where a browser goes after success, when the operator allows its origin
    (checked now, so removing an origin from the settings takes effect at once)."""

    kind: Literal["choose", "confirm", "would_record", "recorded"]
    claims: TokenClaims
    outcome: Outcome | None = None
    submission: Submission | None = None
    redirect_url: str | None = None


LinkMode = Literal["get", "head", "post"]


def as_uuid(text: str) -> uuid.UUID | None:
    """A token id in the path (36 characters with dashes, or 32 hex digits), else None."""
    if len(text) not in (32, 36):
        return None
    try:
        return uuid.UUID(text)
    except ValueError:
        return None


def encode_field(value: Any) -> str:
    """Stream fields: plain strings as they are, everything else JSON, absent as ''."""
    if value is None:
        return ""
    if isinstance(value, str):
        return value
    kind = type(value)
    if kind is int or kind is float:
        return repr(value)  # what json.dumps writes for them (it refuses NaN / infinities earlier)
    return _FIELD(value)


_FIELD = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode


def idempotency_hash(key: str) -> str:
    """What the store keeps of an Idempotency-Key: 16 characters of its SHA-256."""
    return base64.urlsafe_b64encode(hashlib.sha256(key.encode()).digest()[:12]).decode("ascii")


def parse_idempotency_key(raw: str | None) -> str | None:
    """The header's key (``shapes.IDEMPOTENCY_KEY``), its structured-field quotes taken off (the
    IETF draft sends it as a string)."""
    if raw is None:
        return None
    key = raw.strip()
    if len(key) >= 2 and key[0] == key[-1] == '"':
        key = key[1:-1]
    try:
        shapes.IDEMPOTENCY_KEY.check(key)
    except Invalid as err:
        raise InvalidRequest(err.describe("Idempotency-Key")) from None
    if not key.isascii():
        raise InvalidRequest(f"Idempotency-Key must be 1 to {shapes.IDEMPOTENCY_KEY_CAP} visible ASCII characters")
    return key


def many_feedback_id(token_id: uuid.UUID, attempt: str) -> uuid.UUID:
    """Under 'many' each submission is a feedback of its own; its id follows from the attempt
    that recorded it, so a retry of that attempt is answered with the same id."""
    return uuid.uuid5(token_id, attempt)
