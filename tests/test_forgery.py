"""Forged and malformed tokens (RFC 8725, OWASP JWT cheat sheet): nothing forged is accepted.

Every case here is a token this service never issued. Most are signed with the *real* signing
key, so that only the check under test stands between the token and acceptance; a control case
built by the same helper with nothing wrong with it is accepted, which shows the helper builds
tokens that would otherwise pass.

The whole module runs twice: with an ES256 signer (the default) and with an HS256 signer (a
shared secret). Beside the signer, the keyring holds a pending key of each algorithm (EdDSA,
ES256, HS256), so that confusing one algorithm's key with another's is tried both ways.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import threading
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
from conftest import TOKENS, issue_token, stream_entries, token_of
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed448, ed25519, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature
from cryptography.hazmat.primitives.hashes import SHA256, SHA384

from app.domain import tokens
from app.domain.outcomes import as_uuid
from app.errors import TokenInvalid
from app.keys.key import Key
from app.keys.keyring import KeyringDir

pytest_plugins = ["support_keys"]

TYP = tokens.TOKEN_TYPE


def b64(data: bytes) -> str:
    return tokens.b64encode(data)


def compact(obj: Any) -> bytes:
    return json.dumps(obj, separators=(",", ":")).encode()


def forge(header: dict[str, Any] | bytes, payload: dict[str, Any] | bytes, sign: Callable[[bytes], bytes]) -> str:
    """A compact JWS from any header and payload (raw bytes are used as they are)."""
    head = header if isinstance(header, bytes) else compact(header)
    body = payload if isinstance(payload, bytes) else compact(payload)
    signing_input = f"{b64(head)}.{b64(body)}".encode()
    return f"{signing_input.decode()}.{b64(sign(signing_input))}"


def es_raw(private: ec.EllipticCurvePrivateKey, data: bytes, hash_alg: Any, size: int) -> bytes:
    r, s = decode_dss_signature(private.sign(data, ec.ECDSA(hash_alg)))
    return r.to_bytes(size, "big") + s.to_bytes(size, "big")


@dataclass
class Ring:
    """The keyring the app runs with, and what an attacker may hold."""

    active: Key  # of ``signing_alg`` (ES256 or HS256), signs
    ed: Key  # EdDSA, pending: verifies, never signs
    es: Key  # ES256, pending: verifies, never signs
    hs: Key  # HS256, pending: verifies, never signs
    retired: Key  # of ``signing_alg``, retired after it signed a token
    jwks: dict[str, Any]
    payload: dict[str, Any]  # the claims of a freshly issued token
    now: float


@pytest.fixture(scope="module")
def shared_ring(tmp_path_factory: pytest.TempPathFactory, signing_alg: str) -> tuple[Path, Ring]:
    """One keyring for the module (no test changes it): an active key of ``signing_alg``, a
    pending key of each algorithm, and a retired key of ``signing_alg`` whose private half (or
    secret) we kept, as a leaked key would be."""
    path = tmp_path_factory.mktemp(f"forgery-{signing_alg}") / "keys"
    directory = KeyringDir(path)
    directory.init(signing_alg)  # type: ignore[arg-type]
    ed_kid, es_kid, hs_kid = directory.new("EdDSA"), directory.new("ES256"), directory.new("HS256")
    old_kid = directory.new(signing_alg)  # type: ignore[arg-type]
    retired = directory.load().keys[old_kid]
    directory.retire(old_kid)
    loaded = directory.load()
    active = loaded.signer
    assert active is not None and active.alg == signing_alg and old_kid not in loaded.keys
    keys = loaded.keys
    return path, Ring(active, keys[ed_kid], keys[es_kid], keys[hs_kid], retired, loaded.jwks(), {}, 0.0)


@pytest.fixture
def keys_dir(shared_ring: tuple[Path, Ring]) -> Path:
    return shared_ring[0]


@pytest.fixture
def ring(shared_ring: tuple[Path, Ring]) -> Ring:
    return shared_ring[1]


@pytest.fixture
def fx(ring: Ring, client, clock) -> Ring:
    payload = json.loads(tokens.b64decode(token_of(issue_token(client)).split(".")[1]))
    return replace(ring, payload=payload, now=clock.now())


_DROP = object()  # a member to leave out


def hdr(key: Key, **changes: Any) -> dict[str, Any]:
    header = {"alg": key.alg, "kid": key.kid, "typ": TYP}
    header.update(changes)
    return {k: v for k, v in header.items() if v is not _DROP}


def claims(fx: Ring, **changes: Any) -> dict[str, Any]:
    payload = {**fx.payload, "jti": b64(uuid.uuid4().bytes)}
    payload.update(changes)
    return {k: v for k, v in payload.items() if v is not _DROP}


def real(fx: Ring) -> Callable[[bytes], bytes]:
    return fx.active.sign


def hs(secret: bytes, digest: Any = hashlib.sha256) -> Callable[[bytes], bytes]:
    return lambda data: hmac.new(secret, data, digest).digest()


def secret_of(key: Key) -> bytes:
    assert key.secret is not None
    return key.secret


def public_forms(key: Key, jwks: dict[str, Any]) -> dict[str, bytes]:
    """Every spelling of a public key that an HS256 confusion attack might use as the secret."""
    pub = key.public_key
    jwk = next(k for k in jwks["keys"] if k["kid"] == key.kid)
    forms = {
        "pem": pub.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo),
        "der": pub.public_bytes(serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo),
        "openssh": pub.public_bytes(serialization.Encoding.OpenSSH, serialization.PublicFormat.OpenSSH),
        "jwk": json.dumps(jwk).encode(),
        "jwk-compact": compact(jwk),
        "jwk-x": jwk["x"].encode(),
    }
    if isinstance(pub, ed25519.Ed25519PublicKey):
        forms["raw"] = pub.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    else:
        forms["point"] = pub.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.UncompressedPoint)
    return forms


ATTACKER_ED = ed25519.Ed25519PrivateKey.generate()
ATTACKER_ED448 = ed448.Ed448PrivateKey.generate()
ATTACKER_P256 = ec.generate_private_key(ec.SECP256R1())
ATTACKER_P384 = ec.generate_private_key(ec.SECP384R1())
ATTACKER_P521 = ec.generate_private_key(ec.SECP521R1())
ATTACKER_RSA = rsa.generate_private_key(public_exponent=65537, key_size=2048)
ATTACKER_SECRET = b"attacker-chosen HMAC secret, 32+ bytes long"


def attacker(alg: str) -> Callable[[bytes], bytes]:
    """A valid signature under ``alg`` by a key the attacker made."""
    return {
        "EdDSA": ATTACKER_ED.sign,
        "ES256": lambda d: es_raw(ATTACKER_P256, d, SHA256(), 32),
        "HS256": hs(ATTACKER_SECRET),
    }[alg]


def attacker_jwk() -> dict[str, Any]:
    raw = ATTACKER_ED.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return {"kty": "OKP", "crv": "Ed25519", "x": b64(raw)}


# -- the cases -----------------------------------------------------------------------------------
# Each builds one token from the fixture; all must be refused with (status, code).

Case = Callable[[Ring], str]
INVALID = (401, "token_invalid")
EXPIRED = (410, "token_expired")


def _alg_cases() -> dict[str, Case]:
    cases: dict[str, Case] = {
        # alg "none" in its spellings, with a junk signature (an empty one fails the shape check)
        **{
            f"alg-{name}": (lambda fx, name=name: forge(hdr(fx.active, alg=name), claims(fx), lambda _: b"\0"))
            for name in ("none", "None", "NONE", "nOnE", "")
        },
        "alg-none-empty-signature": lambda fx: forge(hdr(fx.active, alg="none"), claims(fx), lambda _: b""),
        # algorithms we never list, each with a signature that is valid for that algorithm
        "alg-RS256": lambda fx: forge(
            hdr(fx.active, alg="RS256"), claims(fx), lambda d: ATTACKER_RSA.sign(d, padding.PKCS1v15(), SHA256())
        ),
        "alg-PS256": lambda fx: forge(
            hdr(fx.active, alg="PS256"),
            claims(fx),
            lambda d: ATTACKER_RSA.sign(d, padding.PSS(padding.MGF1(SHA256()), 32), SHA256()),
        ),
        "alg-ES384": lambda fx: forge(
            hdr(fx.active, alg="ES384"), claims(fx), lambda d: es_raw(ATTACKER_P384, d, SHA384(), 48)
        ),
        "alg-ES512-on-es-key": lambda fx: forge(
            hdr(fx.es, alg="ES512"), claims(fx), lambda d: es_raw(ATTACKER_P521, d, SHA256(), 66)
        ),
        # the right family, the wrong key: each key's own algorithm is pinned
        "alg-EdDSA-header-on-ES256-key": lambda fx: forge(hdr(fx.es, alg="EdDSA"), claims(fx), ATTACKER_ED.sign),
        "alg-EdDSA-header-on-ES256-key-signed-by-ed-key": lambda fx: forge(
            hdr(fx.es, alg="EdDSA"), claims(fx), fx.ed.sign
        ),
        "alg-ES256-header-on-EdDSA-key": lambda fx: forge(
            hdr(fx.ed, alg="ES256"), claims(fx), lambda d: es_raw(ATTACKER_P256, d, SHA256(), 32)
        ),
        "alg-ES256-header-on-EdDSA-key-signed-by-es-key": lambda fx: forge(
            hdr(fx.ed, alg="ES256"), claims(fx), fx.es.sign
        ),
        # a valid signature of a real key under an algorithm name we don't issue
        "alg-Ed25519-name-real-signature": lambda fx: forge(hdr(fx.ed, alg="Ed25519"), claims(fx), fx.ed.sign),
        "alg-eddsa-lowercase-real-signature": lambda fx: forge(hdr(fx.ed, alg="eddsa"), claims(fx), fx.ed.sign),
        "alg-lowercase-real-signature": lambda fx: forge(
            hdr(fx.active, alg=fx.active.alg.lower()), claims(fx), real(fx)
        ),
        "alg-list-real-signature": lambda fx: forge(hdr(fx.active, alg=[fx.active.alg]), claims(fx), real(fx)),
        "alg-null-real-signature": lambda fx: forge(hdr(fx.active, alg=None), claims(fx), real(fx)),
        "alg-Ed448-signature": lambda fx: forge(hdr(fx.ed), claims(fx), ATTACKER_ED448.sign),
    }
    # HS256/384/512 with the public key as the HMAC secret (algorithm confusion), for both
    # asymmetric algorithms
    for which in ("ed", "es"):
        raw_form = "raw" if which == "ed" else "point"  # Ed25519's 32 bytes, P-256's point
        for form in ("pem", "der", "openssh", "jwk", "jwk-compact", "jwk-x", raw_form):
            cases[f"HS256-{which}-public-{form}"] = lambda fx, which=which, form=form: forge(
                hdr(getattr(fx, which), alg="HS256"),
                claims(fx),
                hs(public_forms(getattr(fx, which), fx.jwks)[form]),
            )
    cases["HS384-ed-public-pem"] = lambda fx: forge(
        hdr(fx.ed, alg="HS384"), claims(fx), hs(public_forms(fx.ed, fx.jwks)["pem"], hashlib.sha384)
    )
    cases["HS512-es-public-pem"] = lambda fx: forge(
        hdr(fx.es, alg="HS512"), claims(fx), hs(public_forms(fx.es, fx.jwks)["pem"], hashlib.sha512)
    )
    cases["HS256-empty-secret"] = lambda fx: forge(hdr(fx.active, alg="HS256"), claims(fx), hs(b""))
    return cases


def _hmac_cases() -> dict[str, Case]:
    """HMAC keys: their algorithm is pinned like any other, both ways, and a MAC is compared
    whole. The secret is used here only to show that knowing it is not enough under the wrong
    algorithm, length or input."""

    def mac_token(fx: Ring) -> list[str]:
        return forge(hdr(fx.hs), claims(fx), fx.hs.sign).split(".")

    def with_mac(change: Callable[[bytes], bytes]) -> Case:
        def build(fx: Ring) -> str:
            head, body, sig = mac_token(fx)
            return f"{head}.{body}.{b64(change(tokens.b64decode(sig)))}"

        return build

    def flip(index: int) -> Callable[[bytes], bytes]:
        def change(mac: bytes) -> bytes:
            raw = bytearray(mac)
            raw[index] ^= 0x80
            return bytes(raw)

        return change

    cases: dict[str, Case] = {
        # an asymmetric algorithm named under an HMAC key's kid
        "hs-key-ES256-header-attacker-p256": lambda fx: forge(hdr(fx.hs, alg="ES256"), claims(fx), attacker("ES256")),
        "hs-key-ES256-header-signed-by-es-key": lambda fx: forge(hdr(fx.hs, alg="ES256"), claims(fx), fx.es.sign),
        "hs-key-EdDSA-header-signed-by-ed-key": lambda fx: forge(hdr(fx.hs, alg="EdDSA"), claims(fx), fx.ed.sign),
        "hs-key-ES256-header-real-mac": lambda fx: forge(hdr(fx.hs, alg="ES256"), claims(fx), fx.hs.sign),
        "hs-key-EdDSA-header-real-mac": lambda fx: forge(hdr(fx.hs, alg="EdDSA"), claims(fx), fx.hs.sign),
        "hs-key-none-header": lambda fx: forge(hdr(fx.hs, alg="none"), claims(fx), lambda _: b"\0"),
        # an HMAC under an asymmetric key's kid, keyed with a real HMAC secret
        "es-key-HS256-header-real-hs-mac": lambda fx: forge(hdr(fx.es, alg="HS256"), claims(fx), fx.hs.sign),
        "ed-key-HS256-header-real-hs-mac": lambda fx: forge(hdr(fx.ed, alg="HS256"), claims(fx), fx.hs.sign),
        # the real secret under another HMAC algorithm, or over other bytes
        "hs-key-HS384-real-secret": lambda fx: forge(
            hdr(fx.hs, alg="HS384"), claims(fx), hs(secret_of(fx.hs), hashlib.sha384)
        ),
        "hs-key-HS512-real-secret": lambda fx: forge(
            hdr(fx.hs, alg="HS512"), claims(fx), hs(secret_of(fx.hs), hashlib.sha512)
        ),
        "hs-key-HS512-real-secret-truncated-to-32": lambda fx: forge(
            hdr(fx.hs), claims(fx), lambda d: hs(secret_of(fx.hs), hashlib.sha512)(d)[:32]
        ),
        "hs-key-sha1-mac": lambda fx: forge(hdr(fx.hs), claims(fx), hs(secret_of(fx.hs), hashlib.sha1)),
        "hs-key-mac-of-payload-only": lambda fx: forge(
            hdr(fx.hs), claims(fx), lambda d: hs(secret_of(fx.hs))(d.split(b".")[1])
        ),
        "hs-key-plain-sha256-no-secret": lambda fx: forge(hdr(fx.hs), claims(fx), lambda d: hashlib.sha256(d).digest()),
        # guessable secrets, and the secret file's text instead of the secret
        "hs-key-attacker-secret": lambda fx: forge(hdr(fx.hs), claims(fx), attacker("HS256")),
        "hs-key-empty-secret": lambda fx: forge(hdr(fx.hs), claims(fx), hs(b"")),
        "hs-key-kid-as-secret": lambda fx: forge(hdr(fx.hs), claims(fx), hs(fx.hs.kid.encode())),
        "hs-key-base64-text-of-secret": lambda fx: forge(hdr(fx.hs), claims(fx), hs(b64(secret_of(fx.hs)).encode())),
        # the real MAC, cut short or padded: compared whole, never as a prefix
        **{
            f"hs-mac-truncated-to-{n}": with_mac(lambda mac, n=n: mac[:n])
            for n in (1, 4, 16, 20, 24, 31)
        },
        "hs-mac-first-byte-dropped": with_mac(lambda mac: mac[1:]),
        "hs-mac-one-byte-appended": with_mac(lambda mac: mac + b"\0"),
        "hs-mac-doubled": with_mac(lambda mac: mac * 2),
        "hs-mac-first-bit": with_mac(flip(0)),
        "hs-mac-last-bit": with_mac(flip(-1)),
        "hs-mac-zeros": with_mac(lambda mac: bytes(len(mac))),
        "hs-mac-of-another-token": lambda fx: (lambda a, b: f"{a[0]}.{a[1]}.{b[2]}")(mac_token(fx), mac_token(fx)),
    }
    return cases


def _kid_cases() -> dict[str, Case]:
    # All signed with the real key: only the kid is wrong.
    kids: dict[str, Callable[[Ring], Any]] = {
        "dotdot-etc-passwd": lambda fx: "../../etc/passwd",
        "dotdot-own-key-file": lambda fx: f"../keys/{fx.active.kid}.pub.pem",
        "absolute-path": lambda fx: "/etc/passwd",
        "dev-null": lambda fx: "/dev/null",
        "dotdot": lambda fx: "..",
        "dot": lambda fx: ".",
        "own-kid-with-suffix": lambda fx: f"{fx.active.kid}.key.pem",
        "own-kid-via-dotdot": lambda fx: f"x/../{fx.active.kid}",
        "manifest": lambda fx: "keyring.json",
        "percent-encoded-path": lambda fx: "%2e%2e%2fetc%2fpasswd",
        "nul-byte": lambda fx: f"{fx.active.kid}\u0000",
        "trailing-space": lambda fx: f"{fx.active.kid} ",
        "sql-ish": lambda fx: "' OR '1'='1",
        "url": lambda fx: "https://attacker.example/key",
        "too-long": lambda fx: "A" * 65,
        "empty": lambda fx: "",
        "integer": lambda fx: 1,
        "null": lambda fx: None,
        "list": lambda fx: [fx.active.kid],
        "object": lambda fx: {"kid": fx.active.kid},
        "unknown": lambda fx: "unknownKid1",
        "case-changed": lambda fx: fx.active.kid.swapcase() if fx.active.kid.swapcase() != fx.active.kid else "Zz",
        "retired-kid": lambda fx: fx.retired.kid,
        "missing": lambda fx: _DROP,
    }
    return {
        f"kid-{name}": (lambda fx, kid=kid: forge(hdr(fx.active, kid=kid(fx)), claims(fx), real(fx)))
        for name, kid in kids.items()
    }


JKU_HITS: list[str] = []  # requests the attacker's server received
ATTACKER_URL = [""]  # set by the attacker_server fixture


def _header_cases() -> dict[str, Case]:
    # Members we never issue. The jku/x5u/jwk cases are signed by the attacker's key with the
    # attacker's key published at (or embedded in) the header; the rest with the real key.
    cases: dict[str, Case] = {
        "jwk-embedded-attacker-key": lambda fx: forge(
            hdr(fx.active, jwk=attacker_jwk()), claims(fx), ATTACKER_ED.sign
        ),
        "jwk-embedded-attacker-key-no-kid": lambda fx: forge(
            hdr(fx.active, jwk=attacker_jwk(), kid=_DROP), claims(fx), ATTACKER_ED.sign
        ),
        "jku-attacker-jwks": lambda fx: forge(
            hdr(fx.active, jku=f"{ATTACKER_URL[0]}/jwks.json"), claims(fx), ATTACKER_ED.sign
        ),
        "x5u-attacker-cert": lambda fx: forge(
            hdr(fx.active, x5u=f"{ATTACKER_URL[0]}/cert.pem"), claims(fx), ATTACKER_ED.sign
        ),
        "jku-with-real-signature": lambda fx: forge(
            hdr(fx.active, jku=f"{ATTACKER_URL[0]}/jwks.json"), claims(fx), real(fx)
        ),
    }
    for case, (member, value) in {
        "x5c": ("x5c", ["MIIB"]),
        "x5t": ("x5t", "abc"),
        "x5t#S256": ("x5t#S256", "abc"),
        "crit": ("crit", ["exp"]),
        "crit-empty": ("crit", []),
        "cty": ("cty", "JWT"),
        "b64-false": ("b64", False),
        "zip": ("zip", "DEF"),
        "enc": ("enc", "A256GCM"),
        "nonce": ("nonce", "n"),
        "iss": ("iss", "fbt"),
        "Typ-capitalised": ("Typ", TYP),
    }.items():
        cases[f"header-{case}"] = lambda fx, member=member, value=value: forge(
            hdr(fx.active, **{member: value}), claims(fx), real(fx)
        )
    cases["header-duplicate-alg-none-first"] = lambda fx: forge(
        f'{{"alg":"none","alg":"{fx.active.alg}","kid":"{fx.active.kid}","typ":"{TYP}"}}'.encode(),
        claims(fx),
        attacker(fx.active.alg),
    )
    cases["header-json-array"] = lambda fx: forge(compact([hdr(fx.active)]), claims(fx), real(fx))
    cases["header-not-json"] = lambda fx: forge(b"alg=EdDSA", claims(fx), real(fx))
    cases["header-not-utf8"] = lambda fx: forge(b'{"alg":"\xff"}', claims(fx), real(fx))
    cases["header-empty-object"] = lambda fx: forge(b"{}", claims(fx), real(fx))
    # typ: required, and ours
    for name, typ in {"missing": _DROP, "JWT": "JWT", "jwt": "jwt", "at+jwt": "at+jwt", "upper": TYP.upper(),
                      "with-application": f"application/{TYP}", "null": None, "number": 1}.items():
        cases[f"typ-{name}"] = lambda fx, typ=typ: forge(hdr(fx.active, typ=typ), claims(fx), real(fx))
    return cases


def _claim_cases() -> dict[str, tuple[Case, tuple[int, str]]]:
    # Signed with the real key: only the claims are wrong.
    def signed(**changes: Any) -> Case:
        return lambda fx: forge(hdr(fx.active), claims(fx, **changes), real(fx))

    def at(offset: float, name: str) -> Case:
        return lambda fx: forge(hdr(fx.active), claims(fx, **{name: int(fx.now + offset)}), real(fx))

    return {
        "iss-other": (signed(iss="evil"), INVALID),
        "iss-missing": (signed(iss=_DROP), INVALID),
        "iss-list": (signed(iss=["fbt"]), INVALID),
        "iss-padded": (signed(iss="fbt "), INVALID),
        "iss-null": (signed(iss=None), INVALID),
        "exp-beyond-leeway": (at(-31, "exp"), EXPIRED),
        "exp-long-ago": (at(-86400 * 400, "exp"), EXPIRED),
        "exp-missing": (signed(exp=_DROP), INVALID),
        "exp-string": (lambda fx: forge(hdr(fx.active), claims(fx, exp=str(int(fx.now + 3600))), real(fx)), INVALID),
        "exp-float": (lambda fx: forge(hdr(fx.active), claims(fx, exp=fx.now + 3600.5), real(fx)), INVALID),
        "exp-bool": (signed(exp=True), INVALID),
        "exp-null": (signed(exp=None), INVALID),
        # iat may run ahead by the leeway plus twice the clock skew the fleet tolerates between a
        # node and Redis (30 + 2 x 60 s): an issuer 60 s ahead, a verifier 60 s behind.
        "iat-future-beyond-leeway-and-skew": (at(151, "iat"), INVALID),
        "iat-far-future": (at(86400 * 365, "iat"), INVALID),
        "iat-missing": (signed(iat=_DROP), INVALID),
        "iat-string": (signed(iat="0"), INVALID),
        "jti-missing": (signed(jti=_DROP), INVALID),
        "jti-dashed-uuid": (signed(jti=str(uuid.uuid4())), INVALID),
        "jti-short": (signed(jti="abc"), INVALID),
        "jti-number": (signed(jti=7), INVALID),
        "run-missing": (signed(run=_DROP), INVALID),
        "run-short": (signed(run="x" * 21), INVALID),
        "run-dashed-uuid": (signed(run=str(uuid.uuid4())), INVALID),
        "key-missing": (signed(key=_DROP), INVALID),
        "key-number": (signed(key=1), INVALID),
        "cfg-malformed": (signed(cfg=["x"]), INVALID),
        "cfg-object": (signed(cfg={"type": "continuous"}), INVALID),
        "use-unknown": (signed(use="z"), INVALID),
        "use-list": (signed(use=["m"]), INVALID),
        "cap-without-many": (signed(cap=5), INVALID),
        "payload-array": (lambda fx: forge(hdr(fx.active), compact([claims(fx)]), real(fx)), INVALID),
        "payload-null": (lambda fx: forge(hdr(fx.active), b"null", real(fx)), INVALID),
        "payload-not-json": (lambda fx: forge(hdr(fx.active), b"jti=1", real(fx)), INVALID),
        "payload-not-utf8": (lambda fx: forge(hdr(fx.active), b'{"iss":"\xff"}', real(fx)), INVALID),
    }


def _tamper_cases() -> dict[str, Case]:
    def issued(fx: Ring) -> list[str]:
        return forge(hdr(fx.active), claims(fx), real(fx)).split(".")

    def with_payload(fx: Ring, **changes: Any) -> str:
        head, _, sig = issued(fx)
        return f"{head}.{b64(compact(claims(fx, **changes)))}.{sig}"

    def flip_sig_bit(fx: Ring, index: int) -> str:
        head, body, sig = issued(fx)
        raw = bytearray(tokens.b64decode(sig))
        raw[index] ^= 0x01
        return f"{head}.{body}.{b64(bytes(raw))}"

    def es_token(fx: Ring) -> list[str]:
        return forge(hdr(fx.es), claims(fx), fx.es.sign).split(".")

    def other_token_sig(fx: Ring) -> str:
        head, body, _ = issued(fx)
        return f"{head}.{body}.{issued(fx)[2]}"

    def reordered_header(fx: Ring) -> str:
        _, body, sig = issued(fx)
        head = b64(compact({"typ": TYP, "kid": fx.active.kid, "alg": fx.active.alg}))
        return f"{head}.{body}.{sig}"

    def spaced_header(fx: Ring) -> str:
        _, body, sig = issued(fx)
        return f"{b64(json.dumps(hdr(fx.active)).encode())}.{body}.{sig}"

    def es_sig_der(fx: Ring) -> str:
        head, body, sig = es_token(fx)
        raw = tokens.b64decode(sig)
        der = encode_dss_signature(int.from_bytes(raw[:32], "big"), int.from_bytes(raw[32:], "big"))
        return f"{head}.{body}.{b64(der)}"

    def es_sig_swapped(fx: Ring) -> str:
        head, body, sig = es_token(fx)
        raw = tokens.b64decode(sig)
        return f"{head}.{body}.{b64(raw[32:] + raw[:32])}"

    def es_sig_zero(fx: Ring) -> str:
        head, body, _ = es_token(fx)
        return f"{head}.{body}.{b64(bytes(64))}"

    return {
        "payload-run-changed": lambda fx: with_payload(fx, run=b64(uuid.uuid4().bytes)),
        "payload-key-changed": lambda fx: with_payload(fx, key="other"),
        "payload-exp-extended": lambda fx: with_payload(fx, exp=int(fx.now) + 10**7),
        "payload-cfg-removed": lambda fx: with_payload(fx, cfg=_DROP),
        "payload-byte-appended": lambda fx: (lambda p: f"{p[0]}.{p[1]}A.{p[2]}")(issued(fx)),
        "header-reordered": reordered_header,
        "header-whitespace": spaced_header,
        "header-kid-swapped-to-es": lambda fx: (
            lambda p: f"{b64(compact(hdr(fx.es, alg=fx.active.alg)))}.{p[1]}.{p[2]}"
        )(issued(fx)),
        "sig-first-bit": lambda fx: flip_sig_bit(fx, 0),
        "sig-middle-bit": lambda fx: flip_sig_bit(fx, 31 if fx.active.alg != "HS256" else 15),
        "sig-last-byte-bit": lambda fx: flip_sig_bit(fx, -1),
        "sig-truncated": lambda fx: (lambda p: f"{p[0]}.{p[1]}.{p[2][:-4]}")(issued(fx)),
        "sig-one-byte-short": lambda fx: (lambda p: f"{p[0]}.{p[1]}.{b64(tokens.b64decode(p[2])[:-1])}")(issued(fx)),
        "sig-extended": lambda fx: (lambda p: f"{p[0]}.{p[1]}.{p[2]}AAAA")(issued(fx)),
        "sig-all-A": lambda fx: (lambda p: f"{p[0]}.{p[1]}.{'A' * len(p[2])}")(issued(fx)),
        "sig-of-another-token": other_token_sig,
        "sig-doubled": lambda fx: (lambda p: f"{p[0]}.{p[1]}.{b64(tokens.b64decode(p[2]) * 2)}")(issued(fx)),
        "es-sig-der-encoded": es_sig_der,
        "es-sig-r-s-swapped": es_sig_swapped,
        "es-sig-zero": es_sig_zero,
        "signed-by-retired-key": lambda fx: forge(hdr(fx.retired), claims(fx), fx.retired.sign),
        "signed-by-attacker-under-active-kid": lambda fx: forge(hdr(fx.active), claims(fx), attacker(fx.active.alg)),
        "signed-by-attacker-p256-under-es-kid": lambda fx: forge(
            hdr(fx.es), claims(fx), lambda d: es_raw(ATTACKER_P256, d, SHA256(), 32)
        ),
    }


ALG_CASES = _alg_cases()
HMAC_CASES = _hmac_cases()
KID_CASES = _kid_cases()
HEADER_CASES = _header_cases()
CLAIM_CASES = _claim_cases()
TAMPER_CASES = _tamper_cases()


@pytest.fixture(scope="module", autouse=True)
def attacker_server() -> Iterator[None]:
    """A server the attacker controls: jku/x5u point here, and nothing may ever fetch from it."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:  # noqa: N802
            JKU_HITS.append(self.path)
            body = compact({"keys": [{**attacker_jwk(), "kid": "x"}]})
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args: Any) -> None:
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    ATTACKER_URL[0] = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield
    server.shutdown()
    server.server_close()


