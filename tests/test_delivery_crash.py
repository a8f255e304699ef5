"""Deliverers under crashes (issue 12): ``kill -9`` in the middle of a batch with a second deliverer
taking over, PostgreSQL restarted mid-run, Redis killed and restarted mid-run. After each: the
target holds every accepted submission exactly once by (feedback id, revision), nothing is left
pending, and the streams keep nothing that every group has acknowledged.
"""

from __future__ import annotations

import signal
import threading
from datetime import datetime
from pathlib import Path

import psycopg
import pytest
from conftest import RedisServer
from delivery_helpers import WEBHOOK_SECRET, PostgresServer, as_record, count_rows, rows, submit_mix, wait_for
from psycopg import sql

from app.delivery.postgres import INDEX, TABLE

pytest_plugins = ["support_delivery"]


@pytest.fixture
def keys_dir(shared_keys: Path) -> Path:
    return shared_keys


def env_for(server: RedisServer) -> dict[str, str]:
    return {"REDIS_URL": server.url, "FEEDBACK_WEBHOOK_SECRET": WEBHOOK_SECRET}


def settled(server: RedisServer, group: str) -> bool:
    """Nothing pending for ``group`` and every feedback stream trimmed to nothing."""
    client = server.client()
    for key in client.keys("*:feedback"):
        if client.xlen(key) or any(g["pending"] for g in client.xinfo_groups(key) if g["name"].decode() == group):
            return False
    return True


def by_key(records):
    found = {(str(r["id"]), r["revision"]): as_record(r) for r in records}
    assert len(found) == len(records)
    return found


def insert_waits_for_lock(url: str) -> bool:
    with psycopg.connect(url, autocommit=True) as conn:
        found = conn.execute(
            "SELECT count(*) FROM pg_stat_activity WHERE wait_event_type = 'Lock' AND query LIKE '%INSERT INTO%'"
        ).fetchone()
    return bool(found and found[0])


def pg_now(url: str) -> datetime:
    with psycopg.connect(url, autocommit=True) as conn:
        found = conn.execute("SELECT now()").fetchone()
    assert found is not None
    return found[0]  # type: ignore[no-any-return]


def test_kill_9_mid_batch_and_a_second_deliverer_takes_over(client, redis_server, pg_url, deliverers):
    with psycopg.connect(pg_url, autocommit=True) as conn:  # the target's own table, made ahead
        for statement in (TABLE, INDEX):
            conn.execute(sql.SQL(statement).format(table=sql.Identifier("feedback"), index=sql.Identifier("idx")))
    expected = submit_mix(client, 30)
    args = ["--to", pg_url, "--group", "pg", "--batch", "10", "--claim-idle", "2"]
    with psycopg.connect(pg_url) as locker:
        # SHARE mode holds INSERTs (ROW EXCLUSIVE), so the first deliverer waits in mid-batch.
        locker.execute("LOCK TABLE feedback IN SHARE MODE")
        first = deliverers(*args, "--consumer", "first", env=env_for(redis_server))
        wait_for(lambda: insert_waits_for_lock(pg_url), what="the first deliverer's INSERT")
        first.kill()
        killed_at = pg_now(pg_url)
        second = deliverers(*args, "--consumer", "second", env=env_for(redis_server))
        # Released: the killed deliverer's INSERT may still commit, unacknowledged, so its
        # entries are delivered twice; the table keeps one row each.
        locker.commit()
    expected |= submit_mix(client, 10)
    wait_for(lambda: count_rows(pg_url) == len(expected), what="every row")
    found = rows(pg_url)
    assert by_key(found) == expected
    assert any(row["delivered_at"] < killed_at for row in found), "the killed deliverer's batch did not land"
    wait_for(lambda: settled(redis_server, "pg"), what="nothing pending, streams trimmed")
    assert "left pending by stopped consumers" in second.output()
    assert second.stop() == 0


def test_postgres_restarted_mid_run(client, redis_server, postgres_server: PostgresServer, pg_url, deliverers):
    expected = submit_mix(client, 20)
    deliverer = deliverers("--to", pg_url, "--group", "pg", "--batch", "5", env=env_for(redis_server))
    wait_for(lambda: count_rows(pg_url) == len(expected), what="the first rows")
    postgres_server.stop("immediate")  # as if it crashed
    expected |= submit_mix(client, 20)
    wait_for(lambda: "target unavailable" in deliverer.output(), what="the deliverer to notice")
    postgres_server.start()
    expected |= submit_mix(client, 10)
    wait_for(lambda: count_rows(pg_url) == len(expected), what="every row")
    assert by_key(rows(pg_url)) == expected
    wait_for(lambda: settled(redis_server, "pg"), what="nothing pending, streams trimmed")
    assert deliverer.stop() == 0


def test_redis_killed_and_restarted_mid_run(make_app, redis_factory, webhook_receiver, deliverers):
    own = redis_factory("--appendonly", "yes", "--appendfsync", "always")
    client = make_app(redis_url=own.url)
    receiver = webhook_receiver()
    expected = submit_mix(client, 10)
    deliverer = deliverers("--to", f"webhook:{receiver.url}", "--group", "hook", "--batch", "5", env=env_for(own))
    wait_for(lambda: set(receiver.entries) == set(expected), what="the first entries")

    receiver.hold = threading.Event()
    receiver.hold.set()  # the next batch is taken, and its answer held back
    expected |= submit_mix(client, 10)
    wait_for(receiver.holding.is_set, what="a batch at the receiver")
    assert own.proc is not None
    own.proc.send_signal(signal.SIGKILL)  # Redis dies while the deliverer waits for the answer
    own.proc.wait()
    own.proc = None
    receiver.hold.clear()
    receiver.release.set()  # confirmed now: the deliverer can't acknowledge it until Redis is back
    wait_for(lambda: "Redis: ConnectionError" in deliverer.output(), what="the deliverer to notice")
    own.start()  # same data directory: the append-only file brings the groups and pending entries back

    expected |= submit_mix(client, 10)
    wait_for(lambda: set(receiver.entries) == set(expected), what="every entry")
    assert {key: as_record(item) for key, item in receiver.entries.items()} == expected
    wait_for(lambda: settled(own, "hook"), what="nothing pending, streams trimmed")
    assert receiver.requests["bad_signature"] == 0
    assert deliverer.stop() == 0
