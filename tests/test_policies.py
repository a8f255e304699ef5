"""Use policies chosen at issuance (once, update, many), the uses count, and the read-only info."""

from __future__ import annotations

import json
import threading
import uuid
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest
from conftest import API_KEY, TOKENS, issue_token, live_env, stream_entries, token_of

from app.domain.tokens import b64decode

AUTH = {"X-API-Key": API_KEY}
THUMBS = {"type": "continuous", "min": 0, "max": 1}


def _problem(response, status, code):
    assert response.status_code == status, response.text
    assert response.json()["code"] == code
    return response.json()


def _claims(answer):
    return json.loads(b64decode(token_of(answer).split(".")[1]))


def _list_one(client, answer):
    r = client.get(TOKENS, params={"run_id": answer["run_id"]}, headers=AUTH)
    assert r.status_code == 200
    [item] = [t for t in r.json() if t["id"] == answer["id"]]
    return item


# -- issuance ----------------------------------------------------------------------------------------


def test_a_default_token_carries_no_policy_claims(issue):
    plain = issue()
    explicit = issue(use="once", max_uses=None, confirm=False, redirect_url=None)
    for answer in (plain, explicit):
        assert set(_claims(answer)) == {"jti", "iss", "iat", "exp", "run", "key"}
        assert set(answer) == {"id", "url", "expires_at", "run_id", "feedback_key", "feedback_config"}
    # Same claims, same length: the defaults cost nothing in the URL.
    assert len(token_of(plain)) == len(token_of(explicit))


def test_policy_claims_are_short_and_echoed_in_the_answer(issue):
    answer = issue(use="many", max_uses=3, confirm=True)
    claims = _claims(answer)
    assert {k: claims[k] for k in ("use", "cap", "cf")} == {"use": "m", "cap": 3, "cf": 1}
    assert (answer["use"], answer["max_uses"], answer["confirm"]) == ("many", 3, True)
    assert _claims(issue(use="update"))["use"] == "u"


@pytest.mark.parametrize(
    "fields",
    [
        {"use": "twice"},
        {"use": 1},
        {"max_uses": 2},  # once
        {"use": "update", "max_uses": 2},
        {"use": "many", "max_uses": 0},
        {"use": "many", "max_uses": "3"},
        {"use": "many", "max_uses": True},
        {"use": "many", "max_uses": 2.0},
        {"confirm": "yes"},
        {"confirm": 1},
        {"use": "many", "id": "6f1f4a52-3b0a-4cde-9a57-5a0e1f7a3c11"},
        {"uses": "many"},  # a typo is an unknown field
    ],
)
def test_malformed_policy_fields_are_422(client, fields):
    body = {"run_id": str(uuid.uuid4()), "feedback_key": "k", **fields}
    _problem(client.post(TOKENS, json=body, headers=AUTH), 422, "invalid_request")


# -- once --------------------------------------------------------------------------------------------


def test_once_is_the_default_and_keeps_section_2(client, issue, redis_server):
    url = f"{TOKENS}/{token_of(issue(use='once'))}"
    first = client.post(url, json={"score": 1}).json()
    assert "revision" not in first
    assert client.post(url, json={"score": 1}).json() == {**first, "duplicate": True}
    _problem(client.post(url, json={"score": 0}), 409, "token_used")
    [entry] = stream_entries(redis_server)
    assert "revision" not in entry


# -- update ------------------------------------------------------------------------------------------