def own_id(token: str) -> str:
    """The token id a token names (its ``jti`` as a UUID): the last segment of its URL as issued.
    A random id for a token whose ``jti`` can't be read."""
    try:
        return str(uuid.UUID(bytes=tokens.b64decode(json.loads(tokens.b64decode(token.split(".")[1]))["jti"])))
    except (AttributeError, IndexError, KeyError, TypeError, ValueError):
        return str(uuid.uuid4())


def snapshot(redis_server) -> dict[bytes, bytes | None]:
    """Every key in Redis with its serialized value: equal snapshots mean nothing was written."""
    r = redis_server.client()
    return {key: r.dump(key) for key in r.keys("*")}


def refused(client, redis_server, token: str, status: int, code: str) -> None:
    """POST and GET both refuse the token, in the URL form as issued (``<jwt>/<its id>``) and in the
    older one (``<jwt>``), or by id alone, and nothing reaches the store."""
    before = snapshot(redis_server)
    by_id = as_uuid(token) is not None
    for path in [f"{TOKENS}/{token}"] + ([] if by_id else [f"{TOKENS}/{token}/{own_id(token)}"]):
        for response in (
            client.post(path, json={"score": 1}),
            client.get(path, params={"score": "1"}),
        ):
            assert response.status_code == status, (path, response.text)
            assert response.headers["content-type"] == "application/problem+json"
            assert response.json()["code"] == code
    assert stream_entries(redis_server) == []
    assert snapshot(redis_server) == before


