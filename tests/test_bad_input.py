"""Hostile and broken input (SPEC 3.1, 3.4, 3.5, 4): each gets its clear 4xx, never a 500, and
nothing reaches Redis."""

from __future__ import annotations

import json
import select
import socket
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import layout
import pytest
from conftest import API_KEY, TOKENS, LiveServer, RedisServer, issue_token, stream_entries, token_of

from app.domain import tokens

pytest_plugins = ["support_keys", "support_servers"]  # every test here runs on an ES256 and on an HS256 keyring;
# the ones over the wire (live) under uvicorn and under granian too

AUTH = {"X-API-Key": API_KEY}
JSON = {"Content-Type": "application/json"}
KIB = 1024


def problem(response: httpx.Response, status: int, code: str) -> None:
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/problem+json"
    assert response.json()["code"] == code


def nested(depth: int) -> bytes:
    return b'{"score": 1, "metadata": ' + b'{"a": ' * (depth - 1) + b"1" + b"}" * (depth - 1) + b"}"


# -- submissions: POST bodies -------------------------------------------------------------------

BODY_400: dict[str, bytes] = {
    # not JSON
    "empty": b"",
    "text": b"thanks!",
    "truncated": b'{"score": 1',
    "trailing-garbage": b'{"score": 1}}',
    "trailing-comma": b'{"score": 1,}',
    "single-quotes": b"{'score': 1}",
    "comment": b'// hi\n{"score": 1}',
    "nul-byte": b"\x00",
    "two-documents": b'{"score": 1}{"score": 2}',
    # not UTF-8
    "latin-1": '{"comment": "très bien"}'.encode("latin-1"),
    "utf-16-le": '{"score": 1}'.encode("utf-16-le"),
    "utf-16-bom": '{"score": 1}'.encode("utf-16"),
    "utf-32": '{"score": 1}'.encode("utf-32"),
    "overlong-slash": b'{"comment": "\xc0\xaf"}',
    "raw-surrogate": b'{"comment": "\xed\xa0\x80"}',
    "invalid-byte": b'{"comment": "\xff"}',
    "truncated-sequence": b'{"comment": "\xe2\x82"}',
    "utf-8-bom": b'\xef\xbb\xbf{"score": 1}',
    # lone surrogates written as JSON escapes: valid JSON, but not text
    "escaped-lone-high-surrogate": b'{"comment": "\\ud800"}',
    "escaped-lone-low-surrogate": b'{"value": "a\\udfffb"}',
    "escaped-surrogate-in-key": b'{"score": 1, "metadata": {"\\ud83d": 1}}',
    "escaped-surrogate-deep": b'{"score": 1, "correction": {"a": ["\\udc00"]}}',
    # top level not an object
    "array": b'[{"score": 1}]',
    "string": b'"score"',
    "number": b"1",
    "null": b"null",
    "true": b"true",
    # numbers JSON can't carry, or we won't
    "nan": b'{"score": NaN}',
    "infinity": b'{"score": Infinity}',
    "minus-infinity": b'{"score": -Infinity}',
    "1e999-score": b'{"score": 1e999}',
    "minus-1e999-value": b'{"value": -1e999}',
    "1e999-in-correction": b'{"score": 1, "correction": {"x": 1e999}}',
    "1e999-in-metadata": b'{"score": 1, "metadata": {"x": [1e999]}}',
    "nan-in-metadata": b'{"score": 1, "metadata": {"x": NaN}}',
    "5000-digit-score": b'{"score": ' + b"9" * 5000 + b"}",
    "5000-digit-in-metadata": b'{"score": 1, "metadata": {"n": ' + b"1" * 5000 + b"}}",
    # nesting
    "nested-33": nested(33),
    "nested-10000-arrays": b'{"score": 1, "value": {"a": ' + b"[" * 10_000 + b"]" * 10_000 + b"}}",
    "nested-6000-objects": b'{"a":' * 6_000 + b"1" + b"}" * 6_000,
    # duplicate keys, anywhere
    "duplicate-score": b'{"score": 1, "score": 0}',
    "duplicate-in-metadata": b'{"score": 1, "metadata": {"a": 1, "a": 2}}',
    "duplicate-in-correction": b'{"correction": {"text": "x", "text": "y"}}',
    "duplicate-null-and-value": b'{"comment": null, "comment": "x"}',
    # wrong types, field by field
    "score-string": b'{"score": "1"}',
    "score-list": b'{"score": [1]}',
    "score-object": b'{"score": {"v": 1}}',
    "comment-number": b'{"comment": 5}',
    "comment-bool": b'{"comment": true}',
    "comment-list": b'{"comment": ["a"]}',
    "comment-object": b'{"comment": {"a": "b"}}',
    "correction-number": b'{"correction": 3}',
    "correction-bool": b'{"correction": false}',
    "correction-list": b'{"correction": ["x"]}',
    "metadata-string": b'{"score": 1, "metadata": "m"}',
    "metadata-list": b'{"score": 1, "metadata": [1]}',
    "metadata-number": b'{"score": 1, "metadata": 5}',
    "metadata-bool": b'{"score": 1, "metadata": true}',
    "value-list": b'{"value": [1]}',
    "value-empty-list": b'{"value": []}',
}

