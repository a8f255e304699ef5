"""The keyring: signing keys on disk, their states, and the snapshot that running nodes use.

On disk (``FEEDBACK_KEYS_DIR``)::

    keyring.json        {"version": 1, "keys": [{"kid", "alg", "state", "created_at"}, ...]}
    <kid>.key.pem       private key, PKCS#8, mode 0600 (absent on verify-only nodes)
    <kid>.pub.pem       public key, SubjectPublicKeyInfo

States: ``pending`` (verifies, published in JWKS, never signs), ``active`` (the one signer; also
verifies) and ``retired`` (neither). ``keyring.json`` is the single source of truth for states and
is only ever replaced whole (write to a temporary file, fsync, rename), so a reader sees the old
keyring or the new one, never half of either. Key files are written before the manifest names
them, and a manifest that fails validation is never swapped in.

A node whose keyring holds no private key for its active key is verify-only.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import secrets
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519
from jwt.algorithms import Algorithm, ECAlgorithm, OKPAlgorithm

Alg = Literal["EdDSA", "ES256"]
State = Literal["pending", "active", "retired"]
ALGORITHMS: tuple[Alg, ...] = ("EdDSA", "ES256")
STATES: tuple[State, ...] = ("pending", "active", "retired")
MANIFEST = "keyring.json"
KID_RE = re.compile(r"^[A-Za-z0-9_-]{1,64}$")

PrivateKey = ed25519.Ed25519PrivateKey | ec.EllipticCurvePrivateKey
PublicKey = ed25519.Ed25519PublicKey | ec.EllipticCurvePublicKey


class KeyringError(Exception):
    """The keyring on disk is missing, malformed, or a transition was refused."""


def _algorithm(alg: Alg) -> Algorithm:
    # One prepared pyjwt algorithm object per key: the algorithm is pinned by the key, never
    # taken from a token's header.
    if alg == "EdDSA":
        return OKPAlgorithm()
    return ECAlgorithm(ECAlgorithm.SHA256)


@dataclass(frozen=True)
class Key:
    kid: str
    alg: Alg
    state: State
    created_at: str
    public_key: PublicKey
    private_key: PrivateKey | None = field(default=None, repr=False)
    algorithm: Algorithm = field(default=None, repr=False, compare=False)  # type: ignore[assignment]

    def __post_init__(self) -> None:
        if self.algorithm is None:
            object.__setattr__(self, "algorithm", _algorithm(self.alg))

    @property
    def verifies(self) -> bool:
        return self.state in ("pending", "active")

    def sign(self, signing_input: bytes) -> bytes:
        if self.private_key is None:
            raise KeyringError(f"key {self.kid} has no private key on this node")
        return self.algorithm.sign(signing_input, self.private_key)  # type: ignore[no-any-return]

    def verify(self, signing_input: bytes, signature: bytes) -> bool:
        return bool(self.algorithm.verify(signing_input, self.public_key, signature))

    def jwk(self) -> dict[str, Any]:
        jwk: dict[str, Any] = self.algorithm.to_jwk(self.public_key, as_dict=True)
        jwk.update(kid=self.kid, alg=self.alg, use="sig")
        return jwk


@dataclass(frozen=True)
class Keyring:
    """An immutable snapshot; nodes swap a whole new snapshot in when the keyring changes."""

    keys: dict[str, Key] = field(default_factory=dict)

    @property
    def signer(self) -> Key | None:
        """The active key, when this node holds its private half."""
        for key in self.keys.values():
            if key.state == "active" and key.private_key is not None:
                return key
        return None

    @property
    def active(self) -> Key | None:
        for key in self.keys.values():
            if key.state == "active":
                return key
        return None

    def verifier(self, kid: str) -> Key | None:
        key = self.keys.get(kid)
        return key if key is not None and key.verifies else None

    def jwks(self) -> dict[str, Any]:
        return {"keys": [k.jwk() for k in self.keys.values() if k.verifies]}

    def __len__(self) -> int:
        return len(self.keys)


def _now_iso() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        os.fchmod(fd, mode)
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    dir_fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(dir_fd)
    finally:
        os.close(dir_fd)


def _parse_manifest(raw: bytes) -> list[dict[str, str]]:
    try:
        doc = json.loads(raw)
    except ValueError as err:
        raise KeyringError(f"{MANIFEST} is not valid JSON: {err}") from err
    if not isinstance(doc, dict) or doc.get("version") != 1 or not isinstance(doc.get("keys"), list):
        raise KeyringError(f"{MANIFEST} must be {{'version': 1, 'keys': [...]}}")
    entries: list[dict[str, str]] = []
    seen: set[str] = set()
    for entry in doc["keys"]:
        if not isinstance(entry, dict):
            raise KeyringError(f"{MANIFEST}: each key must be an object")
        kid, alg, state = entry.get("kid"), entry.get("alg"), entry.get("state")
        if not isinstance(kid, str) or not KID_RE.match(kid):
            raise KeyringError(f"{MANIFEST}: bad kid {kid!r}")
        if kid in seen:
            raise KeyringError(f"{MANIFEST}: kid {kid} appears twice")
        if alg not in ALGORITHMS:
            raise KeyringError(f"{MANIFEST}: key {kid} has unsupported alg {alg!r}")
        if state not in STATES:
            raise KeyringError(f"{MANIFEST}: key {kid} has unknown state {state!r}")
        seen.add(kid)
        entries.append(
            {"kid": kid, "alg": alg, "state": state, "created_at": str(entry.get("created_at", ""))}
        )
    if sum(1 for e in entries if e["state"] == "active") > 1:
        raise KeyringError(f"{MANIFEST}: more than one active key")
    return entries


def _check_alg(kid: str, alg: str, public: object) -> None:
    if alg == "EdDSA" and not isinstance(public, ed25519.Ed25519PublicKey):
        raise KeyringError(f"key {kid}: alg EdDSA needs an Ed25519 key")
    if alg == "ES256" and not (
        isinstance(public, ec.EllipticCurvePublicKey) and isinstance(public.curve, ec.SECP256R1)
    ):
        raise KeyringError(f"key {kid}: alg ES256 needs a P-256 key")


class KeyringDir:
    """The keyring directory: loading it, and the lifecycle commands of SPEC section 6."""

    def __init__(self, path: Path | str) -> None:
        self.path = Path(path)

    @property
    def manifest(self) -> Path:
        return self.path / MANIFEST

    def private_path(self, kid: str) -> Path:
        return self.path / f"{kid}.key.pem"

    def public_path(self, kid: str) -> Path:
        return self.path / f"{kid}.pub.pem"

    def stamp(self) -> tuple[int, int, int] | None:
        """Cheap fingerprint of the manifest, to notice a change without reading it."""
        try:
            st = os.stat(self.manifest)
        except FileNotFoundError:
            return None
        return (st.st_ino, st.st_mtime_ns, st.st_size)

    def entries(self) -> list[dict[str, str]]:
        try:
            raw = self.manifest.read_bytes()
        except FileNotFoundError:
            return []
        return _parse_manifest(raw)

    def load(self) -> Keyring:
        """Read and validate the whole keyring; raise rather than return part of one."""
        keys: dict[str, Key] = {}
        for entry in self.entries():
            kid, alg, state = entry["kid"], entry["alg"], entry["state"]
            if state == "retired":
                continue  # neither signs nor verifies: don't even read its files
            private: Any = None
            try:
                pem = self.private_path(kid).read_bytes()
            except FileNotFoundError:
                pem = None
            if pem is not None:
                try:
                    private = serialization.load_pem_private_key(pem, password=None)
                except ValueError as err:
                    raise KeyringError(f"key {kid}: unreadable private key") from err
                public: Any = private.public_key()
            else:
                try:
                    public = serialization.load_pem_public_key(self.public_path(kid).read_bytes())
                except FileNotFoundError as err:
                    raise KeyringError(f"key {kid}: neither {kid}.key.pem nor {kid}.pub.pem") from err
                except ValueError as err:
                    raise KeyringError(f"key {kid}: unreadable public key") from err
            _check_alg(kid, alg, public)
            keys[kid] = Key(kid, alg, state, entry["created_at"], public, private)  # type: ignore[arg-type]
        return Keyring(keys)

    # -- lifecycle -------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[list[dict[str, str]]]:
        self.path.mkdir(parents=True, exist_ok=True)
        with open(self.path / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield self.entries()

    def _save(self, entries: list[dict[str, str]]) -> None:
        _parse_manifest(json.dumps({"version": 1, "keys": entries}).encode())  # validate first
        body = json.dumps({"version": 1, "keys": entries}, indent=2) + "\n"
        _write_atomic(self.manifest, body.encode())

    def new(self, alg: Alg = "EdDSA") -> str:
        """Create a pending key; never changes who signs. Returns its kid."""
        if alg not in ALGORITHMS:
            raise KeyringError(f"unsupported algorithm {alg!r}; choose one of {ALGORITHMS}")
        private: PrivateKey = (
            ed25519.Ed25519PrivateKey.generate()
            if alg == "EdDSA"
            else ec.generate_private_key(ec.SECP256R1())
        )
        with self._locked() as entries:
            kid = secrets.token_urlsafe(6)
            while any(e["kid"] == kid for e in entries):
                kid = secrets.token_urlsafe(6)
            _write_atomic(
                self.private_path(kid),
                private.private_bytes(
                    serialization.Encoding.PEM,
                    serialization.PrivateFormat.PKCS8,
                    serialization.NoEncryption(),
                ),
                mode=0o600,
            )
            _write_atomic(
                self.public_path(kid),
                private.public_key().public_bytes(
                    serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
                ),
            )
            entries.append({"kid": kid, "alg": alg, "state": "pending", "created_at": _now_iso()})
            self._save(entries)
        return kid

    def activate(self, kid: str) -> str | None:
        """Make a pending key the signer; the previous signer goes back to pending (it still
        verifies the tokens it signed). Returns the previous signer's kid."""
        with self._locked() as entries:
            entry = _find(entries, kid)
            if entry["state"] == "retired":
                raise KeyringError(f"key {kid} is retired; a retired key never comes back")
            if entry["state"] == "active":
                return None
            if not self.private_path(kid).exists():
                raise KeyringError(
                    f"key {kid} has no private key in {self.path}; activate it on the issuer"
                )
            previous = None
            for e in entries:
                if e["state"] == "active":
                    e["state"], previous = "pending", e["kid"]
            entry["state"] = "active"
            self._save(entries)
        return previous

    def retire(self, kid: str, *, force: bool = False) -> None:
        """Retire a key: its tokens stop verifying. The private key file is removed."""
        with self._locked() as entries:
            entry = _find(entries, kid)
            if entry["state"] == "active" and not force:
                raise KeyringError(
                    f"key {kid} is the active signer; activate another key first "
                    "(or pass --force to stop signing on this keyring at once)"
                )
            entry["state"] = "retired"
            self._save(entries)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.private_path(kid))

    def init(self, alg: Alg = "EdDSA") -> str | None:
        """Create and activate a key when the keyring is empty. Returns the new kid, or None."""
        if self.entries():
            return None
        kid = self.new(alg)
        self.activate(kid)
        return kid


def _find(entries: list[dict[str, str]], kid: str) -> dict[str, str]:
    for entry in entries:
        if entry["kid"] == kid:
            return entry
    raise KeyringError(f"no key {kid!r} in the keyring")


def with_state(key: Key, state: State) -> Key:
    return replace(key, state=state)
