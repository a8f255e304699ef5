"""Wire compatibility (SPEC 8): the official LangSmith client, and our own, against a live server."""

from __future__ import annotations

import datetime as dt
import json
import uuid
from urllib.parse import urlsplit

import pytest
from conftest import API_KEY, live_env, stream_entries, token_of
from langsmith import Client as LangSmithClient
from langsmith.utils import LangSmithError

from app.client import TOKENS, Client, FeedbackTokensError, submit_target
from app.domain.tokens import b64decode

pytest_plugins = ["support_keys", "support_servers"]  # every test here runs on an ES256 and on an HS256 keyring,
# under uvicorn and under granian


@pytest.fixture
def redis_server(either_redis):  # every test here runs on one Redis and on a Redis Cluster
    return either_redis


@pytest.fixture
def keys_dir(signing_keys):
    return signing_keys  # no test here changes the keyring


@pytest.fixture
def server_kind(any_server):
    return any_server  # live_server starts the app under uvicorn, then under granian


@pytest.fixture
def server(live_server, redis_server, keys_dir):
    return live_server(live_env(redis_server, keys_dir))


@pytest.fixture
def langsmith(server, monkeypatch):
    monkeypatch.setenv("LANGSMITH_TRACING", "false")
    client = LangSmithClient(api_url=f"{server.url}/api/v1", api_key=API_KEY, auto_batch_tracing=False)
    yield client
    client.close()


def test_langsmith_single_token_then_submit_by_token_id(langsmith, redis_server):
    run_id = uuid.uuid4()
    token = langsmith.create_presigned_feedback_token(
        run_id, "user_score", feedback_config={"type": "continuous", "min": 0, "max": 1}
    )
    assert "/api/v1/feedback/tokens/" in token.url
    now = dt.datetime.now(dt.UTC)
    assert dt.timedelta(hours=2, minutes=59) < token.expires_at - now <= dt.timedelta(hours=3)
    langsmith.create_feedback_from_token(token.id, score=0.5, comment="helpful")
    [entry] = stream_entries(redis_server)
    assert entry["run_id"] == str(run_id)
    assert entry["token_id"] == str(token.id)
    assert entry["feedback_key"] == "user_score"
    assert (entry["score"], entry["comment"]) == ("0.5", "helpful")
    # A second, different submission through the SDK is refused.
    with pytest.raises(LangSmithError, match="409"):
        langsmith.create_feedback_from_token(token.id, score=1)
    assert len(stream_entries(redis_server)) == 1


def test_langsmith_expiration_forms(langsmith):
    run_id = uuid.uuid4()
    at = (dt.datetime.now(dt.UTC) + dt.timedelta(days=2)).replace(microsecond=0)
    token = langsmith.create_presigned_feedback_token(run_id, "k", expiration=at)
    assert token.expires_at == at
    token = langsmith.create_presigned_feedback_token(run_id, "k", expiration=dt.timedelta(hours=5))
    delta = token.expires_at - dt.datetime.now(dt.UTC)
    assert dt.timedelta(hours=4, minutes=59) < delta <= dt.timedelta(hours=5)
    with pytest.raises(LangSmithError, match="timedelta"):
        langsmith.create_presigned_feedback_token(run_id, "k", expiration=dt.timedelta(seconds=30))


def test_langsmith_batch_and_list(langsmith, redis_server):
    run_id = uuid.uuid4()
    keys = ["thumbs_up", "thumbs_down", "correctness"]
    tokens = langsmith.create_presigned_feedback_tokens(
        run_id, keys, feedback_configs=[None, None, {"type": "continuous", "min": 0, "max": 1}]
    )
    assert len(tokens) == 3
    listed = list(langsmith.list_presigned_feedback_tokens(run_id))
    assert [t.id for t in listed] == [t.id for t in tokens]
    assert [t.url for t in listed] == [t.url for t in tokens]
    langsmith.create_feedback_from_token(tokens[2].id, score=1)
    assert [e["feedback_key"] for e in stream_entries(redis_server)] == ["correctness"]
    assert len(list(langsmith.list_presigned_feedback_tokens(run_id, limit=2))) == 2


def test_langsmith_lists_more_than_a_page(langsmith):
    run_id = uuid.uuid4()
    made = []
    for _ in range(3):
        made += [t.id for t in langsmith.create_presigned_feedback_tokens(run_id, [f"k{i}" for i in range(50)])]
    listed = [t.id for t in langsmith.list_presigned_feedback_tokens(run_id)]
    assert sorted(map(str, listed)) == sorted(map(str, made)) and len(listed) == 150


