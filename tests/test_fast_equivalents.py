"""Each shortcut on the submit path against the exact path it stands in for (hypothesis).

The submit path takes faster routes than the obvious code (bench/README.md, "per-core speed"):
orjson in front of the strict JSON parser, hiredis encoding Redis commands, a fingerprint's text
written without its encoder, milliseconds formatted from a kept prefix. Each must give what the
obvious code gives, answer or error, for any input; these tests hold them to it. No servers.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import uuid
from typing import Any

import hiredis
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from redis.asyncio.connection import Connection

from app.clock import iso_ms, isoformat
from app.domain import feedback, tokens
from app.domain.feedback import FeedbackConfig, Submission
from app.domain.outcomes import encode_field
from app.errors import InvalidBody
from app.schema import canonical
from app.store.packing import HiredisPacking, fast_packing, packing_class

MANY = settings(max_examples=600, deadline=None, suppress_health_check=[HealthCheck.too_slow])

# JSON values that reach past what orjson reads as it is: integers beyond 64 bits, floats that
# overflow, deep nesting, duplicate keys, escapes, surrogates.
scalars = (
    st.none() | st.booleans() | st.floats(allow_nan=False, allow_infinity=False)
    | st.integers() | st.integers(min_value=-(2**70), max_value=2**70) | st.text(max_size=12)
)
values = st.recursive(
    scalars, lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=4),
    max_leaves=12,
)


def outcome(parse: Any, raw: bytes) -> tuple[str, Any]:
    try:
        return "ok", parse(raw)
    except InvalidBody as err:
        return "error", err.detail


def same(a: tuple[str, Any], b: tuple[str, Any]) -> bool:
    """Equal answers, types and key order included (1 is not 1.0 here, nor True 1)."""
    return a[0] == b[0] and repr(a[1]) == repr(b[1])


def with_duplicate(obj: dict[str, Any], key: str, extra: Any) -> bytes:
    text = json.dumps(obj)
    member = f"{json.dumps(key)}: {json.dumps(extra)}"
    return (text[:-1] + (", " if obj else "") + member + ", " + member + "}").encode()


@MANY
@given(raw=st.binary(max_size=200) | values.map(lambda v: json.dumps(v).encode())
       | values.map(lambda v: json.dumps(v, ensure_ascii=False).encode("utf-8", "surrogatepass"))
       | st.builds(with_duplicate, st.dictionaries(st.text(max_size=5), scalars, max_size=3), st.text(max_size=5),
                   scalars))
@example(raw=b'{"a":1,"a":2}')
@example(raw=b'{"a":{"b":1,"b":2}}')
@example(raw=b'{"a":123456789012345678901234567890}')
@example(raw=b'{"a":-9223372036854775809}')
@example(raw=b'{"a":18446744073709551616}')
@example(raw=b'{"a":1e999}')
@example(raw=b'{"a":"\\ud800"}')
@example(raw=b'{"k\\":":1,"k\\":":2}')
@example(raw=b"\xef\xbb\xbf{}")
@example(raw=b"[" * 40 + b"]" * 40)
@example(raw=b"[" * 2000 + b"]" * 2000)
def test_body_parser_answers_as_the_strict_parser(raw: bytes) -> None:
    assert same(outcome(feedback.loads, raw), outcome(feedback._strict_loads, raw))


@MANY
@given(value=values)
def test_stream_fields_are_what_json_writes(value: Any) -> None:
    expected = value if isinstance(value, str) else json.dumps(value, separators=(",", ":"), ensure_ascii=False)
    assert encode_field(value) == ("" if value is None else expected)


@MANY
@given(score=st.none() | st.integers(-(10**30), 10**30) | st.floats(allow_nan=False, allow_infinity=False),
       rest=st.none() | values)
def test_digest_is_the_hash_of_the_canonical_text(score: Any, rest: Any) -> None:
    for sub in (Submission(score=score), Submission(score=score, value=rest), Submission(score=score, metadata=rest)):
        floated = None if sub.score is None else float(sub.score)
        text = canonical([floated, sub.value, sub.comment, sub.correction, sub.metadata])
        assert sub.digest() == hashlib.sha256(text.encode()).digest()[:16]
        assert sub.fingerprint() == hashlib.sha256(text.encode()).hexdigest()[:32]


@MANY
@given(ms=st.integers(min_value=0, max_value=7_258_118_400_000))  # 1970 to 2200
@example(ms=0)
@example(ms=999)
@example(ms=1_795_803_066_999)
def test_milliseconds_format_as_isoformat_does(ms: int) -> None:
    assert iso_ms(ms) == isoformat(ms / 1000)
    assert iso_ms(ms + 1) == isoformat((ms + 1) / 1000)  # the kept second, then maybe the next


def reference_b64decode(segment: str) -> bytes:
    segment = segment.rstrip("=")
    return base64.urlsafe_b64decode(segment + "=" * (-len(segment) % 4))


def decoded(fn: Any, segment: str) -> Any:
    try:
        return fn(segment)
    except (ValueError, binascii.Error) as err:  # binascii.Error is a ValueError
        return type(err) if isinstance(err, binascii.Error) else ValueError


@MANY
@given(segment=st.text(alphabet="ABCxyz019-_+/=é", max_size=40) | st.binary(max_size=48).map(
    lambda b: base64.urlsafe_b64encode(b).decode()))
def test_base64url_segments_decode_as_the_base64_module_does(segment: str) -> None:
    assert decoded(tokens.b64decode, segment) == decoded(reference_b64decode, segment)


@MANY
@given(raw=st.binary(min_size=16, max_size=16))
def test_uuids_from_bytes_are_uuids(raw: bytes) -> None:
    made, reference = tokens.uuid_from_bytes(raw), uuid.UUID(bytes=raw)
    assert made == reference and hash(made) == hash(reference)
    assert (str(made), made.bytes, made.version, made.is_safe) == (str(reference), reference.bytes,
                                                                    reference.version, reference.is_safe)


def test_uuids_from_bytes_refuse_other_lengths() -> None:
    for raw in (b"", b"x" * 15, b"x" * 17):
        with pytest.raises(ValueError):
            tokens.uuid_from_bytes(raw)


@MANY
@given(claims=st.dictionaries(st.sampled_from(["jti", "iss", "iat", "exp", "run", "key", "cap"]), scalars, max_size=6),
       cfg=st.none() | st.lists(scalars, max_size=4))
def test_token_payloads_read_as_json_does(claims: dict[str, Any], cfg: Any) -> None:
    if cfg is not None:
        claims["cfg"] = cfg
    raw = tokens.dumps_compact(claims)
    assert repr(tokens.loads_payload(raw)) == repr(json.loads(raw))


@MANY
@given(claim=st.tuples(st.sampled_from(["c", "f", "k"]) | scalars, st.lists(scalars, max_size=2)).map(
    lambda parts: [parts[0], *parts[1]]))
@example(claim=["c", 0.0, 0.0])
@example(claim=["c", 0.0, -0.0])
@example(claim=["c", 1, True])
@example(claim=["c", 1, 1.0])
def test_config_claims_cached_or_not_read_the_same(claim: list[Any]) -> None:
    try:
        fresh = FeedbackConfig._from_claim(claim)
    except (ValueError, TypeError) as err:  # malformed: check_claims refuses both
        with pytest.raises(type(err)):
            FeedbackConfig.from_claim(claim)
        return
    for _ in range(2):  # the second time from the cache
        got = FeedbackConfig.from_claim(claim)
        assert got == fresh and repr(got.to_json()) == repr(fresh.to_json())



# Redis commands: hiredis's encoding against redis-py's own, and redis-py's errors where it has them.
arguments = st.lists(
    st.text(max_size=20) | st.binary(max_size=20) | st.integers(-(2**70), 2**70)
    | st.floats(allow_nan=False, allow_infinity=False),
    max_size=12,
)


@MANY
@given(name=st.sampled_from(["EVALSHA", "HGET", "CONFIG GET", "XADD"]), args=arguments)
def test_commands_encode_as_redis_py_encodes_them(name: str, args: list[Any]) -> None:
    plain, packed = Connection(), packing_class(Connection)()
    try:
        expected: Any = b"".join(plain.pack_command(name, *args))
    except UnicodeEncodeError:
        expected = UnicodeEncodeError
    try:
        got: Any = b"".join(packed.pack_command(name, *args))
    except UnicodeEncodeError:
        got = UnicodeEncodeError
    assert got == expected
    if expected is not UnicodeEncodeError:
        both = [(name, *args), ("PING",)]
        assert b"".join(packed.pack_commands(both)) == b"".join(plain.pack_commands(both))


def test_commands_redis_py_refuses_are_refused_the_same_way() -> None:
    from redis.exceptions import DataError

    packed = packing_class(Connection)()
    for bad in (True, None, object()):
        with pytest.raises(DataError):
            packed.pack_command("SET", "k", bad)


def test_fast_packing_gives_the_pool_one_packing_class_per_kind() -> None:
    import redis.asyncio as aioredis

    first = fast_packing(aioredis.Redis.from_url("redis://127.0.0.1:1/0"))
    unix = fast_packing(aioredis.Redis.from_url("unix:///tmp/nothing.sock"))
    again = fast_packing(first)
    assert again.connection_pool.connection_class is first.connection_pool.connection_class
    assert first.connection_pool.connection_class.__mro__[1].__name__ == "HiredisPacking"
    assert issubclass(unix.connection_pool.connection_class, aioredis.UnixDomainSocketConnection)
    assert hiredis.pack_command(("PING",)) == b"*1\r\n$4\r\nPING\r\n"
    latin = fast_packing(aioredis.Redis.from_url("redis://127.0.0.1:1/0?encoding=latin-1"))
    assert not issubclass(latin.connection_pool.connection_class, HiredisPacking)  # redis-py encodes