def test_the_forging_helper_builds_tokens_that_are_accepted(fx, client, redis_server):
    """The control: with nothing wrong, a token built here is accepted. So every refusal below
    is the service's doing, not a broken helper."""
    token = forge(hdr(fx.active), claims(fx), real(fx))
    assert client.post(f"{TOKENS}/{token}", json={"score": 1}).status_code == 200
    for pending in (fx.ed, fx.es, fx.hs):  # a pending key verifies, whatever its algorithm
        other = forge(hdr(pending), claims(fx), pending.sign)
        assert client.post(f"{TOKENS}/{other}", json={"score": 1}).status_code == 200
    within = forge(hdr(fx.active), claims(fx, exp=int(fx.now) - 29, iat=int(fx.now) + 149), real(fx))
    assert client.post(f"{TOKENS}/{within}", json={"score": 1}).status_code == 200  # the leeway is small, not zero
    # The URL form as issued, with the id ``refused`` puts last: accepted too.
    as_issued = forge(hdr(fx.active), claims(fx), real(fx))
    assert client.post(f"{TOKENS}/{as_issued}/{own_id(as_issued)}", json={"score": 1}).status_code == 200
    assert len(stream_entries(redis_server)) == 6


@pytest.mark.parametrize("name", sorted(ALG_CASES))
def test_algorithm_confusion_is_refused(fx, client, redis_server, name):
    refused(client, redis_server, ALG_CASES[name](fx), *INVALID)


