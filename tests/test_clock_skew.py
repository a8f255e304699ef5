"""Clock skew between nodes and Redis must not reopen used or revoked tokens (issue 9).

Nodes run under Debian's ``faketime`` (tests/fleet.py), one ``SKEW`` seconds behind
Redis and one ``SKEW`` ahead, with ``SKEW`` = leeway + 5 s and FEEDBACK_MAX_CLOCK_SKEW covering
it. Tokens live a few seconds (issued by a node on Redis's time); through their expiry, and
until past every deadline, both skewed nodes send bursts of *different* submissions on `once`,
`update` and revoked tokens. Then: at most one accepted per `once` token, none on a revoked one,
and the stream holds exactly the accepted submissions.

The behind node still verifies a token until exp + leeway + SKEW by Redis's clock: that is where
the issue's bug lived (the record expired at exp + leeway and the node recreated it, fresh).
A third node is behind by more than its fleet's FEEDBACK_MAX_CLOCK_SKEW: past the deadline the
script refuses it with ``token_expired`` rather than reopen the token.
"""

from __future__ import annotations

import asyncio
import math
import time
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import layout
import pytest
from conftest import API_KEY, TOKENS, LiveServer, RedisServer, issue_token, live_env, path_of
from fleet import FAKETIME_ENV, clock_offset, skewed
from starlette.testclient import TestClient

from app.clock import Clock

AUTH = {"X-API-Key": API_KEY}
LEEWAY = 1
SKEW = LEEWAY + 5  # how far the skewed nodes' clocks are off
BOUND = SKEW  # FEEDBACK_MAX_CLOCK_SKEW of the fleet: the promise covers the skew, no more
SMALL_BOUND = 2  # a second fleet (its own prefix) that promises less than its clocks do
LIFETIME = 8  # seconds: the ahead node accepts for LIFETIME - SKEW + LEEWAY of them


@pytest.fixture
def keys_dir(shared_keys: Path) -> Path:
    return shared_keys


@pytest.fixture
def clock() -> Clock:
    return Clock()  # the issuers here run on Redis's time, the real one


@dataclass(frozen=True)
class Answer:
    node: str
    kind: str
    token_id: str
    comment: str
    started: float  # real time
    ended: float
    status: int
    body: dict[str, Any]

    @property
    def accepted(self) -> bool:
        return self.status == 200 and self.body["duplicate"] is False

    @property
    def code(self) -> str:
        return "accepted" if self.accepted else str(self.body.get("code", self.status))


async def bursts(
    targets: list[tuple[str, str, list[tuple[str, dict[str, Any]]]]], until: float
) -> list[Answer]:
    """Round after round, every node sends a different submission to each of its tokens at once,
    until real time ``until``."""
    answers: list[Answer] = []
    clients = {url: httpx.AsyncClient(base_url=url, timeout=30) for _, url, _ in targets}
    try:
        n = 0
        while time.time() < until:
            n += 1

            async def one(node: str, url: str, kind: str, token: dict[str, Any], n: int = n) -> Answer:
                comment = f"{node} round {n}"
                started = time.time()
                r = await clients[url].post(path_of(token), json={"score": n % 2, "comment": comment})
                return Answer(node, kind, token["id"], comment, started, time.time(), r.status_code, r.json())

            answers += await asyncio.gather(
                *(one(node, url, kind, token) for node, url, tokens in targets for kind, token in tokens)
            )
            await asyncio.sleep(0.2)
    finally:
        for client in clients.values():
            await client.aclose()
    return answers


def entries(redis_server: RedisServer, prefix: str) -> dict[str, list[dict[str, str]]]:
    by_token: dict[str, list[dict[str, str]]] = defaultdict(list)
    for _, entry in layout.stream_rows(redis_server.client(), prefix):
        by_token[entry["token_id"]].append(entry)
    return by_token


