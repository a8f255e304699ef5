"""The benchmark's own pieces (bench/), which `make bench` relies on to report true figures: the
verify-only app still skips only the Redis call, token URL lengths are measured on the JWT of
the current URL form, the table and spread rules, CPU accounting, and the shared cluster
launcher. No speed is asserted here; `make bench` measures it."""

from __future__ import annotations

import base64
import json
import subprocess
import sys
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import redis
from conftest import API_KEY, RedisServer, free_port, issue_token, path_of, stream_entries
from redis.cluster import RedisCluster
from starlette.testclient import TestClient

from bench import apps, urls
from bench.cpu import Sample, usage
from bench.stats import Spread, paired
from bench.table import Table
from procs import LocalCluster

TYPICAL = {"feedback_key": "user_score", "feedback_config": {"type": "continuous", "min": 0, "max": 1}}


def claims(jwt: str) -> dict[str, Any]:
    return json.loads(base64.urlsafe_b64decode(jwt.split(".")[1] + "=="))  # type: ignore[no-any-return]


def b64_uuid(text: str) -> uuid.UUID:
    return uuid.UUID(bytes=base64.urlsafe_b64decode(text + "=="))


# -- verify-only: the real app minus the Redis call ------------------------------------------------


@pytest.fixture
def verify_only(monkeypatch: pytest.MonkeyPatch, keys_dir: Path) -> Iterator[TestClient]:
    """bench.apps.verify_app as uvicorn builds it (from the environment), its Redis a closed port."""
    monkeypatch.setenv("REDIS_URL", f"redis://127.0.0.1:{free_port()}/0")
    monkeypatch.setenv("FEEDBACK_KEYS_DIR", str(keys_dir))
    monkeypatch.setenv("FEEDBACK_API_KEYS", API_KEY)
    monkeypatch.setenv("FEEDBACK_REDIS_TIMEOUT", "1")
    with TestClient(apps.build_verify_app()) as client:
        yield client


def test_verify_only_answers_what_the_service_answers_and_records_nothing(
    client: TestClient, verify_only: TestClient, redis_server: RedisServer
) -> None:
    [token] = issue_token(client, count=1, **TYPICAL)
    fake = verify_only.post(path_of(token), json={"score": 0.5})
    assert fake.status_code == 200, fake.text
    assert stream_entries(redis_server) == []  # nothing reached any Redis, and the token is unused:
    real = client.post(path_of(token), json={"score": 0.5})
    assert real.status_code == 200, real.text
    assert fake.json().keys() == real.json().keys()
    same = ("id", "run_id", "feedback_key", "score", "duplicate")
    assert {k: fake.json()[k] for k in same} == {k: real.json()[k] for k in same}
    assert len(stream_entries(redis_server)) == 1


def test_verify_only_still_verifies(client: TestClient, verify_only: TestClient) -> None:
    a, b = issue_token(client, count=2, **TYPICAL)
    moved = path_of(a).rsplit("/", 1)[0] + "/" + b["id"]  # a's token under b's id
    assert verify_only.post(moved, json={"score": 1}).json()["code"] == "token_invalid"
    assert verify_only.post(path_of(a), json={"score": 7}).status_code == 422


# -- token URL length ---------------------------------------------------------------------------------


def test_url_lengths_measure_the_jwt_of_each_token(client: TestClient) -> None:
    plain = issue_token(client, count=5, **TYPICAL)
    with_id = [issue_token(client, **TYPICAL, id=str(uuid.uuid4())) for _ in range(5)]  # each its own id
    for answers in (plain, with_id):
        measured = urls.lengths(answers)
        for a in answers:
            jwt = urls.jwt_of(a["url"])
            assert b64_uuid(claims(jwt)["jti"]) == uuid.UUID(a["id"])  # the token, not the id after it
        assert measured["jwt"] == sorted(len(urls.jwt_of(a["url"])) for a in answers)[2]
        assert measured["url"] == measured["path"] + len("http://testserver")
        assert measured["alg"] == "ES256"
    fid = claims(urls.jwt_of(with_id[0]["url"]))["fid"]
    assert b64_uuid(fid) != uuid.UUID(with_id[0]["id"])
    assert urls.lengths(with_id)["jwt"] > urls.lengths(plain)["jwt"] + len(fid)


