"""Where everything lives in Redis: shards, their hash tags, key names, and token ids that say
which shard and which run record hold them.

The keyspace is cut into S shards (``FEEDBACK_SHARDS``, default 16). Each shard is one Redis
Cluster hash tag, so every key of a shard hashes to one slot and a script that touches one token
and its shard's stream touches one slot. Per shard::

    {P.n-x}:feedback      stream: one entry per accepted submission in this shard
    {P.n-x}:r:<run hash>  hash: the records of a run's tokens issued into this shard (claims,
                          signature, use state), expiring with the last of them

``P`` is ``FEEDBACK_REDIS_PREFIX``, ``n`` the shard number and ``x`` a short suffix chosen once
and for all so that the shards' slots spread evenly over the 16,384 slots of a cluster (shard n
sits at the bit-reversed position of n, so any first S shards are evenly spaced). Names depend
only on ``P`` and ``n``, never on S: raising or lowering S later leaves every existing key where
it is.

Token ids are UUIDs of version 8 (RFC 9562's layout of one's own) that carry, besides 60 random
bits, the shard they were issued into and a 48-bit hash of their run id, so the record of a
token is found from its id alone: the LangSmith SDK submits by id, with no JWT.

    bytes 0-5   run hash (48 bits)
    byte  6     version 8 (high nibble) | shard bits 11-8
    byte  7     shard bits 7-0
    byte  8     variant 0b10 | layout 0b00 | 4 random bits
    bytes 9-15  random (56 bits)

Ids of any other layout (version 4: tokens issued before sharding) belong to the legacy shard,
whose tag is plain ``{P}``: their use state goes to a run record there (found from the run id in
their JWT), their feedback to the stream ``{P}:feedback``, and what the earlier layout recorded of
them (``{P}:t:<id>``, ``{P}:r:<run id>``) is still read until it expires.
"""

from __future__ import annotations

import base64
import hashlib
import os
import uuid
from dataclasses import dataclass
from functools import cached_property

from redis.crc import key_slot

SLOTS = 16384
MAX_SHARDS = 1024  # the bit-reversal spread covers 2**10 positions
_POSITION_WIDTH = SLOTS // MAX_SHARDS
_LAYOUT_VERSION = 8
_ALPHABET = "0123456789abcdefghijklmnopqrstuvwxyz"


def _bit_reverse(n: int, bits: int = 10) -> int:
    return int(f"{n:0{bits}b}"[::-1], 2)


def _base36(n: int) -> str:
    digits = ""
    while True:
        n, rest = divmod(n, 36)
        digits = _ALPHABET[rest] + digits
        if n == 0:
            return digits


def shard_tag(prefix: str, shard: int) -> str:
    """The hash tag of ``shard`` (without braces): ``<prefix>.<shard>-<suffix>``, whose slot lies
    in the shard's 1/1024th of the slot space."""
    if not 0 <= shard < MAX_SHARDS:
        raise ValueError(f"shard must be in 0..{MAX_SHARDS - 1}")
    low = _bit_reverse(shard) * _POSITION_WIDTH
    k = 0
    while True:
        tag = f"{prefix}.{shard}-{_base36(k)}"
        if low <= key_slot(tag.encode()) < low + _POSITION_WIDTH:
            return tag
        k += 1


def run_hash(run_id: uuid.UUID) -> bytes:
    """48 bits that name a run's record within a shard (collisions only share a Redis key)."""
    return hashlib.blake2b(run_id.bytes, digest_size=6).digest()


def _compose(hashed_run: bytes, shard: int, tail: bytes) -> uuid.UUID:
    head = hashed_run + bytes(((_LAYOUT_VERSION << 4) | (shard >> 8), shard & 0xFF))
    return uuid.UUID(bytes=head + bytes((0x80 | (tail[0] & 0x0F),)) + tail[1:])


def new_token_id(shard: int, run_id: uuid.UUID) -> uuid.UUID:
    return _compose(run_hash(run_id), shard, os.urandom(8))


def local_id(token_id: uuid.UUID) -> str:
    """A token's name within its run record: its last 8 bytes (60 of them random), base64url."""
    return _b64(token_id.bytes[8:])


def token_id_from(run_id: uuid.UUID, shard: int, local: str) -> uuid.UUID:
    """The inverse of ``local_id`` for a token of ``run_id`` found in ``shard``."""
    return _compose(run_hash(run_id), shard, base64.urlsafe_b64decode(local + "="))


@dataclass(frozen=True, slots=True)
class Location:
    """Where one token's record lives."""

    shard: int | None  # None: the legacy shard (ids issued before sharding)
    run_hash: bytes | None


def locate(token_id: uuid.UUID) -> Location:
    raw = token_id.bytes
    if raw[6] >> 4 == _LAYOUT_VERSION and raw[8] & 0xF0 == 0x80:
        return Location(((raw[6] & 0x0F) << 8) | raw[7], raw[0:6])
    return Location(None, None)


def _b64(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode("ascii")


class Keyspace:
    """Key names for one prefix and shard count."""

    def __init__(self, prefix: str = "fbt", shards: int = 16) -> None:
        if not 1 <= shards <= MAX_SHARDS:
            raise ValueError(f"shards must be in 1..{MAX_SHARDS}")
        self.prefix = prefix
        self.shards = shards
        self._tags: dict[int, str] = {}

    def tag(self, shard: int | None) -> str:
        if shard is None:
            return self.prefix
        tag = self._tags.get(shard)
        if tag is None:
            tag = self._tags[shard] = shard_tag(self.prefix, shard)
        return tag

    def stream(self, shard: int | None) -> str:
        return f"{{{self.tag(shard)}}}:feedback"

    def streams(self, upto: int | None = None) -> list[str]:
        """The feedback streams of shards 0..upto-1 (default: the configured shard count).
        Consumers should also read shards that an earlier, larger setting used (see
        ``Store.streams``, which finds them)."""
        return [self.stream(n) for n in range(self.shards if upto is None else upto)]

    @property
    def legacy_stream(self) -> str:
        return self.stream(None)

    def run_record(self, shard: int | None, run_hash: bytes) -> str:
        return f"{{{self.tag(shard)}}}:r:{_b64(run_hash)}"

    def legacy_record(self, token_id: uuid.UUID) -> str:
        """A token's record in the layout before sharding (read only, until it expires)."""
        return f"{{{self.prefix}}}:t:{token_id}"

    def legacy_run_index(self, run_id: uuid.UUID) -> str:
        """A run's index in the layout before sharding (read only, until it expires)."""
        return f"{{{self.prefix}}}:r:{run_id}"

    def record_of(self, token_id: uuid.UUID) -> str | None:
        """The key holding a token's record, or None for a legacy id."""
        where = locate(token_id)
        if where.shard is None or where.run_hash is None:
            return None
        return self.run_record(where.shard, where.run_hash)

    @cached_property
    def meta(self) -> str:
        """A small hash of facts about the keyspace itself (the largest shard count ever used)."""
        return f"{{{self.prefix}}}:meta"
