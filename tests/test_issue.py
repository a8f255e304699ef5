"""Issuing tokens: POST /api/v1/feedback/tokens (SPEC 3.1)."""

from __future__ import annotations

import base64
import os
import shutil
import uuid
from datetime import UTC, datetime, timedelta

import jwt
import layout
import pytest
from conftest import API_KEY, TOKENS, token_of

from app.domain.tokens import b64decode
from app.keys.keyring import KeyringDir


@pytest.fixture
def redis_server(either_redis):  # every test here runs on one Redis and on a Redis Cluster
    return either_redis

AUTH = {"X-API-Key": API_KEY}


def _body(**fields):
    return {"run_id": str(uuid.uuid4()), "feedback_key": "user_score", **fields}


def _problem(response, status, code):
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    body = response.json()
    assert body["code"] == code and body["status"] == status
    assert body["title"] and body["detail"]
    return body


def test_issue_one_answers_spec_shape(client, clock):
    body = _body(feedback_config={"type": "continuous", "min": 0, "max": 1})
    r = client.post(TOKENS, json=body, headers=AUTH)
    assert r.status_code == 200
    answer = r.json()
    assert set(answer) == {"id", "url", "expires_at", "run_id", "feedback_key", "feedback_config"}
    uuid.UUID(answer["id"])
    assert answer["run_id"] == body["run_id"]
    assert answer["feedback_key"] == "user_score"
    assert answer["feedback_config"] == {"type": "continuous", "min": 0, "max": 1}
    assert answer["url"].startswith("http://testserver/api/v1/feedback/tokens/ey")
    expires = datetime.fromisoformat(answer["expires_at"])
    assert expires.tzinfo is not None
    assert abs(expires.timestamp() - (clock.now() + 3 * 3600)) < 1  # default lifetime 3 h


def test_token_is_a_jwt_with_kid_typ_and_pinned_alg(client, keys_dir):
    answer = client.post(TOKENS, json=_body(), headers=AUTH).json()
    token = token_of(answer)
    header = jwt.get_unverified_header(token)
    active = KeyringDir(keys_dir).load().active
    assert header == {"alg": "ES256", "kid": active.kid, "typ": "fbt+jwt"}  # the default algorithm
    # An independent verifier (pyjwt with the published public key) accepts it.
    claims = jwt.decode(token, key=active.public_key, algorithms=["ES256"], issuer="fbt")
    assert {"jti", "iss", "iat", "exp", "run", "key"} <= set(claims)
    assert uuid.UUID(bytes=b64decode(claims["jti"])) == uuid.UUID(answer["id"])
    assert uuid.UUID(bytes=b64decode(claims["run"])) == uuid.UUID(answer["run_id"])


def test_typical_token_stays_under_400_characters(client):
    body = _body(feedback_config={"type": "continuous", "min": 0, "max": 1}, id=str(uuid.uuid4()))
    token = token_of(client.post(TOKENS, json=body, headers=AUTH).json())
    assert len(token) < 400


@pytest.mark.parametrize("alg", ["ES256", "EdDSA", "HS256"])
def test_each_algorithm_signs_tokens_of_its_own(make_app, keys_dir, alg):
    ring = KeyringDir(keys_dir)
    kid = ring.new(alg)
    ring.activate(kid)
    client = make_app()
    answer = client.post(TOKENS, json=_body(), headers=AUTH).json()
    assert jwt.get_unverified_header(token_of(answer)) == {"alg": alg, "kid": kid, "typ": "fbt+jwt"}
    key = ring.load().keys[kid]  # an independent verifier (pyjwt) agrees
    secret_or_public = key.secret if alg == "HS256" else key.public_key
    assert jwt.decode(token_of(answer), key=secret_or_public, algorithms=[alg], issuer="fbt")["key"] == "user_score"
    r = client.post(f"{TOKENS}/{token_of(answer)}", json={"score": 1})
    assert r.status_code == 200 and r.json()["duplicate"] is False


def test_batch_keeps_request_order(client):
    run = str(uuid.uuid4())
    keys = [f"key_{i}" for i in range(100)]
    r = client.post(TOKENS, json=[{"run_id": run, "feedback_key": k} for k in keys], headers=AUTH)
    assert r.status_code == 200
    answers = r.json()
    assert [a["feedback_key"] for a in answers] == keys
    assert len({a["id"] for a in answers}) == 100
    for answer, key in zip(answers, keys, strict=True):
        assert jwt.decode(token_of(answer), options={"verify_signature": False})["key"] == key


