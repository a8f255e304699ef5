"""Submitting feedback: POST and GET on a token URL (SPEC 3.4, 3.5, 4)."""

from __future__ import annotations

import json
import re
import uuid

import pytest
from conftest import API_KEY, TOKENS, issue_token, stream_entries, token_of

from app.keys.keyring import KeyringDir


@pytest.fixture
def redis_server(either_redis):  # every test here runs on one Redis and on a Redis Cluster
    return either_redis

AUTH = {"X-API-Key": API_KEY}
CONTINUOUS = {"type": "continuous", "min": 0, "max": 1}
CATEGORICAL = {
    "type": "categorical",
    "categories": [{"value": 1, "label": "good"}, {"value": 0, "label": "bad"}, {"value": 0.5}],
}


def _problem(response, status, code):
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == code
    return response.json()


def test_post_records_feedback_once_in_the_stream(client, issue, redis_server, clock):
    answer = issue(feedback_config=CONTINUOUS, id=str(uuid.uuid4()))
    body = {"score": 0.75, "value": {"why": "clear"}, "comment": "great", "correction": "fix",
            "metadata": {"browser": "x"}}
    r = client.post(f"{TOKENS}/{token_of(answer)}", json=body)
    assert r.status_code == 200
    fb = r.json()
    assert fb == {
        "id": fb["id"], "run_id": answer["run_id"], "feedback_key": "user_score", "score": 0.75,
        "value": {"why": "clear"}, "comment": "great", "correction": "fix",
        "created_at": fb["created_at"], "duplicate": False,
    }
    [entry] = stream_entries(redis_server)
    assert entry == {
        "id": fb["id"], "token_id": answer["id"], "run_id": answer["run_id"],
        "feedback_key": "user_score", "score": "0.75", "value": '{"why":"clear"}',
        "comment": "great", "correction": "fix", "metadata": '{"browser":"x"}',
        "created_at": fb["created_at"],
    }


def test_feedback_gets_the_id_chosen_at_issuance(client, issue):
    chosen = str(uuid.uuid4())
    answer = issue(id=chosen)
    assert client.post(f"{TOKENS}/{token_of(answer)}", json={"score": 1}).json()["id"] == chosen


def test_identical_retry_is_a_duplicate_and_appends_nothing(client, issue, redis_server):
    url = f"{TOKENS}/{token_of(issue())}"
    body = {"score": 1, "comment": "ok", "value": None, "correction": None, "metadata": None}
    first = client.post(url, json=body).json()
    again = client.post(url, json={"comment": "ok", "score": 1.0}).json()
    assert again == {**first, "duplicate": True}
    assert len(stream_entries(redis_server)) == 1


def test_different_submission_on_used_token_is_409(client, issue, redis_server):
    url = f"{TOKENS}/{token_of(issue())}"
    assert client.post(url, json={"score": 1}).status_code == 200
    _problem(client.post(url, json={"score": 0}), 409, "token_used")
    _problem(client.post(url, json={"score": 1, "comment": "and more"}), 409, "token_used")
    assert len(stream_entries(redis_server)) == 1


def test_get_link_records_feedback(client, issue, redis_server):
    answer = issue()
    r = client.get(f"{TOKENS}/{token_of(answer)}",
                   params={"score": "1", "comment": "via link", "utm_source": "mail", "fbclid": "x"})
    assert r.status_code == 200
    assert r.headers["content-type"] == "application/json"
    assert r.json()["score"] == 1 and r.json()["comment"] == "via link"
    [entry] = stream_entries(redis_server)
    assert entry["comment"] == "via link" and entry["token_id"] == answer["id"]


@pytest.mark.parametrize(("raw", "score"), [("true", 1), ("false", 0), ("0.5", 0.5), ("-2", -2), ("1e2", 100)])
def test_get_link_score_parsing(client, issue, raw, score):
    r = client.get(f"{TOKENS}/{token_of(issue())}", params={"score": raw})
    assert r.status_code == 200 and r.json()["score"] == score


def test_get_link_with_metadata_is_422(client, issue, redis_server):
    _problem(client.get(f"{TOKENS}/{token_of(issue())}", params={"score": "1", "metadata": "{}"}),
             422, "invalid_feedback")
    assert stream_entries(redis_server) == []