BODY_422: dict[str, Any] = {
    "nothing": {},
    "all-null": {"score": None, "value": None, "comment": None, "correction": None, "metadata": None},
    "only-metadata": {"metadata": {"a": 1}},
    "only-langsmith-flag": {"do_not_extend_trace_retention": True},
    "unknown-field": {"score": 1, "rating": 5},
    "unknown-capitalised": {"Score": 1},
    "unknown-run-id": {"score": 1, "run_id": str(uuid.uuid4())},
    "unknown-feedback-key": {"score": 1, "feedback_key": "other"},
    "unknown-id": {"score": 1, "id": str(uuid.uuid4())},
    "score-beyond-float": {"score": 10**400},
    "comment-4097-bytes": {"comment": "x" * (4 * KIB + 1)},
    "comment-2049-two-byte-chars": {"comment": "é" * 2049},  # 2049 characters, 4098 bytes
    "correction-string-over-16-kib": {"correction": "c" * (16 * KIB + 1)},
    "correction-object-over-16-kib": {"correction": {"text": "c" * (16 * KIB)}},
    "metadata-over-8-kib": {"score": 1, "metadata": {"k": "v" * (8 * KIB)}},
    "value-string-over-16-kib": {"value": "v" * (16 * KIB + 1)},
    "value-object-over-16-kib": {"value": {"v": "v" * (16 * KIB)}},
}

CONTENT_TYPES_415 = [
    "text/html",
    "multipart/form-data; boundary=x",
    "application/xml",
    "text/xml",
    "application/octet-stream",
    "image/png",
    "application/jsonx",
    "json",
    "application/javascript",
]
CONTENT_TYPES_OK = [None, "application/json", "application/json; charset=utf-8", "APPLICATION/JSON",
                    "text/plain;charset=UTF-8", "application/merge-patch+json"]


@pytest.fixture
def keys_dir(signing_keys: Path) -> Path:
    return signing_keys  # no test here changes the keyring: one for the module (and algorithm)


@pytest.fixture
def token(issue) -> str:
    return token_of(issue())


@pytest.mark.parametrize("name", sorted(BODY_400))
def test_malformed_bodies_are_400(client, token, redis_server, name):
    problem(client.post(f"{TOKENS}/{token}", content=BODY_400[name], headers=JSON), 400, "invalid_body")
    assert stream_entries(redis_server) == []
    assert client.post(f"{TOKENS}/{token}", json={"score": 1}).status_code == 200  # not consumed


@pytest.mark.parametrize("name", sorted(BODY_422))
def test_unacceptable_feedback_is_422(client, token, redis_server, name):
    problem(client.post(f"{TOKENS}/{token}", json=BODY_422[name]), 422, "invalid_feedback")
    assert stream_entries(redis_server) == []


