"""Replay: one token, one feedback, however it is spelled and however many send it at once.

Consumption is keyed on the token id inside the signed claims, never on the string in the URL:
the same token can arrive in several spellings that all verify (base64url padding, the unused
low bits of the signature's last character, ECDSA's (r, n - s) twin signature, the token id in
its UUID spellings). Each must see the token as used once any one of them used it.
"""

from __future__ import annotations

import asyncio
import json
import uuid
from collections import Counter
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import layout
import pytest
from conftest import API_KEY, TOKENS, LiveServer, RedisServer, issue_token, stream_entries, token_of

from app.domain import tokens
from app.keys.keyring import KeyringDir

AUTH = {"X-API-Key": API_KEY}
P256_ORDER = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
_ALPHABET = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


def low_bit_twins(segment: str) -> list[str]:
    """Other spellings of a base64url segment whose last character's unused bits differ: a
    lenient decoder gives the same bytes for each."""
    spare = {2: 4, 3: 2}.get(len(segment) % 4, 0)  # unused bits in the last character
    last = _ALPHABET.index(segment[-1])
    return [segment[:-1] + _ALPHABET[(last & ~((1 << spare) - 1)) | low] for low in range(1, 1 << spare)
            if _ALPHABET[(last & ~((1 << spare) - 1)) | low] != segment[-1]]


def high_s_twin(token: str) -> str:
    """ES256: (r, s) and (r, n - s) are both valid signatures of the same message."""
    head, body, sig = token.split(".")
    raw = tokens.b64decode(sig)
    r, s = int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big")
    twin = r.to_bytes(32, "big") + (P256_ORDER - s).to_bytes(32, "big")
    return f"{head}.{body}.{tokens.b64encode(twin)}"


def spellings(answer: dict[str, Any]) -> dict[str, str]:
    jwt = token_of(answer)
    head, body, sig = jwt.split(".")
    token_id = uuid.UUID(answer["id"])
    variants = {
        "jwt": jwt,
        "sig-padding-=": f"{jwt}=",
        "sig-padding-==": f"{jwt}==",
        "id": str(token_id),
        "id-uppercase": str(token_id).upper(),
        "id-hex": token_id.hex,
        "id-hex-uppercase": token_id.hex.upper(),
        "percent-encoded-dots": jwt.replace(".", "%2E"),
        "percent-encoded-letter": f"%{ord(jwt[0]):02X}{jwt[1:]}",
    }
    for i, twin in enumerate(low_bit_twins(sig)):
        variants[f"sig-last-char-{i}"] = f"{head}.{body}.{twin}"
        variants[f"sig-last-char-{i}-padded"] = f"{head}.{body}.{twin}=="
    # The URL form as issued, <jwt>/<token id>, with each spelling of either part.
    variants.update({
        "jwt/id": f"{jwt}/{token_id}",
        "jwt/id-uppercase": f"{jwt}/{str(token_id).upper()}",
        "jwt/id-hex": f"{jwt}/{token_id.hex}",
        "jwt-padded/id": f"{jwt}==/{token_id}",
        "jwt-percent-encoded-dots/id": f"{jwt.replace('.', '%2E')}/{token_id}",
        "jwt/id-percent-encoded-dashes": f"{jwt}/{str(token_id).replace('-', '%2D')}",
        "jwt-percent-encoded-slash-id": f"{jwt}%2F{token_id}",
        "sig-last-char-0/id": f"{head}.{body}.{low_bit_twins(sig)[0]}/{token_id}",
    })
    return variants


def used_markers(server: RedisServer) -> set[str]:
    return layout.used_tokens(server.client())


@pytest.fixture
def es256_client(make_app, keys_dir):
    ring = KeyringDir(keys_dir)
    ring.activate(ring.new("ES256"))
    return make_app()


@pytest.mark.parametrize("first", ["jwt", "jwt/id", "sig-padding-==", "id-hex-uppercase", "sig-last-char-0",
                                   "jwt/id-hex"])