# -- report pieces ----------------------------------------------------------------------------------------


def test_table_renders_markdown_and_text() -> None:
    table = Table(["endpoint", "req/s"], "lr").add("bare | fast", "1,234").add("submit", None)
    assert table.markdown() == [
        "| endpoint | req/s |",
        "|---|---:|",
        "| bare \\| fast | 1,234 |",
        "| submit |  |",
    ]
    assert table.text() == ["endpoint     req/s", "-----------  -----", "bare | fast  1,234", "submit"]
    with pytest.raises(ValueError, match="2 columns"):
        table.add("one cell")
    with pytest.raises(ValueError, match="align"):
        Table(["a", "b"], "l")


def test_spread_marks_rounds_that_disagree_by_more_than_30_percent() -> None:
    steady = Spread.of([100.0, 120.0, 80.0])
    assert steady.stable is True and steady.cell() == "100 (80-120)"
    wild = Spread.of([60.0, 100.0, 140.0])
    assert wild.stable is False and wild.cell() == "unstable: 60-140"
    assert Spread.of([5.0]).stable is None and Spread.of([5.0]).cell() == "5 (1 round)"
    assert Spread.of([0.0, 0.004], floor=0.05).stable is True
    assert Spread.of([]).cell() == "n/a"
    ratios = paired([2.0, None, 3.0, 4.0], [1.0, 1.0, None, 8.0])
    assert ratios.values == (2.0, 0.5)


def test_cpu_of_a_child_reaped_inside_a_window_is_its_own() -> None:
    burn = "import time\nt = time.process_time()\nwhile time.process_time() - t < 0.3: pass"
    a = Sample.take([])
    subprocess.run([sys.executable, "-c", burn], check=True)
    used = usage(a, Sample.take([]), {}, children_role="load generator")
    assert used.get("load generator") * used.seconds >= 0.29
    assert used.get("driver") * used.seconds < 0.29


# -- the shared cluster launcher -----------------------------------------------------------------------


def test_local_cluster_serves_every_slot_and_stops_cleanly() -> None:
    cluster = LocalCluster(3)
    try:
        cluster.start()
        assert len(cluster.primaries()) == 3
        client = RedisCluster.from_url(cluster.url)
        keys = [f"{{tag{i}}}:k" for i in range(30)]
        for key in keys:
            client.set(key, key)
        assert [client.get(k) for k in keys] == [k.encode() for k in keys]
        per_node = [node.client().dbsize() for node in cluster.nodes]
        assert sum(per_node) == 30 and all(n > 0 for n in per_node)
        client.close()
    finally:
        cluster.cleanup()
    assert cluster.groups.leftovers() == []
    with pytest.raises(redis.ConnectionError):
        cluster.nodes[0].client(timeout=1).ping()


# -- the measurement registry (how bench/delivery.py and bench/ops_cost.py plug in) --------------


def test_a_registered_measurement_is_selected_and_reported(tmp_path: Path) -> None:
    from bench import registry, report
    from bench.config import parse_args
    from bench.harness import Bench
    from bench.registry import Section, measurement

    @measurement("plugin_probe", "Probe")
    def probe(bench: Bench) -> Section:
        return Section("Probe").table(Table(["x"], "r").add(bench.cfg.rounds)).goal("probe goal", True)

    try:
        cfg, _ = parse_args(["--only", "plugin_probe", "--rounds", "3", "--out", str(tmp_path / "run.md")])
        bench = Bench(cfg)
        try:
            [chosen] = bench.selected()
            assert chosen.name == "plugin_probe" and chosen.run is probe
            section = chosen.run(bench)
        finally:
            assert bench.close() == []
        assert section.markdown() == ["## Probe", "", "| x |", "|---:|", "| 3 |", ""]
        assert report.goals_table([section]).markdown()[2] == "| probe goal | met |"
        with pytest.raises(ValueError, match="registered twice"):
            measurement("plugin_probe", "Other")(lambda bench: Section("Other"))
        cfg, _ = parse_args(["--only", "no_such_measurement"])
        unknown = Bench(cfg)
        with pytest.raises(SystemExit, match="unknown measurement"):
            unknown.selected()
        unknown.close()
    finally:
        registry.MEASUREMENTS.pop("plugin_probe", None)