def test_size_caps_are_exact_and_in_bytes(client, issue, redis_server):
    at_cap = [
        {"comment": "x" * (4 * KIB)},
        {"comment": "é" * (2 * KIB)},
        {"correction": "c" * (16 * KIB)},
        {"score": 1, "metadata": {"k": "v" * (8 * KIB - len('{"k":""}'))}},
        {"value": "v" * (16 * KIB)},
    ]
    for body in at_cap:
        r = client.post(f"{TOKENS}/{token_of(issue())}", json=body)
        assert r.status_code == 200, (list(body), r.text)
    assert len(stream_entries(redis_server)) == len(at_cap)


@pytest.mark.parametrize("content_type", CONTENT_TYPES_415)
def test_wrong_content_types_are_415(client, token, redis_server, content_type):
    r = client.post(f"{TOKENS}/{token}", content=b'{"score": 1}', headers={"Content-Type": content_type})
    problem(r, 415, "unsupported_media_type")
    assert stream_entries(redis_server) == []


@pytest.mark.parametrize("content_type", CONTENT_TYPES_OK)
def test_json_content_types_are_taken(client, token, content_type):
    # text/plain is what a page can send without a CORS preflight; it must still be JSON.
    headers = {} if content_type is None else {"Content-Type": content_type}
    assert client.post(f"{TOKENS}/{token}", content=b'{"score": 1}', headers=headers).status_code == 200


def test_over_64_kib_is_413_with_and_without_content_length(client, token, redis_server):
    body = json.dumps({"score": 1, "value": {"pad": "x" * (64 * KIB)}}).encode()
    problem(client.post(f"{TOKENS}/{token}", content=body, headers=JSON), 413, "body_too_large")

    def chunks() -> Iterator[bytes]:  # no Content-Length: Transfer-Encoding chunked
        yield b'{"score": 1, "value": "'
        for _ in range(1024):
            yield b"x" * KIB
        yield b'"}'

    # (That the server stops reading early is shown over a real socket, at the end of this module.)
    problem(client.post(f"{TOKENS}/{token}", content=chunks(), headers=JSON), 413, "body_too_large")
    problem(client.post(f"{TOKENS}/{token}", content=b" " * (64 * KIB + 1), headers=JSON), 413, "body_too_large")
    assert stream_entries(redis_server) == []
    assert client.post(f"{TOKENS}/{token}", content=b" " * (64 * KIB - 12) + b'{"score": 1}',
                       headers=JSON).status_code == 200


FORM = {"Content-Type": "application/x-www-form-urlencoded"}
FORM_BAD: dict[str, tuple[bytes, int, str]] = {
    # The plain HTML form of the service's own pages: fields as in a link.
    "not-utf-8": (b"score=1&comment=\xff\xfe", 400, "invalid_body"),
    "too-many-fields": (b"&".join(b"f%d=1" % i for i in range(65)) + b"&score=1", 400, "invalid_body"),
    "score-word": (b"score=abc", 400, "invalid_body"),
    "score-inf": (b"score=inf", 422, "invalid_feedback"),
    "metadata": (b"score=1&metadata=%7B%7D", 422, "invalid_feedback"),
    "nothing": (b"lang=en", 422, "invalid_feedback"),
    "comment-over-4-kib": (b"comment=" + b"x" * (4 * KIB + 1), 422, "invalid_feedback"),
    "over-64-kib": (b"score=1&pad=" + b"x" * (64 * KIB), 413, "body_too_large"),
}


@pytest.mark.parametrize("name", sorted(FORM_BAD))
def test_malformed_forms_are_refused(client, token, redis_server, name):
    body, status, code = FORM_BAD[name]
    problem(client.post(f"{TOKENS}/{token}", content=body, headers=FORM), status, code)
    assert stream_entries(redis_server) == []


# -- submissions: GET links -----------------------------------------------------------------------

