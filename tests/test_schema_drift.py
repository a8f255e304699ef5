"""The drift test (issue 15): the OpenAPI document and the service agree on every documented
request. Whatever the document accepts, the service accepts (schemathesis's
``positive_data_acceptance``, 2xx only); whatever it refuses, the service refuses
(``negative_data_rejection``, 400, 413, 415 or 422 only: the token and the API key are always
good, so the refusal is about the request itself).

The document names what JSON Schema can't say, and this module handles exactly that, no more:

- ``x-rules``: rules JSON Schema can't state (the clock, the settings, relations it has no
  keyword for). Before a request the document accepts is sent, ``REPAIRS`` make it keep each of
  them; each repair is written from the rule's description, not from the service's code. A rule
  the document names without a repair here fails the test, so a new rule brings its repair.
- ``x-stricter``: bounds the document states more strictly than the service's exact rule (UTF-8
  bytes stated as characters, say). The service may accept a request that breaks only those; such
  a request is then checked against the document with those keywords taken out, and must pass.
- ``x-max-bytes`` on a request body or query: the size of the request as sent; a request the
  document accepts that is larger as sent must be refused as the document says (413).
"""

from __future__ import annotations

import copy
import json
import os
import re
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from typing import Any
from urllib.parse import parse_qsl, urlsplit

import httpx
import jsonschema_rs
import pytest
import schemathesis
from conftest import API_KEY, TOKENS, LiveServer, RedisServer, issue_token, token_of
from hypothesis import HealthCheck, given, settings
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.config import SchemathesisConfig
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import negative_data_rejection, positive_data_acceptance

from app.http.openapi import DOCUMENT
from app.keys.keyring import KeyringDir

AUTH = {"X-API-Key": API_KEY}
ORIGIN = "https://app.example.com"
MAX_TTL = 30 * 86400
EXAMPLES = int(os.environ.get("DRIFT_EXAMPLES", "50"))  # DRIFT_EXAMPLES=500 for a deeper look
CONFIG = {
    "checks": {
        "positive_data_acceptance": {"expected-statuses": ["2xx"]},
        "negative_data_rejection": {"expected-statuses": ["400", "413", "415", "422"]},
    },
    "generation": {"with-security-parameters": False},  # the API key is always good (tests elsewhere refuse bad ones)
}
# What a token carries of a request, as JSON, beyond its fixed claims: well under the 2000
# characters of the whole token (header, fixed claims and signature take under 600 of those).
TOKEN_BUDGET = 1000
NUMBER_24 = -2.2250738585072014e-308  # one of the longest numbers JSON writes


# -- repairs: one per rule the document names in x-rules ---------------------------------------------

def _expiry_window(request: dict[str, Any]) -> None:
    """In the future, at most MAX_TTL ahead: an hour from now; lifetimes cut to at most 30 days."""
    if request.get("expires_at") is not None:
        request["expires_at"] = (datetime.now(UTC) + timedelta(hours=1)).isoformat()
    parts = request.get("expires_in")
    if isinstance(parts, dict):
        for name, most in (("days", 10), ("hours", 240), ("minutes", 14400)):
            if parts.get(name) is not None:
                parts[name] = min(parts[name], most)


def _redirect_origin(request: dict[str, Any]) -> None:
    if request.get("redirect_url") is not None:
        request["redirect_url"] = f"{ORIGIN}/thanks"


def _carried(request: dict[str, Any]) -> int:
    fields = [request.get("feedback_key"), request.get("feedback_config"), request.get("redirect_url")]
    return len(json.dumps(fields, ensure_ascii=False).encode())


