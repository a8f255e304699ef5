"""Redis faults (SPEC 4, 5): nothing lost, nothing counted twice, no request left hanging.

Each test runs its own redis-server and stops, restarts, freezes (SIGSTOP) or starves it. After
every fault the store must be consistent: a token is marked used if and only if the stream holds
its entry.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import subprocess
import tempfile
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import layout
import pytest
import redis
from conftest import API_KEY, TOKENS, issue_token, stream_entries, token_of

from app.dev import start_private_redis

AUTH = {"X-API-Key": API_KEY}
EVICTING = ["allkeys-lru", "allkeys-lfu", "allkeys-random", "volatile-lru", "volatile-lfu", "volatile-random",
            "volatile-ttl"]


@pytest.fixture
def keys_dir(shared_keys: Path) -> Path:
    return shared_keys


issue = issue_token


def unavailable(response, *, html: bool = False) -> str:
    assert response.status_code == 503, response.text
    assert int(response.headers["Retry-After"]) > 0
    if html:
        assert response.headers["content-type"].startswith("text/html")
        return response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == "store_unavailable"
    return str(response.json()["detail"])


def consistent(client: redis.Redis) -> set[str]:
    """The token ids marked used, after checking that they are exactly the stream's."""
    marked = layout.used_tokens(client)
    streamed = [entry["token_id"] for _, entry in layout.stream_rows(client)]
    assert sorted(streamed) == sorted(set(streamed)), "a token appended twice"
    assert marked == set(streamed), "a used marker without its stream entry, or the reverse"
    return marked


def test_redis_down_answers_503_and_the_token_works_once_it_is_back(make_app, redis_factory):
    own = redis_factory("--appendonly", "yes")
    client = make_app(redis_url=own.url)
    used, waiting = issue(client), issue(client)
    assert client.post(f"{TOKENS}/{token_of(used)}", json={"score": 1}).status_code == 200
    own.stop()

    url = f"{TOKENS}/{token_of(waiting)}"
    unavailable(client.post(url, json={"score": 1}))
    unavailable(client.post(f"{TOKENS}/{waiting['id']}", json={"score": 1}))
    unavailable(client.get(url, params={"score": "1"}))
    unavailable(client.get(url, params={"score": "1"}, headers={"Accept": "text/html"}), html=True)
    unavailable(client.post(f"{TOKENS}/{token_of(used)}", json={"score": 1}))  # can't tell a retry now
    unavailable(client.post(TOKENS, json={"run_id": str(uuid.uuid4()), "feedback_key": "k"}, headers=AUTH))
    assert client.get("/readyz").status_code == 503

    own.start()  # same data directory: the append-only file is read back
    assert consistent(own.client()) == {used["id"]}
    r = client.post(url, json={"score": 1})
    assert r.status_code == 200 and r.json()["duplicate"] is False
    assert client.post(url, json={"score": 0}).status_code == 409
    assert client.post(url, json={"score": 1}).json()["duplicate"] is True
    assert client.post(f"{TOKENS}/{token_of(used)}", json={"score": 0}).status_code == 409
    assert consistent(own.client()) == {used["id"], waiting["id"]}
    assert len(stream_entries(own)) == 2


def test_hung_redis_answers_503_within_its_timeout(make_app, redis_factory):
    own = redis_factory()
    timeout = 0.5
    client = make_app(redis_url=own.url, redis_timeout=timeout)
    answer = issue(client)
    url = f"{TOKENS}/{token_of(answer)}"
    own.pause()  # SIGSTOP: connections stay open, nothing is answered
    try:
        bound = 2 * timeout + 2  # a hang guard (one retry on a fresh connection is allowed), not a speed claim
        for call in (lambda: client.post(url, json={"score": 1}), lambda: client.get("/readyz")):
            started = time.monotonic()
            response = call()
            assert time.monotonic() - started < bound
            assert response.status_code == 503
        detail = unavailable(client.post(url, json={"score": 1}))
        # Redis may still run what it was sent before it froze: the answer must not promise otherwise.
        assert "same submission" in detail
    finally:
        own.resume()
    # Whatever Redis did with the commands it had buffered, the identical retry gets the one answer
    # and a different submission is refused: never two entries.
    retry = client.post(url, json={"score": 1})
    assert retry.status_code == 200 and retry.json()["id"] == answer["id"]
    assert client.post(url, json={"score": 0}).status_code == 409
    assert consistent(own.client()) == {answer["id"]}


def test_evicting_redis_is_not_ready_and_the_log_says_why(make_app, redis_factory, caplog):
    own = redis_factory()
    client = make_app(redis_url=own.url)
    assert client.get("/readyz").status_code == 200
    for policy in EVICTING:
        own.client().config_set("maxmemory-policy", policy)
        caplog.clear()
        with caplog.at_level(logging.ERROR, logger="feedback_tokens"):
            r = client.get("/readyz")
        assert r.status_code == 503, policy
        detail = r.json()["checks"]["redis"]["detail"]
        assert policy in detail and "noeviction" in detail
        assert any(policy in m and "noeviction" in m for m in caplog.messages), caplog.messages
    own.client().config_set("maxmemory-policy", "noeviction")
    assert client.get("/readyz").status_code == 200


