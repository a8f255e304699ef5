"""The keyring: the snapshot of keys a running node holds, and the directory it lives in, with
the key lifecycle of SPEC section 6.

On disk (``FEEDBACK_KEYS_DIR``, created mode 0700)::

    keyring.json        {"version": 1, "keys": [{"kid", "alg", "state", "created_at",
                                                  "activated_at"?, "signed_until"?}, ...]}
    <kid>.key.pem       ES256/EdDSA: private key, PKCS#8; HS256: the shared secret (a PEM block
                        of its own). Mode 0600; absent on verify-only nodes
    <kid>.pub.pem       ES256/EdDSA only: public key, SubjectPublicKeyInfo. Never for HS256
    .lock               taken (flock) by the lifecycle commands, so two never interleave

States: ``pending`` (verifies, never signs; published in JWKS unless HS256), ``active`` (the one
signer; also verifies) and ``retired`` (neither). ``keyring.json`` is the single source of truth
for states and is only ever replaced whole (write to a temporary file, fsync, rename), so a
reader sees the old keyring or the new one, never half of either. Key files are written before
the manifest names them, and a manifest that fails validation is never swapped in.

``activate`` sends the previous signer back to ``pending``: it stops signing at once but keeps
verifying the tokens it signed until it is retired. ``signed_until`` records when a key last
stopped signing, so ``retire`` can refuse to cut off tokens that may still be live.

A node whose keyring holds no private key (or secret) for its active key is verify-only. An
HS256 key has nothing public to hand such a node: a keyring that names one that verifies must
hold its secret, or it does not load. A keyring can also come from an issuer's JWK Set
(``keyring_from_jwks``); such keys only ever verify.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import logging
import os
import secrets
import stat
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from app.clock import Clock
from app.keys.jwk import keys_from_jwks, public_jwk
from app.keys.key import ALGORITHMS, DEFAULT_ALG, KID_RE, STATES, Alg, Key, KeyringError, State, generate, load_key

MANIFEST = "keyring.json"
# Optional timestamps a manifest entry may carry (ISO 8601), kept as written.
_TIMES = ("created_at", "activated_at", "signed_until")

log = logging.getLogger("feedback_tokens.keys")


@dataclass(frozen=True)
class Keyring:
    """An immutable snapshot; nodes swap a whole new snapshot in when the keyring changes."""

    keys: dict[str, Key] = field(default_factory=dict)

    @property
    def signer(self) -> Key | None:
        """The active key, when this node holds what signs with it."""
        for key in self.keys.values():
            if key.state == "active" and key.can_sign:
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
        """The JWK Set to publish: public halves of pending and active keys. HS256 keys are
        never in it, so a node that verifies with this set can verify none of their tokens."""
        return {"keys": [public_jwk(k) for k in self.keys.values() if k.verifies and k.published]}

    def describe(self) -> str:
        return ", ".join(f"{k.kid}:{k.state}" for k in self.keys.values()) or "empty"

    def __len__(self) -> int:
        return len(self.keys)


def keyring_from_jwks(raw: bytes) -> tuple[Keyring, list[str]]:
    """A JWK Set as a keyring, plus why each key left out was left out (see ``keys_from_jwks``)."""
    keys, skipped = keys_from_jwks(raw)
    return Keyring(keys), skipped


# -- the directory ------------------------------------------------------------------------------


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
        parsed = {"kid": kid, "alg": alg, "state": state, "created_at": str(entry.get("created_at", ""))}
        parsed.update({name: str(entry[name]) for name in _TIMES[1:] if entry.get(name)})
        entries.append(parsed)
    active = [e["kid"] for e in entries if e["state"] == "active"]
    if len(active) > 1:
        raise KeyringError(f"{MANIFEST}: more than one active key ({', '.join(active)}); exactly one may sign")
    return entries


def _check_dir(path: Path) -> None:
    """Refuse a keys directory that anyone may write to: whoever can replace keyring.json and a
    pem file can make every node accept their tokens. A read-only mount (a Kubernetes secret or
    config map, whose directories show mode 1777) is safe whatever its mode says."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return
    if st.st_mode & stat.S_IWOTH and not os.statvfs(path).f_flag & os.ST_RDONLY:
        raise KeyringError(
            f"{path} is world-writable (mode {stat.S_IMODE(st.st_mode):o}); "
            f"anyone could replace its keys: chmod o-w {path}"
        )


