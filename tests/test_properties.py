"""Property-based tests (hypothesis) on the token and submission parsers.

Whatever arrives, the answer is a clear 4xx or a success that was due: never a 500, never an
accepted forgery, never a token used twice.
"""

from __future__ import annotations

import json
import math
import uuid
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
from conftest import TOKENS, issue_token, stream_entries, token_of
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.domain import feedback, tokens
from app.domain.feedback import FeedbackConfig
from app.domain.outcomes import encode_field
from app.domain.tokens import TokenClaims
from app.errors import InvalidBody, InvalidFeedback, TokenInvalid
from app.keys.key import Key
from app.keys.keyring import Keyring, KeyringDir

ISSUER = "fbt"
# Function-scoped fixtures (the app, a flushed Redis) are shared by a test's examples on purpose.
HTTP = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
UNIT = settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

B64URL = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_"


@pytest.fixture(scope="module")
def ring(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Keyring]:
    path = tmp_path_factory.mktemp("properties") / "keys"
    directory = KeyringDir(path)
    directory.init()
    directory.new("EdDSA")  # pending: verifies
    directory.new("HS256")  # pending: verifies
    return path, directory.load()


@pytest.fixture
def keys_dir(ring: tuple[Path, Keyring]) -> Path:
    return ring[0]


def signed(key: Key, now: float) -> str:
    claims = TokenClaims(token_id=uuid.uuid4(), run_id=uuid.uuid4(), feedback_key="k", feedback_id=uuid.uuid4(),
                         issued_at=int(now), expires_at=int(now) + 3600,
                         config=FeedbackConfig("continuous", min=0, max=1))
    return tokens.sign(claims, key, ISSUER)


# -- tokens ----------------------------------------------------------------------------------------

segment = st.text(alphabet=B64URL, min_size=0, max_size=120)
json_scalar = st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20)
json_value = st.recursive(json_scalar, lambda inner: st.lists(inner, max_size=4)
                          | st.dictionaries(st.text(max_size=8), inner, max_size=4), max_leaves=12)


@st.composite
def jws_shaped(draw: st.DrawFn, kids: list[str]) -> str:
    """Three base64url segments whose header looks like ours: the forger's best guesses."""
    header: dict[str, Any] = {
        "alg": draw(st.sampled_from(["EdDSA", "ES256", "none", "HS256", "RS256", "Ed25519"]) | st.text(max_size=8)),
        "kid": draw(st.sampled_from(kids) | st.text(max_size=70)),
        "typ": draw(st.sampled_from([tokens.TOKEN_TYPE, "JWT"]) | json_value),
    }
    header.update(draw(st.dictionaries(st.sampled_from(["jku", "jwk", "crit", "x5u", "cty"]), json_value, max_size=2)))
    payload = draw(st.dictionaries(st.sampled_from(["jti", "iss", "iat", "exp", "run", "key", "cfg", "use"])
                                   | st.text(max_size=5), json_value, max_size=8))
    signature = draw(st.binary(max_size=132))
    parts = [tokens.b64encode(json.dumps(header).encode()), tokens.b64encode(json.dumps(payload).encode()),
             tokens.b64encode(signature)]
    return ".".join(parts) + draw(st.sampled_from(["", "=", "=="]))


@UNIT
@given(text=st.text(max_size=3000) | st.builds(".".join, st.lists(segment, min_size=1, max_size=5)))
def test_arbitrary_text_never_verifies(ring, text):
    _, keyring = ring
    with pytest.raises(TokenInvalid):
        tokens.verify(text, keyring, ISSUER, now=1e9, leeway=30)


@UNIT
@given(data=st.data())
def test_forged_jws_never_verifies(ring, data):
    _, keyring = ring
    token = data.draw(jws_shaped(list(keyring.keys)))
    with pytest.raises(TokenInvalid):
        tokens.verify(token, keyring, ISSUER, now=1e9, leeway=30)


@st.composite
def mutation(draw: st.DrawFn, token: str) -> str:
    chars = list(token)
    for _ in range(draw(st.integers(1, 3))):
        kind = draw(st.sampled_from(["replace", "insert", "delete", "append"]))
        at = draw(st.integers(0, len(chars) - 1))
        char = draw(st.sampled_from(B64URL + ".="))
        if kind == "replace":
            chars[at] = char
        elif kind == "insert":
            chars.insert(at, char)
        elif kind == "delete" and len(chars) > 1:
            del chars[at]
        else:
            chars.append(char)
    return "".join(chars)


def equivalent(original: str, other: str) -> bool:
    """Same signed bytes and same signature bytes: the same token, spelled otherwise."""
    a, b = original.split("."), other.rstrip("=").split(".")
    return len(b) == 3 and a[:2] == b[:2] and tokens.b64decode(a[2]) == tokens.b64decode(b[2])


@UNIT
@given(data=st.data(), alg=st.sampled_from(["EdDSA", "ES256", "HS256"]))
def test_mutated_tokens_verify_only_if_nothing_signed_changed(ring, data, alg):
    _, keyring = ring
    key = next(k for k in keyring.keys.values() if k.alg == alg)
    now = 1e9
    original = signed(key, now)
    mutated = data.draw(mutation(original))
    try:
        claims = tokens.verify(mutated, keyring, ISSUER, now=now, leeway=30)
    except TokenInvalid:
        return
    assert equivalent(original, mutated), mutated
    assert claims == tokens.verify(original, keyring, ISSUER, now=now, leeway=30)