def test_get_link_answers_html_to_browsers_with_the_same_status(client, issue):
    url = f"{TOKENS}/{token_of(issue())}"
    html = {"Accept": "text/html,application/xhtml+xml,*/*;q=0.8"}
    r = client.get(url, params={"score": "1"}, headers=html)
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/html")
    assert "Thank you" in r.text
    r = client.get(url, params={"score": "0"}, headers=html)
    assert r.status_code == 409 and "already" in r.text.lower()
    r = client.get(f"{TOKENS}/garbage", params={"score": "1"}, headers=html)
    assert r.status_code == 401 and r.headers["content-type"].startswith("text/html")


def test_head_never_consumes(client, issue, redis_server):
    url = f"{TOKENS}/{token_of(issue())}"
    for _ in range(3):
        assert client.head(url, params={"score": "1"}).status_code == 200
    assert stream_entries(redis_server) == []
    assert client.get(url, params={"score": "1"}).status_code == 200


def test_submit_by_token_id_looks_the_token_up(client, issue, redis_server):
    answer = issue()
    r = client.post(f"{TOKENS}/{answer['id']}", json={"score": 1})
    assert r.status_code == 200 and r.json()["run_id"] == answer["run_id"]
    # The id and the JWT name the same token: the second spelling sees it used.
    _problem(client.post(f"{TOKENS}/{token_of(answer)}", json={"score": 0}), 409, "token_used")
    assert client.post(f"{TOKENS}/{token_of(answer)}", json={"score": 1}).json()["duplicate"] is True
    assert len(stream_entries(redis_server)) == 1


def test_unknown_token_id_is_404(client):
    _problem(client.post(f"{TOKENS}/{uuid.uuid4()}", json={"score": 1}), 404, "token_not_found")
    _problem(client.get(f"{TOKENS}/{uuid.uuid4().hex}", params={"score": "1"}), 404, "token_not_found")


@pytest.mark.parametrize("token", ["garbage", "a.b.c", "e30.e30.e30", "x" * 3000])
def test_not_a_token_is_401(client, token):
    _problem(client.post(f"{TOKENS}/{token}", json={"score": 1}), 401, "token_invalid")


def test_tampered_token_is_401(client, issue, redis_server):
    token = token_of(issue())
    head, payload, sig = token.split(".")
    flipped = sig[:10] + ("A" if sig[10] != "A" else "B") + sig[11:]
    _problem(client.post(f"{TOKENS}/{head}.{payload}.{flipped}", json={"score": 1}), 401, "token_invalid")
    assert stream_entries(redis_server) == []


def test_expired_token_is_410(client, issue, clock, redis_server):
    answer = issue(expires_in={"minutes": 5})
    clock.advance(5 * 60 + 31)  # past expiry plus the 30 s leeway
    body = _problem(client.post(f"{TOKENS}/{token_of(answer)}", json={"score": 1}), 410, "token_expired")
    assert stream_entries(redis_server) == []
    # The expiry in the same ISO 8601 form as every other answer, not a raw Unix time.
    assert answer["expires_at"] in body["detail"]
    assert not re.search(r"\d{9,}", body["detail"]), body["detail"]


def test_revoked_token_is_410(client, issue, redis_server):
    answer = issue()
    assert client.delete(f"{TOKENS}/{answer['id']}", headers=AUTH).status_code == 204
    _problem(client.post(f"{TOKENS}/{token_of(answer)}", json={"score": 1}), 410, "token_revoked")
    _problem(client.post(f"{TOKENS}/{answer['id']}", json={"score": 1}), 410, "token_revoked")
    assert stream_entries(redis_server) == []


def test_retired_key_tokens_are_401(make_app, keys_dir):
    client = make_app()
    answer = issue_token(client)
    ring = KeyringDir(keys_dir)
    old = ring.load().active.kid
    ring.activate(ring.new())
    ring.retire(old)
    client.app.state.service.keys.reload()
    _problem(client.post(f"{TOKENS}/{token_of(answer)}", json={"score": 1}), 401, "token_invalid")


# -- validation against feedback_config ---------------------------------------------------------

ACCEPTED = [
    (None, {"score": 12345.5}),
    (None, {"comment": "just words"}),
    (None, {"value": "a string"}),
    (None, {"correction": {"text": "better"}}),
    (None, {"score": True}),
    (CONTINUOUS, {"score": 0}),
    (CONTINUOUS, {"score": 1}),
    (CONTINUOUS, {"score": 0.3, "comment": "c"}),
    (CONTINUOUS, {"score": False}),
    ({"type": "continuous", "min": None, "max": 5}, {"score": -1000}),
    (CATEGORICAL, {"score": 0.5}),
    (CATEGORICAL, {"value": "good"}),
    (CATEGORICAL, {"score": 0, "value": "bad"}),
    ({"type": "freeform"}, {"value": "any text"}),
    ({"type": "freeform"}, {"comment": "text", "score": 3}),
]