def test_update_keeps_the_feedback_id_and_raises_the_revision(client, issue, redis_server):
    answer = issue(use="update", feedback_config=THUMBS)
    url = f"{TOKENS}/{token_of(answer)}"
    up = client.post(url, json={"score": 1}).json()
    down = client.post(url, json={"score": 0, "comment": "changed my mind"}).json()
    assert (up["revision"], down["revision"]) == (1, 2)
    assert up["id"] == down["id"] == answer["id"]
    assert not up["duplicate"] and not down["duplicate"]
    # Resending the answer that stands is a retry: same answer, nothing appended.
    again = client.post(url, json={"score": 0, "comment": "changed my mind"}).json()
    assert again == {**down, "duplicate": True}
    # Going back to an earlier answer is a change like any other.
    back = client.post(url, json={"score": 1}).json()
    assert back["revision"] == 3 and not back["duplicate"]
    entries = stream_entries(redis_server)
    assert [(e["id"], e["score"], e["revision"]) for e in entries] == [
        (answer["id"], "1", "1"), (answer["id"], "0", "2"), (answer["id"], "1", "3"),
    ]
    item = _list_one(client, answer)
    assert (item["status"], item["uses"], item["use"]) == ("active", 3, "update")


def test_update_still_checks_values_and_revocation(client, issue, redis_server):
    answer = issue(use="update", feedback_config=THUMBS)
    url = f"{TOKENS}/{token_of(answer)}"
    assert client.post(url, json={"score": 1}).status_code == 200
    _problem(client.post(url, json={"score": 7}), 422, "invalid_feedback")
    assert client.delete(f"{TOKENS}/{answer['id']}", headers=AUTH).status_code == 204
    _problem(client.post(url, json={"score": 0}), 410, "token_revoked")
    assert len(stream_entries(redis_server)) == 1


def test_concurrent_changes_the_streams_last_revision_is_the_one_reported(live_server, redis_server, keys_dir):
    server = live_server(live_env(redis_server, keys_dir), workers=2)
    with httpx.Client(base_url=server.url, timeout=10) as http:
        answer = issue_token(http, use="update", feedback_config={"type": "continuous", "min": 0, "max": 100})
        url = f"{TOKENS}/{token_of(answer)}"
        start = threading.Barrier(16)

        def change(score: int) -> dict:
            start.wait()
            r = http.post(url, json={"score": score})
            assert r.status_code == 200, r.text
            return r.json()

        with ThreadPoolExecutor(16) as pool:
            answers = list(pool.map(change, range(1, 17)))
        info = http.get(f"{url}/info").json()
        listed = http.get(TOKENS, params={"run_id": answer["run_id"]}, headers=AUTH).json()

    entries = [e for e in stream_entries(redis_server) if e["token_id"] == answer["id"]]
    # Every change got its own revision, and the stream holds them in revision order.
    assert sorted(a["revision"] for a in answers) == list(range(1, 17))
    assert [int(e["revision"]) for e in entries] == list(range(1, 17))
    last = entries[-1]
    by_revision = {a["revision"]: a for a in answers}
    assert by_revision[16]["score"] == float(last["score"])
    assert info["latest"]["revision"] == int(last["revision"]) == 16
    assert info["latest"]["score"] == float(last["score"])
    assert info["uses"] == listed[0]["uses"] == 16


# -- many --------------------------------------------------------------------------------------------


def test_many_gives_each_submission_its_own_feedback(client, issue, redis_server):
    answer = issue(use="many")
    url = f"{TOKENS}/{token_of(answer)}"
    got = [client.post(url, json={"score": 1}).json() for _ in range(3)]
    assert len({g["id"] for g in got}) == 3 and answer["id"] not in {g["id"] for g in got}
    assert not any(g["duplicate"] for g in got) and all("revision" not in g for g in got)
    entries = stream_entries(redis_server)
    assert [e["id"] for e in entries] == [g["id"] for g in got]
    assert {e["token_id"] for e in entries} == {answer["id"]}
    item = _list_one(client, answer)
    assert (item["status"], item["uses"]) == ("active", 3)


def test_many_with_a_cap_refuses_past_it(client, issue, redis_server):
    answer = issue(use="many", max_uses=2)
    url = f"{TOKENS}/{token_of(answer)}"
    assert client.post(url, json={"score": 1}).status_code == 200
    assert client.post(url, json={"score": 0}).status_code == 200
    _problem(client.post(url, json={"score": 1}), 409, "token_used")
    _problem(client.get(url, params={"score": "1"}), 409, "token_used")
    assert len(stream_entries(redis_server)) == 2
    item = _list_one(client, answer)
    assert (item["status"], item["uses"], item["max_uses"]) == ("used", 2, 2)