def fill_to_the_brim(client: redis.Redis) -> None:
    """Write as traffic would until Redis refuses writes, then pull maxmemory a little under what
    is used, so that buffers freed and reallocated between commands can't dip it back under."""
    for n in range(1000):
        try:
            client.set(f"pad:{n}", b"x" * 65536)
        except redis.exceptions.OutOfMemoryError:
            break
    else:
        pytest.fail("redis never reached maxmemory")
    used = client.info("memory")["used_memory"]
    client.config_set("maxmemory", used - 512 * 1024)
    with pytest.raises(redis.exceptions.OutOfMemoryError):
        client.set("one-more", "x")


def test_out_of_memory_is_503_and_writes_nothing(make_app, redis_factory):
    own = redis_factory("--maxmemory", "4mb", "--maxmemory-policy", "noeviction")
    client = make_app(redis_url=own.url)
    first, second = issue(client), issue(client)
    filler = own.client()
    fill_to_the_brim(filler)
    keys_before = set(filler.keys("{fbt*}*"))

    detail = unavailable(client.post(f"{TOKENS}/{token_of(first)}", json={"score": 1}))
    assert "memory" in detail
    unavailable(client.get(f"{TOKENS}/{second['id']}", params={"score": "1"}))
    unavailable(client.post(TOKENS, json={"run_id": str(uuid.uuid4()), "feedback_key": "k"}, headers=AUTH))
    assert set(filler.keys("{fbt*}*")) == keys_before  # no stream, no new record
    assert consistent(filler) == set()

    filler.config_set("maxmemory", "0")
    assert client.post(f"{TOKENS}/{token_of(first)}", json={"score": 1}).json()["duplicate"] is False
    assert client.post(f"{TOKENS}/{token_of(first)}", json={"score": 0}).status_code == 409
    assert consistent(filler) == {first["id"]}


# -- `make run`'s private Redis keeps what it was told --------------------------------------------


@pytest.fixture
def dev_root() -> Iterator[Path]:
    # Short, so the unix socket path stays under the 107-byte limit.
    root = Path(tempfile.mkdtemp(prefix="fbt-"))
    yield root
    sock = root / ".run" / "redis.sock"
    if sock.exists():  # a test that failed half-way: stop what it started
        try:
            redis.Redis(unix_socket_path=str(sock), socket_timeout=1).shutdown(nosave=True)
        except redis.RedisError:
            pass
    shutil.rmtree(root, ignore_errors=True)


def _start(root: Path) -> tuple[str, subprocess.Popen[bytes]]:
    url, proc = start_private_redis(root)
    assert proc is not None, "a private Redis was already running in a fresh root"
    return url, proc


def _flushed_to_the_kernel(client: redis.Redis) -> None:
    """Wait until the append-only buffer is written to the file (no fsync needed for a process
    crash: the kernel has it)."""
    deadline = time.monotonic() + 10
    while client.info("persistence")["aof_buffer_length"] != 0:
        assert time.monotonic() < deadline, "the AOF buffer was never written"
        time.sleep(0.01)


@pytest.mark.parametrize("how", ["terminate", "kill"])
def test_private_redis_keeps_used_markers_across_a_restart(make_app, dev_root, how):
    url, proc = _start(dev_root)
    try:
        client = make_app(redis_url=url)
        answer = issue(client)
        url_path = f"{TOKENS}/{token_of(answer)}"
        assert client.post(url_path, json={"score": 1}).json()["duplicate"] is False
        direct = redis.Redis.from_url(url)
        assert direct.config_get("appendonly")["appendonly"] == "yes"
        if how == "kill":
            _flushed_to_the_kernel(direct)
            os.kill(proc.pid, signal.SIGKILL)  # a crash: no shutdown, no final fsync
        else:
            proc.terminate()
        proc.wait(timeout=10)
        direct.close()
        with pytest.raises(redis.ConnectionError):
            redis.Redis.from_url(url, socket_timeout=1).ping()

        url, proc = _start(dev_root)
        assert client.post(url_path, json={"score": 0}).status_code == 409
        assert client.post(url_path, json={"score": 1}).json()["duplicate"] is True
        again = redis.Redis.from_url(url)
        assert consistent(again) == {answer["id"]}
        assert layout.feedback_count(again) == 1
        again.close()
    finally:
        if proc.poll() is None:
            proc.terminate()
            proc.wait(timeout=10)


def test_stream_entries_are_complete_after_faults(make_app, redis_factory):
    """The stream's consumers read these fields (SPEC 5); a fault must never leave half an entry."""
    own = redis_factory("--appendonly", "yes")
    client = make_app(redis_url=own.url)
    answer = issue(client)
    own.stop()
    unavailable(client.post(f"{TOKENS}/{token_of(answer)}", json={"score": 1, "comment": "c"}))
    own.start()
    assert client.post(f"{TOKENS}/{token_of(answer)}", json={"score": 1, "comment": "c"}).status_code == 200
    [entry] = stream_entries(own)
    assert set(entry) >= {"id", "token_id", "run_id", "feedback_key", "score", "value", "comment",
                          "correction", "metadata", "created_at"}
    assert entry["comment"] == "c" and entry["token_id"] == answer["id"]