@pytest.mark.parametrize("size", [0, 101])
def test_batch_size_is_1_to_100(client, size):
    r = client.post(TOKENS, json=[_body() for _ in range(size)], headers=AUTH)
    _problem(r, 422, "invalid_request")


def test_a_bad_item_refuses_the_whole_batch_and_names_it(client, redis_server):
    batch = [_body(), _body(feedback_key=""), _body()]
    body = _problem(client.post(TOKENS, json=batch, headers=AUTH), 422, "invalid_request")
    assert body["detail"].startswith("[1]")
    assert layout.data_keys(redis_server.client()) == []  # nothing of the batch was stored


@pytest.mark.parametrize(
    "fields",
    [
        {"expires_in": {"days": 1}},
        {"expires_in": {"hours": 2, "minutes": 30}},
        {"expires_in": {"days": 0, "hours": 0, "minutes": 5}, "expires_at": None},
    ],
)
def test_expires_in(client, clock, fields):
    answer = client.post(TOKENS, json=_body(**fields), headers=AUTH).json()
    delta = fields["expires_in"]
    seconds = delta.get("days", 0) * 86400 + delta.get("hours", 0) * 3600 + delta.get("minutes", 0) * 60
    assert abs(datetime.fromisoformat(answer["expires_at"]).timestamp() - clock.now() - seconds) < 1


def test_expires_at_with_and_without_offset(client, clock):
    at = datetime.fromtimestamp(clock.now(), UTC).replace(microsecond=0) + timedelta(days=2)
    for text in (at.isoformat(), at.replace(tzinfo=None).isoformat(), at.isoformat().replace("+00:00", "Z")):
        answer = client.post(TOKENS, json=_body(expires_at=text, expires_in=None), headers=AUTH).json()
        assert datetime.fromisoformat(answer["expires_at"]) == at
    other_zone = (at + timedelta(hours=2)).replace(tzinfo=None).isoformat() + "+02:00"
    answer = client.post(TOKENS, json=_body(expires_at=other_zone), headers=AUTH).json()
    assert datetime.fromisoformat(answer["expires_at"]) == at


def test_zero_expiry_names_the_sdk_pitfall(client):
    body = _problem(
        client.post(TOKENS, json=_body(expires_in={"days": 0, "hours": 0, "minutes": 0}), headers=AUTH),
        422,
        "invalid_request",
    )
    assert "timedelta" in body["detail"]


@pytest.mark.parametrize(
    "fields",
    [
        {"expires_in": {"days": 31}},
        {"expires_at": "2000-01-01T00:00:00Z"},
        {"expires_in": {"hours": 1}, "expires_at": "2100-01-01T00:00:00Z"},
        {"expires_in": {"hours": -1}},
        {"expires_in": {"hours": 1.5}},
        {"expires_in": {"hours": True}},
        {"expires_in": {"seconds": 30}},
        {"expires_in": 3600},
        {"expires_at": "tomorrow"},
        {"run_id": "not-a-uuid"},
        {"run_id": None},
        {"run_id": 12},
        {"feedback_key": ""},
        {"feedback_key": "k" * 129},
        {"feedback_key": "bad\nkey"},
        {"feedback_key": "bad\x00key"},
        {"feedback_key": 5},
        {"id": "nope"},
        {"surprise": 1},
        {"feedback_config": {"type": "stars"}},
        {"feedback_config": {"type": "continuous", "min": 2, "max": 1}},
        {"feedback_config": {"type": "continuous", "min": "0"}},
        {"feedback_config": {"type": "continuous", "step": 1}},
        {"feedback_config": {"type": "categorical", "categories": []}},
        {"feedback_config": {"type": "categorical", "categories": [{"value": 1}, {"value": 1}]}},
        {"feedback_config": {"type": "categorical", "categories": [{"label": "x"}]}},
        {"feedback_config": {"type": "categorical", "categories": [{"value": 1}],
                             "allows_multiple_categories": True}},
        {"feedback_config": {"type": "freeform", "min": 0}},
        {"feedback_config": "continuous"},
    ],
)
def test_invalid_requests_are_422(client, redis_server, fields):
    _problem(client.post(TOKENS, json=_body(**fields), headers=AUTH), 422, "invalid_request")
    assert layout.data_keys(redis_server.client()) == []


