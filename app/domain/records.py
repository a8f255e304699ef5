"""A token as Redis keeps it: the claims in a compact binary record, the signature beside it.

A lookup by id (the LangSmith SDK's way to submit) and a listing need the token's JWT back. The
JWT is not stored: its header and payload are rebuilt from this record exactly as they were
signed (the serialisation in ``app/domain/tokens.py`` is deterministic), and the stored signature
is appended. The rebuilt token is then verified like any other, so a record that was tampered with
in Redis, or one whose issuer setting has changed since, fails verification instead of being
trusted.

Record layout, version 1 (big-endian; the first 29 bytes are fixed, because the store's Lua
scripts read the creation time, the expiry and the run id from them)::

    B     version (high nibble, 1) | flags (bit 0: a feedback id other than the token id follows)
    Q     created, unix microseconds (iat is its whole seconds)
    I     exp, unix seconds
    16s   run id
    [16s  feedback id]
    B     algorithm code (see ALG_CODES)
    B+    kid, length-prefixed
    H+    feedback key, UTF-8, length-prefixed
    ...   the remaining claims as a JSON array [cfg, use, cap, cf, rd], trailing nulls dropped
          (nothing at all for a default token)

A typical token (key ``user_score``, continuous 0..1) is about 60 bytes, under Redis's 64-byte
limit for the compact hash encoding; with its 64-byte signature as a second field, a live token
costs about 300 bytes of Redis memory.
"""

from __future__ import annotations

import json
import struct
import uuid
from dataclasses import dataclass
from typing import Any

from app.domain.feedback import FeedbackConfig
from app.domain.tokens import TOKEN_TYPE, TokenClaims, b64encode, dumps_compact, use_from_claim

VERSION = 1
HEADER = struct.Struct(">BQI16s")  # version|flags, created µs, exp, run id
ALG_CODES: dict[str, int] = {"ES256": 1, "EdDSA": 2, "HS256": 3}
_ALGS = {code: alg for alg, code in ALG_CODES.items()}
_HAS_FID = 0x01


class RecordError(ValueError):
    """A stored record that this version cannot read."""


@dataclass(frozen=True, slots=True)
class TokenRecord:
    claims: TokenClaims
    alg: str
    kid: str
    created_us: int

    def jwt(self, issuer: str, signature: bytes) -> str:
        """The token exactly as it was issued (given the issuer it was issued under)."""
        header = {"alg": self.alg, "kid": self.kid, "typ": TOKEN_TYPE}
        payload = self.claims.to_payload(issuer)
        return f"{b64encode(dumps_compact(header))}.{b64encode(dumps_compact(payload))}.{b64encode(signature)}"


def encode(claims: TokenClaims, alg: str, kid: str, created_us: int) -> bytes:
    flags = _HAS_FID if claims.feedback_id != claims.token_id else 0
    out = bytearray(HEADER.pack((VERSION << 4) | flags, created_us, claims.expires_at, claims.run_id.bytes))
    if flags & _HAS_FID:
        out += claims.feedback_id.bytes
    kid_bytes, key_bytes = kid.encode("ascii"), claims.feedback_key.encode("utf-8")
    out += struct.pack(">BB", ALG_CODES[alg], len(kid_bytes)) + kid_bytes
    out += struct.pack(">H", len(key_bytes)) + key_bytes
    payload = claims.to_payload("")
    tail: list[Any] = [payload.get(name) for name in ("cfg", "use", "cap", "cf", "rd")]
    while tail and tail[-1] is None:
        tail.pop()
    if tail:
        out += dumps_compact(tail)
    return bytes(out)


def created_us(record: bytes) -> int:
    return int(HEADER.unpack_from(record)[1])


def decode(record: bytes, token_id: uuid.UUID) -> TokenRecord:
    try:
        head, created, exp, run = HEADER.unpack_from(record)
        if head >> 4 != VERSION:
            raise RecordError(f"record version {head >> 4} is not one this version reads")
        at = HEADER.size
        feedback_id = token_id
        if head & _HAS_FID:
            feedback_id = uuid.UUID(bytes=record[at : at + 16])
            at += 16
        alg_code, kid_len = struct.unpack_from(">BB", record, at)
        at += 2
        kid = record[at : at + kid_len].decode("ascii")
        at += kid_len
        (key_len,) = struct.unpack_from(">H", record, at)
        at += 2
        key = record[at : at + key_len].decode("utf-8")
        at += key_len
        tail = json.loads(record[at:]) if at < len(record) else []
        cfg, use, cap, cf, rd = [*tail, None, None, None, None, None][:5]
        claims = TokenClaims(
            token_id=token_id,
            run_id=uuid.UUID(bytes=run),
            feedback_key=key,
            feedback_id=feedback_id,
            issued_at=created // 1_000_000,
            expires_at=exp,
            config=FeedbackConfig.from_claim(cfg) if cfg is not None else None,
            use=use_from_claim(use),
            max_uses=cap,
            confirm=cf == 1,
            redirect_url=rd,
        )
        return TokenRecord(claims, _ALGS[alg_code], kid, created)
    except (struct.error, KeyError, ValueError, TypeError, UnicodeDecodeError) as err:
        if isinstance(err, RecordError):
            raise
        raise RecordError(f"unreadable token record: {err}") from err
