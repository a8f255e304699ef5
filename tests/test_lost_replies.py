"""Redis ran the script, the service never heard (issue 9): nothing may count twice.

A fault proxy (tests/fleet.py) sits between the app and Redis. It lets the submit script's
call through to Redis and then drops the reply (closes the app's connection) or holds it past
FEEDBACK_REDIS_TIMEOUT. Whatever the service answered, one logical submission must leave exactly
one stream entry and one use, and an identical resend (under ``many``: with the same
Idempotency-Key) must get the recorded answer with ``duplicate: true``.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from pathlib import Path
from typing import Any

import layout
import pytest
import redis
from conftest import RedisServer, issue_token, path_of
from fleet import FaultProxy
from starlette.testclient import TestClient

from app.store import scripts

pytest_plugins = ["support_fleet"]

SUBMIT = hashlib.sha1(scripts.SUBMIT.encode()).hexdigest().encode()  # what EVALSHA sends
TIMEOUT = 0.5
BODY = {"score": 1, "comment": "said once"}


@pytest.fixture
def keys_dir(shared_keys: Path) -> Path:
    return shared_keys


def evalsha_calls(client: redis.Redis) -> int:
    stats = client.info("commandstats").get("cmdstat_evalsha", {})
    return int(stats.get("calls", 0))


def entries(client: redis.Redis, token_id: str) -> list[dict[str, str]]:
    return [entry for _, entry in layout.stream_rows(client) if entry["token_id"] == token_id]


def recorded_once(client: redis.Redis, token_id: str) -> dict[str, str]:
    """The one stream entry of the token, after checking that it is one, with one use."""
    found = entries(client, token_id)
    assert len(found) == 1, found
    assert layout.token_fields(client, token_id)["uses"] == 1
    return found[0]


def headers_for(use: str) -> dict[str, str]:
    # Under 'many' every submission counts: only the key makes a resend recognisable.
    return {"Idempotency-Key": "order-42/feedback"} if use == "many" else {}


@pytest.fixture
def setup(
    make_app: Callable[..., TestClient], redis_server: RedisServer, fault_proxy: Callable[[RedisServer], FaultProxy]
) -> tuple[TestClient, FaultProxy, redis.Redis]:
    proxy = fault_proxy(redis_server)
    return make_app(redis_url=proxy.url, redis_timeout=TIMEOUT), proxy, redis_server.client()


def resend_is_the_recorded_answer(client: TestClient, url: str, use: str, entry: dict[str, str]) -> dict[str, Any]:
    again = client.post(url, json=BODY, headers=headers_for(use))
    assert again.status_code == 200, again.text
    answer: dict[str, Any] = again.json()
    assert answer["duplicate"] is True
    assert (answer["id"], answer["comment"]) == (entry["id"], entry["comment"])
    assert answer["created_at"] == entry["created_at"]
    return answer


@pytest.mark.parametrize("use", ["once", "update", "many"])
@pytest.mark.parametrize("fault", ["drop", "delay"])
def test_a_lost_reply_leaves_one_entry_and_the_resend_gets_it(setup, use: str, fault: str) -> None:
    client, proxy, direct = setup
    token = issue_token(client, use=use)
    url = path_of(token)
    before = evalsha_calls(direct)
    if fault == "drop":
        proxy.drop(2, SUBMIT)  # the first send and the store's one re-send on a fresh connection
    else:
        proxy.delay(4 * TIMEOUT, 1, SUBMIT)  # a timeout is not re-sent
    first = client.post(url, json=BODY, headers=headers_for(use))
    assert first.status_code == 503, first.text
    assert first.json()["code"] == "store_unavailable" and int(first.headers["Retry-After"]) > 0
    assert "same submission" in first.json()["detail"]  # it may have landed: the answer says so
    assert proxy.faults == (2 if fault == "drop" else 1)
    assert evalsha_calls(direct) - before == proxy.faults  # Redis ran every call the app never heard of
    entry = recorded_once(direct, token["id"])

    answer = resend_is_the_recorded_answer(client, url, use, entry)
    if use == "update":
        assert answer["revision"] == 1
    assert recorded_once(direct, token["id"]) == entry

    if use == "many":
        # The same key with another body is a client bug, refused; another key is a new submission.
        other = client.post(url, json={"score": 0}, headers=headers_for(use))
        assert other.status_code == 422 and other.json()["code"] == "invalid_request"
        assert len(entries(direct, token["id"])) == 1
        fresh = client.post(url, json=BODY, headers={"Idempotency-Key": "order-43/feedback"})
        assert fresh.status_code == 200 and fresh.json()["duplicate"] is False
        unkeyed = client.post(url, json=BODY)
        assert unkeyed.status_code == 200 and unkeyed.json()["duplicate"] is False
        assert len({entry["id"], fresh.json()["id"], unkeyed.json()["id"]}) == 3
        assert len(entries(direct, token["id"])) == 3
        assert layout.token_fields(direct, token["id"])["uses"] == 3


@pytest.mark.parametrize("use", ["once", "update", "many"])
def test_the_stores_own_resend_is_answered_as_the_first_attempt(setup, use: str) -> None:
    """The connection drops after Redis ran the batch; the store sends the batch once more on a
    fresh connection, and the script recognises the attempt: one entry, and the caller is told
    its submission was recorded now (not that it was a duplicate)."""
    client, proxy, direct = setup
    token = issue_token(client, use=use)
    url = path_of(token)
    before = evalsha_calls(direct)
    proxy.drop(1, SUBMIT)
    first = client.post(url, json=BODY)
    assert first.status_code == 200, first.text
    assert first.json()["duplicate"] is False
    assert proxy.faults == 1 and evalsha_calls(direct) - before == 2  # it ran twice, counted once
    entry = recorded_once(direct, token["id"])
    assert first.json()["id"] == entry["id"]
    if use != "many":  # an identical resend of a 'many' submission without a key is a new one
        resend_is_the_recorded_answer(client, url, use, entry)
        assert recorded_once(direct, token["id"]) == entry


def test_a_page_on_any_origin_may_send_an_idempotency_key(client: TestClient) -> None:
    """A widget's resend must be recognisable too: browsers send the header only if the preflight
    allows it."""
    url = path_of(issue_token(client, use="many"))
    preflight = client.options(url, headers={
        "Origin": "https://shop.example", "Access-Control-Request-Method": "POST",
        "Access-Control-Request-Headers": "content-type,idempotency-key",
    })
    assert preflight.status_code == 200
    assert "idempotency-key" in preflight.headers["access-control-allow-headers"].lower()
    sent = [client.post(url, json=BODY, headers={"Origin": "https://shop.example", "Idempotency-Key": '"w-1"'})
            for _ in range(2)]
    assert [r.json()["duplicate"] for r in sent] == [False, True]
    assert sent[0].json()["id"] == sent[1].json()["id"]