def test_max_ttl_is_configurable(make_app):
    client = make_app(max_ttl=3600, default_ttl=600)
    _problem(client.post(TOKENS, json=_body(expires_in={"hours": 2}), headers=AUTH), 422, "invalid_request")
    assert client.post(TOKENS, json=_body(expires_in={"hours": 1}), headers=AUTH).status_code == 200


@pytest.mark.parametrize(
    ("max_ttl", "said"),
    [(30 * 86400, "30 days"), (3600, "1 hour"), (5400, "90 minutes"), (86401, "86401 seconds")],
)
def test_over_the_maximum_lifetime_says_it_in_words(make_app, clock, max_ttl, said):
    client = make_app(max_ttl=max_ttl, default_ttl=60)
    body = _problem(client.post(TOKENS, json=_body(expires_in={"days": 31}), headers=AUTH), 422, "invalid_request")
    assert body["detail"] == f"expires_in is longer than the maximum of {said}"
    too_late = datetime.fromtimestamp(clock.now() + max_ttl + 120, UTC).isoformat()
    body = _problem(client.post(TOKENS, json=_body(expires_at=too_late), headers=AUTH), 422, "invalid_request")
    assert body["detail"] == f"expires_at is more than {said} ahead (the maximum)"


def test_token_over_2000_characters_is_refused(client):
    categories = [{"value": i, "label": f"category label number {i}"} for i in range(100)]
    body = _problem(
        client.post(TOKENS, json=_body(feedback_config={"type": "categorical", "categories": categories}),
                    headers=AUTH),
        422,
        "invalid_request",
    )
    assert "2000" in body["detail"]


@pytest.mark.parametrize("headers", [{}, {"X-API-Key": ""}, {"X-API-Key": "wrong"},
                                     {"X-API-Key": API_KEY + "x"}, {"Authorization": f"Bearer {API_KEY}"}])
def test_issuance_needs_an_api_key(client, headers):
    _problem(client.post(TOKENS, json=_body(), headers=headers), 401, "unauthorized")


def test_every_configured_api_key_works(client):
    assert client.post(TOKENS, json=_body(), headers={"X-API-Key": "second-key"}).status_code == 200


@pytest.mark.parametrize("raw", [b"{", b"[1,", b"\xff\xfe", b"", b'{"run_id": NaN}'])
def test_issuance_body_not_json_is_400(client, raw):
    r = client.post(TOKENS, content=raw, headers={**AUTH, "Content-Type": "application/json"})
    _problem(r, 400, "invalid_body")


def test_verify_only_node_refuses_issuance_with_403(make_app, tmp_path, keys_dir):
    public_only = tmp_path / "public"
    public_only.mkdir()
    for f in keys_dir.iterdir():
        if f.name == "keyring.json" or f.name.endswith(".pub.pem"):
            shutil.copy(f, public_only / f.name)
    client = make_app(keys_dir=public_only)
    _problem(client.post(TOKENS, json=_body(), headers=AUTH), 403, "signing_disabled")
    assert not any(name.endswith(".key.pem") for name in os.listdir(public_only))


def test_issuance_writes_the_token_into_its_run_record(client, redis_server, clock):
    body = _body()
    answer = client.post(TOKENS, json=body, headers=AUTH).json()
    r = redis_server.client()
    fields = layout.token_fields(r, answer["id"])
    # The record holds the claims and signature, not the JWT: the JWT is rebuilt from them.
    assert fields["record"] is not None and len(fields["record"]) < 70
    assert fields["signature"] == b64decode(token_of(answer).rsplit(".", 1)[1])
    assert fields["uses"] == 0 and not fields["revoked"]
    # It lives as long as any node may accept the token: exp + leeway (30 s) + clock skew (60 s).
    exp = int(datetime.fromisoformat(answer["expires_at"]).timestamp())
    assert r.expiretime(fields["key"]) == exp + 30 + 60
    # The run's index within the record lists the token by its local id.
    local = base64.urlsafe_b64encode(uuid.UUID(answer["id"]).bytes[8:]).rstrip(b"=")
    assert r.hget(fields["key"], "#") == local
    # ... and the token is found by id (the LangSmith SDK's way).
    assert client.post(f"{TOKENS}/{answer['id']}", json={"score": 1}).status_code == 200