QUERY_400 = {
    "score-word": {"score": "abc"},
    "score-hex": {"score": "0x10"},
    "score-5000-digits": {"score": "9" * 5000},
    "score-two-numbers": {"score": "1,2"},
    "score-empty-brackets": {"score": "[]"},
}
QUERY_422 = {
    "score-nan": {"score": "nan"},
    "score-inf": {"score": "inf"},
    "score-minus-infinity": {"score": "-Infinity"},
    "score-1e999": {"score": "1e999"},
    "metadata": {"score": "1", "metadata": "{}"},
    "metadata-empty": {"score": "1", "metadata": ""},
    "nothing": {"utm_source": "mail"},
    "all-empty": {"score": "", "value": "", "comment": "", "correction": ""},
    "comment-over-4-kib": {"comment": "x" * (4 * KIB + 1)},
    "correction-over-16-kib": {"correction": "c" * (16 * KIB + 1)},
}


@pytest.mark.parametrize("name", sorted(QUERY_400))
def test_malformed_links_are_400(client, token, redis_server, name):
    problem(client.get(f"{TOKENS}/{token}", params=QUERY_400[name]), 400, "invalid_body")
    assert stream_entries(redis_server) == []


@pytest.mark.parametrize("name", sorted(QUERY_422))
def test_unacceptable_links_are_422(client, token, redis_server, name):
    problem(client.get(f"{TOKENS}/{token}", params=QUERY_422[name]), 422, "invalid_feedback")
    assert stream_entries(redis_server) == []


def test_undecodable_query_bytes_are_not_a_500(client, token, redis_server):
    r = client.get(f"{TOKENS}/{token}?score=1&comment=%FF%FE%ED%A0%80")
    assert r.status_code == 200  # decoded with replacement characters: text, storable
    assert "\ufffd" in stream_entries(redis_server)[0]["comment"]


# -- the token URL's path ----------------------------------------------------------------------------
# As issued: <jwt>/<token id>. The last segment must be a token id (36 characters with dashes, or
# 32 hex digits); more segments are no route at all.

NOT_AN_ID: dict[str, Any] = {
    "word": lambda jwt, tid: "x",
    "one-char-short": lambda jwt, tid: tid[:-1],
    "one-char-long": lambda jwt, tid: tid + "0",
    "not-hex": lambda jwt, tid: "g" + tid[1:],
    "braces": lambda jwt, tid: "{" + tid + "}",
    "urn": lambda jwt, tid: f"urn:uuid:{tid}",
    "base64url-of-the-id": lambda jwt, tid: tokens.b64encode(uuid.UUID(tid).bytes),
    "the-jwt-again": lambda jwt, tid: jwt,
    "id-with-space": lambda jwt, tid: f"%20{tid}",
    "id-with-nul": lambda jwt, tid: f"{tid}%00",
    "id-with-newline": lambda jwt, tid: f"{tid}%0A",
    "int": lambda jwt, tid: str(uuid.UUID(tid).int),
}
NO_ROUTE: dict[str, Any] = {
    "extra-segment": lambda jwt, tid: f"{jwt}/{tid}/x",
    "id-twice": lambda jwt, tid: f"{jwt}/{tid}/{tid}",
    "segment-before": lambda jwt, tid: f"x/{jwt}/{tid}",
    "after-info": lambda jwt, tid: f"{jwt}/{tid}/info/x",
    "empty-segment-between": lambda jwt, tid: f"{jwt}//{tid}",
}


@pytest.mark.parametrize("name", sorted(NOT_AN_ID))
def test_a_last_segment_that_is_not_a_token_id_is_401(client, issue, redis_server, name):
    answer = issue()
    jwt = token_of(answer)
    path = f"{TOKENS}/{jwt}/{NOT_AN_ID[name](jwt, answer['id'])}"
    problem(client.post(path, json={"score": 1}), 401, "token_invalid")
    problem(client.get(path, params={"score": "1"}), 401, "token_invalid")
    assert client.head(path, params={"score": "1"}).status_code == 401
    assert stream_entries(redis_server) == []
    assert client.post(f"{TOKENS}/{jwt}/{answer['id']}", json={"score": 1}).status_code == 200  # not consumed