@pytest.mark.parametrize(("config", "body"), ACCEPTED)
def test_accepted_by_config(client, issue, config, body):
    r = client.post(f"{TOKENS}/{token_of(issue(feedback_config=config))}", json=body)
    assert r.status_code == 200, r.text


REJECTED = [
    (CONTINUOUS, {"score": 1.01}),
    (CONTINUOUS, {"score": -0.01}),
    (CONTINUOUS, {"comment": "no score"}),
    (CONTINUOUS, {"score": 10**400}),
    (CATEGORICAL, {"score": 2}),
    (CATEGORICAL, {"value": "meh"}),
    (CATEGORICAL, {"score": 1, "value": "bad"}),
    (CATEGORICAL, {"comment": "neither"}),
    ({"type": "freeform"}, {"value": 5}),
    ({"type": "freeform"}, {"value": {"a": 1}}),
    (None, {}),
    (None, {"score": None, "value": None, "comment": None, "correction": None, "metadata": {"a": 1}}),
    (None, {"score": 1, "unknown": 2}),
    (None, {"score": 1, "feedback_key": "other"}),
    (None, {"comment": "x" * 4097}),
    (None, {"score": 1, "metadata": {"k": "v" * 8200}}),
    (None, {"correction": "c" * (16 * 1024 + 1)}),
]


@pytest.mark.parametrize(("config", "body"), REJECTED)
def test_rejected_by_config_is_422(client, issue, redis_server, config, body):
    token = token_of(issue(feedback_config=config))
    _problem(client.post(f"{TOKENS}/{token}", json=body), 422, "invalid_feedback")
    assert stream_entries(redis_server) == []
    # The token is not consumed by a refused submission.
    ok = {"score": 1} if config is None or config["type"] != "freeform" else {"value": "ok"}
    assert client.post(f"{TOKENS}/{token}", json=ok).status_code == 200


@pytest.mark.parametrize(
    "raw",
    [b"not json", b"[1, 2]", b'"string"', b"\xff\xfe{}", b'{"score": NaN}', b'{"score": Infinity}',
     b'{"score": 1, "score": 2}', b'{"score": "1"}', b'{"comment": 5}', b'{"value": [1]}',
     b'{"correction": 3}', b'{"metadata": "m", "score": 1}', b"{" * 40 + b"}" * 40],
)
def test_malformed_bodies_are_400(client, issue, redis_server, raw):
    token = token_of(issue())
    r = client.post(f"{TOKENS}/{token}", content=raw, headers={"Content-Type": "application/json"})
    _problem(r, 400, "invalid_body")
    assert stream_entries(redis_server) == []


def test_langsmith_only_fields_are_accepted(client, issue):
    r = client.post(f"{TOKENS}/{token_of(issue())}",
                    json={"score": 1, "do_not_extend_trace_retention": True})
    assert r.status_code == 200


def test_body_over_64_kib_is_413(client, issue, redis_server):
    token = token_of(issue())
    body = json.dumps({"score": 1, "value": {"pad": "x" * (64 * 1024)}}).encode()
    _problem(client.post(f"{TOKENS}/{token}", content=body, headers={"Content-Type": "application/json"}),
             413, "body_too_large")

    def chunks():
        yield b'{"score": 1, "value": "'
        for _ in range(100):
            yield b"x" * 1024
        yield b'"}'

    _problem(client.post(f"{TOKENS}/{token}", content=chunks(), headers={"Content-Type": "application/json"}),
             413, "body_too_large")
    assert stream_entries(redis_server) == []


def test_form_content_type_is_refused(client, issue):
    r = client.post(f"{TOKENS}/{token_of(issue())}", content=b"score=1",
                    headers={"Content-Type": "multipart/form-data; boundary=x"})
    assert r.status_code == 415 and r.json()["code"] == "unsupported_media_type"


def test_redis_down_is_503_and_nothing_is_consumed(make_app, redis_factory, redis_server):
    own = redis_factory()
    client = make_app(redis_url=own.url)
    answer = issue_token(client)
    token = token_of(answer)
    own.stop()
    r = client.post(f"{TOKENS}/{token}", json={"score": 1})
    _problem(r, 503, "store_unavailable")
    assert int(r.headers["Retry-After"]) > 0
    own.start()
    r = client.post(f"{TOKENS}/{token}", json={"score": 1})
    assert r.status_code == 200 and r.json()["duplicate"] is False
    assert len(stream_entries(own)) == 1
