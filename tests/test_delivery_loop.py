"""The deliverer's rules, run in process against a real Redis (issue 12): a target of one's own
(the protocol), failures counted to the dead-letter stream, entries handed out too often, the
service's own trimming and lag warnings, settings and names.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Callable, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest
from conftest import TOKENS, RedisServer, issue_token, token_of
from delivery_helpers import WEBHOOK_SECRET, as_record, submit_mix, wait_for

from app.config import ConfigError, Retention, Settings
from app.delivery import FeedbackEntry, TargetUnavailable
from app.delivery.consumer import Deliverer
from app.delivery.options import Options
from app.delivery.target import group_name
from app.store.connect import connect
from app.store.entry import decode
from app.store.keyspace import Keyspace

pytest_plugins = ["support_delivery"]
# One shard, so that every submission of these tests lands in one stream.
STREAM = Keyspace("fbt", 1).stream(0)


@pytest.fixture
def settings(settings: Settings) -> Settings:
    return replace(settings, shards=1)


@pytest.fixture
def keys_dir(shared_keys: Path) -> Path:
    return shared_keys


def run_until(server: RedisServer, target: Any, done: Callable[[], bool], **options: Any) -> Deliverer:
    """Run a deliverer in this process until ``done()``; returns it (for its metrics)."""
    options = {"batch": 4, "backoff": 0.01, "poll": 0.01, **options}

    async def main() -> Deliverer:
        client = await connect(server.url)
        deliverer = Deliverer(client, Keyspace("fbt"), target, Options(**options), Retention("off"))
        stop = asyncio.Event()
        running = asyncio.create_task(deliverer.run(stop))
        try:
            for _ in range(1200):
                if done() or running.done():
                    break
                await asyncio.sleep(0.05)
            stop.set()
            await asyncio.wait_for(running, 60)
        finally:
            await client.aclose()
        assert done(), "the deliverer stopped short"
        return deliverer

    return asyncio.run(main())


def sample(deliverer: Deliverer, name: str) -> float:
    value = deliverer.metrics.registry.get_sample_value(name, {"group": deliverer.group})
    return float(value or 0)


class Flaky:
    """A target of one's own: down at first, then failing on one feedback (a bug of its own)."""

    def __init__(self, poison: str) -> None:
        self.poison = poison
        self.calls = 0
        self.got: dict[tuple[str, int], FeedbackEntry] = {}

    async def deliver(self, batch: Sequence[FeedbackEntry]) -> None:
        self.calls += 1
        if self.calls <= 2:
            raise TargetUnavailable("still starting")
        if any(entry.id == self.poison for entry in batch):
            raise RuntimeError("can't store this one")
        for entry in batch:
            self.got[entry.key] = entry


def test_a_target_of_ones_own_its_failures_counted_to_dead_letters(client, redis_server):
    expected = submit_mix(client, 11)
    poison = sorted(expected)[4][0]
    target = Flaky(poison)
    good = {key for key in expected if key[0] != poison}
    dead_key = f"{STREAM}:dead:custom"
    deliverer = run_until(
        redis_server, target,
        lambda: set(target.got) == good and redis_server.client().xlen(dead_key) == len(expected) - len(good),
        group="custom", max_failures=2,
    )
    assert {key: as_record(entry.to_json()) for key, entry in target.got.items()} == {k: expected[k] for k in good}
    for _, fields in redis_server.client().xrange(dead_key):
        assert fields[b"id"].decode() == poison
        assert fields[b"dead_reason"] == b"failed 2 times: RuntimeError: can't store this one"
    assert sample(deliverer, "feedback_delivery_delivered_total") == len(good)
    assert sample(deliverer, "feedback_delivery_dead_lettered_total") == len(expected) - len(good)
    # two attempts while it was starting, and at least one more for each poisoned entry
    assert sample(deliverer, "feedback_delivery_retried_total") >= 2 + len(expected) - len(good)
    assert redis_server.client().xpending(STREAM, "custom")["pending"] == 0


class Collect:
    def __init__(self) -> None:
        self.got: list[FeedbackEntry] = []

    async def deliver(self, batch: Sequence[FeedbackEntry]) -> None:
        self.got += batch


def test_entries_handed_out_too_often_go_to_dead_letters(client, redis_server):
    """An entry that every deliverer holding it died on (simulated: read three times, never
    acknowledged) is buried instead of delivered again, so it can't crash-loop a group."""
    crashed = submit_mix(client, 3)
    r = redis_server.client()
    r.xgroup_create(STREAM, "loop", id="0")
    r.xreadgroup("loop", "worker", {STREAM: ">"}, count=10)
    r.xreadgroup("loop", "worker", {STREAM: "0"}, count=10)
    r.xreadgroup("loop", "worker", {STREAM: "0"}, count=10)  # handed out three times now
    later = submit_mix(client, 2)
    target = Collect()
    run_until(redis_server, target, lambda: len(target.got) == len(later) and r.xlen(f"{STREAM}:dead:loop") == 3,
              group="loop", consumer="worker", max_failures=2)
    assert {entry.key for entry in target.got} == set(later)
    dead = r.xrange(f"{STREAM}:dead:loop")
    assert {fields[b"id"].decode() for _, fields in dead} == {key[0] for key in crashed}
    assert all(fields[b"dead_reason"].startswith(b"handed out 4 times") for _, fields in dead)


