"""schemathesis against ``/openapi.json`` of a live server: no 500s, and every answer matches the
document (status codes, content types, bodies).

Random path tokens would only ever meet the signature check, so for the token operations half of
the examples carry a freshly issued token instead: the submission then reaches validation, the
store and the 200 answer, whose shape is checked too.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from conftest import API_KEY, TOKENS, LiveServer, RedisServer, issue_token, token_of
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from app.keys.keyring import KeyringDir

AUTH = {"X-API-Key": API_KEY}
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance, response_schema_conformance]
EXAMPLES = 30


@pytest.fixture(scope="module")
def api(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveServer, Any]]:
    own = RedisServer().start()
    keys = tmp_path_factory.mktemp("fuzz") / "keys"
    KeyringDir(keys).init()
    live = LiveServer({"REDIS_URL": own.url, "FEEDBACK_KEYS_DIR": str(keys), "FEEDBACK_API_KEYS": API_KEY,
                       "FEEDBACK_REDIRECT_ORIGINS": "https://app.example.com"})
    try:
        yield live, schemathesis.openapi.from_url(f"{live.url}/openapi.json")
    finally:
        live.stop()
        own.cleanup()


def operations() -> list[tuple[str, str, GenerationMode]]:
    """Every operation with valid data; with invalid data, those that take a body or query (a
    bare string path parameter has no invalid value)."""
    from app.http.openapi import DOCUMENT

    cases = []
    for path, item in DOCUMENT["paths"].items():
        for method, op in item.items():
            if method == "parameters":
                continue
            cases.append((path, method, GenerationMode.POSITIVE))
            if "requestBody" in op or any(p["in"] == "query" for p in op.get("parameters", [])):
                cases.append((path, method, GenerationMode.NEGATIVE))
    return cases


KINDS: list[dict[str, Any]] = [
    {},
    {"feedback_config": {"type": "continuous", "min": 0, "max": 1}},
    {"feedback_config": {"type": "freeform"}},
    {"feedback_config": {"type": "categorical", "categories": [{"value": 1, "label": "good"}, {"value": 0}]}},
    {"confirm": True},
    {"use": "update"},
    {"use": "many", "max_uses": 2},
    {"redirect_url": "https://app.example.com/thanks"},
]
# What clients send: JSON, or a browser's Accept (then submissions answer with pages).
ACCEPTS = ["application/json", "*/*", "text/html,application/xhtml+xml,*/*;q=0.8"]


@pytest.mark.parametrize(("path", "method", "mode"), operations(), ids=lambda v: getattr(v, "value", v))
def test_api_matches_its_openapi_document(api, path, method, mode):
    live, schema = api
    operation = schema[path][method.upper()]
    seen: set[int] = set()

    @settings(max_examples=EXAMPLES, deadline=None, database=None,
              suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode), real=st.sampled_from([None, *range(len(KINDS))]),
           accept=st.sampled_from(ACCEPTS))
    def run(case: schemathesis.Case, real: int | None, accept: str) -> None:
        if "token" in (case.path_parameters or {}) and real is not None:
            with httpx.Client(base_url=live.url) as http:
                answer = issue_token(http, **KINDS[real])
            case.path_parameters["token"] = answer["id"] if method == "delete" else token_of(answer)
            if "token_id" in case.path_parameters:
                case.path_parameters["token_id"] = answer["id"]
        response = case.call(base_url=live.url, headers={**AUTH, "Accept": accept}, timeout=10,
                             allow_redirects=False)
        seen.add(response.status_code)
        case.validate_response(response, checks=CHECKS)

    run()
    assert seen and all(status < 500 for status in seen)


HTML = "text/html,application/xhtml+xml,*/*;q=0.8"
FORM = "application/x-www-form-urlencoded"
JSON = "application/json"
# Answers random data rarely reaches: each token kind, each way a person or a client uses it.
SCENARIOS: list[tuple[str, dict[str, Any], str, str, dict[str, Any]]] = [
    # (name, token kind, method, Accept, case fields)
    ("confirm-json", {"confirm": True}, "GET", "application/json", {"query": {"value": "x"}}),
    ("confirm-page", {"confirm": True}, "GET", HTML, {"query": {"score": "1"}}),
    ("picker-page", {}, "GET", HTML, {}),
    ("link-json", {}, "GET", "application/json", {"query": {"score": "1", "utm_source": "mail"}}),
    ("link-page", {}, "GET", HTML, {"query": {"score": "1"}}),
    ("link-redirect", {"redirect_url": "https://app.example.com/thanks"}, "GET", HTML, {"query": {"score": "1"}}),
    ("form-redirect", {"redirect_url": "https://app.example.com/thanks"}, "POST", HTML,
     {"body": {"score": "1"}, "media_type": FORM}),
    ("form-page", {"confirm": True}, "POST", HTML, {"body": {"score": "1"}, "media_type": FORM}),
    ("form-json", {}, "POST", "application/json", {"body": {"score": "1"}, "media_type": FORM}),
    ("update", {"use": "update"}, "POST", "application/json", {"body": {"score": 1}, "media_type": JSON}),
    ("many", {"use": "many", "max_uses": 2}, "POST", "application/json", {"body": {"score": 1}, "media_type": JSON}),
    ("revoked-page", {"revoked": True}, "GET", HTML, {"query": {"score": "1"}}),
    ("revoked-json", {"revoked": True}, "POST", "application/json", {"body": {"score": 1}, "media_type": JSON}),
    ("prefetch", {}, "GET", HTML, {"query": {"score": "1"}, "headers": {"Sec-Purpose": "prefetch"}}),
    ("info-update", {"use": "update"}, "GET-info", "application/json", {}),
]


@pytest.mark.parametrize("form", ["jwt/id", "jwt"])
@pytest.mark.parametrize("scenario", SCENARIOS, ids=[s[0] for s in SCENARIOS])
def test_every_kind_of_answer_matches_the_document(api, scenario, form):
    """Under the URL as issued (``<jwt>/<token id>``) and the older form (``<jwt>``)."""
    live, schema = api
    name, kind, method, accept, fields = scenario
    with httpx.Client(base_url=live.url) as http:
        answer = issue_token(http, **{k: v for k, v in kind.items() if k != "revoked"})
    if kind.get("revoked"):
        assert httpx.delete(f"{live.url}{TOKENS}/{answer['id']}", headers=AUTH).status_code == 204
    params = {"token": token_of(answer), **({"token_id": answer["id"]} if form == "jwt/id" else {})}
    path = "/api/v1/feedback/tokens/" + "/".join(f"{{{p}}}" for p in params)
    path += "/info" if method == "GET-info" else ""
    operation = schema[path][method.split("-")[0]]
    case = operation.Case(path_parameters=params, **{k: v for k, v in fields.items() if k != "headers"})
    for _ in range(2 if name in ("update", "many") else 1):  # a second use: revision 2, or a new feedback
        response = case.call(base_url=live.url, headers={**AUTH, "Accept": accept, **fields.get("headers", {})},
                             timeout=10,
                             allow_redirects=False)
        assert response.status_code < 500, response.text
        case.validate_response(response, checks=CHECKS)
