"""Delivering the feedback streams (issue 12): ``feedback-tokens deliver`` processes against real
Redis, PostgreSQL and HTTP servers, fed by submissions made through the real app.

The invariant checked after each run: the target holds every accepted submission exactly once
by (feedback id, revision), typed back as it was submitted, and the streams keep only what a
group has not acknowledged.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import pytest
from conftest import TOKENS, RedisServer, free_port, issue_token, token_of
from delivery_helpers import (
    WEBHOOK_SECRET,
    as_record,
    count_rows,
    read_jsonl,
    rows,
    submit_mix,
    wait_for,
)

from app.config import Settings
from app.store.keyspace import Keyspace

pytest_plugins = ["support_delivery"]

# One shard, so that the dead letters of these tests land beside one stream.
STREAM = Keyspace("fbt", 1).stream(0)


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return replace(settings, shards=1)


@pytest.fixture
def keys_dir(shared_keys: Path) -> Path:
    return shared_keys


def env_for(server: RedisServer, **extra: str) -> dict[str, str]:
    return {"REDIS_URL": server.url, "FEEDBACK_WEBHOOK_SECRET": WEBHOOK_SECRET, **extra}


def feedback_streams(server: RedisServer) -> list[bytes]:
    return sorted(k for k in server.client().keys("*:feedback"))


def stream_sizes(server: RedisServer) -> dict[str, int]:
    client = server.client()
    return {key.decode(): int(client.xlen(key)) for key in feedback_streams(server)}


def all_trimmed(server: RedisServer) -> bool:
    return sum(stream_sizes(server).values()) == 0


def by_key(records: list[dict[str, Any]]) -> dict[tuple[str, int], dict[str, Any]]:
    found = {(str(r["id"]), r["revision"]): as_record(r) for r in records}
    assert len(found) == len(records), "a feedback delivered twice"
    return found


def test_postgres_rows_equal_the_accepted_submissions(client, redis_server, pg_url, deliverers):
    expected = submit_mix(client, 45)
    deliverer = deliverers("--to", pg_url, "--batch", "7", env=env_for(redis_server))
    wait_for(lambda: count_rows(pg_url) == len(expected), what="the first rows")
    expected |= submit_mix(client, 15)  # while it runs
    wait_for(lambda: count_rows(pg_url) == len(expected), what="the later rows")
    assert by_key(rows(pg_url)) == expected
    wait_for(lambda: all_trimmed(redis_server), what="the streams to be trimmed")
    assert deliverer.stop() == 0
    assert count_rows(pg_url) == len(expected)


def test_postgres_refused_values_go_to_dead_letters_alone(client, redis_server, pg_url, deliverers):
    expected = submit_mix(client, 9)
    token = issue_token(client)
    bad = client.post(f"{TOKENS}/{token_of(token)}", json={"score": 1, "comment": "nul \u0000 inside"})
    assert bad.status_code == 200  # Redis keeps it; PostgreSQL text can't hold NUL
    expected |= submit_mix(client, 6)
    deliverer = deliverers("--to", pg_url, "--batch", "4", "--group", "pg", env=env_for(redis_server))
    dead_key = f"{STREAM}:dead:pg"
    wait_for(lambda: redis_server.client().xlen(dead_key) == 1, what="the dead letter")
    wait_for(lambda: count_rows(pg_url) == len(expected), what="the other rows")
    assert by_key(rows(pg_url)) == expected
    [(_, dead)] = redis_server.client().xrange(dead_key)
    assert dead[b"id"].decode() == bad.json()["id"] and dead[b"comment"] == "nul \u0000 inside".encode()
    assert b"NUL" in dead[b"dead_reason"]
    wait_for(lambda: all_trimmed(redis_server), what="the streams to be trimmed")
    deliverer.stop()


def test_jsonl_file_every_line_whole_every_submission_once(client, redis_server, tmp_path, deliverers):
    out = tmp_path / "feedback.jsonl"
    out.write_bytes(b'{"id": "torn by a crash')  # what a deliverer killed mid-write leaves behind
    expected = submit_mix(client, 40)
    deliverer = deliverers("--to", f"jsonl:{out}", "--batch", "9", env=env_for(redis_server))
    wait_for(lambda: out.read_bytes().count(b"\n") == len(expected), what="the lines")
    lines = read_jsonl(out)  # every line parses
    assert by_key(lines) == expected
    assert len({(line["stream"], line["stream_id"]) for line in lines}) == len(lines)
    assert "torn line" in deliverer.output()
    wait_for(lambda: all_trimmed(redis_server), what="the streams to be trimmed")
    assert deliverer.stop() == 0


def test_jsonl_to_stdout(client, redis_server, deliverers):
    expected = submit_mix(client, 12)
    deliverer = deliverers("--to", "jsonl:-", env=env_for(redis_server))
    wait_for(lambda: deliverer.stdout().count("\n") == len(expected), what="the lines")
    assert deliverer.stop() == 0
    assert by_key([json.loads(line) for line in deliverer.stdout().splitlines()]) == expected


def metric(text: str, name: str) -> float:
    for line in text.splitlines():
        if line.startswith(name + "{"):
            return float(line.rsplit(" ", 1)[1])
    raise AssertionError(f"{name} not in metrics")


def test_webhook_every_feedback_arrives_signed_despite_failures(client, redis_server, webhook_receiver, deliverers):
    receiver = webhook_receiver(fail_rate=0.3)
    expected = submit_mix(client, 80)
    port = free_port()
    deliverer = deliverers(
        "--to", f"webhook:{receiver.url}", "--batch", "10", "--metrics-port", str(port), env=env_for(redis_server)
    )
    wait_for(lambda: set(receiver.entries) == set(expected), what="every feedback at the receiver")
    assert receiver.requests["bad_signature"] == 0 and receiver.requests["failed"] > 0
    assert set(receiver.received.values()) == {1}  # nothing twice without a crash
    assert {key: as_record(item) for key, item in receiver.entries.items()} == expected
    wait_for(lambda: all_trimmed(redis_server), what="the streams to be trimmed")
    metrics = httpx.get(f"http://127.0.0.1:{port}/metrics").text
    assert metric(metrics, "feedback_delivery_delivered_total") == len(expected)
    assert metric(metrics, "feedback_delivery_retried_total") >= receiver.requests["failed"]
    assert metric(metrics, "feedback_delivery_dead_lettered_total") == 0
    assert deliverer.stop() == 0


def test_webhook_refused_entries_are_dead_lettered_and_status_shows_them(
    client, redis_server, webhook_receiver, deliverers
):
    receiver = webhook_receiver()
    expected = submit_mix(client, 13)
    poisoned = sorted(expected)[5]
    receiver.poison.add(poisoned[0])
    deliverer = deliverers("--to", f"webhook:{receiver.url}", "--batch", "6", "--group", "hooks",
                           env=env_for(redis_server))
    delivered = {key for key in expected if key[0] != poisoned[0]}
    wait_for(lambda: set(receiver.entries) == delivered, what="the other entries")
    dead_key = f"{STREAM}:dead:hooks"
    wait_for(lambda: redis_server.client().xlen(dead_key) == len(expected) - len(delivered), what="dead letters")
    assert receiver.requests["rejected"] >= 1
    for _, fields in redis_server.client().xrange(dead_key):
        assert fields[b"id"].decode() == poisoned[0] and b"422" in fields[b"dead_reason"]
    wait_for(lambda: all_trimmed(redis_server), what="the streams to be trimmed")
    deliverer.stop()

    status = deliverers("--status", env=env_for(redis_server))
    assert status.proc.wait(timeout=60) == 0
    header, row = status.stdout().splitlines()
    assert header.split() == ["GROUP", "STREAMS", "LAG", "PENDING", "DEAD", "LETTERS", "CONSUMERS"]
    name, streams, lag, pending, dead, consumers = row.split()
    assert (name, lag, pending, dead, consumers) == ("hooks", "0", "0", str(len(expected) - len(delivered)), "1")
    assert int(streams) == len(feedback_streams(redis_server))


def test_a_webhook_target_needs_a_valid_secret(redis_server, deliverers):
    none = deliverers("--to", "webhook:http://127.0.0.1:9/hook", env={"REDIS_URL": redis_server.url,
                                                                       "FEEDBACK_WEBHOOK_SECRET": ""})
    assert none.proc.wait(timeout=60) == 2
    assert "needs FEEDBACK_WEBHOOK_SECRET" in none.output()
    weak = deliverers("--to", "webhook:http://127.0.0.1:9/hook",
                      env={"REDIS_URL": redis_server.url, "FEEDBACK_WEBHOOK_SECRET": "whsec_c2hvcnQ="})
    assert weak.proc.wait(timeout=60) == 2
    assert "24 to 64 random bytes" in weak.output()
    assert redis_server.client().keys("*") == []  # refused before touching Redis
