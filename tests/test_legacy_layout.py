"""Tokens of the layout before sharding, with what that layout recorded of them: they keep
working, as they were left, until they expire (app/store/legacy.py).

The records are written here as the previous version wrote them: ``{fbt}:t:<token id>`` (the
JWT; once used ``fp``, ``n`` and ``ans``; once revoked ``rev``), the run index ``{fbt}:r:<run id>``
and the stream ``{fbt}:feedback``.
"""

from __future__ import annotations

import json
import time
import uuid
from typing import Any

import layout
from conftest import API_KEY, TOKENS, issue_token

from app.domain import tokens
from app.domain.feedback import Submission
from app.keys.keyring import KeyringDir

AUTH = {"X-API-Key": API_KEY}


def old_token(redis_server: Any, keys_dir: Any, run_id: uuid.UUID, *, used_with: Submission | None = None,
              revoked: bool = False, now: float | None = None) -> tuple[str, uuid.UUID]:
    """A token as the previous version issued it (at ``now``), and its record as that version
    left it."""
    signer = KeyringDir(keys_dir).load().signer
    assert signer is not None
    now = time.time() if now is None else now
    token_id = uuid.uuid4()
    claims = tokens.TokenClaims(token_id=token_id, run_id=run_id, feedback_key="user_score", feedback_id=token_id,
                                issued_at=int(now), expires_at=int(now) + 3600)
    jwt = tokens.sign(claims, signer, "fbt")
    r = redis_server.client()
    record = f"{{fbt}}:t:{token_id}"
    r.hset(record, "jwt", jwt)
    if used_with is not None:
        answer = {"id": str(token_id), "run_id": str(run_id), "feedback_key": "user_score",
                  **used_with.to_json(), "created_at": "2026-11-01T10:00:00.000+00:00"}
        r.hset(record, mapping={"fp": used_with.fingerprint(), "ans": json.dumps(answer), "n": 1})
    if revoked:
        r.hset(record, "rev", "1")
    r.expire(record, 3600 + 30)
    r.zadd(f"{{fbt}}:r:{run_id}", {str(token_id): int(now * 1_000_000)})
    return jwt, token_id


def test_a_token_used_before_sharding_stays_used(client, redis_server, keys_dir):
    first = Submission(score=1, comment="before the upgrade")
    jwt, token_id = old_token(redis_server, keys_dir, uuid.uuid4(), used_with=first)
    again = client.post(f"{TOKENS}/{jwt}", json={"score": 1, "comment": "before the upgrade"})
    assert again.status_code == 200 and again.json()["duplicate"] is True
    assert again.json()["created_at"].startswith("2026-11-01T10:00:00")  # the answer recorded then
    other = client.post(f"{TOKENS}/{token_id}", json={"score": 0})  # by id: its old record names it
    assert (other.status_code, other.json()["code"]) == (409, "token_used")
    assert layout.feedback_count(redis_server.client()) == 0


def test_a_token_unused_before_sharding_is_used_once_now(client, redis_server, keys_dir):
    jwt, token_id = old_token(redis_server, keys_dir, uuid.uuid4())
    assert client.post(f"{TOKENS}/{token_id}", json={"score": 1}).json()["duplicate"] is False
    assert client.post(f"{TOKENS}/{jwt}/{token_id}", json={"score": 0}).json()["code"] == "token_used"
    [entry] = layout.stream_rows(redis_server.client())
    assert entry[1]["token_id"] == str(token_id)
    assert layout.stream_keys(redis_server.client()) == ["{fbt}:feedback"]  # the shard it belongs to


def test_revoked_before_or_after_the_upgrade(client, redis_server, keys_dir):
    jwt, _ = old_token(redis_server, keys_dir, uuid.uuid4(), revoked=True)
    assert client.post(f"{TOKENS}/{jwt}", json={"score": 1}).json()["code"] == "token_revoked"
    jwt, token_id = old_token(redis_server, keys_dir, uuid.uuid4())
    assert client.delete(f"{TOKENS}/{token_id}", headers=AUTH).status_code == 204
    assert client.post(f"{TOKENS}/{jwt}", json={"score": 1}).json()["code"] == "token_revoked"
    assert client.delete(f"{TOKENS}/{uuid.uuid4()}", headers=AUTH).status_code == 404


def test_a_run_lists_its_tokens_of_both_layouts(client, redis_server, keys_dir, clock):
    run_id = uuid.uuid4()
    _, used = old_token(redis_server, keys_dir, run_id, used_with=Submission(score=1), now=clock.now() - 2)
    _, fresh = old_token(redis_server, keys_dir, run_id, now=clock.now() - 1)
    new = issue_token(client, run_id=str(run_id))
    listed = client.get(TOKENS, params={"run_id": str(run_id)}, headers=AUTH).json()
    assert [(t["id"], t["status"], t["uses"]) for t in listed] == [
        (str(used), "used", 1), (str(fresh), "active", 0), (new["id"], "active", 0),
    ]