@HTTP
@given(data=st.data())
def test_mutated_tokens_are_never_used_twice(client, redis_server, data):
    answer = issue_token(client)
    original = token_of(answer)
    assert client.post(f"{TOKENS}/{original}", json={"score": 1}).status_code == 200
    for _ in range(5):
        mutated = data.draw(mutation(original))
        r = client.post(f"{TOKENS}/{quote(mutated, safe='')}", json={"score": 0})
        assert r.status_code < 500 and not 200 <= r.status_code < 300, (mutated, r.text)
        if r.status_code == 409:
            assert equivalent(original, mutated), mutated
    assert [e["token_id"] for e in stream_entries(redis_server)].count(answer["id"]) == 1


@HTTP
@given(text=st.text(min_size=1, max_size=300))
def test_arbitrary_paths_are_never_accepted(client, redis_server, text):
    url = f"{TOKENS}/{quote(text, safe='')}"
    for r in (client.post(url, json={"score": 1}), client.get(url, params={"score": "1"}, follow_redirects=False)):
        assert r.status_code < 500 and not 200 <= r.status_code < 300, (text, r.status_code, r.text)
    assert stream_entries(redis_server) == []


# -- submissions -----------------------------------------------------------------------------------

# Any character, lone surrogates included (json.dumps writes them as "\udxxx" escapes).
any_char = st.characters() | st.integers(0xD800, 0xDFFF).map(chr)
wild_value = st.recursive(
    st.none() | st.booleans() | st.integers(min_value=-(10**400), max_value=10**400) | st.floats()
    | st.text(alphabet=any_char, max_size=30),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(alphabet=any_char, max_size=6), inner,
                                                                 max_size=4),
    max_leaves=20,
)
body_dict = st.dictionaries(st.sampled_from([*feedback.FIELDS, "do_not_extend_trace_retention", "extra"]),
                            wild_value, max_size=6)
configs = st.sampled_from([
    None,
    FeedbackConfig("continuous", min=0, max=1),
    FeedbackConfig("continuous", min=None, max=None),
    FeedbackConfig("categorical", categories=(feedback.Category(1, "good"), feedback.Category(0, None))),
    FeedbackConfig("freeform"),
])


def wire(body: Any, draw_ascii: bool) -> bytes:
    # json.dumps writes NaN/Infinity for non-finite floats and \\udxxx for lone surrogates
    return json.dumps(body, ensure_ascii=draw_ascii).encode("utf-8", "surrogatepass")


def renders(sub: feedback.Submission) -> None:
    """What the service does with an accepted submission must work: answer, stream, fingerprint."""
    json.dumps(sub.to_json(), allow_nan=False, ensure_ascii=False).encode("utf-8")
    for value in (sub.score, sub.value, sub.comment, sub.correction, sub.metadata):
        encoded = encode_field(value)
        encoded.encode("utf-8")
        if value is not None and not isinstance(value, str):
            json.loads(encoded, parse_constant=lambda c: pytest.fail(f"{c} written to the stream"))
    sub.fingerprint()


@UNIT
@given(raw=st.binary(max_size=300) | body_dict.map(lambda b: wire(b, True)) | body_dict.map(lambda b: wire(b, False)),
       config=configs)
def test_submission_parser_answers_4xx_or_a_submission_that_renders(raw, config):
    try:
        sub = feedback.parse_json(raw)
        sub.check(config)
    except (InvalidBody, InvalidFeedback) as err:
        assert 400 <= err.status < 500
        return
    assert sub.score is None or (not isinstance(sub.score, bool) and math.isfinite(sub.score))
    renders(sub)


@UNIT
@given(params=st.lists(st.tuples(st.sampled_from(["score", "value", "comment", "correction", "metadata", "utm"]),
                                 st.text(max_size=40)), max_size=6),
       config=configs)
def test_link_parser_answers_4xx_or_a_submission_that_renders(params, config):
    try:
        sub = feedback.parse_query(params)
        sub.check(config)
    except (InvalidBody, InvalidFeedback) as err:
        assert 400 <= err.status < 500
        return
    renders(sub)


@HTTP
@given(raw=st.binary(max_size=200) | body_dict.map(lambda b: wire(b, True)), config=configs)
def test_arbitrary_bodies_over_http_are_never_a_500(client, redis_server, raw, config):
    answer = issue_token(client, feedback_config=config.to_json() if config else None)
    r = client.post(f"{TOKENS}/{token_of(answer)}", content=raw, headers={"Content-Type": "application/json"})
    assert r.status_code in (200, 400, 422), r.text
    recorded = [e for e in stream_entries(redis_server) if e["token_id"] == answer["id"]]
    assert len(recorded) == (1 if r.status_code == 200 else 0)
    if r.status_code == 200:
        assert r.json()["duplicate"] is False
        again = client.post(f"{TOKENS}/{token_of(answer)}", content=raw, headers={"Content-Type": "application/json"})
        assert again.status_code == 200 and again.json()["duplicate"] is True
