"""Verify-only nodes fed by an issuer's JWK Set (``FEEDBACK_JWKS_URL``).

The issuer's JWKS is served over real HTTP by a tiny Starlette app under uvicorn in a thread,
which counts the requests it gets and can be told to fail.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import uvicorn
from conftest import free_port, issue_token, submit_score, token_of
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, rsa
from jwt.algorithms import ECAlgorithm, OKPAlgorithm, RSAAlgorithm
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.testclient import TestClient

from app.config import ConfigError, Settings
from app.domain import tokens
from app.domain.tokens import TokenClaims
from app.keys.jwk import key_from_jwk, public_jwk
from app.keys.key import Key, KeyringError
from app.keys.keyring import Keyring, KeyringDir, keyring_from_jwks
from app.keys.source import MAX_JWKS_BYTES, JwksSource


class JwksServer:
    """An issuer's JWKS endpoint, as small as it gets, on a real socket."""

    def __init__(self) -> None:
        self.body = b'{"keys": []}'
        self.status = 200
        self.hits = 0
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}/.well-known/jwks.json"
        app = Starlette(routes=[Route("/.well-known/jwks.json", self.endpoint)])
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", lifespan="off")
        self.server = uvicorn.Server(config)
        self.thread: threading.Thread | None = None

    async def endpoint(self, request: Request) -> Response:
        self.hits += 1
        return Response(self.body, status_code=self.status, media_type="application/json")

    def publish(self, keyring: Keyring | dict[str, Any]) -> None:
        doc = keyring.jwks() if isinstance(keyring, Keyring) else keyring
        self.body, self.status = json.dumps(doc).encode(), 200

    def start(self) -> JwksServer:
        self.server.should_exit = False
        self.thread = threading.Thread(target=self.server.run, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + 10
        while not self.server.started:
            if time.monotonic() > deadline:
                raise RuntimeError("JWKS server did not start")
            time.sleep(0.01)
        return self

    def stop(self) -> None:
        if self.thread is not None:
            self.server.should_exit = True
            self.thread.join(timeout=10)
            self.server.started = False
            self.thread = None


@pytest.fixture
def jwks_server(keys_dir: Path) -> Iterator[JwksServer]:
    server = JwksServer().start()
    server.publish(KeyringDir(keys_dir).load())
    yield server
    server.stop()


@pytest.fixture
def edge(make_app: Callable[..., TestClient], jwks_server: JwksServer) -> TestClient:
    """A verify-only node on the JWKS; refreshes only when a test says so."""
    return make_app(jwks_url=jwks_server.url, jwks_refresh=3600.0, jwks_refetch_floor=3600.0)


def source_of(client: TestClient) -> JwksSource:
    source = client.app.state.service.keys  # type: ignore[attr-defined]
    assert isinstance(source, JwksSource)
    return source


def refresh(client: TestClient) -> bool:
    assert client.portal is not None
    return bool(client.portal.call(source_of(client).refresh))


submit = submit_score


def forged(kid: str) -> str:
    """A well-formed token signed by a key nobody published, under a made-up kid."""
    private = ed25519.Ed25519PrivateKey.generate()
    key = Key(kid, "EdDSA", "active", "", private.public_key(), private)
    claims = TokenClaims(uuid.uuid4(), uuid.uuid4(), "k", uuid.uuid4(), int(time.time()), int(time.time()) + 600)
    return tokens.sign(claims, key, "fbt")


# -- the node ---------------------------------------------------------------------------------------


def test_jwks_node_verifies_issuer_tokens_and_refuses_to_issue(client: TestClient, edge: TestClient) -> None:
    assert issue_token(edge, expect=403)["code"] == "signing_disabled"
    assert submit(edge, token_of(issue_token(client))) == (200, None)
    assert edge.get("/readyz").json()["checks"]["keys"] == {"ok": True, "signing": False}
    # It re-publishes what it verifies with: the issuer's set, nothing more.
    assert edge.get("/.well-known/jwks.json").json() == client.get("/.well-known/jwks.json").json()


def test_retired_key_leaves_the_set_and_stops_verifying(
    client: TestClient, edge: TestClient, jwks_server: JwksServer, keys_dir: Path
) -> None:
    old_token, spare = token_of(issue_token(client)), token_of(issue_token(client))
    ring = KeyringDir(keys_dir)
    old = ring.load().active
    assert old is not None
    ring.activate(ring.new())
    jwks_server.publish(ring.load())
    assert refresh(edge) is True
    assert submit(edge, old_token) == (200, None)  # pending again: still verifies
    ring.retire(old.kid, force=True)
    jwks_server.publish(ring.load())
    assert refresh(edge) is True
    assert submit(edge, spare) == (401, "token_invalid")
    assert old.kid not in {k["kid"] for k in edge.get("/.well-known/jwks.json").json()["keys"]}


def test_forged_kids_cost_the_issuer_one_request(client: TestClient, edge: TestClient, jwks_server: JwksServer) -> None:
    assert jwks_server.hits == 1  # the fetch at start
    for i in range(30):
        assert submit(edge, forged(f"forged-{i}")) == (401, "token_invalid")
    assert jwks_server.hits == 2  # one refetch for the first unknown kid, then the floor holds
    assert submit(edge, token_of(issue_token(client))) == (200, None)  # known kids never fetch
    assert jwks_server.hits == 2


def test_unknown_kid_refetch_floor_and_a_key_published_late(keys_dir: Path, jwks_server: JwksServer) -> None:
    now = [1000.0]
    source = JwksSource(jwks_server.url, refresh=3600, refetch_floor=10, monotonic=lambda: now[0])
    ring = KeyringDir(keys_dir)

    async def scenario() -> None:
        await source.start()
        try:
            assert jwks_server.hits == 1
            assert await source.on_unknown_kid("forged-1") is False
            assert jwks_server.hits == 2
            fresh = ring.new()
            jwks_server.publish(ring.load())
            now[0] += 9.9
            assert await source.on_unknown_kid(fresh) is False  # within the floor: no request
            assert jwks_server.hits == 2 and source.keyring.verifier(fresh) is None
            now[0] += 0.1
            # Many requests naming the new kid at once share one fetch.
            results = await asyncio.gather(*(source.on_unknown_kid(fresh) for _ in range(10)))
            assert jwks_server.hits == 3
            assert results.count(True) == 10 and source.keyring.verifier(fresh) is not None
        finally:
            await source.stop()

    asyncio.run(scenario())


def _spoil_500(server: JwksServer) -> None:
    server.status = 500


def _spoil_garbage(server: JwksServer) -> None:
    server.body = b"<html>gateway timeout</html>"


def _spoil_not_a_set(server: JwksServer) -> None:
    server.body = b'{"issuer": "fbt"}'


def _spoil_huge(server: JwksServer) -> None:
    server.body = b'{"keys": [], "pad": "' + b"x" * MAX_JWKS_BYTES + b'"}'


def _spoil_duplicate_kid(server: JwksServer) -> None:
    keys = json.loads(server.body)["keys"]
    server.body = json.dumps({"keys": keys + keys}).encode()


def _spoil_down(server: JwksServer) -> None:
    server.stop()


SPOILERS = {
    "500": (_spoil_500, "the issuer answered 500"),
    "garbage": (_spoil_garbage, "not a JWK Set"),
    "not a set": (_spoil_not_a_set, "not a JWK Set"),
    "huge": (_spoil_huge, f"larger than {MAX_JWKS_BYTES} bytes"),
    "duplicate kid": (_spoil_duplicate_kid, "twice"),
    "down": (_spoil_down, "could not fetch it: ConnectError"),
}


@pytest.mark.parametrize("how", list(SPOILERS))
def test_keeps_the_last_good_set_when_the_issuer_fails(
    client: TestClient, edge: TestClient, jwks_server: JwksServer, how: str
) -> None:
    token = token_of(issue_token(client))
    source = source_of(edge)
    before = source.keyring
    good = jwks_server.body
    spoil, reason = SPOILERS[how]
    spoil(jwks_server)
    assert refresh(edge) is False
    assert source.keyring is before
    assert source.error is not None and reason in source.error
    assert submit(edge, token) == (200, None)
    ready = edge.get("/readyz")
    assert ready.status_code == 200 and ready.json()["checks"]["keys"]["detail"] == source.error
    # The issuer is back: the complaint goes.
    if how == "down":
        jwks_server.start()
    jwks_server.body, jwks_server.status = good, 200
    refresh(edge)
    assert source.error is None and "detail" not in edge.get("/readyz").json()["checks"]["keys"]


def test_node_started_while_the_issuer_is_down_is_not_ready_until_it_answers(
    make_app: Callable[..., TestClient], keys_dir: Path
) -> None:
    server = JwksServer()  # not started yet: nothing listens on its port
    server.publish(KeyringDir(keys_dir).load())
    edge = make_app(jwks_url=server.url, jwks_refresh=3600.0)
    ready = edge.get("/readyz")
    assert ready.status_code == 503
    assert server.url in ready.json()["checks"]["keys"]["detail"]
    server.start()
    try:
        assert refresh(edge) is True
        assert edge.get("/readyz").status_code == 200
    finally:
        server.stop()


def test_periodic_refresh_without_requests(keys_dir: Path, jwks_server: JwksServer) -> None:
    source = JwksSource(jwks_server.url, refresh=0.05, refetch_floor=3600)
    ring = KeyringDir(keys_dir)

    async def scenario() -> bool:
        await source.start()
        try:
            kid = ring.new()
            jwks_server.publish(ring.load())
            for _ in range(200):  # bounded: 10 s at most
                if source.keyring.verifier(kid) is not None:
                    return True
                await asyncio.sleep(0.05)
            return False
        finally:
            await source.stop()

    assert asyncio.run(scenario()) is True


# -- what a JWK Set may hold ---------------------------------------------------------------------------


def _jwk(algorithm: Any, key: Any, **extra: Any) -> dict[str, Any]:
    jwk: dict[str, Any] = algorithm.to_jwk(key, as_dict=True)
    jwk.update(extra)
    return jwk


def test_unusable_keys_are_skipped_and_usable_ones_kept() -> None:
    ed = ed25519.Ed25519PrivateKey.generate()
    p256 = ec.generate_private_key(ec.SECP256R1())
    okp, es = OKPAlgorithm(), ECAlgorithm(ECAlgorithm.SHA256)
    good = [
        _jwk(okp, ed.public_key(), kid="ed", alg="EdDSA", use="sig"),
        _jwk(es, p256.public_key(), kid="p256"),  # no alg, no use: inferred from kty/crv
    ]
    bad = {
        "rsa": _jwk(RSAAlgorithm(RSAAlgorithm.SHA256), rsa.generate_private_key(65537, 2048).public_key(),
                    kid="rsa", alg="RS256"),
        "ed448": _jwk(okp, ed448.Ed448PrivateKey.generate().public_key(), kid="ed448"),
        "p384 as ES256": _jwk(es, ec.generate_private_key(ec.SECP384R1()).public_key(), kid="p384", alg="ES256"),
        "EdDSA named ES256": _jwk(okp, ed.public_key(), kid="liar", alg="ES256"),
        "hmac": {"kty": "oct", "k": "c2VjcmV0", "kid": "hmac", "alg": "HS256"},
        "none": {"kty": "OKP", "crv": "Ed25519", "x": good[0]["x"], "kid": "none", "alg": "none"},
        "private": _jwk(okp, ed, kid="private", alg="EdDSA"),
        "encryption": _jwk(es, p256.public_key(), kid="enc", alg="ES256", use="enc"),
        "bad kid": _jwk(okp, ed.public_key(), kid="../../etc/passwd", alg="EdDSA"),
        "broken x": {"kty": "OKP", "crv": "Ed25519", "x": "AAAA", "kid": "short", "alg": "EdDSA"},
        "not an object": "ed",
    }
    assert "d" in bad["private"]
    keyring, skipped = keyring_from_jwks(json.dumps({"keys": [*good, *bad.values()]}).encode())
    assert set(keyring.keys) == {"ed", "p256"}
    assert {k.alg for k in keyring.keys.values()} == {"EdDSA", "ES256"}
    assert all(k.private_key is None and k.verifies for k in keyring.keys.values())
    assert keyring.signer is None
    assert len(skipped) == len(bad)
    assert any("private material" in reason for reason in skipped)
    for jwk in bad.values():  # each refused on its own too, not only as part of the set
        with pytest.raises(KeyringError):
            key_from_jwk(jwk)


def test_a_key_from_a_jwk_verifies_what_its_private_half_signed(keys_dir: Path) -> None:
    ring = KeyringDir(keys_dir)
    ring.activate(ring.new("ES256"))
    for key in ring.load().keys.values():
        imported = key_from_jwk(public_jwk(key))
        assert imported.alg == key.alg and imported.kid == key.kid
        claims = TokenClaims(uuid.uuid4(), uuid.uuid4(), "k", uuid.uuid4(), int(time.time()), int(time.time()) + 60)
        token = tokens.sign(claims, key, "fbt")
        verified = tokens.verify(token, Keyring({key.kid: imported}), "fbt", time.time(), 0)
        assert verified.token_id == claims.token_id


def test_a_set_that_is_not_one_is_refused_whole() -> None:
    for raw in (b"[]", b'{"keys": {}}', b"nope", b'{"keys": null}'):
        with pytest.raises(KeyringError, match="not a JWK Set"):
            keyring_from_jwks(raw)
    assert len(keyring_from_jwks(b'{"keys": []}')[0]) == 0  # empty is a set: every key retired


def test_jwks_url_must_be_http() -> None:
    assert Settings.from_env({"FEEDBACK_JWKS_URL": "https://issuer.example/.well-known/jwks.json"}).jwks_url
    with pytest.raises(ConfigError, match="FEEDBACK_JWKS_URL"):
        Settings.from_env({"FEEDBACK_JWKS_URL": "file:///etc/keys.json"})
    settings = Settings.from_env({"FEEDBACK_JWKS_REFRESH": "2.5", "FEEDBACK_JWKS_REFETCH_FLOOR": "30"})
    assert (settings.jwks_refresh, settings.jwks_refetch_floor) == (2.5, 30.0)


# -- HS256: never in a JWK Set ------------------------------------------------------------------------


def test_a_symmetric_jwk_is_refused_as_a_shared_secret() -> None:
    for jwk in (
        {"kty": "oct", "k": "c2VjcmV0LXNlY3JldC1zZWNyZXQtc2VjcmV0LXNlY3JldA", "kid": "hs", "alg": "HS256"},
        {"kty": "oct", "k": "c2VjcmV0", "kid": "hs-no-alg"},
        {"kty": "EC", "crv": "P-256", "k": "c2VjcmV0", "kid": "k-member", "alg": "ES256"},
    ):
        with pytest.raises(KeyringError, match="symmetric key: a shared secret must never be published"):
            key_from_jwk(jwk)


def test_an_hs256_signing_issuer_publishes_only_its_asymmetric_keys(
    client: TestClient, edge: TestClient, jwks_server: JwksServer, keys_dir: Path
) -> None:
    """ES256 -> HS256 with a JWKS node left behind: it keeps verifying the previous key's tokens
    and refuses every HS256 token, since the secret is never in the set."""
    es_token = token_of(issue_token(client))
    ring = KeyringDir(keys_dir)
    hs = ring.new("HS256")
    ring.activate(hs)
    client.app.state.service.keys.reload()  # type: ignore[attr-defined]
    hs_token = token_of(issue_token(client))
    assert json.loads(tokens.b64decode(hs_token.split(".")[0]))["alg"] == "HS256"
    published = client.get("/.well-known/jwks.json").json()
    assert hs not in {k["kid"] for k in published["keys"]} and published["keys"]
    assert all("k" not in k for k in published["keys"])
    with pytest.raises(KeyringError, match="never published"):
        public_jwk(ring.load().keys[hs])
    jwks_server.publish(published)
    refresh(edge)
    assert submit(edge, hs_token) == (401, "token_invalid")
    assert submit(edge, es_token) == (200, None)
    assert submit(client, hs_token) == (200, None)  # a node holding the secret verifies it