@pytest.mark.parametrize("name", sorted(NO_ROUTE))
def test_more_segments_are_no_route(client, issue, redis_server, name):
    answer = issue()
    path = f"{TOKENS}/{NO_ROUTE[name](token_of(answer), answer['id'])}"
    for response in (client.post(path, json={"score": 1}), client.get(path, params={"score": "1"})):
        problem(response, 404, "not_found")
    assert stream_entries(redis_server) == []


def test_the_info_segment_takes_no_submission(client, issue, redis_server):
    answer = issue()
    jwt, tid = token_of(answer), answer["id"]
    problem(client.post(f"{TOKENS}/{jwt}/{tid}/info", json={"score": 1}), 405, "method_not_allowed")
    problem(client.post(f"{TOKENS}/{jwt}/info", json={"score": 1}), 401, "token_invalid")  # not an id
    assert stream_entries(redis_server) == []
    assert client.get(f"{TOKENS}/{jwt}/{tid}/info").json()["uses"] == 0


def test_revocation_is_by_id_alone(client, issue, redis_server):
    answer = issue()
    path = f"{TOKENS}/{token_of(answer)}/{answer['id']}"
    problem(client.delete(path, headers=AUTH), 405, "method_not_allowed")
    assert client.get(f"{path}/info").json()["status"] == "active"


def test_a_trailing_slash_redirects_to_the_url_itself(client, issue, redis_server):
    """Starlette's redirect to the path without the slash: nothing is read or recorded on the way."""
    answer = issue()
    path = f"{TOKENS}/{token_of(answer)}/{answer['id']}"
    for method in ("GET", "HEAD", "POST"):
        r = client.request(method, f"{path}/", follow_redirects=False)
        assert r.status_code == 307 and r.headers["location"] == f"http://testserver{path}", method
    assert stream_entries(redis_server) == []
    assert client.post(f"{path}/", json={"score": 1}).status_code == 200  # the redirect keeps the POST


# -- issuance ------------------------------------------------------------------------------------

