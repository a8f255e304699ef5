"""The official LangSmith SDKs, Python and JS, against a live server print no warning at all.

Both read ``GET /api/v1/info`` when a client starts working; without it (or with too little in it)
each client logs a failure, and the Python SDK a warning about run compression. Tracing is left at
its default (every LANGSMITH_/LANGCHAIN_ variable removed), as a new user's would be.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import uuid
from importlib.metadata import version

import httpx
import pytest
from conftest import API_KEY, live_env, stream_entries

pytest_plugins = ["support_js", "support_servers"]  # every test under uvicorn and under granian

PY_CLIENT = """
import sys, uuid
from langsmith import Client

client = Client(api_url=sys.argv[1], api_key=sys.argv[2])
run_id = uuid.uuid4()
token = client.create_presigned_feedback_token(run_id, "user_score")
client.create_feedback_from_token(token.id, score=1, comment="helpful")
listed = list(client.list_presigned_feedback_tokens(run_id))
print(client.info.version, len(listed), run_id)
client.flush()
client.cleanup()
"""

JS_CLIENT = """
import { Client } from "langsmith";

const client = new Client({ apiUrl: process.env.FBT_API_URL, apiKey: process.env.FBT_API_KEY });
const runId = crypto.randomUUID();
const token = await client.createPresignedFeedbackToken(runId, "user_score", { expiration: { hours: 1 } });
const listed = [];
for await (const t of client.listPresignedFeedbackTokens(runId)) listed.push(t);
// The step the SDK's tracing and feedback paths take first (it warns when /info fails).
const info = await client._ensureServerInfo();
const tokenMethods = Object.getOwnPropertyNames(Client.prototype)
  .filter((name) => /token/i.test(name) && /feedback/i.test(name))
  .sort();
console.log(JSON.stringify({ token, listed, info, runId, tokenMethods }));
"""


def sdk_env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("LANGSMITH_", "LANGCHAIN_"))}
    return {**env, **extra}


@pytest.fixture
def server_kind(any_server):
    return any_server  # live_server starts the app under uvicorn, then under granian


@pytest.fixture
def server(live_server, redis_server, keys_dir):
    return live_server(live_env(redis_server, keys_dir))


def test_info_names_this_package_and_what_the_sdks_read(server):
    r = httpx.get(f"{server.url}/api/v1/info")
    assert r.status_code == 200
    body = r.json()
    assert body["version"] == version("feedback-tokens")
    assert body["license_expiration_time"] is None and body["instance_flags"] == {}
    # Every key of the Python SDK's BatchIngestConfig, so no reader falls back or fails.
    from langsmith.schemas import BatchIngestConfig, LangSmithInfo

    assert set(body["batch_ingest_config"]) == set(BatchIngestConfig.__annotations__)
    assert body["batch_ingest_config"]["use_multipart_endpoint"] is False
    assert LangSmithInfo(**body).version == body["version"]


def test_python_sdk_prints_no_warning(server, redis_server):
    done = subprocess.run(
        [sys.executable, "-c", PY_CLIENT, f"{server.url}/api/v1", API_KEY],
        capture_output=True, text=True, timeout=120, env=sdk_env(), check=False,
    )
    assert done.returncode == 0, done.stderr
    assert done.stderr == ""
    got_version, listed, run_id = done.stdout.split()
    assert got_version == version("feedback-tokens") and listed == "1"
    assert [e["run_id"] for e in stream_entries(redis_server)] == [run_id]


def test_js_sdk_presigned_tokens_and_no_warning(server, node):
    run = node(JS_CLIENT, sdk_env(FBT_API_URL=f"{server.url}/api/v1", FBT_API_KEY=API_KEY))
    assert run.returncode == 0, run.stderr
    assert run.stderr == ""
    out = json.loads(run.stdout)
    assert out["info"]["version"] == version("feedback-tokens")
    token = out["token"]
    assert uuid.UUID(token["id"]) and token["url"].startswith(f"{server.url}/api/v1/feedback/tokens/")
    assert [t["id"] for t in out["listed"]] == [token["id"]]
    assert out["listed"][0]["run_id"] == out["runId"]
    # The pinned JS SDK has no call that submits from a token (nothing like the Python SDK's
    # create_feedback_from_token): a page or backend posts to the token URL itself.
    assert out["tokenMethods"] == ["createPresignedFeedbackToken", "listPresignedFeedbackTokens"]
    r = httpx.post(token["url"], json={"score": 1})
    assert r.status_code == 200 and r.json()["run_id"] == out["runId"]
