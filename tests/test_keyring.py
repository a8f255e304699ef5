"""The keyring on disk and its reload (SPEC section 6): lifecycle, refusals, files, safe reloads."""

from __future__ import annotations

import asyncio
import base64
import json
import logging
import os
import stat
from collections.abc import Callable
from pathlib import Path

import pytest
from conftest import issue_token, submit_score, token_of
from keysync import sync_public
from starlette.testclient import TestClient

from app.clock import FrozenClock
from app.domain.tokens import b64decode as tokens_b64decode
from app.keys.key import KeyringError
from app.keys.keyring import KeyringDir
from app.keys.source import DirectorySource


def _mode(path: Path) -> int:
    return stat.S_IMODE(os.stat(path).st_mode)


_submit = submit_score


# -- lifecycle ---------------------------------------------------------------------------------


def test_init_writes_owner_only_private_key_in_owner_only_dir(tmp_path: Path) -> None:
    ring = KeyringDir(tmp_path / "keys")
    kid = ring.init()
    assert kid is not None
    assert _mode(ring.path) == 0o700
    assert _mode(ring.private_path(kid)) == 0o600
    assert _mode(ring.public_path(kid)) == 0o644
    assert ring.load().signer is not None and ring.load().signer.kid == kid  # type: ignore[union-attr]
    assert ring.init() is None  # a keyring with keys is left alone


def test_new_is_pending_and_never_changes_who_signs(keys_dir: Path) -> None:
    ring = KeyringDir(keys_dir)
    signer = ring.load().signer
    assert signer is not None
    kid = ring.new("ES256")
    keyring = ring.load()
    assert keyring.signer is not None and keyring.signer.kid == signer.kid
    assert keyring.keys[kid].state == "pending"
    assert keyring.verifier(kid) is not None  # verifies already, so it can be published early
    assert _mode(ring.private_path(kid)) == 0o600


def test_activate_sends_previous_signer_back_to_pending(keys_dir: Path) -> None:
    clock = FrozenClock()
    ring = KeyringDir(keys_dir, clock=clock)
    old = ring.load().active
    assert old is not None
    new = ring.new()
    assert ring.activate(new) == old.kid
    keyring = ring.load()
    assert keyring.signer is not None and keyring.signer.kid == new
    assert keyring.keys[old.kid].state == "pending"
    assert keyring.verifier(old.kid) is not None  # its tokens keep verifying
    entry = {e["kid"]: e for e in ring.entries()}[old.kid]
    assert entry["signed_until"].startswith(clock.utcnow().isoformat(timespec="seconds")[:19])
    assert ring.activate(new) is None  # already active: nothing changes


def test_retire_stops_verifying_and_removes_the_private_key(keys_dir: Path) -> None:
    ring = KeyringDir(keys_dir)
    old = ring.load().active
    assert old is not None
    ring.activate(ring.new())
    assert ring.retire(old.kid, token_lifetime=0) == "pending"
    keyring = ring.load()
    assert old.kid not in keyring.keys and keyring.verifier(old.kid) is None
    assert old.kid not in {k["kid"] for k in keyring.jwks()["keys"]}
    assert not ring.private_path(old.kid).exists()
    assert ring.public_path(old.kid).exists()
    assert ring.retire(old.kid) == "retired"  # again: nothing to do, no error


def _refused(ring: KeyringDir, action: Callable[[], object], message: str) -> None:
    before = ring.manifest.read_bytes()
    with pytest.raises(KeyringError, match=message):
        action()
    assert ring.manifest.read_bytes() == before