RUN = "6f1c0b0e-2b9c-4c1e-9a57-3f1f2d9d8e11"
GOOD = {"run_id": RUN, "feedback_key": "k"}
ISSUE_422: dict[str, Any] = {
    "run-id-missing": {"feedback_key": "k"},
    "run-id-null": {**GOOD, "run_id": None},
    "run-id-word": {**GOOD, "run_id": "run-1"},
    "run-id-number": {**GOOD, "run_id": 123},
    "run-id-too-long": {**GOOD, "run_id": RUN + "0"},
    "key-missing": {"run_id": RUN},
    "key-empty": {**GOOD, "feedback_key": ""},
    "key-129": {**GOOD, "feedback_key": "k" * 129},
    "key-newline": {**GOOD, "feedback_key": "a\nb"},
    "key-nul": {**GOOD, "feedback_key": "a\u0000b"},
    "key-del": {**GOOD, "feedback_key": "a\u007fb"},
    "key-c1-control": {**GOOD, "feedback_key": "a\u0085b"},
    "key-number": {**GOOD, "feedback_key": 5},
    "key-list": {**GOOD, "feedback_key": ["k"]},
    "expires-in-negative": {**GOOD, "expires_in": {"days": -1}},
    "expires-in-fraction": {**GOOD, "expires_in": {"hours": 1.5}},
    "expires-in-string": {**GOOD, "expires_in": {"minutes": "5"}},
    "expires-in-bool": {**GOOD, "expires_in": {"days": True}},
    "expires-in-weeks": {**GOOD, "expires_in": {"weeks": 1}},
    "expires-in-zero": {**GOOD, "expires_in": {"days": 0, "hours": 0, "minutes": 0}},
    "expires-in-empty": {**GOOD, "expires_in": {}},
    "expires-in-text": {**GOOD, "expires_in": "3h"},
    "expires-in-huge": {**GOOD, "expires_in": {"days": 10**7}},
    "expires-in-beyond-max": {**GOOD, "expires_in": {"days": 31}},
    "expires-at-word": {**GOOD, "expires_at": "tomorrow"},
    "expires-at-past": {**GOOD, "expires_at": "2000-01-01T00:00:00Z"},
    "expires-at-impossible-date": {**GOOD, "expires_at": "2030-13-45T00:00:00"},
    "expires-at-number": {**GOOD, "expires_at": 1_900_000_000},
    "expires-at-far-future": {**GOOD, "expires_at": "9999-12-31T23:59:59Z"},
    "expires-at-long-string": {**GOOD, "expires_at": "2030-01-01T00:00:00" + "0" * 100},
    "expires-both": {**GOOD, "expires_in": {"hours": 1}, "expires_at": "2030-01-01T00:00:00Z"},
    "config-string": {**GOOD, "feedback_config": "continuous"},
    "config-unknown-type": {**GOOD, "feedback_config": {"type": "stars"}},
    "config-min-over-max": {**GOOD, "feedback_config": {"type": "continuous", "min": 2, "max": 1}},
    "config-min-string": {**GOOD, "feedback_config": {"type": "continuous", "min": "0"}},
    "config-min-bool": {**GOOD, "feedback_config": {"type": "continuous", "min": False}},
    "config-max-beyond-float": {**GOOD, "feedback_config": {"type": "continuous", "max": 10**400}},
    "config-extra-field": {**GOOD, "feedback_config": {"type": "freeform", "min": 1}},
    "config-no-categories": {**GOOD, "feedback_config": {"type": "categorical", "categories": []}},
    "config-101-categories": {**GOOD, "feedback_config": {"type": "categorical",
                                                          "categories": [{"value": i} for i in range(101)]}},
    "config-duplicate-values": {**GOOD, "feedback_config": {"type": "categorical",
                                                            "categories": [{"value": 1}, {"value": 1.0}]}},
    "config-duplicate-labels": {**GOOD, "feedback_config": {
        "type": "categorical", "categories": [{"value": 1, "label": "a"}, {"value": 2, "label": "a"}]}},
    "config-empty-label": {**GOOD, "feedback_config": {"type": "categorical",
                                                       "categories": [{"value": 1, "label": ""}]}},
    "config-label-257": {**GOOD, "feedback_config": {"type": "categorical",
                                                     "categories": [{"value": 1, "label": "l" * 257}]}},
    "config-category-value-bool": {**GOOD, "feedback_config": {"type": "categorical",
                                                               "categories": [{"value": True}]}},
    "config-multiple-categories": {**GOOD, "feedback_config": {
        "type": "categorical", "categories": [{"value": 1}], "allows_multiple_categories": True}},
    "config-token-over-2000": {**GOOD, "feedback_config": {
        "type": "categorical", "categories": [{"value": i, "label": f"label number {i:03}"} for i in range(90)]}},
    "id-word": {**GOOD, "id": "x"},
    "id-number": {**GOOD, "id": 5},
    "unknown-field": {**GOOD, "foo": 1},
    "top-level-string": "token please",
    "top-level-number": 5,
    "top-level-null": None,
    "batch-empty": [],
    "batch-101": [GOOD] * 101,
    "batch-of-numbers": [1],
    "batch-one-bad": [GOOD, {**GOOD, "run_id": "x"}],
    "batch-nested": [[GOOD]],
}
ISSUE_400: dict[str, bytes] = {
    "not-json": b"run_id=1",
    "1e999": b'{"run_id": "%s", "feedback_key": "k", "feedback_config": {"type": "continuous", "max": 1e999}}'
    % RUN.encode(),
    "lone-surrogate-key": b'{"run_id": "%s", "feedback_key": "\\ud800"}' % RUN.encode(),
    "duplicate-run-id": b'{"run_id": "%s", "run_id": "x", "feedback_key": "k"}' % RUN.encode(),
    "not-utf-8": b'{"run_id": "%s", "feedback_key": "\xe9"}' % RUN.encode(),
    "nested-deep": b"[" * 40 + b"]" * 40,
}


def nothing_stored(server: RedisServer) -> bool:
    return layout.data_keys(server.client()) == []


