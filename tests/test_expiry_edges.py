"""Where expiry shows (issue 9): a token submitted by its id after it expired answers 410
``token_expired`` while its record exists (404 only once it is gone), and the ``status`` that
listings and ``/info`` report turns ``expired`` at the very moment verification starts refusing
(exp + FEEDBACK_LEEWAY), not before."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any

import layout
from conftest import API_KEY, TOKENS, RedisServer, issue_token, path_of, stream_entries
from starlette.testclient import TestClient

from app.clock import FrozenClock

AUTH = {"X-API-Key": API_KEY}


def problem(response: Any, status: int, code: str) -> None:
    assert (response.status_code, response.json()["code"]) == (status, code), response.text


def test_an_expired_token_submitted_by_id_is_410_while_its_record_exists_then_404(
    client: TestClient, redis_server: RedisServer, clock: FrozenClock
) -> None:
    exp = int(clock.now()) + 60
    [token] = issue_token(client, count=1, expires_at=datetime.fromtimestamp(exp, UTC).isoformat())
    by_id = f"{TOKENS}/{token['id']}"
    clock.at = exp + 3600  # long expired for the node; Redis keeps the record until exp + leeway + skew
    record = layout.token_fields(redis_server.client(), token["id"])
    assert record["record"] is not None
    problem(client.post(by_id, json={"score": 1}), 410, "token_expired")
    problem(client.get(by_id, params={"score": "1"}), 410, "token_expired")
    assert token["expires_at"] in client.post(by_id, json={"score": 1}).json()["detail"]
    assert client.get(f"{by_id}/info").json()["status"] == "expired"

    redis_server.client().delete(record["key"])  # what Redis does at the record's deadline
    problem(client.post(by_id, json={"score": 1}), 404, "token_not_found")
    problem(client.post(path_of(token), json={"score": 1}), 410, "token_expired")  # the JWT still says why
    assert stream_entries(redis_server) == []


def test_status_turns_expired_exactly_when_verification_starts_refusing(
    make_app: Callable[..., TestClient], clock: FrozenClock
) -> None:
    leeway = 30
    client = make_app(leeway=leeway)
    run = str(uuid.uuid4())
    exp = int(clock.now()) + 60
    before, at = issue_token(client, count=2, run_id=run, expires_at=datetime.fromtimestamp(exp, UTC).isoformat())

    def status(token: dict[str, Any]) -> tuple[str, str]:
        listed = {t["id"]: t["status"] for t in client.get(TOKENS, params={"run_id": run}, headers=AUTH).json()}
        return listed[token["id"]], client.get(f"{path_of(token)}/info").json()["status"]

    clock.at = exp + leeway - 0.001  # the last moment the token still verifies
    assert status(before) == status(at) == ("active", "active")
    r = client.post(path_of(before), json={"score": 1})
    assert r.status_code == 200 and r.json()["duplicate"] is False
    assert status(before) == ("used", "used")

    clock.at = exp + leeway  # from here on, verification refuses
    assert status(at) == ("expired", "expired")
    problem(client.post(path_of(at), json={"score": 1}), 410, "token_expired")
    problem(client.post(f"{TOKENS}/{at['id']}", json={"score": 1}), 410, "token_expired")
    assert status(before) == ("used", "used")  # a used token stays used, expired or not
