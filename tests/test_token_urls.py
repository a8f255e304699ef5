"""Token URLs the LangSmith SDKs accept (issue 10): ``<base>/api/v1/feedback/tokens/<jwt>/<token id>``.

The published pattern passes the presigned URL, not the id, to the SDK:

    presigned = client.create_presigned_feedback_token(run_id, feedback_key="...")
    client.create_feedback_from_token(presigned.url, score, comment=comment)

The SDK takes the URL's last path segment, requires a UUID, and POSTs to
``<api_url>/feedback/tokens/<uuid>``: a lookup by id. Here the issuing client holds the API key
(a backend) and the submitting one holds none that is valid (a front end); the token is then
found used by an admin listing and in the stream. The JS SDK has no call that submits from a
token, so JS users POST to the URL with ``fetch``: that is tested too. URLs of the older form
(``.../tokens/<jwt>``) keep working until their token expires.
"""

from __future__ import annotations

import asyncio
import json
import os
import uuid
from collections.abc import Iterator
from typing import Any
from urllib.parse import urlsplit

import httpx
import pytest
from conftest import API_KEY, TOKENS, live_env, path_of, stream_entries, token_of
from langsmith import AsyncClient as LangSmithAsyncClient
from langsmith import Client as LangSmithClient
from langsmith.utils import LangSmithError, LangSmithUserError

from app.domain import tokens
from app.keys.keyring import KeyringDir

pytest_plugins = ["support_js", "support_keys", "support_servers"]  # every SDK test runs on an ES256 and on an
# HS256 keyring, under uvicorn and under granian

AUTH = {"X-API-Key": API_KEY}
CONTINUOUS = {"type": "continuous", "min": 0, "max": 1}
# What a front end holds: no API key at all ("" also keeps the SDK from reading one from the
# environment), or something that is not one of ours.
FRONT_END_KEYS = {"no-key": "", "wrong-key": "lsv2_pt_not-a-key-of-this-service"}


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
def sdk_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """No LangSmith credentials or tracing from the environment: each client holds only what it is given."""
    for name in list(os.environ):
        if name.startswith(("LANGSMITH_", "LANGCHAIN_")):
            monkeypatch.delenv(name)
    monkeypatch.setenv("LANGSMITH_TRACING", "false")


@pytest.fixture
def admin(server, sdk_env) -> Iterator[LangSmithClient]:
    client = LangSmithClient(api_url=f"{server.url}/api/v1", api_key=API_KEY, auto_batch_tracing=False)
    yield client
    client.close()


def front_end(server: Any, key: str | None) -> LangSmithClient:
    return LangSmithClient(api_url=f"{server.url}/api/v1", api_key=key, auto_batch_tracing=False)


def listed(server: Any, run_id: uuid.UUID | str) -> list[dict[str, Any]]:
    r = httpx.get(f"{server.url}{TOKENS}", params={"run_id": str(run_id)}, headers=AUTH)
    assert r.status_code == 200, r.text
    return r.json()  # type: ignore[no-any-return]


def last_segment(url: str) -> str:
    return urlsplit(url).path.rsplit("/", 1)[1]


def jti_of(jwt: str) -> uuid.UUID:
    claims = json.loads(tokens.b64decode(jwt.split(".")[1]))
    return uuid.UUID(bytes=tokens.b64decode(claims["jti"]))


def check_used_once(server: Any, redis_server: Any, token_id: str, run_id: str, score: str, comment: str) -> None:
    """An admin listing shows the token used once, and the stream holds its one entry."""
    [row] = [t for t in listed(server, run_id) if t["id"] == token_id]
    assert (row["status"], row["uses"]) == ("used", 1)
    [entry] = [e for e in stream_entries(redis_server) if e["token_id"] == token_id]
    assert (entry["run_id"], entry["score"], entry["comment"]) == (run_id, score, comment)
    assert uuid.UUID(entry["id"]) != uuid.UUID(token_id)  # the feedback id the SDK chose at issuance