@pytest.mark.parametrize("name", sorted(ISSUE_422))
def test_invalid_issuance_is_422(client, redis_server, name):
    r = client.post(TOKENS, content=json.dumps(ISSUE_422[name]), headers={**AUTH, **JSON})
    problem(r, 422, "invalid_request")
    assert nothing_stored(redis_server)


@pytest.mark.parametrize("name", sorted(ISSUE_400))
def test_malformed_issuance_is_400(client, redis_server, name):
    problem(client.post(TOKENS, content=ISSUE_400[name], headers={**AUTH, **JSON}), 400, "invalid_body")
    assert nothing_stored(redis_server)


def test_issuance_refuses_wrong_types_size_and_keys(client, redis_server):
    problem(client.post(TOKENS, content=json.dumps(GOOD), headers={**AUTH, "Content-Type": "text/html"}),
            415, "unsupported_media_type")
    big = json.dumps([{**GOOD, "feedback_key": "k" * 128, "pad": "x" * 3000}] * 100).encode()
    assert len(big) > 256 * KIB
    problem(client.post(TOKENS, content=big, headers={**AUTH, **JSON}), 413, "body_too_large")
    for key in ("", API_KEY.upper(), API_KEY[:-1], API_KEY + "x", f" {API_KEY}x", "second-key\u00e9".encode()):
        problem(client.post(TOKENS, json=GOOD, headers={"X-API-Key": key}), 401, "unauthorized")
    assert nothing_stored(redis_server)


def test_list_and_revoke_refuse_bad_parameters(client, redis_server):
    for params in ({}, {"run_id": "x"}, {"run_id": RUN, "limit": "0"}, {"run_id": RUN, "limit": "101"},
                   {"run_id": RUN, "limit": "1e2"}, {"run_id": RUN, "offset": "-1"},
                   {"run_id": RUN, "offset": "9" * 5000}):
        problem(client.get(TOKENS, params=params, headers=AUTH), 422, "invalid_request")
    for token_id in ("x", "0" * 31, RUN + "0", "../" + RUN):
        r = client.delete(f"{TOKENS}/{token_id}", headers=AUTH)
        assert r.status_code == 404, token_id
    assert nothing_stored(redis_server)


# -- over the wire: the body cap is enforced while the body streams in ---------------------------


@pytest.fixture(scope="module")
def live(signing_keys: Path, any_server: str) -> Iterator[tuple[LiveServer, RedisServer]]:
    own = RedisServer().start()
    env = {"REDIS_URL": own.url, "FEEDBACK_KEYS_DIR": str(signing_keys), "FEEDBACK_API_KEYS": API_KEY}
    server = LiveServer(env, server=any_server)
    try:
        yield server, own
    finally:
        server.stop()
        own.cleanup()


def raw_request(server: LiveServer, head: str, chunks: Iterator[bytes]) -> tuple[bytes, int]:
    """Send a request head, then chunks for as long as the server has not answered; never end
    the body. Return the answer and how many body bytes went out before it came."""
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as sock:
        sock.sendall(head.encode())
        sent = 0
        for chunk in chunks:
            if select.select([sock], [], [], 0)[0]:
                break  # the answer is in
            try:
                sock.sendall(chunk)
            except (BrokenPipeError, ConnectionResetError, TimeoutError):
                break  # the server stopped reading: also an answer
            sent += len(chunk)
        answer = b""
        while b"\r\n\r\n" not in answer:
            part = sock.recv(65536)  # the 10 s socket timeout bounds a server that never answers
            if not part:
                break
            answer += part
        return answer, sent


