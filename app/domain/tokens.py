"""Feedback tokens: compact JWS/JWT, signed by the keyring's active key.

Verification runs in three separate steps, cheapest first, so garbage costs microseconds and
never reaches signature work:

1. ``parse``     shape only: length cap, three base64url segments, a header holding exactly
                 the members we issue (``alg``, ``kid``, ``typ``) with our ``typ``.
2. signature     the key is looked up by ``kid`` (an opaque dictionary key, never a path) and
                 the algorithm is the *key's*: a header whose ``alg`` differs is refused.
                 ``jku``/``x5u``/``jwk``/``crit`` never get this far.
3. claims        issuer, expiry and issued-at with a small leeway, then our own claims.

Claim names are short because the token travels in URLs; UUIDs are carried as 22 base64url
characters (their 16 bytes) rather than 36.
"""

from __future__ import annotations

import base64
import binascii
import json
import re
import uuid
from dataclasses import dataclass
from typing import Any

import orjson

from app.clock import isoformat
from app.domain.feedback import FeedbackConfig
from app.domain.policy import Use
from app.encoding import beyond_64_bits
from app.errors import TokenExpired, TokenInvalid
from app.keys.key import Key
from app.keys.keyring import Keyring

TOKEN_TYPE = "fbt+jwt"
MAX_TOKEN_LENGTH = 2000
_HEADER_MEMBERS = frozenset({"alg", "kid", "typ"})
_SHAPE = re.compile(r"[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+\.[A-Za-z0-9_-]+={0,2}")
_KID = re.compile(r"[A-Za-z0-9_-]{1,64}")