def test_every_group_gets_everything_and_the_stream_keeps_what_one_still_needs(client, redis_server):
    expected = submit_mix(client, 6)
    r = redis_server.client()
    r.xgroup_create(STREAM, "two", id="0")  # a second target's group, not running yet
    first, second = Collect(), Collect()
    run_until(redis_server, first, lambda: len(first.got) == 6, group="one")
    assert r.xlen(STREAM) == 6  # group two has read nothing: nothing may go
    run_until(redis_server, second, lambda: len(second.got) == 6, group="two")
    assert {e.key for e in first.got} == {e.key for e in second.got} == set(expected)
    assert r.xlen(STREAM) == 0  # now both acknowledged everything


def test_a_stream_deleted_and_written_again_gets_its_group_back(client, redis_server):
    r = redis_server.client()
    first = submit_mix(client, 3)
    target = Collect()
    later: dict[tuple[str, int], Any] = {}

    def done() -> bool:
        if not later and {e.key for e in target.got} == set(first):
            r.delete(STREAM)  # the stream goes, and with it the group; the service writes on
            later.update(submit_mix(client, 3))
        return bool(later) and {e.key for e in target.got} == set(first) | set(later)

    run_until(redis_server, target, done, group="again")
    assert "again" in {g["name"].decode() for g in r.xinfo_groups(STREAM)}


# -- the service's upkeep ---------------------------------------------------------------------------


def submit(client: Any, n: int) -> None:
    for _ in range(n):
        token = issue_token(client)
        assert client.post(f"{TOKENS}/{token_of(token)}", json={"score": 1}).status_code == 200


def test_the_service_trims_streams_by_retention_and_spares_what_a_group_needs(make_app, redis_server, caplog):
    caplog.set_level(logging.INFO, logger="feedback_tokens.delivery")
    client = make_app(stream_check_interval=0.05, stream_retention=Retention("length", 10), lag_warning=12)
    r = redis_server.client()
    submit(client, 15)
    newest = [entry_id for entry_id, _ in r.xrange(STREAM)][-10:]
    wait_for(lambda: r.xlen(STREAM) == 10, what="retention to trim")
    assert [entry_id for entry_id, _ in r.xrange(STREAM)] == newest

    r.xgroup_create(STREAM, "slow", id="0")  # a group that reads nothing yet: it needs them all
    submit(client, 5)
    wait_for(lambda: "consumer group slow is 15 entries behind" in caplog.text, what="the lag warning")
    caplog.clear()
    wait_for(lambda: "consumer group slow" in caplog.text, what="one more check")
    assert r.xlen(STREAM) == 15
    assert client.get("/readyz").status_code == 200  # late delivery is no reason to stop taking feedback

    [(_, read)] = r.xreadgroup("slow", "c", {STREAM: ">"}, count=12)
    r.xack(STREAM, "slow", *[entry_id for entry_id, _ in read[:9]])  # 9 acknowledged, 3 pending
    wait_for(lambda: r.xlen(STREAM) == 6, what="the acknowledged entries to go")
    assert r.xrange(STREAM)[0][0] == read[9][0]


def test_the_service_trims_by_age(make_app, redis_server):
    client = make_app(stream_check_interval=0.05, stream_retention=Retention("age", 500))
    r = redis_server.client()
    submit(client, 3)
    wait_for(lambda: r.exists(STREAM) and r.xlen(STREAM) == 0, what="old entries to go")


def test_retention_off_keeps_everything(make_app, redis_server, caplog):
    caplog.set_level(logging.INFO, logger="feedback_tokens.delivery")
    client = make_app(stream_check_interval=0.05, stream_retention=Retention("off"), lag_warning=0)
    submit(client, 4)
    # A group that has read none of the stream's entries: each check warns, none trims.
    redis_server.client().xgroup_create(STREAM, "g", id="0")
    redis_server.client().xadd(STREAM, {"id": "x"})
    wait_for(lambda: "consumer group g is 5 entries behind" in caplog.text, what="a check")
    assert redis_server.client().xlen(STREAM) == 5 and "trimmed" not in caplog.text


