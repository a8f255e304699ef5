"""A signing key: its algorithm, its state, and the crypto that signs and verifies with it.

Three algorithms, each pinned by the key (never taken from a token's header):

- ``ES256`` (the default) and ``EdDSA``: asymmetric. The private half signs, the public half
  verifies and may be published (JWKS, public-only keyrings), so verify-only nodes can't forge.
- ``HS256``: HMAC-SHA256 with a shared secret, the way S3 and GCS sign presigned URLs. About
  thirty times cheaper to verify, but whoever can verify can also sign: it is never published,
  and every node that verifies its tokens must hold the secret (a single-trust fleet).
"""

from __future__ import annotations

import base64
import binascii
import hmac
import re
import secrets
from dataclasses import dataclass, field
from typing import Any, Literal

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature
from jwt.algorithms import Algorithm, ECAlgorithm, HMACAlgorithm, OKPAlgorithm

Alg = Literal["ES256", "EdDSA", "HS256"]
State = Literal["pending", "active", "retired"]
ALGORITHMS: tuple[Alg, ...] = ("ES256", "EdDSA", "HS256")
# Algorithms with a public half: the only ones a JWK Set or a public-only keyring can carry.
ASYMMETRIC: tuple[Alg, ...] = ("ES256", "EdDSA")
# What `keys init` / `keys new`, `make run`, the library and the test suite create unless told
# otherwise. ES256, because verifying is the submit path's largest single cost and OpenSSL
# verifies P-256 faster than Ed25519 (on the bench machine about 64 us against 105 us), and
# because, unlike HS256, its public half can go to nodes that must not be able to sign. ECDSA's
# (r, n - s) twin is harmless here: replay protection keys on the token id, never on the
# signature (tests/test_replay.py).
DEFAULT_ALG: Alg = "ES256"
STATES: tuple[State, ...] = ("pending", "active", "retired")
KID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")
# RFC 7518 section 3.2: an HS256 key at least as long as the hash output.
SECRET_BYTES = 32
_SECRET_LABEL = "HS256 SECRET KEY"

PrivateKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey
PublicKey = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey


class KeyringError(Exception):
    """The keyring on disk is missing, malformed, or a transition was refused."""


_ECDSA_SHA256 = ec.ECDSA(hashes.SHA256())


def _algorithm(alg: Alg) -> Algorithm:
    # One prepared pyjwt algorithm object per key: the algorithm is pinned by the key, never
    # taken from a token's header.
    if alg == "EdDSA":
        return OKPAlgorithm()
    if alg == "HS256":
        return HMACAlgorithm(HMACAlgorithm.SHA256)
    return ECAlgorithm(ECAlgorithm.SHA256)


def check_material(kid: str, alg: str, public: object, secret: bytes | None) -> None:
    """Refuse key material that does not fit the algorithm the manifest (or the JWK) names."""
    if alg not in ALGORITHMS:
        raise KeyringError(f"key {kid}: unsupported alg {alg!r}")
    if alg == "HS256":
        if public is not None or secret is None:
            raise KeyringError(f"key {kid}: alg HS256 needs a shared secret and has no public half")
        if len(secret) < SECRET_BYTES:
            raise KeyringError(f"key {kid}: an HS256 secret needs at least {SECRET_BYTES} bytes, not {len(secret)}")
        return
    if secret is not None:
        raise KeyringError(f"key {kid}: alg {alg} is asymmetric and takes no shared secret")
    if alg == "EdDSA" and not isinstance(public, ed25519.Ed25519PublicKey):
        raise KeyringError(f"key {kid}: alg EdDSA needs an Ed25519 public key")
    if alg == "ES256" and not (
        isinstance(public, ec.EllipticCurvePublicKey) and isinstance(public.curve, ec.SECP256R1)
    ):
        raise KeyringError(f"key {kid}: alg ES256 needs a P-256 public key")


