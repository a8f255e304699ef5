"""`feedback-tokens keys ...` as an operator runs it: a real subprocess on a real keyring."""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import uuid
from pathlib import Path

import jwt
import pytest
from keysync import sync_public

from app.domain import tokens
from app.domain.tokens import TokenClaims
from app.keys.keyring import KeyringDir

CLI = Path(sys.executable).with_name("feedback-tokens")


def keys(keys_dir: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    full_env = {k: v for k, v in os.environ.items() if not k.startswith("FEEDBACK_")}
    return subprocess.run(
        [str(CLI), "keys", "--dir", str(keys_dir), *args],
        capture_output=True, text=True, timeout=60, env={**full_env, **env},
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout


def refused(keys_dir: Path, args: list[str], message: str, **env: str) -> None:
    """Exit code 2, the reason on stderr, and not one byte of the keyring changed."""
    before = files(keys_dir)
    result = keys(keys_dir, *args, **env)
    assert result.returncode == 2, (result.stdout, result.stderr)
    assert message in result.stderr
    assert result.stdout == ""
    assert files(keys_dir) == before


def files(keys_dir: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in keys_dir.iterdir() if p.name != ".lock"}


def active_kid(keys_dir: Path) -> str:
    active = KeyringDir(keys_dir).load().active
    assert active is not None
    return active.kid


def test_new_prints_the_kid_alone_and_does_not_change_who_signs(keys_dir: Path) -> None:
    signer = active_kid(keys_dir)
    result = keys(keys_dir, "new", "--alg", "ES256")
    kid = ok(result).strip()
    assert result.stdout == f"{kid}\n"  # KID=$(feedback-tokens keys new) just works
    assert f"keys activate {kid}" in result.stderr
    keyring = KeyringDir(keys_dir).load()
    assert active_kid(keys_dir) == signer and keyring.signer is not None and keyring.signer.kid == signer
    assert keyring.keys[kid].state == "pending" and keyring.keys[kid].alg == "ES256"
    assert os.stat(keys_dir / f"{kid}.key.pem").st_mode & 0o777 == 0o600


def test_full_rotation_through_the_cli(keys_dir: Path) -> None:
    old = active_kid(keys_dir)
    new = ok(keys(keys_dir, "new")).strip()
    assert f"{old} is pending again" in ok(keys(keys_dir, "activate", new))
    assert active_kid(keys_dir) == new
    assert "401 token_invalid" in ok(keys(keys_dir, "retire", old, "--token-lifetime", "0"))
    states = {e["kid"]: e["state"] for e in KeyringDir(keys_dir).entries()}
    assert states == {old: "retired", new: "active"}
    assert not (keys_dir / f"{old}.key.pem").exists()
    assert "already retired" in ok(keys(keys_dir, "retire", old))


def test_retiring_the_active_key_is_refused(keys_dir: Path) -> None:
    refused(keys_dir, ["retire", active_kid(keys_dir)], "is the active signer; activate another key first")


def test_retiring_a_key_whose_tokens_may_be_live_is_refused(keys_dir: Path) -> None:
    old = active_kid(keys_dir)
    ok(keys(keys_dir, "activate", ok(keys(keys_dir, "new")).strip()))
    # FEEDBACK_MAX_TTL (+ leeway) is the default lifetime the CLI protects.
    refused(keys_dir, ["retire", old], "may verify until", FEEDBACK_MAX_TTL="3600")
    refused(keys_dir, ["retire", old, "--token-lifetime", "600"], "Wait, or pass --force")


def test_activating_a_retired_key_is_refused(keys_dir: Path) -> None:
    kid = ok(keys(keys_dir, "new")).strip()
    ok(keys(keys_dir, "retire", kid))
    refused(keys_dir, ["activate", kid], "is retired and a retired key never comes back")


def test_unknown_kid_is_refused(keys_dir: Path) -> None:
    refused(keys_dir, ["activate", "no-such-kid"], "no key 'no-such-kid' in the keyring")
    refused(keys_dir, ["retire", "no-such-kid"], "no key 'no-such-kid' in the keyring")


def test_two_active_keys_in_a_hand_edited_manifest_are_refused(keys_dir: Path) -> None:
    kid = ok(keys(keys_dir, "new")).strip()
    manifest = keys_dir / "keyring.json"
    doc = json.loads(manifest.read_text())
    for entry in doc["keys"]:
        entry["state"] = "active"
    manifest.write_text(json.dumps(doc))
    for args in (["new"], ["activate", kid], ["retire", kid, "--force"], ["jwks"], ["list"]):
        refused(keys_dir, args, "more than one active key")


def test_activating_without_the_private_key_is_refused(keys_dir: Path, tmp_path: Path) -> None:
    kid = ok(keys(keys_dir, "new")).strip()
    public = tmp_path / "public"
    sync_public(keys_dir, public)
    refused(public, ["activate", kid], "has no private key")


def test_world_writable_keys_dir_is_refused(keys_dir: Path) -> None:
    os.chmod(keys_dir, 0o777)
    refused(keys_dir, ["new"], "is world-writable")
    refused(keys_dir, ["jwks"], "is world-writable")


def test_forced_retire_of_the_signer_is_the_emergency_stop(keys_dir: Path) -> None:
    kid = active_kid(keys_dir)
    result = keys(keys_dir, "retire", kid, "--force")
    assert "retired" in ok(result) and "no key signs now" in result.stderr
    assert KeyringDir(keys_dir).load().signer is None


def test_list_is_a_readable_table(keys_dir: Path, tmp_path: Path) -> None:
    signer = active_kid(keys_dir)
    pending = ok(keys(keys_dir, "new", "--alg", "EdDSA")).strip()
    gone = ok(keys(keys_dir, "new")).strip()
    ok(keys(keys_dir, "retire", gone))
    lines = ok(keys(keys_dir, "list")).splitlines()
    assert lines[0].split() == ["KID", "ALG", "STATE", "CREATED", "ACTIVATED", "SIGNED", "UNTIL", "HERE"]
    rows = {line.split()[0]: line for line in lines[1:]}
    assert rows[signer].split()[1:3] == ["ES256", "active"] and rows[signer].endswith("private key (signs)")
    assert rows[pending].split()[1:3] == ["EdDSA", "pending"] and rows[pending].endswith("private key")
    assert rows[gone].split()[2] == "retired" and rows[gone].endswith("public key only")
    # Columns line up: every row's STATE starts where the header's does.
    column = lines[0].index("STATE")
    assert all(line[column:].split()[0] in ("active", "pending", "retired") for line in lines[1:])
    public = tmp_path / "public"
    sync_public(keys_dir, public)
    assert ok(keys(public, "list")).count("public key only") == 3
    assert ok(keys(tmp_path / "empty", "list")) == f"no keys in {tmp_path / 'empty'}\n"


def test_list_warns_about_a_private_key_others_can_read(keys_dir: Path) -> None:
    kid = active_kid(keys_dir)
    os.chmod(keys_dir / f"{kid}.key.pem", 0o640)
    result = keys(keys_dir, "list")
    assert result.returncode == 1
    assert f"{kid}.key.pem is mode 640: chmod 600 it" in result.stderr


def test_jwks_has_pending_and_active_public_keys_only(keys_dir: Path) -> None:
    active = active_kid(keys_dir)
    pending = ok(keys(keys_dir, "new", "--alg", "EdDSA")).strip()
    gone = ok(keys(keys_dir, "new")).strip()
    ok(keys(keys_dir, "retire", gone))
    jwks = json.loads(ok(keys(keys_dir, "jwks")))
    by_kid = {k["kid"]: k for k in jwks["keys"]}
    assert set(by_kid) == {active, pending}  # never a retired key
    for jwk in jwks["keys"]:
        assert not {"d", "p", "q", "dp", "dq", "qi", "k"} & set(jwk)  # never private material
        assert jwk["use"] == "sig"
    assert {k: by_kid[active][k] for k in ("kty", "crv", "alg")} == {"kty": "EC", "crv": "P-256", "alg": "ES256"}
    assert {k: by_kid[pending][k] for k in ("kty", "crv", "alg")} == {"kty": "OKP", "crv": "Ed25519", "alg": "EdDSA"}
    assert set(by_kid[active]) == {"kty", "crv", "x", "y", "kid", "alg", "use"}
    assert set(by_kid[pending]) == {"kty", "crv", "x", "kid", "alg", "use"}
    # Each published key verifies what its private half signs, in an independent verifier.
    ring = KeyringDir(keys_dir).load()
    for kid, jwk in by_kid.items():
        claims = TokenClaims(uuid.uuid4(), uuid.uuid4(), "k", uuid.uuid4(), 0, 2**31)
        token = tokens.sign(claims, ring.keys[kid], "fbt")
        key = jwt.PyJWK(jwk)
        assert jwt.decode(token, key=key.key, algorithms=[jwk["alg"]], issuer="fbt")["key"] == "k"


@pytest.mark.parametrize("alg", ["EdDSA", "ES256"])
def test_init_creates_and_activates_once(tmp_path: Path, alg: str) -> None:
    path = tmp_path / "fresh"
    out = ok(keys(path, "init", "--alg", alg))
    kid = out.split()[-1]
    assert out == f"created and activated {kid}\n"
    assert KeyringDir(path).load().signer is not None
    assert ok(keys(path, "init")) == "keyring already has keys; nothing done\n"
    assert os.stat(path).st_mode & 0o777 == 0o700


# -- HS256: a shared secret, never published ---------------------------------------------------------


def test_an_hs256_key_is_one_owner_only_secret_file_and_never_published(keys_dir: Path) -> None:
    signer = active_kid(keys_dir)
    result = keys(keys_dir, "new", "--alg", "HS256")
    kid = ok(result).strip()
    assert result.stdout == f"{kid}\n"
    assert "never published" in result.stderr and "can also sign" in result.stderr
    assert os.stat(keys_dir / f"{kid}.key.pem").st_mode & 0o777 == 0o600
    assert not (keys_dir / f"{kid}.pub.pem").exists()
    key = KeyringDir(keys_dir).load().keys[kid]
    assert (key.alg, key.state, key.public_key) == ("HS256", "pending", None)
    assert key.secret is not None and len(key.secret) == 32
    # The secret is in its own file and nowhere else, in no spelling.
    secret = key.secret
    spellings = [secret, base64.b64encode(secret), tokens.b64encode(secret).encode(), secret.hex().encode()]
    for path in keys_dir.iterdir():
        if path.name != f"{kid}.key.pem":
            assert not any(s in path.read_bytes() for s in spellings), path.name
    jwks = keys(keys_dir, "jwks")
    published = json.loads(ok(jwks))["keys"]
    assert [k["kid"] for k in published] == [signer]
    assert not any(s.decode() in jwks.stdout for s in spellings[1:])
    assert f"pending key {kid} is HS256 and not in this set" in jwks.stderr
    rows = {line.split()[0]: line for line in ok(keys(keys_dir, "list")).splitlines()[1:]}
    assert rows[kid].split()[1:3] == ["HS256", "pending"] and rows[kid].endswith("secret")


def test_jwks_is_refused_while_an_hs256_key_signs(keys_dir: Path) -> None:
    kid = ok(keys(keys_dir, "new", "--alg", "HS256")).strip()
    result = keys(keys_dir, "activate", kid)
    assert f"{kid} is now the active signer" in ok(result)
    assert "only nodes holding its secret verify" in result.stderr
    refused(keys_dir, ["jwks"], f"the active key {kid} is HS256, a shared secret that is never published")
    rows = {line.split()[0]: line for line in ok(keys(keys_dir, "list")).splitlines()[1:]}
    assert rows[kid].endswith("secret (signs)")


def test_rotation_from_es256_to_hs256_and_back_through_the_cli(keys_dir: Path) -> None:
    es_old = active_kid(keys_dir)
    hs = ok(keys(keys_dir, "new", "--alg", "HS256")).strip()
    ok(keys(keys_dir, "activate", hs))
    assert "401 token_invalid" in ok(keys(keys_dir, "retire", es_old, "--token-lifetime", "0"))
    refused(keys_dir, ["jwks"], "is HS256")  # nothing left to publish that verifies what is issued
    es_new = ok(keys(keys_dir, "new")).strip()
    assert f"{hs} is pending again" in ok(keys(keys_dir, "activate", es_new))
    assert [k["kid"] for k in json.loads(ok(keys(keys_dir, "jwks")))["keys"]] == [es_new]
    ok(keys(keys_dir, "retire", hs, "--token-lifetime", "0"))
    assert not (keys_dir / f"{hs}.key.pem").exists()  # the secret is gone from this node
    states = {e["kid"]: (e["alg"], e["state"]) for e in KeyringDir(keys_dir).entries()}
    assert states == {es_old: ("ES256", "retired"), hs: ("HS256", "retired"), es_new: ("ES256", "active")}
    assert ok(keys(keys_dir, "jwks")) and KeyringDir(keys_dir).load().signer.alg == "ES256"  # type: ignore[union-attr]


def test_activating_an_hs256_key_without_its_secret_is_refused(keys_dir: Path, tmp_path: Path) -> None:
    kid = ok(keys(keys_dir, "new", "--alg", "HS256")).strip()
    public = tmp_path / "public"
    sync_public(keys_dir, public)  # the manifest and *.pub.pem: an HS256 key has no such file
    assert sorted(p.name for p in public.iterdir()) == sorted(["keyring.json", f"{active_kid(keys_dir)}.pub.pem"])
    refused(public, ["activate", kid], f"key {kid} has no secret in")
    refused(public, ["jwks"], f"key {kid} is HS256: every node that verifies its tokens needs its secret")