def _token_length(request: dict[str, Any]) -> None:
    """Fewer categories, then shorter labels, then a shorter key, until the token surely fits."""
    while _carried(request) > TOKEN_BUDGET:
        config = request.get("feedback_config") or {}
        categories = config.get("categories") or []
        if len(categories) > 1:
            del categories[len(categories) // 2:]
        elif any(len(c.get("label") or "") > 8 for c in categories):
            for c in categories:
                if c.get("label") is not None:
                    c["label"] = c["label"][:8]
        else:
            request["feedback_key"] = request["feedback_key"][:16]


def _min_not_above_max(config: dict[str, Any]) -> None:
    if config.get("min") is not None and config.get("max") is not None and config["min"] > config["max"]:
        config["min"], config["max"] = config["max"], config["min"]


def _distinct_values(config: dict[str, Any]) -> None:
    kept: list[dict[str, Any]] = []
    for category in config.get("categories") or []:
        if all(category["value"] != k["value"] for k in kept):  # 1 and 1.0 are one value
            kept.append(category)
    if "categories" in config:
        config["categories"] = kept


def _distinct_labels(config: dict[str, Any]) -> None:
    seen: set[str] = set()
    for category in config.get("categories") or []:
        if category.get("label") is not None:
            if category["label"] in seen:
                del category["label"]
            else:
                seen.add(category["label"])


def whole_numbers(loose: dict[str, Any], schema: Any, value: Any) -> Any:
    """``value`` with each whole number an integer schema takes written as an integer (2.0 -> 2)."""
    if not isinstance(schema, dict):
        return value
    if "$ref" in schema:
        schema = loose["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    kinds = schema.get("type")
    if isinstance(value, float) and value.is_integer() and "integer" in (kinds if isinstance(kinds, list) else [kinds]):
        return int(value)
    if isinstance(value, dict):
        for key in value:
            value[key] = whole_numbers(loose, (schema.get("properties") or {}).get(key), value[key])
    elif isinstance(value, list):
        value[:] = [whole_numbers(loose, schema.get("items"), item) for item in value]
    for keyword in ("anyOf", "oneOf", "allOf"):
        for branch in schema.get(keyword, []):
            value = whole_numbers(loose, branch, value)
    return value


def repair_whole_numbers(loose: dict[str, Any], path: str, method: str, case: schemathesis.Case) -> None:
    """The integer-literal rule, wherever an integer is documented: in a JSON body or a query."""
    operation = loose["paths"][path][method]
    body = (operation.get("requestBody") or {}).get("content", {}).get(case.media_type or "", {})
    if "schema" in body and case.body is not None:
        case.body = whole_numbers(loose, body["schema"], case.body)
    for param in operation.get("parameters", []):
        if param["in"] == "query" and param["name"] in (case.query or {}):
            case.query[param["name"]] = whole_numbers(loose, param["schema"], case.query[param["name"]])


TokenRequest = dict[str, Any]
# In the order they apply: an origin first (it shortens), labels shortened before they're made distinct.
REQUEST_REPAIRS: dict[str, Callable[[TokenRequest], None]] = {
    "expiry-window": _expiry_window,
    "redirect-origin": _redirect_origin,
    "token-length": _token_length,
}
CONFIG_REPAIRS: dict[str, Callable[[dict[str, Any]], None]] = {
    "min-not-above-max": _min_not_above_max,
    "distinct-category-values": _distinct_values,
    "distinct-category-labels": _distinct_labels,
}
# "issued-token" (a path parameter): the test puts a freshly issued token in every path;
# "integer-literal": repair_whole_numbers.
REPAIRS = {*REQUEST_REPAIRS, *CONFIG_REPAIRS, "issued-token", "integer-literal"}


def repair_issuance(body: Any) -> None:
    for request in body if isinstance(body, list) else [body]:
        if not isinstance(request, dict):
            continue
        for fix in REQUEST_REPAIRS.values():
            fix(request)
        if isinstance(request.get("feedback_config"), dict):
            for fix_config in CONFIG_REPAIRS.values():
                fix_config(request["feedback_config"])


# -- the document with its stricter bounds taken out ------------------------------------------------

def walk(node: Any) -> Iterator[dict[str, Any]]:
    if isinstance(node, dict):
        yield node
        for value in node.values():
            yield from walk(value)
    elif isinstance(node, list):
        for value in node:
            yield from walk(value)


def loosened(document: dict[str, Any]) -> dict[str, Any]:
    loose = copy.deepcopy(document)
    for node in walk(loose):
        for keyword in node.pop("x-stricter", []):
            node.pop(keyword, None)
    return loose


def conforms(loose: dict[str, Any], schema: dict[str, Any], value: Any) -> bool:
    return bool(jsonschema_rs.validator_for({**schema, "components": loose["components"]}).is_valid(value))


def _as_sent_integer(schema: dict[str, Any], text: str) -> Any:
    """A query parameter's text as the integer it stands for, when its schema wants one."""
    if schema.get("type") == "integer" and re.fullmatch(r"-?[0-9]+", text):
        return int(text)
    return text


def keeps_exact_rules(loose: dict[str, Any], path: str, method: str, response: Any) -> bool:
    """Whether the request as sent keeps every rule of the loosened document."""
    operation = loose["paths"][path][method]
    sent = response.request
    query = dict(reversed(parse_qsl(urlsplit(sent.url).query, keep_blank_values=True)))  # the first counts
    for param in loose["paths"][path].get("parameters", []) + operation.get("parameters", []):
        if param["in"] != "query":
            continue
        if param.get("explode") and param.get("style") == "form":
            if not conforms(loose, param["schema"], query):
                return False
        elif param.get("allowEmptyValue") and query.get(param["name"]) == "":
            continue  # the same as absent
        elif param["name"] in query:
            if not conforms(loose, param["schema"], _as_sent_integer(param["schema"], query[param["name"]])):
                return False
        elif param.get("required"):
            return False
    body = operation.get("requestBody")
    if body is not None and sent.body is not None:
        media = sent.headers.get("content-type", "").split(";")[0]
        raw = sent.body if isinstance(sent.body, bytes) else sent.body.encode()
        value = dict(reversed(parse_qsl(raw.decode(), keep_blank_values=True))) if "form" in media else json.loads(raw)
        return conforms(loose, body["content"][media]["schema"], value)
    return True


def over_cap(loose: dict[str, Any], path: str, method: str, response: Any) -> set[int]:
    """The answers the document gives a request body or query larger than its x-max-bytes (none
    when it is not): 413, or for a query also 400 (the HTTP server may refuse the request line)."""
    operation = loose["paths"][path][method]
    sent = response.request
    body = operation.get("requestBody") or {}
    if "x-max-bytes" in body and sent.body is not None:
        size = len(sent.body if isinstance(sent.body, bytes) else sent.body.encode())
        return {413} if size > body["x-max-bytes"] else set()
    for param in operation.get("parameters", []):
        if "x-max-bytes" in param:
            return {400, 413} if len(urlsplit(sent.url).query.encode()) > param["x-max-bytes"] else set()
    return set()


# -- the service ------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def drift(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LiveServer, Any, dict[str, Any]]]:
    own = RedisServer().start()
    keys = tmp_path_factory.mktemp("drift") / "keys"
    KeyringDir(keys).init()
    live = LiveServer({"REDIS_URL": own.url, "FEEDBACK_KEYS_DIR": str(keys), "FEEDBACK_API_KEYS": API_KEY,
                       "FEEDBACK_REDIRECT_ORIGINS": ORIGIN, "FEEDBACK_MAX_TTL": str(MAX_TTL)})
    try:
        document = httpx.get(f"{live.url}/openapi.json").json()
        schema = schemathesis.openapi.from_url(f"{live.url}/openapi.json",
                                               config=SchemathesisConfig.from_dict(CONFIG))
        yield live, schema, loosened(document)
    finally:
        live.stop()
        own.cleanup()


def requests() -> list[tuple[str, str, GenerationMode]]:
    """Every documented request that takes input; refused input only where a body or a query can
    carry it (a path's token is always one the service issued)."""
    cases = []
    for path, item in DOCUMENT["paths"].items():
        for method, op in item.items():
            if method == "parameters" or not ("requestBody" in op or item.get("parameters") or op.get("parameters")):
                continue
            cases.append((path, method, GenerationMode.POSITIVE))
            if "requestBody" in op or any(p["in"] == "query" for p in op.get("parameters", [])):
                cases.append((path, method, GenerationMode.NEGATIVE))
    return cases


def test_every_rule_the_document_cannot_state_has_a_repair():
    named = {name for node in walk(DOCUMENT) for name in node.get("x-rules", {})}
    assert named == REPAIRS


def test_a_request_that_fills_the_token_budget_is_issued(drift):
    # The token-length repair trusts TOKEN_BUDGET: the longest request it lets through must fit.
    live, _, _ = drift
    request = {"run_id": str(uuid.uuid4()), "feedback_key": "\U0001f600" * 128, "id": str(uuid.uuid4()),
               "use": "update", "confirm": True, "redirect_url": f"{ORIGIN}/thanks", "expires_in": {"days": 30},
               "feedback_config": {"type": "categorical", "categories": [{"value": NUMBER_24, "label": ""}]}}
    label = request["feedback_config"]["categories"][0]
    while _carried(request) + 6 <= TOKEN_BUDGET:
        label["label"] += "\x01"  # 6 bytes as JSON, in the token too
    with httpx.Client(base_url=live.url) as http:
        answer = issue_token(http, **request)
    assert len(token_of(answer)) <= 2000


def test_stricter_bounds_name_keywords_their_schema_has():
    for node in walk(DOCUMENT):
        assert set(node.get("x-stricter", [])) <= set(node), node


@pytest.mark.parametrize(("path", "method", "mode"), requests(), ids=lambda v: getattr(v, "value", v))
def test_document_and_service_agree(drift, path, method, mode):
    live, schema, loose = drift
    operation = schema[path][method.upper()]
    answered: set[int] = set()

    @settings(max_examples=EXAMPLES, deadline=None, database=None, suppress_health_check=list(HealthCheck))
    @given(case=operation.as_strategy(generation_mode=mode))
    def run(case: schemathesis.Case) -> None:
        if case.path_parameters:
            with httpx.Client(base_url=live.url) as http:
                issued = issue_token(http)
            forms = {"token": issued["id"] if method == "delete" else token_of(issued),
                     "jwt": token_of(issued), "token_id": issued["id"]}
            case.path_parameters.update({name: forms[name] for name in case.path_parameters})
        if mode is GenerationMode.POSITIVE:
            repair_whole_numbers(loose, path, method, case)
            if path == TOKENS and method == "post":
                repair_issuance(case.body)
        response = case.call(base_url=live.url, headers={**AUTH, "Accept": "application/json"}, timeout=10,
                             allow_redirects=False)
        answered.add(response.status_code)
        refused = over_cap(loose, path, method, response)
        if refused:
            assert response.status_code in refused, response.text
            return
        case.validate_response(response, checks=[not_a_server_error, positive_data_acceptance])
        try:
            case.validate_response(response, checks=[negative_data_rejection])
        except FailureGroup:
            if not keeps_exact_rules(loose, path, method, response):
                raise

    run()
    if mode is GenerationMode.POSITIVE:
        assert answered and all(200 <= status < 300 for status in answered), answered
