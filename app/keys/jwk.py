"""JWK import and export (RFC 7517): what ``/.well-known/jwks.json`` publishes and what
verify-only nodes (``FEEDBACK_JWKS_URL``) accept from an issuer.

Only public halves of asymmetric keys ever cross this boundary, in either direction. An HS256
key is never exported (its secret would let every reader sign), and a symmetric JWK in an
issuer's set is refused rather than used.
"""

from __future__ import annotations

import json
from typing import Any

from jwt import PyJWK
from jwt.exceptions import PyJWTError

from app.keys.key import ASYMMETRIC, KID_RE, Alg, Key, KeyringError, check_material

# The (kty, crv) each published algorithm's JWK must have.
_JWK_SHAPE: dict[Alg, tuple[str, str]] = {"EdDSA": ("OKP", "Ed25519"), "ES256": ("EC", "P-256")}


def public_jwk(key: Key) -> dict[str, Any]:
    """The key's public half as a JWK. Raises ``KeyringError`` for an HS256 key: it has no
    public half, and the secret must never be published."""
    if not key.published or key.public_key is None:
        raise KeyringError(f"key {key.kid} is {key.alg}, a shared secret: it is never published in a JWK Set")
    # to_jwk of the *public* key: a JWK built from it can't carry "d".
    jwk: dict[str, Any] = key.algorithm.to_jwk(key.public_key, as_dict=True)
    jwk.update(kid=key.kid, alg=key.alg, use="sig")
    return jwk


def key_from_jwk(jwk: Any) -> Key:
    """One public JWK as a verifying key, its algorithm pinned. Raise ``KeyringError`` for a
    JWK we must not or cannot use: private material, a symmetric key, not for signatures, an
    algorithm or curve we don't issue (the algorithm is never guessed from anything but
    kty/crv)."""
    if not isinstance(jwk, dict):
        raise KeyringError("a JWK must be an object")
    kid = jwk.get("kid")
    if not isinstance(kid, str) or not KID_RE.match(kid):
        raise KeyringError(f"JWK with bad kid {kid!r}")
    if jwk.get("kty") == "oct" or "k" in jwk:
        raise KeyringError(
            f"JWK {kid} is a symmetric key: a shared secret must never be published, and a node "
            "holding it could forge tokens; HS256 keys can't be used by verify-only nodes"
        )
    if "d" in jwk:
        raise KeyringError(f"JWK {kid} carries private material; the issuer must publish public keys only")
    if jwk.get("use", "sig") != "sig":
        raise KeyringError(f"JWK {kid} is not for signatures (use={jwk.get('use')!r})")
    alg = jwk.get("alg")
    shape = (jwk.get("kty"), jwk.get("crv"))
    if alg is None:
        alg = next((a for a, s in _JWK_SHAPE.items() if s == shape), None)
    if alg not in ASYMMETRIC:
        raise KeyringError(f"JWK {kid}: unsupported alg {alg!r} (kty {shape[0]!r}, crv {shape[1]!r})")
    if _JWK_SHAPE[alg] != shape:
        raise KeyringError(f"JWK {kid}: alg {alg} needs kty/crv {_JWK_SHAPE[alg]}, not {shape}")
    try:
        public = PyJWK(jwk, algorithm=alg).key
    except (PyJWTError, ValueError, TypeError) as err:  # malformed members: pyjwt raises all three
        raise KeyringError(f"JWK {kid}: {err}") from err
    check_material(kid, alg, public, None)
    # "pending": verifies, never signs. The set doesn't say which key signs, and here none does.
    return Key(kid, alg, "pending", "", public)


def keys_from_jwks(raw: bytes) -> tuple[dict[str, Key], list[str]]:
    """A JWK Set's usable keys by kid, plus why each key left out was left out.

    A set that is not a JWK Set, or that names a kid twice, is refused whole (``KeyringError``):
    the caller keeps its last good keyring. Single unusable keys are skipped, so an issuer that
    one day publishes a key type we don't know doesn't stop us verifying the ones we do.
    """
    try:
        doc = json.loads(raw)
    except ValueError as err:
        raise KeyringError(f"not a JWK Set: {err}") from err
    if not isinstance(doc, dict) or not isinstance(doc.get("keys"), list):
        raise KeyringError('not a JWK Set: expected {"keys": [...]}')
    keys: dict[str, Key] = {}
    skipped: list[str] = []
    for jwk in doc["keys"]:
        try:
            key = key_from_jwk(jwk)
        except KeyringError as err:
            skipped.append(str(err))
            continue
        if key.kid in keys:
            raise KeyringError(f"JWK Set names kid {key.kid} twice")
        keys[key.kid] = key
    return keys, skipped