def b64encode(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def b64decode(segment: str) -> bytes:
    """``base64.urlsafe_b64decode`` of the segment, its padding restored (the same steps, with
    fewer calls: it runs four times per submission). Non-ASCII text raises a ValueError."""
    raw = segment.encode("ascii").rstrip(b"=")
    return binascii.a2b_base64(raw.translate(_FROM_URLSAFE) + b"=" * (-len(raw) % 4))


_FROM_URLSAFE = bytes.maketrans(b"-_", b"+/")


def uuid_to_claim(value: uuid.UUID) -> str:
    return b64encode(value.bytes)


def uuid_from_claim(value: object) -> uuid.UUID:
    if not isinstance(value, str) or len(value) != 22:
        raise ValueError("not a compact UUID")
    return uuid_from_bytes(b64decode(value))


_new, _set, _UUID, _UNKNOWN = object.__new__, object.__setattr__, uuid.UUID, uuid.SafeUUID.unknown


def uuid_from_bytes(raw: bytes) -> uuid.UUID:
    """``uuid.UUID(bytes=raw)`` without its argument checks (a third of the time, on the submit
    path): what ``UUID.__init__`` stores for 16 bytes, set the way it sets them."""
    if len(raw) != 16:
        raise ValueError("bytes is not a 16-char string")
    value = _new(_UUID)
    _set(value, "int", int.from_bytes(raw, "big"))
    _set(value, "is_safe", _UNKNOWN)
    return value


_USE_CLAIMS: dict[Use, str] = {"update": "u", "many": "m"}
_USE_FROM_CLAIM: dict[object, Use] = {"u": "update", "m": "many"}


def dumps_compact(obj: Any) -> bytes:
    """The one serialisation of token headers and payloads: the stored records rebuild tokens
    with it byte for byte (app/domain/records.py), so it must never change for a given input."""
    return json.dumps(obj, separators=(",", ":"), ensure_ascii=False).encode()


def use_from_claim(raw: object) -> Use:
    if raw is None:
        return "once"
    return _USE_FROM_CLAIM[raw]


@dataclass(frozen=True, slots=True)
class TokenClaims:
    token_id: uuid.UUID
    run_id: uuid.UUID
    feedback_key: str
    feedback_id: uuid.UUID
    issued_at: int
    expires_at: int
    config: FeedbackConfig | None = None
    # Use policy and link behaviour (app/domain/policy.py); each claim is omitted at its default, so a
    # default token is no longer than before.
    use: Use = "once"
    max_uses: int | None = None
    confirm: bool = False
    redirect_url: str | None = None

    def to_payload(self, issuer: str) -> dict[str, Any]:
        payload: dict[str, Any] = {
            "jti": uuid_to_claim(self.token_id),
            "iss": issuer,
            "iat": self.issued_at,
            "exp": self.expires_at,
            "run": uuid_to_claim(self.run_id),
            "key": self.feedback_key,
        }
        if self.feedback_id != self.token_id:
            payload["fid"] = uuid_to_claim(self.feedback_id)
        if self.config is not None:
            payload["cfg"] = self.config.to_claim()
        if self.use != "once":
            payload["use"] = _USE_CLAIMS[self.use]
        if self.max_uses is not None:
            payload["cap"] = self.max_uses
        if self.confirm:
            payload["cf"] = 1
        if self.redirect_url is not None:
            payload["rd"] = self.redirect_url
        return payload

    @classmethod
    def from_payload(cls, payload: dict[str, Any]) -> TokenClaims:
        token_id = uuid_from_claim(payload["jti"])
        key = payload["key"]
        iat, exp = payload["iat"], payload["exp"]
        if not isinstance(key, str) or type(iat) is not int or type(exp) is not int:
            raise ValueError("malformed claims")
        cfg = payload.get("cfg")
        use = use_from_claim(payload.get("use"))
        cap, confirm, redirect = payload.get("cap"), payload.get("cf", 0), payload.get("rd")
        if cap is not None and (type(cap) is not int or cap < 1 or use != "many"):
            raise ValueError("malformed cap claim")
        if confirm not in (0, 1) or type(confirm) is not int:
            raise ValueError("malformed cf claim")
        if redirect is not None and not isinstance(redirect, str):
            raise ValueError("malformed rd claim")
        return cls(
            token_id=token_id,
            run_id=uuid_from_claim(payload["run"]),
            feedback_key=key,
            feedback_id=uuid_from_claim(payload["fid"]) if "fid" in payload else token_id,
            issued_at=iat,
            expires_at=exp,
            config=FeedbackConfig.from_claim(cfg) if cfg is not None else None,
            use=use,
            max_uses=cap,
            confirm=confirm == 1,
            redirect_url=redirect,
        )


def sign(claims: TokenClaims, key: Key, issuer: str) -> str:
    header = {"alg": key.alg, "kid": key.kid, "typ": TOKEN_TYPE}
    signing_input = f"{b64encode(dumps_compact(header))}.{b64encode(dumps_compact(claims.to_payload(issuer)))}"
    signature = key.sign(signing_input.encode("ascii"))
    return f"{signing_input}.{b64encode(signature)}"


@dataclass(frozen=True, slots=True)
class ParsedToken:
    """A token that has the right shape; nothing about it is trusted yet."""

    alg: str
    kid: str
    signing_input: bytes
    payload_segment: str
    signature_segment: str


# Header segments that parsed, exactly as they were sent: every token one key signs carries the
# same header, so the submit path decodes it once per key. Only headers that passed every check
# get in, and at most this many: a full cache starts over, so made-up headers (say, with unknown
# kids) cost what they would without it and can't grow it.
_HEADER_CACHE_SIZE = 64
_headers: dict[str, tuple[str, str]] = {}


def _parse_header(header_segment: str) -> tuple[str, str]:
    try:
        header = json.loads(b64decode(header_segment))
    except (ValueError, binascii.Error) as err:
        raise TokenInvalid("malformed token header") from err
    if not isinstance(header, dict) or header.keys() != _HEADER_MEMBERS:
        raise TokenInvalid("unexpected token header")
    alg, kid, typ = header["alg"], header["kid"], header["typ"]
    if typ != TOKEN_TYPE:
        raise TokenInvalid("not a feedback token (wrong typ)")
    if not isinstance(alg, str) or not isinstance(kid, str) or not _KID.fullmatch(kid):
        raise TokenInvalid("unexpected token header")
    return alg, kid


def parse(token: str) -> ParsedToken:
    """Step 1: reject anything that is not shaped like one of our tokens."""
    if len(token) > MAX_TOKEN_LENGTH or not _SHAPE.fullmatch(token):
        raise TokenInvalid("not a feedback token")
    header_segment, payload_segment, signature_segment = token.split(".")
    alg_kid = _headers.get(header_segment)
    if alg_kid is None:
        alg_kid = _parse_header(header_segment)
        if len(_headers) >= _HEADER_CACHE_SIZE:
            _headers.clear()
        _headers[header_segment] = alg_kid
    alg, kid = alg_kid
    return ParsedToken(
        alg=alg,
        kid=kid,
        signing_input=f"{header_segment}.{payload_segment}".encode("ascii"),
        payload_segment=payload_segment,
        signature_segment=signature_segment,
    )


def check_signature(parsed: ParsedToken, keyring: Keyring) -> dict[str, Any]:
    """Step 2: verify with the key named by ``kid``, using that key's own algorithm."""
    key = keyring.verifier(parsed.kid)
    if key is None:
        raise TokenInvalid("token signed by an unknown or retired key")
    if parsed.alg != key.alg:
        raise TokenInvalid("token algorithm does not match its key")
    try:
        signature = b64decode(parsed.signature_segment)
    except (ValueError, binascii.Error) as err:
        raise TokenInvalid("malformed token signature") from err
    if not key.verify(parsed.signing_input, signature):
        raise TokenInvalid("bad token signature")
    try:
        payload = loads_payload(b64decode(parsed.payload_segment))
    except (ValueError, binascii.Error) as err:
        raise TokenInvalid("malformed token payload") from err
    if not isinstance(payload, dict):
        raise TokenInvalid("malformed token payload")
    return payload


def loads_payload(raw: bytes) -> Any:
    """A signed payload (``dumps_compact``'s JSON, ours): orjson reads it; the standard library
    what orjson refuses, or reads otherwise: an integer beyond 64 bits (say, in a config),
    which orjson turns into a float (``app.encoding.beyond_64_bits``)."""
    try:
        payload = orjson.loads(raw)
    except orjson.JSONDecodeError:
        return json.loads(raw)
    return json.loads(raw) if beyond_64_bits(payload) else payload


def expired_detail(expires_at: int) -> str:
    return f"this token expired at {isoformat(expires_at)}"


def check_claims(payload: dict[str, Any], issuer: str, now: float, leeway: int, skew: int = 0) -> TokenClaims:
    """Step 3: registered claims first, then ours. ``skew``: the clock difference between any node
    and Redis the fleet tolerates (FEEDBACK_MAX_CLOCK_SKEW); two nodes may then differ by twice
    that, so a token issued by a node whose clock runs ahead is not refused as issued in the
    future by one whose clock runs behind."""
    if payload.get("iss") != issuer:
        raise TokenInvalid("token from another issuer")
    try:
        claims = TokenClaims.from_payload(payload)
    except (KeyError, ValueError, TypeError) as err:
        raise TokenInvalid("malformed token claims") from err
    if claims.issued_at > now + leeway + 2 * skew:
        raise TokenInvalid("token issued in the future")
    if now >= claims.expires_at + leeway:
        raise TokenExpired(expired_detail(claims.expires_at))
    return claims


def verify(token: str, keyring: Keyring, issuer: str, now: float, leeway: int) -> TokenClaims:
    return check_claims(check_signature(parse(token), keyring), issuer, now, leeway)
