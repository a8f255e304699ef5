"""`feedback-tokens streams`: every stream a consumer must read, on one Redis and on a cluster."""

from __future__ import annotations

import os
import subprocess
import sys
import uuid

import layout
import pytest
from conftest import API_KEY, ROOT, TOKENS, issue_token, path_of


@pytest.fixture
def redis_server(either_redis):  # one Redis, then a Redis Cluster
    return either_redis


def streams(url: str, *args: str, **env: str) -> list[str]:
    full = {**os.environ, "REDIS_URL": url, **env}
    out = subprocess.run([sys.executable, "-m", "app.cli", "streams", *args], cwd=ROOT, env=full,
                         capture_output=True, text=True, timeout=60, check=True)
    return out.stdout.split()


def test_streams_are_one_per_shard_and_hold_every_submission(make_app, redis_server):
    listed = streams(redis_server.url)
    assert len(listed) == 16 == len(set(listed))
    assert all(s.startswith("{fbt.") and s.endswith("}:feedback") for s in listed)
    client = make_app(redis_url=redis_server.url)
    for _ in range(40):  # requests go round the shards
        assert client.post(path_of(issue_token(client)), json={"score": 1}).status_code == 200
    written = layout.stream_keys(redis_server.client())
    assert set(written) <= set(listed) and len(written) > 1
    assert layout.feedback_count(redis_server.client()) == 40
    assert streams(redis_server.url, "--offline") == listed


def test_a_smaller_shard_count_still_finds_the_shards_used_before(make_app, redis_server):
    client = make_app(redis_url=redis_server.url, shards=32)
    run_id = str(uuid.uuid4())
    ids = [issue_token(client, run_id=run_id)["id"] for _ in range(40)]  # in turn over the 32 shards
    assert len(streams(redis_server.url, FEEDBACK_SHARDS="8")) == 32
    assert len(streams(redis_server.url, "--offline", FEEDBACK_SHARDS="8")) == 8
    smaller = make_app(redis_url=redis_server.url, shards=8)
    listed = smaller.get(TOKENS, params={"run_id": run_id}, headers={"X-API-Key": API_KEY}).json()
    assert [t["id"] for t in listed] == ids


def test_an_unreachable_redis_is_said(redis_server):
    from conftest import free_port

    full = {**os.environ, "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0", "FEEDBACK_REDIS_CLUSTER": "no"}
    out = subprocess.run([sys.executable, "-m", "app.cli", "streams"], cwd=ROOT, env=full,
                         capture_output=True, text=True, timeout=60)
    assert out.returncode == 1 and "did not answer" in out.stderr and out.stdout == ""


def test_tokens_keep_working_after_the_shard_count_changes(make_app, redis_server):
    before = make_app(redis_url=redis_server.url, shards=4)
    answers = [issue_token(before) for _ in range(8)]
    after = make_app(redis_url=redis_server.url, shards=32)
    for answer in answers:  # by URL and by id: each token finds its record in its old shard
        assert after.post(path_of(answer), json={"score": 1}).status_code == 200
        assert after.post(f"{TOKENS}/{answer['id']}", json={"score": 1}).json()["duplicate"] is True
    assert len(layout.stream_keys(redis_server.client())) == 4