@dataclass(frozen=True)
class Key:
    """One key. Asymmetric keys carry ``public_key`` (and ``private_key`` where this node signs);
    HS256 keys carry only ``secret``, which both signs and verifies."""

    kid: str
    alg: Alg
    state: State
    created_at: str
    public_key: PublicKey | None
    private_key: PrivateKey | None = field(default=None, repr=False)
    secret: bytes | None = field(default=None, repr=False)
    algorithm: Algorithm = field(default=None, repr=False, compare=False)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        check_material(self.kid, self.alg, self.public_key, self.secret)
        if self.algorithm is None:
            object.__setattr__(self, "algorithm", _algorithm(self.alg))

    @property
    def verifies(self) -> bool:
        return self.state in ("pending", "active")

    @property
    def can_sign(self) -> bool:
        """This node holds what signs with the key (the private half, or the shared secret)."""
        return self.private_key is not None or self.secret is not None

    @property
    def published(self) -> bool:
        """Whether the key may leave the nodes that sign: in a JWK Set or a public-only keyring."""
        return self.alg in ASYMMETRIC

    def sign(self, signing_input: bytes) -> bytes:
        if self.secret is not None:
            return hmac.digest(self.secret, signing_input, "sha256")
        if self.private_key is None:
            raise KeyringError(f"key {self.kid} has no private key on this node")
        return self.algorithm.sign(signing_input, self.private_key)

    def verify(self, signing_input: bytes, signature: bytes) -> bool:
        secret = self.secret
        if secret is not None:
            # Constant time: how long a wrong MAC takes to refuse must not tell a forger how many
            # of its leading bytes were right. A MAC of another length is refused all the same.
            return hmac.compare_digest(hmac.digest(secret, signing_input, "sha256"), signature)
        # cryptography directly, with the key's own algorithm (the hot path: pyjwt's wrapper adds
        # checks and conversions we don't need). JWS ES256 signatures are raw r || s, 32 bytes each.
        public = self.public_key
        try:
            if isinstance(public, ec.EllipticCurvePublicKey):
                if len(signature) != 64:
                    return False
                der = encode_dss_signature(
                    int.from_bytes(signature[:32], "big"), int.from_bytes(signature[32:], "big")
                )
                public.verify(der, signing_input, _ECDSA_SHA256)
            elif public is not None:
                public.verify(signature, signing_input)
            else:
                return False
        except (InvalidSignature, ValueError):
            return False
        return True


# -- key material and its files ---------------------------------------------------------------


@dataclass(frozen=True)
class KeyFiles:
    """What ``<kid>.key.pem`` and ``<kid>.pub.pem`` hold for a new key; an HS256 key has no
    ``.pub.pem`` at all, so no copy job that takes public files can ever carry its secret."""

    private: bytes
    public: bytes | None


def generate(alg: Alg) -> KeyFiles:
    if alg == "HS256":
        return KeyFiles(_secret_pem(secrets.token_bytes(SECRET_BYTES)), None)
    private: PrivateKey = (
        ed25519.Ed25519PrivateKey.generate() if alg == "EdDSA" else ec.generate_private_key(ec.SECP256R1())
    )
    return KeyFiles(
        private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
        private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
    )


def load_key(entry: dict[str, str], private_pem: bytes | None, public_pem: bytes | None) -> Key:
    """A manifest entry and its files as a ``Key``; the alg comes from the manifest, and the
    files must hold material of that alg. The private (or secret) file wins when both exist."""
    kid, alg, state, created_at = entry["kid"], entry["alg"], entry["state"], entry["created_at"]
    if alg == "HS256":
        if public_pem is not None:
            raise KeyringError(
                f"key {kid} is HS256, a shared secret with no public half, yet {kid}.pub.pem exists; "
                "remove it (if it holds the secret, the secret has leaked: retire the key)"
            )
        if private_pem is None:
            raise KeyringError(
                f"key {kid} is HS256: every node that verifies its tokens needs its secret {kid}.key.pem, "
                "and this keyring has none (a public-only copy or a JWK Set can't carry HS256 keys)"
            )
        return Key(kid, alg, state, created_at, None, secret=_secret_from_pem(kid, private_pem))  # type: ignore[arg-type]
    private: Any = None
    if private_pem is not None:
        try:
            private = serialization.load_pem_private_key(private_pem, password=None)
        except (ValueError, TypeError) as err:
            raise KeyringError(f"key {kid}: unreadable private key") from err
        public: Any = private.public_key()
    elif public_pem is not None:
        try:
            public = serialization.load_pem_public_key(public_pem)
        except ValueError as err:
            raise KeyringError(f"key {kid}: unreadable public key") from err
    else:
        raise KeyringError(f"key {kid}: neither {kid}.key.pem nor {kid}.pub.pem")
    return Key(kid, alg, state, created_at, public, private)  # type: ignore[arg-type]


def _secret_pem(secret: bytes) -> bytes:
    body = base64.b64encode(secret).decode("ascii")
    return f"-----BEGIN {_SECRET_LABEL}-----\n{body}\n-----END {_SECRET_LABEL}-----\n".encode("ascii")


def _secret_from_pem(kid: str, pem: bytes) -> bytes:
    lines = pem.decode("ascii", errors="replace").strip().splitlines()
    armour = (f"-----BEGIN {_SECRET_LABEL}-----", f"-----END {_SECRET_LABEL}-----")
    if len(lines) < 3 or (lines[0], lines[-1]) != armour:
        raise KeyringError(f"key {kid}: unreadable HS256 secret (expected a '{_SECRET_LABEL}' PEM block)")
    try:
        return base64.b64decode("".join(line.strip() for line in lines[1:-1]), validate=True)
    except (binascii.Error, ValueError) as err:
        raise KeyringError(f"key {kid}: unreadable HS256 secret") from err
