"""Reading what the layout before sharding recorded, until its tokens expire (30 days at most).

Before sharding, a token's record was the hash ``{P}:t:<token id>`` (its JWT, ``fp``/``n``/``ans``
once used, ``rev`` once revoked) and a run's index the sorted set ``{P}:r:<run id>``. Tokens of
that time (version 4 ids) keep working: their use state goes to a run record of the legacy shard
``{P}`` (app/store/keyspace.py), seeded from the old record by the scripts (``read_state`` in
app/store/scripts.py), which also honour its ``rev``. Nothing here writes the old layout but a
revocation's flag; once its last token has expired, this module has nothing left to read.
"""

from __future__ import annotations

import uuid
from typing import cast

from app.store.connect import Client
from app.store.keyspace import Keyspace
from app.store.results import StoredToken


def _text(value: bytes | str) -> str:
    return value.decode() if isinstance(value, bytes) else value


async def lookup(redis: Client, keyspace: Keyspace, token_id: uuid.UUID) -> StoredToken | None:
    jwt = await redis.hget(keyspace.legacy_record(token_id), "jwt")
    return None if jwt is None else StoredToken(token_id, b"", b"", jwt=_text(jwt))


async def revoke(redis: Client, keyspace: Keyspace, token_id: uuid.UUID) -> bool:
    """Mark it revoked where the scripts look for it; False if it is unknown (or gone)."""
    record = keyspace.legacy_record(token_id)
    if not await redis.exists(record):
        return False
    await redis.hset(record, "rev", "1")
    return True


async def list_run(redis: Client, keyspace: Keyspace, run_id: uuid.UUID, window: int) -> list[tuple[int, StoredToken]]:
    """The run's tokens as that layout indexed them (created µs, token), oldest first; their use
    state is the scripts' to say (``Store.peek``)."""
    members = cast(
        list[tuple[bytes, float]],
        await redis.zrange(keyspace.legacy_run_index(run_id), 0, window - 1, withscores=True),
    )
    out = []
    for member, score in members:
        token_id = uuid.UUID(member.decode())
        found = await lookup(redis, keyspace, token_id)
        if found is not None:
            out.append((int(score), found))
    return out
