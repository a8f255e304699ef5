"""A full key rotation on a running fleet (SPEC section 6), end to end.

One Redis; an issuer (full keyring); a verify-only node on a public-only copy of the keyring
(two uvicorn workers, kept in sync the way an operator's job would); a verify-only node on the
issuer's JWKS. Fresh tokens are issued and submitted to every node, round robin, while the CLI
runs the runbook: new -> wait one reload interval -> activate -> wait -> retire. Not one
submission of a token signed by a non-retired key may fail; once the old key is retired, its
tokens get 401 token_invalid on every node.
"""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import httpx
import layout
from conftest import TOKENS, LiveServer, RedisServer, issue_token, live_env, token_of
from keysync import sync_public

from app.domain import tokens

CLI = Path(sys.executable).with_name("feedback-tokens")
POLL = 0.5  # FEEDBACK_KEYRING_POLL on the nodes, FEEDBACK_JWKS_REFRESH on the JWKS node
# One reload interval as the runbook means it: the JWKS node hears of a change after the issuer
# reloads (POLL) and it refetches (POLL); a little more for a busy two-core machine.
RELOAD = 3 * POLL
PICKUP = 5.0  # SPEC: running nodes pick up keyring changes within 5 s


@dataclass
class Submission:
    node: str
    kid: str
    status: int
    code: str | None