def test_every_spelling_is_one_token(client, redis_server, first):
    answer = issue_token(client)
    variants = spellings(answer)
    assert len(variants) >= 20  # the unused low bits give at least three more spellings
    body = {"score": 1, "comment": "first"}
    r = client.post(f"{TOKENS}/{variants[first]}", json=body)
    assert r.status_code == 200 and r.json()["duplicate"] is False
    feedback_id = r.json()["id"]
    for name, spelling in variants.items():
        url = f"{TOKENS}/{spelling}"
        different = client.post(url, json={"score": 0})
        assert different.status_code == 409, (name, different.text)
        assert different.json()["code"] == "token_used"
        link = client.get(url, params={"score": "0"})
        assert link.status_code == 409, (name, link.text)
        retry = client.post(url, json=body)  # the identical submission: a client's retry
        assert retry.status_code == 200 and retry.json()["duplicate"] is True, name
        assert retry.json()["id"] == feedback_id
    entries = stream_entries(redis_server)
    assert len(entries) == 1 and entries[0]["token_id"] == answer["id"]
    assert used_markers(redis_server) == {answer["id"]}


def test_ecdsa_twin_signature_is_the_same_token(es256_client, redis_server):
    client = es256_client
    answer = issue_token(client)
    jwt = token_of(answer)
    assert json.loads(tokens.b64decode(jwt.split(".")[0]))["alg"] == "ES256"
    twin = high_s_twin(jwt)
    assert twin != jwt
    # The twin verifies (ECDSA allows it): it is the same token, so it gets the same answer.
    r = client.post(f"{TOKENS}/{twin}", json={"score": 1})
    assert r.status_code == 200 and r.json()["duplicate"] is False
    for spelling in (jwt, twin, f"{twin}=", answer["id"], f"{twin}/{answer['id']}", f"{jwt}/{answer['id']}"):
        assert client.post(f"{TOKENS}/{spelling}", json={"score": 0}).status_code == 409
        assert client.post(f"{TOKENS}/{spelling}", json={"score": 1}).json()["duplicate"] is True
    assert len(stream_entries(redis_server)) == 1


def test_a_refused_submission_consumes_nothing_in_any_spelling(client, redis_server):
    answer = issue_token(client, feedback_config={"type": "continuous", "min": 0, "max": 1})
    for name, spelling in spellings(answer).items():
        r = client.post(f"{TOKENS}/{spelling}", json={"score": 5})
        assert r.status_code == 422, name
    assert stream_entries(redis_server) == [] and used_markers(redis_server) == set()
    assert client.post(f"{TOKENS}/{answer['id']}", json={"score": 1}).status_code == 200


def test_revocation_covers_every_spelling(client, redis_server):
    answer = issue_token(client)
    assert client.delete(f"{TOKENS}/{answer['id'].upper()}", headers=AUTH).status_code == 204
    for name, spelling in spellings(answer).items():
        r = client.post(f"{TOKENS}/{spelling}", json={"score": 1})
        assert r.status_code == 410 and r.json()["code"] == "token_revoked", name
    assert stream_entries(redis_server) == []


def test_head_never_consumes_in_any_spelling(client, redis_server):
    answer = issue_token(client)
    for spelling in spellings(answer).values():
        assert client.head(f"{TOKENS}/{spelling}", params={"score": "1"}).status_code == 200
    assert stream_entries(redis_server) == [] and used_markers(redis_server) == set()


# -- concurrency, against the real server ----------------------------------------------------------
# Several uvicorn worker processes share one Redis; many clients race on the same token.

WORKERS = 3
RACERS = 40


@pytest.fixture(scope="module")
def server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveServer, RedisServer]]:
    own = RedisServer().start()
    keys = tmp_path_factory.mktemp("replay") / "keys"
    KeyringDir(keys).init()
    live = LiveServer(
        {"REDIS_URL": own.url, "FEEDBACK_KEYS_DIR": str(keys), "FEEDBACK_API_KEYS": API_KEY}, workers=WORKERS
    )
    try:
        yield live, own
    finally:
        live.stop()
        own.cleanup()


async def race(base: str, requests: list[tuple[str, str, dict[str, Any]]]) -> list[httpx.Response]:
    """Open one connection per request first, then send them all at once."""
    limits = httpx.Limits(max_connections=len(requests), max_keepalive_connections=len(requests))
    async with httpx.AsyncClient(base_url=base, limits=limits, timeout=30) as client:
        await asyncio.gather(*(client.get("/healthz") for _ in requests))
        start = asyncio.Event()

        async def one(method: str, url: str, kwargs: dict[str, Any]) -> httpx.Response:
            await start.wait()
            return await client.request(method, url, **kwargs)

        tasks = [asyncio.ensure_future(one(*r)) for r in requests]
        await asyncio.sleep(0)
        start.set()
        return list(await asyncio.gather(*tasks))