# -- the issued URL ----------------------------------------------------------------------------------


def test_issued_url_is_the_jwt_then_the_token_id(client, issue):
    answer = issue(feedback_config=CONTINUOUS)
    path = urlsplit(answer["url"]).path
    prefix, jwt, token_id = path.rsplit("/", 2)
    assert prefix == TOKENS and token_id == answer["id"]
    assert jti_of(jwt) == uuid.UUID(answer["id"])  # the id in the URL is the token's own
    assert token_of(answer) == jwt and path_of(answer) == path
    listed_url = client.get(TOKENS, params={"run_id": answer["run_id"]}, headers=AUTH).json()[0]["url"]
    assert listed_url == answer["url"]


# -- the official Python SDK -------------------------------------------------------------------------


@pytest.mark.parametrize("key", FRONT_END_KEYS.values(), ids=FRONT_END_KEYS.keys())
def test_python_sdk_published_pattern(server, redis_server, admin, key):
    run_id = uuid.uuid4()
    presigned = admin.create_presigned_feedback_token(run_id, feedback_key="user_score", feedback_config=CONTINUOUS)
    assert last_segment(presigned.url) == str(presigned.id)
    front = front_end(server, key)
    try:
        front.create_feedback_from_token(presigned.url, 0.8, comment="clear and correct")
        check_used_once(server, redis_server, str(presigned.id), str(run_id), "0.8", "clear and correct")
        # The SDK's retry of the same submission is answered, not counted again; another is refused.
        front.create_feedback_from_token(presigned.url, 0.8, comment="clear and correct")
        with pytest.raises(LangSmithError, match="409"):
            front.create_feedback_from_token(presigned.url, 0.1, comment="changed my mind")
    finally:
        front.close()
    assert len(stream_entries(redis_server)) == 1


def test_python_sdk_refuses_old_form_urls_before_sending(server, redis_server, admin):
    """Why URLs end in the token id now: the SDK reads the last segment and wants a UUID. A URL
    of the older form (``.../tokens/<jwt>``) fails in the SDK, before any request."""
    presigned = admin.create_presigned_feedback_token(uuid.uuid4(), feedback_key="user_score")
    old_form = presigned.url.rsplit("/", 1)[0]
    front = front_end(server, "")
    try:
        with pytest.raises(LangSmithUserError, match="UUID"):
            front.create_feedback_from_token(old_form, 1)
    finally:
        front.close()
    assert stream_entries(redis_server) == []
    # The same old-form URL still works for anything that POSTs to it (a page, curl, our client).
    assert httpx.post(old_form, json={"score": 1}).status_code == 200


@pytest.mark.parametrize("key", FRONT_END_KEYS.values(), ids=FRONT_END_KEYS.keys())
def test_python_async_sdk_published_pattern(server, redis_server, sdk_env, key):
    assert hasattr(LangSmithAsyncClient, "create_presigned_feedback_token")
    assert hasattr(LangSmithAsyncClient, "create_feedback_from_token")
    api_url = f"{server.url}/api/v1"
    run_id = uuid.uuid4()

    async def scenario() -> Any:
        admin = LangSmithAsyncClient(api_url=api_url, api_key=API_KEY)
        front = LangSmithAsyncClient(api_url=api_url, api_key=key)
        try:
            presigned = await admin.create_presigned_feedback_token(
                run_id, feedback_key="user_score", feedback_config=CONTINUOUS
            )
            await front.create_feedback_from_token(presigned.url, 1, comment="async front end")
            await front.create_feedback_from_token(presigned.url, 1, comment="async front end")  # a retry
            with pytest.raises(LangSmithError, match="409"):
                await front.create_feedback_from_token(presigned.url, 0)
            return presigned
        finally:
            await front.aclose()
            await admin.aclose()

    presigned = asyncio.run(scenario())
    assert last_segment(presigned.url) == str(presigned.id)
    check_used_once(server, redis_server, str(presigned.id), str(run_id), "1", "async front end")
    assert len(stream_entries(redis_server)) == 1