def test_own_client_by_url_jwt_and_id(server, redis_server, signing_alg):
    with Client(server.url, api_key=API_KEY) as admin, Client(server.url) as public:
        run_id = uuid.uuid4()
        first = admin.create_presigned_feedback_token(run_id, "by_url")
        second, third = admin.create_presigned_feedback_tokens(run_id, ["by_jwt", "by_id"])
        assert public.create_feedback_from_token(first["url"], score=1)["duplicate"] is False
        jwt = token_of(second)
        assert json.loads(b64decode(jwt.split(".")[0]))["alg"] == signing_alg  # the keyring this run is on
        assert public.create_feedback_from_token(jwt, value="yes")["feedback_key"] == "by_jwt"
        assert public.create_feedback_from_token(uuid.UUID(third["id"]), comment="c")["feedback_key"] == "by_id"
        assert public.create_feedback_from_token(third["id"], comment="c")["duplicate"] is True
        with pytest.raises(FeedbackTokensError) as err:
            public.create_feedback_from_token(third["id"], comment="other")
        assert (err.value.status, err.value.code) == (409, "token_used")
        listed = list(admin.list_presigned_feedback_tokens(run_id))
        assert [t["status"] for t in listed] == ["used", "used", "used"]
        admin.revoke_presigned_feedback_token(first["id"])
        assert [t["status"] for t in admin.list_presigned_feedback_tokens(run_id)][0] == "revoked"
        with pytest.raises(FeedbackTokensError) as err:
            public.create_presigned_feedback_token(run_id, "no key")
        assert err.value.code == "unauthorized"
    assert [e["feedback_key"] for e in stream_entries(redis_server)] == ["by_url", "by_jwt", "by_id"]


def test_own_client_expiration(server):
    with Client(server.url, api_key=API_KEY) as admin:
        token = admin.create_presigned_feedback_token(uuid.uuid4(), "k", expiration=dt.timedelta(days=1, minutes=3))
        delta = dt.datetime.fromisoformat(token["expires_at"]) - dt.datetime.now(dt.UTC)
        assert dt.timedelta(days=1, minutes=2) < delta <= dt.timedelta(days=1, minutes=3)


def test_own_client_takes_every_form_of_a_token(server, redis_server):
    """The URL as issued (``<jwt>/<token id>``), the older URL (``<jwt>``), its path, ``<jwt>/<id>``:
    each reaches its token."""
    with Client(server.url, api_key=API_KEY) as admin, Client(server.url) as public:
        run_id = uuid.uuid4()
        forms = ["url", "old-url", "path", "jwt/id"]
        issued = dict(zip(forms, admin.create_presigned_feedback_tokens(run_id, forms), strict=True))
        targets = {
            "url": issued["url"]["url"],
            "old-url": issued["old-url"]["url"].rsplit("/", 1)[0],
            "path": urlsplit(issued["path"]["url"]).path,
            "jwt/id": f"{token_of(issued['jwt/id'])}/{issued['jwt/id']['id']}",
        }
        for form, target in targets.items():
            answer = public.create_feedback_from_token(target, score=1, comment=form)
            assert (answer["feedback_key"], answer["duplicate"]) == (form, False)
        listed = {t["feedback_key"]: t["status"] for t in admin.list_presigned_feedback_tokens(run_id)}
        assert listed == dict.fromkeys(forms, "used")
    assert [(e["feedback_key"], e["comment"]) for e in stream_entries(redis_server)] == [(f, f) for f in forms]


ID = "8d2c3a51-5bd5-4f4e-9e51-5b7c0c4c1a6e"
JWT = "eyJhbGciOiJFUzI1NiJ9.eyJqdGkiOiJ4In0.c2ln"
SUBMIT_TARGETS = {
    f"https://fb.example.com/api/v1/feedback/tokens/{JWT}/{ID}": f"https://fb.example.com{TOKENS}/{JWT}/{ID}",
    f"https://fb.example.com/api/v1/feedback/tokens/{JWT}": f"https://fb.example.com{TOKENS}/{JWT}",
    f"HTTPS://fb.example.com:8443/prefix/api/v1/feedback/tokens/{JWT}/{ID}?score=1&utm=x#top":
        f"https://fb.example.com:8443/prefix{TOKENS}/{JWT}/{ID}",
    f"  http://127.0.0.1:8000/api/v1/feedback/tokens/{JWT}/{ID}\n": f"http://127.0.0.1:8000{TOKENS}/{JWT}/{ID}",
    f"/api/v1/feedback/tokens/{JWT}/{ID}?score=1": f"{TOKENS}/{JWT}/{ID}",
    JWT: f"{TOKENS}/{JWT}",
    f"{JWT}/{ID}": f"{TOKENS}/{JWT}/{ID}",
    ID: f"{TOKENS}/{ID}",
    f" {ID.upper()} ": f"{TOKENS}/{ID.upper()}",
}
NOT_TARGETS = [
    "", "   ", "a b", "x?y", "x#y", "tab\there",
    f"ftp://fb.example.com/api/v1/feedback/tokens/{JWT}",
    f"//fb.example.com/api/v1/feedback/tokens/{JWT}",
    f"fb.example.com:8000/api/v1/feedback/tokens/{JWT}",
    "https://fb.example.com/somewhere/else",
    "https://fb.example.com/api/v1/feedback/tokens/",
    "https:///api/v1/feedback/tokens/x",
    "/not/a/token/path",
]


@pytest.mark.parametrize("given", SUBMIT_TARGETS)
def test_submit_target_of_each_form(given):
    assert submit_target(given) == SUBMIT_TARGETS[given]


def test_submit_target_of_a_uuid():
    assert submit_target(uuid.UUID(ID)) == f"{TOKENS}/{ID}"


@pytest.mark.parametrize("given", NOT_TARGETS)
def test_what_is_no_token_is_refused_before_sending(given):
    with pytest.raises(ValueError):
        submit_target(given)
    # The client refuses it too, with no server to send to: nothing is sent.
    with Client("http://127.0.0.1:9") as public, pytest.raises(ValueError):
        public.create_feedback_from_token(given, score=1)