def cli(keys_dir: Path, *args: str) -> str:
    result = subprocess.run(
        [str(CLI), "keys", "--dir", str(keys_dir), *args], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return result.stdout.strip()


def kid_of(token: str) -> str:
    return tokens.parse(token).kid


def jwts(answers: list[dict[str, Any]]) -> list[str]:
    return [token_of(answer) for answer in answers]


def submit(node: LiveServer, token: str, name: str) -> Submission:
    # A fresh connection each time, as browsers clicking links would: with two workers behind
    # one socket, the kernel spreads them over both.
    try:
        r = httpx.post(f"{node.url}{TOKENS}/{token}", json={"score": 1}, timeout=10)
        code = r.json().get("code") if r.status_code != 200 else None
        return Submission(name, kid_of(token), r.status_code, code)
    except httpx.HTTPError as err:
        return Submission(name, kid_of(token), 0, type(err).__name__)


def wait_for(what: str, check: Callable[[], bool], limit: float = PICKUP) -> float:
    """Poll until ``check`` holds; fail after ``limit`` seconds. Returns the seconds it took."""
    start = time.monotonic()
    while not check():
        if time.monotonic() - start > limit:
            raise AssertionError(f"{what}: not within {limit} s")
        time.sleep(0.05)
    return time.monotonic() - start


def publishes(node: LiveServer, kid: str) -> bool:
    return kid in {k["kid"] for k in httpx.get(f"{node.url}/.well-known/jwks.json").json()["keys"]}


def refuses(node: LiveServer, token: str) -> bool:
    # HEAD on a link answers what GET would (401 for a token that no longer verifies), consuming nothing.
    return httpx.head(f"{node.url}{TOKENS}/{token}", params={"score": "1"}).status_code == 401


def test_rotation_under_load_fails_no_submission(
    redis_server: RedisServer, keys_dir: Path, live_server: Callable[..., LiveServer], tmp_path: Path
) -> None:
    public = tmp_path / "public"
    sync_public(keys_dir, public)
    old = cli(keys_dir, "list").splitlines()[1].split()[0]
    issuer = live_server(live_env(redis_server, keys_dir, FEEDBACK_KEYRING_POLL=str(POLL)))
    dir_node = live_server(live_env(redis_server, public, FEEDBACK_KEYRING_POLL=str(POLL)), workers=2)
    jwks_node = live_server(
        live_env(
            redis_server, tmp_path / "unused",
            FEEDBACK_JWKS_URL=f"{issuer.url}/.well-known/jwks.json", FEEDBACK_JWKS_REFRESH=str(POLL),
        )
    )
    nodes = {"issuer": issuer, "public-dir": dir_node, "jwks": jwks_node}
    verify_only = [dir_node, jwks_node]

    for node in verify_only:
        with httpx.Client(base_url=node.url, timeout=10) as to_node:
            assert issue_token(to_node, expect=403)["code"] == "signing_disabled"
    session = httpx.Client(base_url=issuer.url, timeout=10)
    # Tokens of the old key kept back: some to submit while it is pending, some for after it retires.
    pending_pool = jwts(issue_token(session, count=30))
    retired_pool = jwts(issue_token(session, count=12))
    assert {kid_of(t) for t in pending_pool + retired_pool} == {old}

    results: list[Submission] = []
    stop = threading.Event()

    names = list(nodes)

    def load() -> None:
        with httpx.Client(base_url=issuer.url, timeout=10) as client:
            i = 0
            while not stop.is_set():
                try:
                    batch = jwts(issue_token(client, count=len(nodes)))
                except (AssertionError, httpx.HTTPError) as err:  # counted as a failure, not lost
                    results.append(Submission("issuer (issuing)", "-", 0, repr(err)))
                    return
                for token in batch:
                    name = names[i % len(names)]
                    results.append(submit(nodes[name], token, name))
                    i += 1

    worker = threading.Thread(target=load, daemon=True)
    worker.start()
    try:
        wait_for("traffic before the rotation", lambda: len(results) >= 30, limit=30)

        # 1. Publish: a pending key verifies everywhere before anything is signed with it.
        new = cli(keys_dir, "new")
        sync_public(keys_dir, public)
        time.sleep(RELOAD)
        for node in nodes.values():
            wait_for(f"{node.url} publishes {new}", partial(publishes, node, new))
        assert all(r.kid == old for r in results)

        # 2. Activate: the issuer signs with the new key within one reload interval.
        cli(keys_dir, "activate", new)
        sync_public(keys_dir, public)
        switched = wait_for("issuer signs with the new key", lambda: results[-1].kid == new)

        # 3. The old key's tokens still verify everywhere while it is pending.
        time.sleep(RELOAD)
        for i, token in enumerate(pending_pool):
            name = names[i % len(names)]
            results.append(submit(nodes[name], token, name))

        # 4. Retire. (Operators wait the longest token lifetime first; --force says we didn't.)
        cli(keys_dir, "retire", old, "--force")
        sync_public(keys_dir, public)
        retired_at = time.monotonic()
        for node in nodes.values():
            wait_for(f"{node.url} refuses the retired key", partial(refuses, node, retired_pool[0]))
        gone = time.monotonic() - retired_at
        time.sleep(RELOAD)  # every worker, not only the one that answered
        after = [submit(nodes[names[i % len(names)]], token, names[i % len(names)])
                 for i, token in enumerate(retired_pool)]
        assert [(r.status, r.code) for r in after] == [(401, "token_invalid")] * len(retired_pool)
        assert {r.node for r in after} == set(names)
        assert not any(publishes(node, old) for node in nodes.values())
    finally:
        stop.set()
        worker.join(timeout=30)
    session.close()

    failed = [r for r in results if r.status != 200]
    assert failed == [], failed[:10]
    by_kid_node = Counter((r.kid, r.node) for r in results)
    assert all(by_kid_node[(kid, node)] > 0 for kid in (old, new) for node in nodes), by_kid_node
    # Each 200 appended exactly one entry to the stream; the 401s appended nothing.
    assert layout.feedback_count(redis_server.client()) == len(results)
    print(
        f"\nrotation: {len(results)} submissions, 0 failed "
        f"({sum(c for (k, _), c in by_kid_node.items() if k == old)} old key, "
        f"{sum(c for (k, _), c in by_kid_node.items() if k == new)} new key; per node "
        f"{dict(Counter(r.node for r in results))}); issuer switched {switched:.2f} s after activate; "
        f"retired key refused on every node {gone:.2f} s after retire; {len(after)} retired-key tokens got 401"
    )