# -- the official JS SDK -----------------------------------------------------------------------------

JS_FRONT_END = """
import { Client } from "langsmith";

const admin = new Client({ apiUrl: process.env.FBT_API_URL, apiKey: process.env.FBT_API_KEY });
const runId = crypto.randomUUID();
const token = await admin.createPresignedFeedbackToken(runId, "user_score", {
  feedbackConfig: { type: "continuous", min: 0, max: 1 },
});
// What JS users do: the SDK has no call that submits from a token, so a page (or a server) POSTs
// JSON to the token's url, with no credential at all.
async function submit(body) {
  const r = await fetch(token.url, {
    method: "POST", headers: { "Content-Type": "application/json" }, body: JSON.stringify(body),
  });
  return { status: r.status, body: await r.json() };
}
const first = await submit({ score: 1, comment: "from node" });
const retry = await submit({ score: 1, comment: "from node" });
const other = await submit({ score: 0 });
const methods = Object.getOwnPropertyNames(Client.prototype)
  .filter((name) => /token/i.test(name) && /feedback/i.test(name))
  .sort();
console.log(JSON.stringify({ token, runId, first, retry, other, methods }));
"""


def test_js_sdk_issues_and_fetch_posts_to_the_url(server, redis_server, node, sdk_env):
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LANGSMITH_", "LANGCHAIN_"))}
    run = node(JS_FRONT_END, {**env, "FBT_API_URL": f"{server.url}/api/v1", "FBT_API_KEY": API_KEY})
    assert run.returncode == 0, run.stderr
    out = json.loads(run.stdout)
    # The pinned JS SDK's token methods: issuing and listing only, nothing that submits.
    assert out["methods"] == ["createPresignedFeedbackToken", "listPresignedFeedbackTokens"]
    token = out["token"]
    assert last_segment(token["url"]) == token["id"]
    assert out["first"]["status"] == 200 and out["first"]["body"]["duplicate"] is False
    assert out["retry"]["status"] == 200 and out["retry"]["body"]["duplicate"] is True
    assert (out["other"]["status"], out["other"]["body"]["code"]) == (409, "token_used")
    [row] = listed(server, out["runId"])
    assert (row["id"], row["status"], row["uses"]) == (token["id"], "used", 1)
    [entry] = stream_entries(redis_server)
    assert (entry["token_id"], entry["score"], entry["comment"]) == (token["id"], "1", "from node")


# -- URLs of the older form ------------------------------------------------------------------------


def pre_change_token(keys_dir: Any, now: float, lifetime: int = 3600) -> str:
    """A token as issued before URLs ended in the id (and before sharding): a version 4 token id,
    no record in the store, signed by the active key; its URL was ``.../tokens/<jwt>``."""
    signer = KeyringDir(keys_dir).load().signer
    assert signer is not None
    claims = tokens.TokenClaims(
        token_id=uuid.uuid4(), run_id=uuid.uuid4(), feedback_key="user_score", feedback_id=uuid.uuid4(),
        issued_at=int(now), expires_at=int(now) + lifetime,
    )
    return tokens.sign(claims, signer, "fbt")


def test_old_form_urls_keep_working_and_are_the_same_token(client, issue, redis_server):
    answer = issue()
    jwt = token_of(answer)
    r = client.get(f"{TOKENS}/{jwt}", params={"score": "1"})  # an old-form link, clicked
    assert r.status_code == 200 and r.json()["duplicate"] is False
    # The URL as issued, the id alone and the old form: one token, used once.
    for path in (path_of(answer), f"{TOKENS}/{answer['id']}", f"{TOKENS}/{jwt}"):
        assert client.post(path, json={"score": 1}).json()["duplicate"] is True
        assert client.post(path, json={"score": 0}).json()["code"] == "token_used"
    assert [e["token_id"] for e in stream_entries(redis_server)] == [answer["id"]]