@pytest.mark.parametrize("name", sorted(HMAC_CASES))
def test_hmac_keys_are_pinned_and_compared_whole(fx, client, redis_server, name):
    refused(client, redis_server, HMAC_CASES[name](fx), *INVALID)


def test_macs_are_compared_in_constant_time(fx, client, redis_server, monkeypatch):
    """A timing test can't be trusted on a shared machine, so this shows the route instead: every
    MAC, right or wrong, reaches ``hmac.compare_digest`` (the real one, wrapped), whose time does
    not depend on where a guess first differs."""
    compared: list[tuple[bytes, bytes]] = []
    real_compare = hmac.compare_digest

    def spy(a: Any, b: Any) -> bool:
        compared.append((a, b))
        return real_compare(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    head, body, sig = forge(hdr(fx.hs), claims(fx), fx.hs.sign).split(".")
    mac = tokens.b64decode(sig)
    wrong = bytes([mac[0] ^ 1]) + mac[1:]  # differs in its first byte only
    refused(client, redis_server, f"{head}.{body}.{b64(wrong)}", *INVALID)
    assert (mac, wrong) in compared
    compared.clear()
    assert client.post(f"{TOKENS}/{head}.{body}.{sig}", json={"score": 1}).status_code == 200
    assert compared == [(mac, mac)]


@pytest.mark.parametrize("name", sorted(KID_CASES))
def test_kid_is_an_opaque_lookup_key(fx, client, redis_server, name):
    refused(client, redis_server, KID_CASES[name](fx), *INVALID)


@pytest.mark.parametrize("name", sorted(HEADER_CASES))
def test_header_members_we_never_issue_are_refused(fx, client, redis_server, name):
    refused(client, redis_server, HEADER_CASES[name](fx), *INVALID)


def test_jku_and_x5u_are_never_fetched(fx, client, redis_server):
    for name in ("jku-attacker-jwks", "x5u-attacker-cert", "jku-with-real-signature"):
        refused(client, redis_server, HEADER_CASES[name](fx), *INVALID)
    assert JKU_HITS == []


@pytest.mark.parametrize("name", sorted(CLAIM_CASES))
def test_bad_claims_are_refused(fx, client, redis_server, name):
    build, expected = CLAIM_CASES[name]
    refused(client, redis_server, build(fx), *expected)


@pytest.mark.parametrize("name", sorted(TAMPER_CASES))
def test_tampered_tokens_are_refused(fx, client, redis_server, name):
    refused(client, redis_server, TAMPER_CASES[name](fx), *INVALID)


def test_an_expired_token_is_410_even_by_id(fx, client, clock, redis_server):
    answer = issue_token(client, expires_in={"minutes": 1})
    clock.advance(60 + 31)
    refused(client, redis_server, answer["id"], *EXPIRED)
    refused(client, redis_server, token_of(answer), *EXPIRED)


# -- the cheap pre-checks ------------------------------------------------------------------------
# ``parse`` holds no key: whatever it refuses never reaches a key lookup or a signature check.

def _garbage(fx: Ring) -> dict[str, str]:
    good = forge(hdr(fx.active), claims(fx), real(fx))
    head, body, sig = good.split(".")
    garbage = {
        "over-length-cap": f"{head}.{b64(b'x' * 1500)}.{sig}",
        "one-segment": head,
        "two-segments": f"{head}.{body}",
        "four-segments": f"{good}.{sig}",
        "five-segments-jwe": f"{head}.{body}.{sig}.{sig}.{sig}",
        "empty-header": f".{body}.{sig}",
        "empty-signature": f"{head}.{body}.",
        "standard-base64-plus": f"{head}.{body}.{sig[:5]}+{sig[6:]}",
        "standard-base64-slash": f"{head}.{body}.{sig[:5]}/{sig[6:]}",
        "three-padding-chars": f"{good}===",
        "padding-in-payload": f"{head}.{body}=.{sig}",
        "space-inside": f"{head}.{body[:4]} {body[4:]}.{sig}",
        "newline-at-end": f"{good}\n",
        "unicode-letter": f"{head}.{body}.{sig[:-1]}é",
        "fullwidth-dot": good.replace(".", "．", 1),
        "header-extra-member": forge(hdr(fx.active, x="1"), claims(fx), real(fx)),
        "header-typ-missing": forge(hdr(fx.active, typ=_DROP), claims(fx), real(fx)),
        "header-not-base64-json": f"{b64(b'not json')}.{body}.{sig}",
        "header-one-char-too-long": f"{head}A.{body}.{sig}",
        "only-dots": "..",
        "empty": "",
    }
    assert sorted(garbage) == sorted(GARBAGE_NAMES)
    return garbage


GARBAGE_NAMES = [
    "over-length-cap", "one-segment", "two-segments", "four-segments", "five-segments-jwe", "empty-header",
    "empty-signature", "standard-base64-plus", "standard-base64-slash", "three-padding-chars",
    "padding-in-payload", "space-inside", "newline-at-end", "unicode-letter", "fullwidth-dot",
    "header-extra-member", "header-typ-missing", "header-not-base64-json", "header-one-char-too-long",
    "only-dots", "empty",
]


@pytest.mark.parametrize("name", GARBAGE_NAMES)
def test_garbage_is_refused_by_the_shape_check_alone(fx, name):
    token = _garbage(fx)[name]
    with pytest.raises(TokenInvalid) as caught:
        tokens.parse(token)
    assert caught.value.status == 401 and caught.value.code == "token_invalid"


def test_length_cap_is_2000_characters(fx):
    head, body, sig = forge(hdr(fx.active), claims(fx), real(fx)).split(".")
    pad = 2000 - len(head) - len(sig) - 2
    at_cap = f"{head}.{'A' * pad}.{sig}"
    assert len(at_cap) == tokens.MAX_TOKEN_LENGTH
    tokens.parse(at_cap)  # shaped right: refused later, by the signature
    with pytest.raises(TokenInvalid):
        tokens.parse(f"{head}.{'A' * (pad + 1)}.{sig}")


# -- the token id in the URL ---------------------------------------------------------------------
# Token URLs end in the token id (``<jwt>/<token id>``, where the LangSmith SDK reads it). The id is
# only a second name of the token the JWT already names: it must be that token's own, and it
# authorises nothing by itself.


def refused_everywhere(client, redis_server, path: str, status: int = 401, code: str = "token_invalid") -> None:
    """Every way a path is used refuses it with (status, code), and nothing is written."""
    before = snapshot(redis_server)
    html = {"Accept": "text/html"}
    answers = {
        "POST": client.post(path, json={"score": 1}),
        "GET": client.get(path, params={"score": "1"}),
        "GET page": client.get(path, params={"score": "1"}, headers=html),
        "GET picker": client.get(path, headers=html),
        "HEAD": client.head(path, params={"score": "1"}),
        "info": client.get(f"{path}/info"),
    }
    for how, response in answers.items():
        assert response.status_code == status, (how, path, response.text)
        if how not in ("HEAD", "GET page", "GET picker"):
            assert response.json()["code"] == code, (how, path)
    assert snapshot(redis_server) == before


def test_the_id_in_the_path_must_be_the_tokens_own(fx, client, redis_server):
    a, b = issue_token(client), issue_token(client)
    jwt_a, id_a, jwt_b, id_b = token_of(a), a["id"], token_of(b), b["id"]
    other = uuid.UUID(id_a)
    paths = {
        "a random id": f"{jwt_a}/{uuid.uuid4()}",
        "another live token's id": f"{jwt_a}/{id_b}",
        "moved to another token's id path": f"{jwt_b}/{id_a}",
        "the id one bit off": f"{jwt_a}/{uuid.UUID(int=other.int ^ 1)}",
        "the nil id": f"{jwt_a}/{uuid.UUID(int=0)}",
        "a forged token's id": f"{jwt_a}/{own_id(forge(hdr(fx.active), claims(fx), real(fx)))}",
    }
    for path in paths.values():
        refused_everywhere(client, redis_server, f"{TOKENS}/{path}")
    assert stream_entries(redis_server) == []
    for jwt, token_id in ((jwt_a, id_a), (jwt_b, id_b)):  # neither was consumed, nor harmed
        assert client.post(f"{TOKENS}/{jwt}/{token_id}", json={"score": 1}).status_code == 200
    assert [e["token_id"] for e in stream_entries(redis_server)] == [id_a, id_b]


def test_two_ids_are_not_a_token(client, redis_server):
    id_a, id_b = issue_token(client)["id"], issue_token(client)["id"]
    for path in (f"{id_a}/{id_a}", f"{id_a}/{id_b}", f"{uuid.UUID(id_a).hex}/{id_a}", f"{id_a}/{uuid.uuid4()}"):
        refused_everywhere(client, redis_server, f"{TOKENS}/{path}")
    assert client.post(f"{TOKENS}/{id_a}", json={"score": 1}).status_code == 200  # the id alone: a lookup


def _tampered(fx: Ring, jwt: str, other_jwt: str) -> dict[str, str]:
    """A real token, changed in one place; the signature no longer covers what it says."""
    head, body, sig = jwt.split(".")
    payload = json.loads(tokens.b64decode(body))
    _, other_body, other_sig = other_jwt.split(".")

    def with_payload(**changes: Any) -> str:
        return f"{head}.{b64(compact({**payload, **changes}))}.{sig}"

    def flipped(index: int) -> str:
        raw = bytearray(tokens.b64decode(sig))
        raw[index] ^= 0x01
        return f"{head}.{body}.{b64(bytes(raw))}"

    return {
        "signature-first-bit": flipped(0),
        "signature-last-bit": flipped(-1),
        "signature-of-another-token": f"{head}.{body}.{other_sig}",
        "payload-of-another-token": f"{head}.{other_body}.{sig}",
        "payload-key-changed": with_payload(key="other"),
        "payload-run-changed": with_payload(run=b64(uuid.uuid4().bytes)),
        "payload-exp-extended": with_payload(exp=payload["exp"] + 10**7),
        "payload-byte-appended": f"{head}.{body}A.{sig}",
        "header-kid-of-another-key": f"{b64(compact(hdr(fx.es, alg=fx.active.alg)))}.{body}.{sig}",
        "header-alg-none": f"{b64(compact(hdr(fx.active, alg='none')))}.{body}.{sig}",
        "header-typ-changed": f"{b64(compact(hdr(fx.active, typ='JWT')))}.{body}.{sig}",
        "header-reencoded-with-spaces": f"{b64(json.dumps(hdr(fx.active)).encode())}.{body}.{sig}",
    }


def test_a_tampered_token_under_its_real_id_is_refused(fx, client, redis_server):
    answer, other = issue_token(client), issue_token(client)
    jwt, token_id, other_jwt, other_id = token_of(answer), answer["id"], token_of(other), other["id"]
    for name, tampered in _tampered(fx, jwt, other_jwt).items():
        assert tampered != jwt, name
        refused_everywhere(client, redis_server, f"{TOKENS}/{tampered}/{token_id}")
    # The payload claims the other token's id, under that id: still not signed by anyone.
    head, body, sig = jwt.split(".")
    payload = json.loads(tokens.b64decode(body))
    claimed = {**payload, "jti": b64(uuid.UUID(other_id).bytes)}
    refused_everywhere(client, redis_server, f"{TOKENS}/{head}.{b64(compact(claimed))}.{sig}/{other_id}")
    assert stream_entries(redis_server) == []
    assert client.post(f"{TOKENS}/{jwt}/{token_id}", json={"score": 1}).status_code == 200
    assert client.post(f"{TOKENS}/{other_jwt}/{other_id}", json={"score": 1}).status_code == 200
    assert [e["token_id"] for e in stream_entries(redis_server)] == [token_id, other_id]