def _parse_time(value: str | None) -> datetime | None:
    if not value:
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo else parsed.replace(tzinfo=UTC)


class KeyringDir:
    """The keyring directory: loading it, and the lifecycle commands of SPEC section 6."""

    def __init__(self, path: Path | str, clock: Clock | None = None) -> None:
        self.path = Path(path)
        self.clock = clock or Clock()

    @property
    def manifest(self) -> Path:
        return self.path / MANIFEST

    def private_path(self, kid: str) -> Path:
        return self.path / f"{kid}.key.pem"

    def public_path(self, kid: str) -> Path:
        return self.path / f"{kid}.pub.pem"

    def fingerprint(self) -> bytes | None:
        """A digest of everything ``load`` reads: the manifest's bytes and each pem file's
        identity, so a change is noticed even when a rename lands on a recycled inode within
        one timestamp tick. A few hundred bytes and a few stat calls: cheap enough to poll."""
        try:
            digest = hashlib.sha256(self.manifest.read_bytes())
        except FileNotFoundError:
            return None
        try:
            names = sorted(n for n in os.listdir(self.path) if n.endswith(".pem"))
            digest.update(repr(os.stat(self.path).st_mode).encode())
        except FileNotFoundError:
            return None
        for name in names:
            with contextlib.suppress(FileNotFoundError):
                st = os.stat(self.path / name)
                digest.update(repr((name, st.st_ino, st.st_mtime_ns, st.st_ctime_ns, st.st_size)).encode())
        return digest.digest()

    def entries(self, missing_ok: bool = True) -> list[dict[str, str]]:
        try:
            raw = self.manifest.read_bytes()
        except FileNotFoundError:
            if missing_ok:
                return []
            raise KeyringError(f"{self.manifest} is missing") from None
        return _parse_manifest(raw)

    def load(self, missing_ok: bool = True) -> Keyring:
        """Read and validate the whole keyring; raise rather than return part of one. No
        manifest is an empty keyring, unless ``missing_ok`` is false."""
        _check_dir(self.path)
        keys: dict[str, Key] = {}
        for entry in self.entries(missing_ok):
            kid = entry["kid"]
            if entry["state"] == "retired":
                continue  # neither signs nor verifies: don't even read its files
            # No private file: verify-only for this key (or it was retired while we read).
            private = _read(self.private_path(kid))
            if private is not None:
                self._warn_if_exposed(kid)
            keys[kid] = load_key(entry, private, _read(self.public_path(kid)))
        return Keyring(keys)

    def exposed(self, kid: str) -> int | None:
        """The mode of a private key file that group or others may read, else None."""
        with contextlib.suppress(FileNotFoundError):
            mode = stat.S_IMODE(os.stat(self.private_path(kid)).st_mode)
            if mode & 0o077:
                return mode
        return None

    def _warn_if_exposed(self, kid: str) -> None:
        # A warning, not a refusal: the key is loaded all the same (refusing would not un-leak
        # it), and mounted secrets are often 0644 inside a container that is the only reader.
        mode = self.exposed(kid)
        if mode is not None:
            log.warning("%s is mode %o: other users may read this signing key; chmod 600 it",
                        self.private_path(kid), mode)

    # -- lifecycle -------------------------------------------------------------------------

    @contextlib.contextmanager
    def _locked(self) -> Iterator[list[dict[str, str]]]:
        # 0700: the directory holds private keys; mkdir leaves an existing directory's mode alone.
        self.path.mkdir(mode=0o700, parents=True, exist_ok=True)
        _check_dir(self.path)
        with open(self.path / ".lock", "a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            yield self.entries()

    def _save(self, entries: list[dict[str, str]]) -> None:
        body = json.dumps({"version": 1, "keys": entries}, indent=2) + "\n"
        _parse_manifest(body.encode())  # never write what a node would refuse to load
        _write_atomic(self.manifest, body.encode())

    def _now(self) -> str:
        return datetime.fromtimestamp(self.clock.now(), UTC).isoformat(timespec="seconds")

    def _new_locked(self, entries: list[dict[str, str]], alg: Alg) -> str:
        if alg not in ALGORITHMS:
            raise KeyringError(f"unsupported algorithm {alg!r}; choose one of {', '.join(ALGORITHMS)}")
        files = generate(alg)
        kid = _new_kid()
        while any(e["kid"] == kid for e in entries) or any(
            p.exists() for p in (self.private_path(kid), self.public_path(kid))
        ):
            kid = _new_kid()
        # Every file before the manifest names the key: a node never sees a kid without its key.
        _write_atomic(self.private_path(kid), files.private, mode=0o600)
        if files.public is not None:  # never for HS256: its secret has no public half to write
            _write_atomic(self.public_path(kid), files.public)
        entries.append({"kid": kid, "alg": alg, "state": "pending", "created_at": self._now()})
        self._save(entries)
        return kid

    def _activate_locked(self, entries: list[dict[str, str]], kid: str) -> str | None:
        entry = _find(entries, kid)
        if entry["state"] == "retired":
            raise KeyringError(
                f"key {kid} is retired and a retired key never comes back (tokens it signed were "
                "cut off on purpose); create a new key with `keys new` and activate that"
            )
        if entry["state"] == "active":
            return None
        if not self.private_path(kid).exists():
            what = "secret" if entry["alg"] == "HS256" else "private key"
            raise KeyringError(f"key {kid} has no {what} in {self.path}; activate it on the issuer")
        now, previous = self._now(), None
        for e in entries:
            if e["state"] == "active":
                # Back to pending: it stops signing now, and keeps verifying what it signed.
                e["state"], e["signed_until"], previous = "pending", now, e["kid"]
        entry["state"], entry["activated_at"] = "active", now
        self._save(entries)
        return previous

    def new(self, alg: Alg = DEFAULT_ALG) -> str:
        """Create a pending key; never changes who signs. Returns its kid."""
        with self._locked() as entries:
            return self._new_locked(entries, alg)

    def activate(self, kid: str) -> str | None:
        """Make a pending key the signer; the previous signer goes back to pending (it still
        verifies the tokens it signed). Returns the previous signer's kid."""
        with self._locked() as entries:
            return self._activate_locked(entries, kid)

    def retire(self, kid: str, *, force: bool = False, token_lifetime: float | None = None) -> State:
        """Retire a key: its tokens stop verifying, on every node, within one reload interval.
        The private key file is removed. Returns the state the key was in.

        Refused without ``force``: retiring the active signer (activate another key first), and,
        when ``token_lifetime`` (seconds) is given, retiring a key that signed tokens less than
        that long ago, as those tokens may still be live. ``force`` is the emergency path for a
        leaked key: every token it signed fails at once with 401 token_invalid.
        """
        with self._locked() as entries:
            entry = _find(entries, kid)
            previous: State = entry["state"]  # type: ignore[assignment]
            if previous == "retired":
                return previous
            if previous == "active" and not force:
                raise KeyringError(
                    f"key {kid} is the active signer; activate another key first "
                    "(or pass --force to stop signing on this keyring at once)"
                )
            signed_until = _parse_time(entry.get("signed_until"))
            if not force and token_lifetime is not None and signed_until is not None:
                live_until = signed_until.timestamp() + token_lifetime
                if self.clock.now() < live_until:
                    until = datetime.fromtimestamp(live_until, UTC).isoformat(timespec="seconds")
                    raise KeyringError(
                        f"key {kid} signed tokens until {entry['signed_until']}; with a token lifetime "
                        f"of {token_lifetime:.0f} s they may verify until {until}, and retiring it now "
                        "makes them fail with 401 token_invalid. Wait, or pass --force"
                    )
            if previous == "active":
                entry["signed_until"] = self._now()
            entry["state"] = "retired"
            self._save(entries)
            with contextlib.suppress(FileNotFoundError):
                os.unlink(self.private_path(kid))
            return previous

    def init(self, alg: Alg = DEFAULT_ALG) -> str | None:
        """Create and activate a key when the keyring is empty. Returns the new kid, or None."""
        with self._locked() as entries:
            if entries:
                return None
            kid = self._new_locked(entries, alg)
            self._activate_locked(entries, kid)
            return kid


def _read(path: Path) -> bytes | None:
    try:
        return path.read_bytes()
    except FileNotFoundError:
        return None


def _new_kid() -> str:
    # Never a leading '-': a kid is typed as a command-line argument (`keys retire KID`).
    kid = secrets.token_urlsafe(6)
    while kid.startswith("-"):
        kid = secrets.token_urlsafe(6)
    return kid


def _find(entries: list[dict[str, str]], kid: str) -> dict[str, str]:
    for entry in entries:
        if entry["kid"] == kid:
            return entry
    known = ", ".join(e["kid"] for e in entries) or "none"
    raise KeyringError(f"no key {kid!r} in the keyring (keys: {known})")