def test_tokens_issued_before_the_change_work_in_both_forms(client, keys_dir, clock, redis_server):
    jwt = pre_change_token(keys_dir, clock.now())
    token_id = jti_of(jwt)
    info = client.get(f"{TOKENS}/{jwt}/info")
    assert info.status_code == 200 and info.json()["id"] == str(token_id)
    assert client.get(f"{TOKENS}/{jwt}/{token_id}/info").json() == info.json()
    r = client.post(f"{TOKENS}/{jwt}", json={"score": 1, "comment": "old link"})
    assert r.status_code == 200 and r.json()["duplicate"] is False
    again = client.post(f"{TOKENS}/{jwt}/{token_id}", json={"score": 1, "comment": "old link"})
    assert again.status_code == 200 and again.json()["duplicate"] is True
    other = client.post(f"{TOKENS}/{jwt}/{token_id}", json={"score": 0})
    assert (other.status_code, other.json()["code"]) == (409, "token_used")
    assert [e["token_id"] for e in stream_entries(redis_server)] == [str(token_id)]


def test_old_form_urls_stop_when_their_token_expires(client, issue, keys_dir, clock, redis_server):
    answer = issue(expires_in={"minutes": 1})
    old = pre_change_token(keys_dir, clock.now(), lifetime=60)
    within = [f"{TOKENS}/{token_of(answer)}", f"{TOKENS}/{old}"]
    clock.advance(60 + 29)  # within the leeway: still accepted (HEAD checks without using)
    for path in within:
        assert client.head(path, params={"score": "1"}).status_code == 200
    clock.advance(2)
    gone = [*within, path_of(answer), f"{TOKENS}/{answer['id']}", f"{TOKENS}/{old}/{jti_of(old)}"]
    for path in gone:
        for r in (client.post(path, json={"score": 1}), client.get(path, params={"score": "1"})):
            assert (r.status_code, r.json()["code"]) == (410, "token_expired"), path
    assert stream_entries(redis_server) == []


# -- what a token URL looks like to a browser, a page and a mail client ---------------------------------


def test_pages_and_confirm_answers_use_the_issued_form(client, issue, redis_server):
    """Pages post back to, and confirm answers name, the URL ending in the token id, even when the
    link followed was of the older form."""
    html = {"Accept": "text/html"}
    answer = issue(confirm=True, feedback_config=CONTINUOUS)
    issued = path_of(answer)
    for path in (issued, f"{TOKENS}/{token_of(answer)}"):
        confirm = client.get(path, params={"score": "1"})
        assert confirm.json()["url"] == f"http://testserver{issued}"
        page = client.get(path, params={"score": "1"}, headers=html)
        assert f'action="{issued}"' in page.text
        picker = client.get(path, headers=html)
        assert f'action="{issued}"' in picker.text
    by_id = f"{TOKENS}/{answer['id']}"  # no JWT in the path to carry over: the form posts by id
    assert f'action="{by_id}"' in client.get(by_id, headers=html).text
    r = client.post(issued, data={"score": "1"}, headers={**html, "Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 200 and "Thank you" in r.text
    assert [e["token_id"] for e in stream_entries(redis_server)] == [answer["id"]]


def test_a_pasted_link_with_an_answer_or_fragment_is_the_same_url_for_the_client(server, redis_server):
    from app.client import Client

    with Client(server.url, api_key=API_KEY) as admin, Client(server.url) as public:
        answer = admin.create_presigned_feedback_token(uuid.uuid4(), "user_score")
        pasted = f"  {answer['url']}?score=1&utm_source=mail#top\n"
        assert public.create_feedback_from_token(pasted, score=1)["duplicate"] is False
    [entry] = stream_entries(redis_server)
    assert entry["token_id"] == answer["id"]