def test_endless_chunked_body_is_refused_while_it_streams(live):
    live, _ = live
    with httpx.Client(base_url=live.url) as http:
        token = token_of(issue_token(http, run_id=RUN))
    head = (f"POST {TOKENS}/{token} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            "Transfer-Encoding: chunked\r\n\r\n")
    chunk = b"1000\r\n" + b"x" * 4096 + b"\r\n"
    # Up to 64 MiB, and the body never ends (no terminating chunk): a server that reads the whole
    # body before judging it would never answer.
    answer, sent = raw_request(live, head, iter([chunk] * (16 * KIB)))
    assert answer.startswith(b"HTTP/1.1 413 "), answer[:200]
    assert sent < 64 * KIB * KIB
    assert b"body_too_large" in answer or b"content-length" in answer.lower()
    assert httpx.post(f"{live.url}{TOKENS}/{token}", json={"score": 1}).status_code == 200  # not consumed


def test_announced_oversize_body_is_refused_before_it_is_sent(live):
    live, _ = live
    with httpx.Client(base_url=live.url) as http:
        token = token_of(issue_token(http, run_id=RUN))
    head = (f"POST {TOKENS}/{token} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
            f"Content-Length: {10**12}\r\n\r\n")
    answer, sent = raw_request(live, head, iter([]))  # not one body byte
    assert answer.startswith(b"HTTP/1.1 413 ") and sent == 0, answer[:200]


def test_link_query_over_64_kib_is_refused(live):
    # Longer than client libraries send (httpx caps URLs at 64 KiB), so over a raw socket. The
    # server refuses a request line this long itself (uvicorn 400, granian 414 URI Too Long); the
    # app's own 413 is the second line.
    live, own = live
    with httpx.Client(base_url=live.url) as http:
        issued = issue_token(http, run_id=RUN)
    token = token_of(issued)
    for accept in ("application/json", "text/html"):
        head = (f"GET {TOKENS}/{token}?score=1&utm={'x' * (64 * KIB)} HTTP/1.1\r\nHost: x\r\n"
                f"Accept: {accept}\r\nConnection: close\r\n\r\n")
        answer, _ = raw_request(live, head, iter([]))
        assert answer.startswith((b"HTTP/1.1 400 ", b"HTTP/1.1 413 ", b"HTTP/1.1 414 ")), answer[:200]
    assert [e for e in stream_entries(own) if e["token_id"] == issued["id"]] == []
    assert httpx.get(f"{live.url}{TOKENS}/{token}", params={"score": "1"}).status_code == 200


def test_percent_encoded_paths_over_the_wire(live):
    """As a real server decodes them (once): an encoded slash separates the JWT from the id like
    a plain one; doubly encoded, it is part of the segment, which is then no token."""
    live, own = live
    with httpx.Client(base_url=live.url) as http:
        issued = issue_token(http, run_id=RUN)
    jwt, tid = token_of(issued), issued["id"]

    def post(path: str, score: int = 1) -> httpx.Response:
        # httpx would normalise some escapes: send the path bytes exactly as written.
        with socket.create_connection(("127.0.0.1", live.port), timeout=10) as sock:
            body = json.dumps({"score": score}).encode()
            sock.sendall(f"POST {TOKENS}/{path} HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                         f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n".encode() + body)
            raw = b""
            while chunk := sock.recv(65536):
                raw += chunk
        head, _, payload = raw.partition(b"\r\n\r\n")
        return httpx.Response(int(head.split()[1]), content=payload)

    for path in (f"{jwt}%252F{tid}", f"{jwt}%2F{uuid.uuid4()}", f"{jwt}/{tid}%252Finfo", f"{jwt}%2F%2F{tid}"):
        r = post(path)
        assert r.status_code in (401, 404), (path, r.content)
        assert r.json()["code"] == ("token_invalid" if r.status_code == 401 else "not_found")
    assert [e for e in stream_entries(own) if e["token_id"] == tid] == []
    r = post(f"{jwt}%2F{tid}")  # the same token as <jwt>/<id>
    assert r.status_code == 200 and r.json()["duplicate"] is False
    for path in (f"{jwt}/{tid}", f"{jwt.replace('.', '%2E')}%2F{tid.replace('-', '%2d')}", f"{tid}", jwt):
        assert post(path).json()["duplicate"] is True, path
        assert post(path, score=0).json()["code"] == "token_used", path
    assert len([e for e in stream_entries(own) if e["token_id"] == tid]) == 1