def test_refused_transitions_leave_the_keyring_unchanged(keys_dir: Path, tmp_path: Path) -> None:
    ring = KeyringDir(keys_dir)
    active = ring.load().active
    assert active is not None
    _refused(ring, lambda: ring.retire(active.kid), "is the active signer; activate another key first")
    gone = ring.new()
    ring.retire(gone)
    _refused(ring, lambda: ring.activate(gone), "is retired and a retired key never comes back")
    _refused(ring, lambda: ring.activate("nope"), "no key 'nope' in the keyring")
    _refused(ring, lambda: ring.retire("nope"), "no key 'nope' in the keyring")
    _refused(ring, lambda: ring.new("RS256"), "unsupported algorithm")  # type: ignore[arg-type]
    # A public-only copy holds no private key to sign with.
    public = tmp_path / "public"
    pending = ring.new()
    sync_public(keys_dir, public)
    copy = KeyringDir(public)
    _refused(copy, lambda: copy.activate(pending), "has no private key")


def test_retire_refuses_a_key_whose_tokens_may_still_be_live(keys_dir: Path) -> None:
    clock = FrozenClock()
    ring = KeyringDir(keys_dir, clock=clock)
    old = ring.load().active
    assert old is not None
    ring.activate(ring.new())
    _refused(ring, lambda: ring.retire(old.kid, token_lifetime=3600), "may verify until .* pass --force")
    clock.advance(3601)
    assert ring.retire(old.kid, token_lifetime=3600) == "pending"


def test_forced_retire_of_the_signer_stops_signing(keys_dir: Path) -> None:
    ring = KeyringDir(keys_dir)
    active = ring.load().active
    assert active is not None
    assert ring.retire(active.kid, force=True) == "active"
    keyring = ring.load()
    assert keyring.signer is None and keyring.verifier(active.kid) is None
    assert "signed_until" in ring.entries()[0]


def test_two_active_keys_in_a_hand_edited_manifest_are_refused(keys_dir: Path) -> None:
    ring = KeyringDir(keys_dir)
    other = ring.new()
    doc = json.loads(ring.manifest.read_text())
    for entry in doc["keys"]:
        entry["state"] = "active"
    ring.manifest.write_text(json.dumps(doc))
    with pytest.raises(KeyringError, match="more than one active key"):
        ring.load()
    # Lifecycle commands refuse to work on it too, rather than pick a signer.
    with pytest.raises(KeyringError, match="more than one active key"):
        ring.retire(other, force=True)


def test_world_writable_keys_dir_is_refused(keys_dir: Path) -> None:
    ring = KeyringDir(keys_dir)
    os.chmod(keys_dir, 0o777)
    with pytest.raises(KeyringError, match="world-writable"):
        ring.load()
    with pytest.raises(KeyringError, match="world-writable"):
        ring.new()
    os.chmod(keys_dir, 0o755)
    assert ring.load().signer is not None


def test_private_key_readable_by_others_loads_with_a_warning(keys_dir: Path, caplog: pytest.LogCaptureFixture) -> None:
    ring = KeyringDir(keys_dir)
    kid = ring.entries()[0]["kid"]
    os.chmod(ring.private_path(kid), 0o644)
    with caplog.at_level(logging.WARNING, logger="feedback_tokens.keys"):
        assert ring.load().signer is not None
    assert f"{kid}.key.pem is mode 644" in caplog.text