def entries_for(own: RedisServer, token_id: str) -> list[dict[str, str]]:
    return [e for e in stream_entries(own) if e["token_id"] == token_id]


def outcome(r: httpx.Response) -> str:
    if r.status_code == 200:
        return "duplicate" if r.json()["duplicate"] else "recorded"
    return r.json()["code"]


def test_identical_racers_record_once(server):
    live, own = server
    with httpx.Client(base_url=live.url) as http:
        answer = issue_token(http)
    url = urlsplit(answer["url"]).path  # as issued: <jwt>/<token id>
    responses = asyncio.run(race(live.url, [("POST", url, {"json": {"score": 1}})] * RACERS))
    counts = Counter(outcome(r) for r in responses)
    assert counts == {"recorded": 1, "duplicate": RACERS - 1}
    ids = {r.json()["id"] for r in responses}
    [entry] = entries_for(own, answer["id"])
    assert ids == {entry["id"]}


def test_different_racers_one_wins_the_rest_409(server):
    live, own = server
    with httpx.Client(base_url=live.url) as http:
        answer = issue_token(http)
    url = f"{TOKENS}/{token_of(answer)}"
    requests = [("POST", url, {"json": {"score": i, "comment": f"racer {i}"}}) for i in range(RACERS)]
    responses = asyncio.run(race(live.url, requests))
    counts = Counter(outcome(r) for r in responses)
    assert counts == {"recorded": 1, "token_used": RACERS - 1}
    [winner] = [r for r in responses if r.status_code == 200]
    [entry] = entries_for(own, answer["id"])
    assert entry["comment"] == winner.json()["comment"]


def test_mixed_racers_duplicates_only_of_the_winner(server):
    live, own = server
    with httpx.Client(base_url=live.url) as http:
        answer = issue_token(http)
    jwt = token_of(answer)
    same = {"score": 1, "comment": "same"}
    requests = []
    for i in range(RACERS):
        # half send one body, the others each their own; spelled in every way the URL allows
        spelled = [f"{jwt}/{answer['id']}", jwt, jwt + "==", answer["id"], uuid.UUID(answer["id"]).hex]
        url = f"{TOKENS}/{spelled[i % len(spelled)]}"
        requests.append(("POST", url, {"json": same if i % 2 else {"score": 0, "comment": f"racer {i}"}}))
    responses = asyncio.run(race(live.url, requests))
    counts = Counter(outcome(r) for r in responses)
    assert counts["recorded"] == 1 and set(counts) <= {"recorded", "duplicate", "token_used"}
    [winner] = [i for i, r in enumerate(responses) if outcome(r) == "recorded"]
    winning_body = requests[winner][2]["json"]
    for (_, _, kwargs), r in zip(requests, responses, strict=True):
        if kwargs["json"] == winning_body:
            assert outcome(r) in ("recorded", "duplicate")
        else:
            assert outcome(r) == "token_used"
    [entry] = entries_for(own, answer["id"])
    assert entry["comment"] == winning_body["comment"]


def test_get_links_and_posts_race(server):
    live, own = server
    with httpx.Client(base_url=live.url) as http:
        answer = issue_token(http)
    jwt = token_of(answer)
    requests: list[tuple[str, str, dict[str, Any]]] = []
    for i in range(RACERS):
        url = f"{TOKENS}/{jwt}" + (f"/{answer['id']}" if i % 2 else "")  # as issued, and the older form
        if i % 3 == 0:
            requests.append(("GET", url, {"params": {"score": "1", "utm_source": f"m{i}"}}))
        elif i % 3 == 1:
            requests.append(("POST", url, {"json": {"score": 0}}))
        else:  # link previews and monitors: never consume
            requests.append(("HEAD", url, {"params": {"score": "1"}}))
    responses = asyncio.run(race(live.url, requests))
    consuming = [(m, r) for (m, _, _), r in zip(requests, responses, strict=True) if m != "HEAD"]
    assert all(r.status_code == 200 for (m, _, _), r in zip(requests, responses, strict=True) if m == "HEAD")
    counts = Counter(outcome(r) for _, r in consuming)
    assert counts["recorded"] == 1
    [winner] = [m for m, r in consuming if outcome(r) == "recorded"]
    for method, r in consuming:
        assert outcome(r) in (("recorded", "duplicate") if method == winner else ("token_used",))
    [entry] = entries_for(own, answer["id"])
    assert entry["score"] == ("1" if winner == "GET" else "0")
