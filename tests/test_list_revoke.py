"""Listing a run's tokens (SPEC 3.2) and revoking one (SPEC 3.3)."""

from __future__ import annotations

import time
import uuid
from datetime import UTC, datetime

import layout
import pytest
from conftest import API_KEY, TOKENS, issue_token, token_of


@pytest.fixture
def redis_server(either_redis):  # every test here runs on one Redis and on a Redis Cluster
    return either_redis

AUTH = {"X-API-Key": API_KEY}


def _list(client, run_id, **params):
    r = client.get(TOKENS, params={"run_id": run_id, **params}, headers=AUTH)
    assert r.status_code == 200, r.text
    return r.json()


def test_list_shows_each_status_oldest_first(client, clock):
    run = str(uuid.uuid4())
    tokens = []
    for key in ("active", "used", "revoked", "expired"):
        expiry = {"minutes": 1} if key == "expired" else {"hours": 1}
        tokens.append(issue_token(client, run_id=run, feedback_key=key, expires_in=expiry))
        clock.advance(1)
    client.post(f"{TOKENS}/{token_of(tokens[1])}", json={"score": 1})
    client.delete(f"{TOKENS}/{tokens[2]['id']}", headers=AUTH)
    clock.advance(60 + 30)  # past the expiry and the 30 s leeway that verification allows too
    listed = _list(client, run)
    assert [t["feedback_key"] for t in listed] == ["active", "used", "revoked", "expired"]
    assert [t["status"] for t in listed] == ["active", "used", "revoked", "expired"]
    for item, issued in zip(listed, tokens, strict=True):
        assert {k: item[k] for k in issued} == issued
        assert item["created_at"]
    created = [t["created_at"] for t in listed]
    assert created == sorted(created) and len(set(created)) == 4


def test_list_only_shows_that_run(client):
    run, other = str(uuid.uuid4()), str(uuid.uuid4())
    mine = issue_token(client, run_id=run)
    issue_token(client, run_id=other)
    assert [t["id"] for t in _list(client, run)] == [mine["id"]]
    assert _list(client, str(uuid.uuid4())) == []


def test_limit_and_offset_page_through(client, clock):
    run = str(uuid.uuid4())
    ids = []
    for i in range(7):
        ids.append(issue_token(client, run_id=run, feedback_key=f"k{i}")["id"])
        clock.advance(0.01)
    assert [t["id"] for t in _list(client, run, limit=3)] == ids[:3]
    assert [t["id"] for t in _list(client, run, limit=3, offset=3)] == ids[3:6]
    assert [t["id"] for t in _list(client, run, limit=3, offset=6)] == ids[6:]
    assert _list(client, run, offset=7) == []


@pytest.mark.parametrize(
    "params", [{}, {"run_id": "x"}, {"limit": "0"}, {"limit": "101"}, {"limit": "a"}, {"offset": "-1"}]
)
def test_bad_list_parameters_are_422(client, params):
    query = {"run_id": str(uuid.uuid4()), **params} if "run_id" not in params else params
    if params == {}:
        query = {}
    r = client.get(TOKENS, params=query, headers=AUTH)
    assert r.status_code == 422 and r.json()["code"] == "invalid_request"


def test_list_and_revoke_need_the_api_key(client):
    run = str(uuid.uuid4())
    answer = issue_token(client, run_id=run)
    assert client.get(TOKENS, params={"run_id": run}).json()["code"] == "unauthorized"
    r = client.delete(f"{TOKENS}/{answer['id']}", headers={"X-API-Key": "nope"})
    assert r.status_code == 401
    assert client.post(f"{TOKENS}/{token_of(answer)}", json={"score": 1}).status_code == 200


def test_revoke_unknown_is_404_and_repeat_is_204(client):
    answer = issue_token(client)
    for path in (str(uuid.uuid4()), "not-a-uuid", token_of(answer)):
        r = client.delete(f"{TOKENS}/{path}", headers=AUTH)
        assert r.status_code == 404 and r.json()["code"] == "token_not_found"
    assert client.delete(f"{TOKENS}/{answer['id']}", headers=AUTH).status_code == 204
    assert client.delete(f"{TOKENS}/{answer['id']}", headers=AUTH).status_code == 204


def test_expired_tokens_leave_their_run_record(make_app, redis_server, clock):
    """Records live until exp + leeway + clock skew by Redis's clock, then go: pruned from a run
    record when it is next written, and the whole record expires with its last token."""
    client = make_app(shards=1, leeway=0, max_clock_skew=0)
    run = str(uuid.uuid4())
    soon = datetime.fromtimestamp(time.time() + 2, UTC).isoformat()
    old = [
        issue_token(client, run_id=run, feedback_key=f"old{i}", expires_at=soon, expires_in=None)["id"]
        for i in range(3)
    ]
    r = redis_server.client()
    key = layout.token_fields(r, old[0])["key"]
    assert r.expiretime(key) == int(datetime.fromisoformat(soon).timestamp())
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline and r.exists(key):
        time.sleep(0.1)
    assert not r.exists(key)  # Redis dropped the record with its tokens
    # A record that stays alive prunes the tokens that passed their deadline when next written.
    lasting = issue_token(client, run_id=run, feedback_key="lasting", expires_in={"hours": 1})
    short = issue_token(client, run_id=run, feedback_key="short",
                        expires_at=datetime.fromtimestamp(time.time() + 2, UTC).isoformat(), expires_in=None)
    time.sleep(2.5)
    clock.advance(3)
    new = issue_token(client, run_id=run, feedback_key="new")
    assert layout.token_fields(r, short["id"])["record"] is None
    assert [t["id"] for t in _list(client, run)] == [lasting["id"], new["id"]]


def test_consumed_markers_live_as_long_as_any_node_may_accept_the_token(client, redis_server):
    answer = issue_token(client, expires_in={"minutes": 10})
    client.post(f"{TOKENS}/{token_of(answer)}", json={"score": 1})
    fields = layout.token_fields(redis_server.client(), answer["id"])
    assert fields["uses"] == 1
    exp = int(datetime.fromisoformat(answer["expires_at"]).timestamp())
    assert redis_server.client().expiretime(fields["key"]) == exp + 30 + 60  # leeway + clock skew


def test_list_forgets_tokens_whose_record_expired(client, redis_server):
    run = str(uuid.uuid4())
    gone = issue_token(client, run_id=run, feedback_key="gone")
    kept = issue_token(client, run_id=run, feedback_key="kept")
    redis_server.client().delete(layout.token_fields(redis_server.client(), gone["id"])["key"])  # Redis expiry
    assert [t["id"] for t in _list(client, run)] == [kept["id"]]
