"""What the store keeps in Redis, read back for tests that check it directly (app/store/keyspace.py
and app/store/scripts.py describe the layout; this module only reads it)."""

from __future__ import annotations

import uuid
from typing import Any

import redis

from app.store import scripts
from app.store.keyspace import Keyspace, local_id, token_id_from


def stream_keys(client: redis.Redis, prefix: str = "fbt") -> list[str]:
    return sorted(k.decode() for k in client.scan_iter(match=f"{{{prefix}*}}:feedback", _type="stream"))


def stream_rows(client: redis.Redis, prefix: str = "fbt") -> list[tuple[tuple[int, int], dict[str, str]]]:
    """(stream id, entry) of every shard's stream, in stream-id order."""
    rows = []
    for key in stream_keys(client, prefix):
        for entry_id, fields in client.xrange(key):
            ms, seq = entry_id.decode().split("-")
            rows.append(((int(ms), int(seq)), {k.decode(): v.decode() for k, v in fields.items()}))
    rows.sort(key=lambda row: row[0])
    return rows


def feedback_count(client: redis.Redis, prefix: str = "fbt") -> int:
    return sum(int(client.xlen(key)) for key in stream_keys(client, prefix))


def record_key(token_id: str | uuid.UUID, prefix: str = "fbt", shards: int = 16) -> str:
    key = Keyspace(prefix, shards).record_of(uuid.UUID(str(token_id)))
    assert key is not None, f"{token_id} is not an id of the sharded layout"
    return key


def token_fields(client: redis.Redis, token_id: str | uuid.UUID, prefix: str = "fbt") -> dict[str, Any]:
    """A token's fields in its run record (record, signature, use state parsed)."""
    key, L = record_key(token_id, prefix), local_id(uuid.UUID(str(token_id)))
    record, signature, state, latest = client.hmget(key, [L, f"{L}:s", f"{L}:u", f"{L}:v"])
    out: dict[str, Any] = {"key": key, "record": record, "signature": signature, "latest": latest}
    if state is not None:
        flags, uses, fp, created, attempt = scripts.STATE.unpack(state)
        out.update(revoked=bool(flags & scripts.REVOKED), uses=uses, fingerprint=fp, created_ms=created)
    else:
        out.update(revoked=False, uses=0)
    return out


def used_token_ids(client: redis.Redis, token_ids: list[str], prefix: str = "fbt") -> set[str]:
    """Which of ``token_ids`` carry a use (a consumed marker) in their run record."""
    return {t for t in token_ids if token_fields(client, t, prefix)["uses"] > 0}


def data_keys(client: redis.Redis, prefix: str = "fbt") -> list[bytes]:
    """Every key the store wrote for tokens and feedback (not its meta hash)."""
    meta = Keyspace(prefix).meta.encode()
    return sorted(k for k in client.keys("*") if k != meta)


def used_tokens(client: redis.Redis, prefix: str = "fbt") -> set[str]:
    """Every token, in any run record, that carries a use (a consumed marker)."""
    found: set[str] = set()
    for key in client.scan_iter(match=f"{{{prefix}*}}:r:*", _type="hash"):
        tag = key.decode().split("}", 1)[0][1:]
        shard = int(tag[len(prefix) + 1 :].split("-", 1)[0]) if tag != prefix else None
        for field, value in client.hgetall(key).items():
            name = field.decode()
            if not name.endswith(":u") or name.count(":") != 1:
                continue
            local = name[:-2]
            _, uses, _, _, _ = scripts.STATE.unpack(value)
            record = client.hget(key, local)
            if uses == 0 or record is None:
                continue
            run_id = uuid.UUID(bytes=scripts.RECORD_HEAD.unpack_from(record)[3])
            if shard is None:
                raise AssertionError("used tokens of the layout before sharding are not expected here")
            found.add(str(token_id_from(run_id, shard, local)))
    return found