def test_many_cap_holds_under_concurrency(live_server, redis_server, keys_dir):
    server = live_server(live_env(redis_server, keys_dir), workers=2)
    with httpx.Client(base_url=server.url, timeout=10) as http:
        answer = issue_token(http, use="many", max_uses=3)
        url = f"{TOKENS}/{token_of(answer)}"
        start = threading.Barrier(12)

        def submit(i: int) -> int:
            start.wait()
            return http.post(url, json={"score": i}).status_code

        with ThreadPoolExecutor(12) as pool:
            statuses = list(pool.map(submit, range(12)))
    assert sorted(statuses) == [200] * 3 + [409] * 9
    assert len(stream_entries(redis_server)) == 3


# -- listing and info --------------------------------------------------------------------------------


def test_listing_shows_uses_beside_the_existing_fields(client, issue, clock):
    run = str(uuid.uuid4())
    once = issue(run_id=run)
    clock.advance(1)
    update = issue(run_id=run, use="update")
    client.post(f"{TOKENS}/{token_of(once)}", json={"score": 1})
    for score in (1, 0):
        client.post(f"{TOKENS}/{token_of(update)}", json={"score": score})
    listed = client.get(TOKENS, params={"run_id": run}, headers=AUTH).json()
    assert [(t["status"], t["uses"]) for t in listed] == [("used", 1), ("active", 2)]
    for item, issued in zip(listed, (once, update), strict=True):
        assert {k: item[k] for k in issued} == issued and item["created_at"]


def test_info_tells_what_a_page_needs_and_consumes_nothing(client, issue, redis_server):
    answer = issue(feedback_config=THUMBS, use="update", expires_in={"hours": 2})
    for spelling in (token_of(answer), answer["id"], uuid.UUID(answer["id"]).hex):
        r = client.get(f"{TOKENS}/{spelling}/info", headers={"Origin": "https://elsewhere.example"})
        assert r.status_code == 200
        assert r.headers["access-control-allow-origin"] == "*"
        assert r.json() == {
            "id": answer["id"], "run_id": answer["run_id"], "feedback_key": "user_score",
            "feedback_config": THUMBS, "expires_at": answer["expires_at"], "use": "update",
            "max_uses": None, "confirm": False, "status": "active", "uses": 0, "latest": None,
        }
    assert stream_entries(redis_server) == []
    client.post(f"{TOKENS}/{answer['id']}", json={"score": 0, "comment": "meh"})
    info = client.get(f"{TOKENS}/{token_of(answer)}/info").json()
    assert info["uses"] == 1 and info["status"] == "active"
    assert info["latest"]["score"] == 0 and info["latest"]["comment"] == "meh"
    assert info["latest"]["revision"] == 1


def test_info_reports_used_revoked_and_expired(client, issue, clock):
    used, revoked, expiring = issue(), issue(), issue(expires_in={"minutes": 1})
    client.post(f"{TOKENS}/{token_of(used)}", json={"score": 1})
    client.delete(f"{TOKENS}/{revoked['id']}", headers=AUTH)
    clock.advance(3600)  # well past expiry and the leeway: submitting would be 410
    _problem(client.post(f"{TOKENS}/{token_of(expiring)}", json={"score": 1}), 410, "token_expired")
    got = {
        name: client.get(f"{TOKENS}/{token_of(a)}/info").json()
        for name, a in (("used", used), ("revoked", revoked), ("expired", expiring))
    }
    assert {name: (g["status"], g["uses"]) for name, g in got.items()} == {
        "used": ("used", 1), "revoked": ("revoked", 0), "expired": ("expired", 0),
    }
    assert got["used"]["latest"] is None  # only 'update' shows the standing answer


def test_info_of_something_that_is_not_a_token(client):
    _problem(client.get(f"{TOKENS}/garbage/info"), 401, "token_invalid")
    _problem(client.get(f"{TOKENS}/{uuid.uuid4()}/info"), 404, "token_not_found")