def test_skewed_nodes_at_the_expiry_edge_never_reopen_a_token(
    make_app: Callable[..., TestClient],
    live_server: Callable[..., LiveServer],
    redis_server: RedisServer,
    keys_dir: Path,
) -> None:
    issuer = make_app(leeway=LEEWAY, max_clock_skew=BOUND)
    small_issuer = make_app(leeway=LEEWAY, max_clock_skew=SMALL_BOUND, redis_prefix="fbtsmall")
    fleet = {"FEEDBACK_LEEWAY": str(LEEWAY), "FEEDBACK_MAX_CLOCK_SKEW": str(BOUND), **FAKETIME_ENV}
    behind = live_server(live_env(redis_server, keys_dir, **fleet), prefix=skewed(-SKEW))
    ahead = live_server(live_env(redis_server, keys_dir, **fleet), prefix=skewed(+SKEW))
    beyond = live_server(
        live_env(redis_server, keys_dir, **{**fleet, "FEEDBACK_MAX_CLOCK_SKEW": str(SMALL_BOUND)},
                 FEEDBACK_REDIS_PREFIX="fbtsmall"),
        prefix=skewed(-SKEW),
    )
    # faketime really is in effect (and only on the wall clock: these nodes answer at all).
    for node, expected in ((behind, -SKEW), (ahead, SKEW), (beyond, -SKEW)):
        assert abs(clock_offset(node.url) - expected) < 2, node.output()

    # Nodes differ from each other by up to twice the bound: a token the ahead node just issued
    # is not "issued in the future" for the behind node.
    with httpx.Client(base_url=ahead.url, timeout=30) as ahead_client:
        fresh = issue_token(ahead_client, expires_in={"minutes": 5})
    r = httpx.post(f"{behind.url}{path_of(fresh)}", json={"score": 1}, timeout=30)
    assert r.status_code == 200, r.text

    exp = math.floor(time.time()) + LIFETIME
    expires_at = datetime.fromtimestamp(exp, UTC).isoformat()
    tokens: dict[str, list[tuple[str, dict[str, Any]]]] = {"main": [], "small": []}
    first: dict[str, str] = {}  # token id -> comment of the submission made before the edge
    for group, client in (("main", issuer), ("small", small_issuer)):
        for kind in ("once-used", "once-fresh", "update", "revoked"):
            for _ in range(2):
                token = issue_token(client, expires_at=expires_at, use="update" if kind == "update" else "once")
                if kind in ("once-used", "update"):
                    r = client.post(path_of(token), json={"score": 1, "comment": "before the edge"})
                    assert r.status_code == 200 and r.json()["duplicate"] is False, r.text
                    first[token["id"]] = "before the edge"
                if kind == "revoked":
                    assert client.delete(f"{TOKENS}/{token['id']}", headers=AUTH).status_code == 204
                tokens[group].append((kind, token))

    # Until a second past the last deadline (exp + leeway + bound, by Redis's clock).
    answers = asyncio.run(bursts(
        [("behind", behind.url, tokens["main"]), ("ahead", ahead.url, tokens["main"]),
         ("beyond", beyond.url, tokens["small"])],
        until=exp + LEEWAY + BOUND + 1.5,
    ))

    by_token: dict[str, list[Answer]] = defaultdict(list)
    for answer in answers:
        by_token[answer.token_id].append(answer)
    for group, prefix in (("main", "fbt"), ("small", "fbtsmall")):
        stream = entries(redis_server, prefix)
        for kind, token in tokens[group]:
            mine = by_token[token["id"]]
            accepted = [a for a in mine if a.accepted]
            codes = {"accepted", "token_used", "token_revoked", "token_expired"}
            if group == "small":  # 6 s behind in a fleet that promised 2: fresh tokens look issued in the future
                codes.add("token_invalid")
            assert {a.code for a in mine} <= codes, mine
            if kind == "revoked":
                assert accepted == []
            if kind == "once-used":
                assert accepted == []
            if kind == "once-fresh":
                assert len(accepted) <= 1
            # The stream holds exactly what was accepted: before the edge, then in the bursts.
            expected = ([first[token["id"]]] if token["id"] in first else []) + [a.comment for a in accepted]
            assert sorted(e["comment"] for e in stream[token["id"]]) == sorted(expected), (kind, mine)
            if kind == "update":
                revisions = [a.body["revision"] for a in accepted]
                assert sorted(revisions) == list(range(2, 2 + len(accepted)))
                assert sorted(int(e["revision"]) for e in stream[token["id"]]) == list(range(1, 2 + len(accepted)))
            # Every record is gone after its deadline, and nothing wrote it back.
            assert layout.token_fields(redis_server.client(), token["id"], prefix)["record"] is None

    def seen(node: str, kind: str, code: str, after: float, before: float) -> list[Answer]:
        """Answers sent after ``after`` and received before ``before`` (real time)."""
        return [a for a in answers
                if (a.node, a.kind, a.code) == (node, kind, code) and a.started > after and a.ended < before]

    # The edge was really exercised: past exp + leeway, the behind node (still verifying the token
    # by its own clock) was told 'used' and 'revoked' by records that outlived that moment.
    assert seen("behind", "once-used", "token_used", exp + LEEWAY, exp + LEEWAY + SKEW)
    assert seen("behind", "revoked", "token_revoked", exp + LEEWAY, exp + LEEWAY + SKEW)
    # Beyond the bound: between the small fleet's deadline and the moment its node stops
    # verifying, the script itself refuses, instead of recreating the record.
    assert seen("beyond", "once-used", "token_expired", exp + LEEWAY + SMALL_BOUND, exp + LEEWAY + SKEW)
    assert not seen("beyond", "once-fresh", "accepted", exp + LEEWAY + SMALL_BOUND, math.inf)
    # The behind node stamps what it accepts with its own clock, SKEW behind.
    stamped = [a for a in answers if a.node == "behind" and a.accepted]
    assert stamped, "the behind node accepted no revision"
    for a in stamped:
        created = datetime.fromisoformat(a.body["created_at"]).timestamp()
        assert a.started - SKEW - 2 < created < a.ended - SKEW + 2
    counts: dict[tuple[str, str], int] = defaultdict(int)
    for a in answers:
        counts[(a.node, a.code)] += 1
    print("answers per node and outcome:", dict(sorted(counts.items())))