def test_fingerprint_sees_a_same_size_rewrite_with_the_same_mtime(keys_dir: Path) -> None:
    # A stat-only check can miss this (inode recycled by the rename, same size, same tick).
    ring = KeyringDir(keys_dir)
    before = ring.fingerprint()
    st = os.stat(ring.manifest)
    text = ring.manifest.read_text()
    kid = ring.entries()[0]["kid"]
    ring.manifest.write_text(text.replace(kid, kid[::-1]))
    os.utime(ring.manifest, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(ring.manifest).st_size == st.st_size
    assert ring.fingerprint() != before


# -- a running node reloads, and never loads a bad keyring -----------------------------------------


BAD_KEYRINGS: dict[str, tuple[Callable[[KeyringDir], object], str]] = {
    "garbage": (lambda ring: ring.manifest.write_bytes(b"\x00not json"), "not valid JSON"),
    "half-written": (
        lambda ring: ring.manifest.write_bytes(ring.manifest.read_bytes()[:40]),
        "not valid JSON",
    ),
    "missing pem": (
        lambda ring: ring.manifest.write_text(
            json.dumps({"version": 1, "keys": [*ring.entries(), {"kid": "ghost", "alg": "EdDSA", "state": "pending"}]})
        ),
        "neither ghost.key.pem nor ghost.pub.pem",
    ),
    "two active": (
        lambda ring: ring.manifest.write_text(
            json.dumps({"version": 1, "keys": [{**e, "state": "active"} for e in ring.entries()]})
        ),
        "more than one active key",
    ),
    "unreadable pem": (
        lambda ring: ring.public_path(ring.entries()[-1]["kid"]).write_text("-----BEGIN nonsense"),
        "unreadable public key",
    ),
}


@pytest.mark.parametrize("bad", list(BAD_KEYRINGS))
def test_node_keeps_last_good_keyring_and_readyz_says_why(
    make_app: Callable[..., TestClient], keys_dir: Path, bad: str, caplog: pytest.LogCaptureFixture
) -> None:
    ring = KeyringDir(keys_dir)
    pending = ring.new()  # a public-only key: "unreadable pem" spoils its pem
    ring.private_path(pending).unlink()
    client = make_app()
    source = client.app.state.service.keys  # type: ignore[attr-defined]
    assert isinstance(source, DirectorySource)
    before = source.keyring
    token = token_of(issue_token(client))
    saved = {path: path.read_bytes() for path in keys_dir.iterdir() if path.is_file()}
    spoil, reason = BAD_KEYRINGS[bad]
    with caplog.at_level(logging.ERROR, logger="feedback_tokens.keys"):
        spoil(ring)
        assert source.reload() is False
        assert source.reload() is False  # tried again on every tick, reported once
    assert source.keyring is before
    assert [r.getMessage() for r in caplog.records].count(caplog.records[0].getMessage()) == 1
    assert reason in caplog.records[0].getMessage()
    assert _submit(client, token) == (200, None)
    assert token_of(issue_token(client))  # still signing with the last good keyring
    ready = client.get("/readyz")
    assert ready.status_code == 200
    assert reason in ready.json()["checks"]["keys"]["detail"]
    # Put right on disk: the complaint goes away at the next look.
    for path, data in saved.items():
        path.write_bytes(data)
    source.reload()
    assert source.error is None and "detail" not in client.get("/readyz").json()["checks"]["keys"]
    assert _submit(client, token_of(issue_token(client))) == (200, None)


def test_node_starting_on_a_bad_keyring_is_not_ready(make_app: Callable[..., TestClient], tmp_path: Path) -> None:
    path = tmp_path / "broken"
    path.mkdir()
    (path / "keyring.json").write_text('{"version": 1, "keys": [{"kid": "a", "alg": "EdDSA", "state": "active"}]}')
    client = make_app(keys_dir=path)
    ready = client.get("/readyz")
    assert ready.status_code == 503
    assert "neither a.key.pem nor a.pub.pem" in ready.json()["checks"]["keys"]["detail"]


def test_public_only_keyring_verifies_and_refuses_issuance(
    make_app: Callable[..., TestClient], keys_dir: Path, tmp_path: Path
) -> None:
    issuer = make_app()
    public = tmp_path / "public"
    sync_public(keys_dir, public)
    assert sorted(p.name for p in public.iterdir()) == sorted(
        ["keyring.json", *(p.name for p in keys_dir.glob("*.pub.pem"))]
    )
    edge = make_app(keys_dir=public)
    assert issue_token(edge, expect=403)["code"] == "signing_disabled"
    assert _submit(edge, token_of(issue_token(issuer))) == (200, None)
    ready = edge.get("/readyz").json()["checks"]["keys"]
    assert ready == {"ok": True, "signing": False}
    assert edge.get("/.well-known/jwks.json").json() == issuer.get("/.well-known/jwks.json").json()


def test_unknown_kid_looks_at_the_directory_at_once_but_not_for_every_token(keys_dir: Path) -> None:
    ring = KeyringDir(keys_dir)
    now = [100.0]
    source = DirectorySource(ring, interval=3600, monotonic=lambda: now[0])

    async def scenario() -> list[bool]:
        await source.start()
        try:
            fresh = ring.new()
            first = await source.on_unknown_kid(fresh)  # picked up without waiting for a tick
            ring.new()
            second = await source.on_unknown_kid("forged")  # within the floor: no look
            now[0] += source.unknown_kid_floor
            third = await source.on_unknown_kid("forged")
            return [first, second, third, source.keyring.verifier(fresh) is not None]
        finally:
            await source.stop()

    assert asyncio.run(scenario()) == [True, False, True, True]


def test_watcher_picks_up_changes_without_a_request(keys_dir: Path) -> None:
    ring = KeyringDir(keys_dir)
    source = DirectorySource(ring, interval=0.05)

    async def scenario() -> bool:
        await source.start()
        try:
            kid = ring.new()
            for _ in range(200):  # bounded: 10 s at most
                if source.keyring.verifier(kid) is not None:
                    return True
                await asyncio.sleep(0.05)
            return False
        finally:
            await source.stop()

    assert asyncio.run(scenario()) is True


def test_a_vanished_manifest_does_not_wipe_a_running_node(keys_dir: Path, tmp_path: Path) -> None:
    ring = KeyringDir(keys_dir)
    source = DirectorySource(ring)
    assert source.reload() is True
    before = source.keyring
    ring.manifest.rename(tmp_path / "aside.json")  # a deploy tool replacing the directory
    assert source.reload() is False and source.keyring is before
    assert source.error is not None and "keyring.json is missing" in source.error
    (tmp_path / "aside.json").rename(ring.manifest)
    source.reload()
    assert source.error is None and source.keyring.signer is not None


def test_a_node_without_a_keyring_loads_it_once_it_appears(tmp_path: Path) -> None:
    ring = KeyringDir(tmp_path / "later")
    source = DirectorySource(ring)
    assert source.reload() is True and len(source.keyring) == 0
    assert source.reload() is False  # nothing new: not reloaded (nor logged) on every tick
    ring.init()
    assert source.reload() is True and source.keyring.signer is not None


def test_kids_never_start_with_a_dash(tmp_path: Path) -> None:
    # A kid is typed on the command line (`keys retire KID`): a leading '-' would read as an option.
    ring = KeyringDir(tmp_path / "keys")
    kids = [ring.new() for _ in range(200)]
    assert len(set(kids)) == 200
    assert not [k for k in kids if k.startswith("-")]


# -- HS256: the secret must be where its tokens are verified ---------------------------------------


def _secret_pem(body: bytes) -> bytes:
    return b"-----BEGIN HS256 SECRET KEY-----\n" + body + b"\n-----END HS256 SECRET KEY-----\n"


BAD_HS256_FILES: dict[str, tuple[Callable[[KeyringDir, str, str], object], str]] = {
    "pub.pem beside an HS256 key": (
        lambda ring, hs, es: ring.public_path(hs).write_bytes(ring.private_path(hs).read_bytes()),
        "yet {hs}.pub.pem exists",
    ),
    "secret shorter than 32 bytes": (
        lambda ring, hs, es: ring.private_path(hs).write_bytes(_secret_pem(base64.b64encode(b"x" * 31))),
        "an HS256 secret needs at least 32 bytes, not 31",
    ),
    "secret not base64": (
        lambda ring, hs, es: ring.private_path(hs).write_bytes(_secret_pem(b"not base64!" * 4)),
        "key {hs}: unreadable HS256 secret",
    ),
    "a private key where the secret belongs": (
        lambda ring, hs, es: ring.private_path(hs).write_bytes(ring.private_path(es).read_bytes()),
        "key {hs}: unreadable HS256 secret (expected a 'HS256 SECRET KEY' PEM block)",
    ),
    "a secret where the private key belongs": (
        lambda ring, hs, es: ring.private_path(es).write_bytes(ring.private_path(hs).read_bytes()),
        "key {es}: unreadable private key",
    ),
    "HS256 renamed ES256 in the manifest": (
        lambda ring, hs, es: ring.manifest.write_text(ring.manifest.read_text().replace('"HS256"', '"ES256"')),
        "key {hs}: unreadable private key",
    ),
}


@pytest.mark.parametrize("bad", list(BAD_HS256_FILES))
def test_hs256_key_files_that_do_not_fit_are_refused(keys_dir: Path, bad: str) -> None:
    ring = KeyringDir(keys_dir)
    es = ring.entries()[0]["kid"]
    hs = ring.new("HS256")
    assert ring.load().keys[hs].secret is not None
    spoil, reason = BAD_HS256_FILES[bad]
    spoil(ring, hs, es)
    with pytest.raises(KeyringError) as caught:
        ring.load()
    assert reason.format(hs=hs, es=es) in str(caught.value)


def test_a_public_only_copy_naming_an_hs256_key_is_not_loaded_and_says_why(
    make_app: Callable[..., TestClient], keys_dir: Path, tmp_path: Path
) -> None:
    """A verify-only node can't verify HS256 tokens: the sync that brings it a manifest naming
    an HS256 key, before that key ever signs, is refused there, loudly, and the node keeps
    verifying with what it had."""
    issuer = make_app()
    public = tmp_path / "public"
    sync_public(keys_dir, public)
    edge = make_app(keys_dir=public)
    source = edge.app.state.service.keys  # type: ignore[attr-defined]
    hs = KeyringDir(keys_dir).new("HS256")
    sync_public(keys_dir, public)
    assert not (public / f"{hs}.key.pem").exists() and not (public / f"{hs}.pub.pem").exists()
    assert source.reload() is False
    assert f"key {hs} is HS256: every node that verifies its tokens needs its secret" in source.error
    ready = edge.get("/readyz").json()["checks"]["keys"]
    assert ready["ok"] is True and "a public-only copy or a JWK Set can't carry HS256 keys" in ready["detail"]
    assert _submit(edge, token_of(issue_token(issuer))) == (200, None)  # the ES256 key still verifies here


def test_rotation_from_es256_to_hs256_and_back_in_a_single_trust_fleet(
    make_app: Callable[..., TestClient], keys_dir: Path
) -> None:
    """Two nodes holding the whole keyring: each verifies what the other signs, through both
    rotations, and a retired HS256 key's tokens stop verifying like any other's."""
    ring = KeyringDir(keys_dir)
    one, two = make_app(), make_app()

    def reload() -> None:
        for node in (one, two):
            node.app.state.service.keys.reload()  # type: ignore[attr-defined]

    def alg(token: str) -> str:
        return str(json.loads(tokens_b64decode(token.split(".")[0]))["alg"])

    es_old = ring.load().active.kid  # type: ignore[union-attr]
    before = [token_of(issue_token(one)) for _ in range(2)]
    hs = ring.new("HS256")
    reload()
    ring.activate(hs)
    reload()
    during = [token_of(issue_token(one)) for _ in range(3)]
    assert {alg(t) for t in before} == {"ES256"} and {alg(t) for t in during} == {"HS256"}
    assert _submit(two, before[0]) == (200, None)  # the previous signer still verifies
    assert _submit(two, during[0]) == (200, None)
    ring.retire(es_old, token_lifetime=0)
    es_new = ring.new()
    reload()
    ring.activate(es_new)
    reload()
    after = token_of(issue_token(two))
    assert alg(after) == "ES256"
    assert _submit(one, after) == (200, None)
    assert _submit(one, during[1]) == (200, None)  # HS256, pending again: still verifies
    ring.retire(hs, token_lifetime=0)
    reload()
    assert not ring.private_path(hs).exists()
    assert _submit(two, during[2]) == (401, "token_invalid")
    assert _submit(one, before[1]) == (401, "token_invalid")