# -- settings and names -------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"FEEDBACK_STREAM_RETENTION": "86400"}, "FEEDBACK_STREAM_RETENTION must be an age like 7d"),
        ({"FEEDBACK_STREAM_RETENTION": "0 entries"}, "or off; got '0 entries'"),
        ({"FEEDBACK_LAG_WARNING": "lots"}, "FEEDBACK_LAG_WARNING must be a whole number of entries"),
        ({"FEEDBACK_STREAM_CHECK_INTERVAL": "0"}, "FEEDBACK_STREAM_CHECK_INTERVAL must be positive"),
        ({"FEEDBACK_WEBHOOK_SECRET": "not-whsec"}, "FEEDBACK_WEBHOOK_SECRET must be whsec_"),
        ({"FEEDBACK_WEBHOOK_SECRET": "whsec_!!!"}, "24 to 64 random bytes in base64"),
    ],
)
def test_bad_delivery_settings_are_refused_clearly(env, message):
    with pytest.raises(ConfigError) as err:
        Settings.from_env(env)
    assert message in str(err.value)


def test_delivery_settings_read_from_the_environment():
    s = Settings.from_env({
        "FEEDBACK_STREAM_RETENTION": "12h", "FEEDBACK_LAG_WARNING": "500",
        "FEEDBACK_STREAM_CHECK_INTERVAL": "2.5", "FEEDBACK_WEBHOOK_SECRET": WEBHOOK_SECRET,
    })
    assert s.stream_retention == Retention("age", 12 * 3600 * 1000)
    assert (s.lag_warning, s.stream_check_interval) == (500, 2.5)
    assert s.webhook_secret is not None and s.webhook_secret.value == WEBHOOK_SECRET
    assert WEBHOOK_SECRET not in repr(s)
    assert Settings.from_env({}).stream_retention == Retention("age", 7 * 86400 * 1000)
    assert Settings.from_env({"FEEDBACK_STREAM_RETENTION": "2000000 entries"}).stream_retention == Retention(
        "length", 2_000_000
    )


def test_group_names_follow_the_target_and_never_show_a_secret(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert group_name("jsonl:out.jsonl") == f"jsonl:{tmp_path / 'out.jsonl'}"
    assert group_name("webhook:https://hooks.example.com/fb") == "webhook:https://hooks.example.com/fb"
    with_secret = group_name("postgresql://app:hunter2@db.example.com:5432/analytics")
    assert with_secret.startswith("postgresql://db.example.com:5432/analytics#") and "hunter2" not in with_secret
    other = group_name("postgresql://app:hunter3@db.example.com:5432/analytics")
    assert other != with_secret  # different targets never share a group
    assert "tok" not in group_name("webhook:https://hooks.example.com/fb?key=tok")


def test_entries_written_before_the_strings_field_are_read_as_json_where_they_parse():
    fields = {"id": "f", "token_id": "t", "run_id": "r", "feedback_key": "k", "score": "", "value": "5",
              "comment": "", "correction": "{\"a\":1}", "metadata": "", "created_at": "2026-01-01T00:00:00.000+00:00"}
    old = decode(STREAM, "1-0", fields)
    assert (old.value, old.comment, old.correction, old.revision) == (5, None, {"a": 1}, 1)
    new = decode(STREAM, "1-0", {**fields, "strings": "value,comment", "revision": "3"})
    assert (new.value, new.comment, new.correction, new.revision) == ("5", "", {"a": 1}, 3)
    with pytest.raises(ValueError):
        decode(STREAM, "1-0", {**fields, "score": "true"})


def test_a_custom_target_by_module_and_class(client, redis_server, tmp_path, deliverers):
    (tmp_path / "my_sink.py").write_text(
        "import json, os\n"
        "class Sink:\n"
        "    async def deliver(self, batch):\n"
        "        with open(os.environ['SINK'], 'a') as f:\n"
        "            f.writelines(json.dumps(entry.to_json()) + '\\n' for entry in batch)\n"
    )
    out = tmp_path / "sink.jsonl"
    env = {"REDIS_URL": redis_server.url, "PYTHONPATH": str(tmp_path), "SINK": str(out)}
    expected = submit_mix(client, 5)
    deliverer = deliverers("--to", "python:my_sink:Sink", env=env)
    wait_for(lambda: out.exists() and out.read_text().count("\n") == len(expected), what="the sink's lines")
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert {(line["id"], line["revision"]): as_record(line) for line in lines} == expected
    assert deliverer.stop() == 0
    missing = deliverers("--to", "python:my_sink:Nope", env=env)
    assert missing.proc.wait(timeout=60) == 2 and "can't load Nope from my_sink" in missing.output()


def test_deeply_nested_looking_text_is_kept_as_text(client, redis_server):
    """A comment of four thousand '[' is text a JSON parser gives up on: it is recorded, and marked as
    text so that delivery types it back as the string it was."""
    answer = issue_token(client)
    comment = "[" * 4000  # under the 4 KiB cap, past the JSON parser's nesting limit
    r = client.post(f"{TOKENS}/{token_of(answer)}", json={"comment": comment})
    assert r.status_code == 200 and r.json()["comment"] == comment
    [(entry_id, fields)] = redis_server.client().xrange(STREAM)
    assert decode(STREAM, entry_id.decode(), fields).comment == comment
