"""The OpenAPI 3.1 document served at ``/openapi.json``, written by hand to match SPEC.md."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from app import errors

_uuid = {"type": "string", "format": "uuid"}
# Request fields of ours beyond LangSmith's (app/domain/policy.py); null means the default.
_POLICY_REQUEST: dict[str, Any] = {
    "use": {
        "enum": ["once", "update", "many", None],
        "default": "once",
        "description": "`once`: one submission. `update`: the same feedback, changeable until expiry "
        "(each change a new stream entry with a higher `revision`). `many`: each submission a new "
        "feedback (then `id` may not be given).",
    },
    "max_uses": {"type": ["integer", "null"], "minimum": 1, "description": "Use `many` only: a cap."},
    "confirm": {
        "type": ["boolean", "null"],
        "default": False,
        "description": "GET shows a confirmation page and records nothing; the page's POST records "
        "(for links in emails, which scanners open).",
    },
    "redirect_url": {
        "type": ["string", "null"],
        "maxLength": 512,
        "description": "Where a browser goes (303) after success; its origin must be in "
        "FEEDBACK_REDIRECT_ORIGINS, else 422.",
    },
}
_datetime = {"type": "string", "format": "date-time"}
_nullable_number = {"type": ["number", "null"]}


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _problem(*classes: type[errors.FeedbackTokenError]) -> dict[str, Any]:
    return {
        "description": " / ".join(f"`{c.code}`: {c.title}" for c in classes),
        "content": {"application/problem+json": {"schema": _ref("Problem")}},
    }


_CODES = sorted(
    {c.code for c in vars(errors).values() if isinstance(c, type) and issubclass(c, errors.FeedbackTokenError)}
)

SCHEMAS: dict[str, Any] = {
    "Problem": {
        "type": "object",
        "required": ["type", "title", "status", "detail", "code"],
        "properties": {
            "type": {"type": "string"},
            "title": {"type": "string"},
            "status": {"type": "integer"},
            "detail": {"type": "string"},
            "code": {"type": "string", "enum": _CODES},
        },
    },
    "FeedbackConfig": {
        "oneOf": [
            {
                "type": "object",
                "required": ["type"],
                "additionalProperties": False,
                "properties": {
                    "type": {"const": "continuous"},
                    "min": _nullable_number,
                    "max": _nullable_number,
                },
            },
            {
                "type": "object",
                "required": ["type", "categories"],
                "additionalProperties": False,
                "properties": {
                    "type": {"const": "categorical"},
                    "categories": {
                        "type": "array",
                        "minItems": 1,
                        "maxItems": 100,
                        "items": {
                            "type": "object",
                            "required": ["value"],
                            "additionalProperties": False,
                            "properties": {
                                "value": {"type": "number"},
                                "label": {"type": "string", "minLength": 1, "maxLength": 256},
                            },
                        },
                    },
                    "allows_multiple_categories": {"const": False},
                },
            },
            {
                "type": "object",
                "required": ["type"],
                "additionalProperties": False,
                "properties": {"type": {"const": "freeform"}},
            },
        ]
    },
    "TokenRequest": {
        "type": "object",
        "required": ["run_id", "feedback_key"],
        "additionalProperties": False,
        "properties": {
            "run_id": _uuid,
            "feedback_key": {"type": "string", "minLength": 1, "maxLength": 128},
            "expires_in": {
                "type": ["object", "null"],
                "additionalProperties": False,
                "properties": {
                    "days": {"type": ["integer", "null"], "minimum": 0},
                    "hours": {"type": ["integer", "null"], "minimum": 0},
                    "minutes": {"type": ["integer", "null"], "minimum": 0},
                },
            },
            "expires_at": {"type": ["string", "null"], "format": "date-time"},
            "feedback_config": {"anyOf": [_ref("FeedbackConfig"), {"type": "null"}]},
            "id": {"type": ["string", "null"], "format": "uuid"},
            **_POLICY_REQUEST,
        },
    },
    "Token": {
        "type": "object",
        "required": ["id", "url", "expires_at", "run_id", "feedback_key", "feedback_config"],
        "properties": {
            "id": _uuid,
            "url": {"type": "string"},
            "expires_at": _datetime,
            "run_id": _uuid,
            "feedback_key": {"type": "string"},
            "feedback_config": {"anyOf": [_ref("FeedbackConfig"), {"type": "null"}]},
            "use": {"enum": ["update", "many"], "description": "Present when not `once`."},
            "max_uses": {"type": "integer", "description": "Present when set."},
            "confirm": {"const": True, "description": "Present when set."},
            "redirect_url": {"type": "string", "description": "Present when set."},
        },
    },
    "ListedToken": {
        "allOf": [
            _ref("Token"),
            {
                "type": "object",
                "required": ["created_at", "status", "uses"],
                "properties": {
                    "created_at": _datetime,
                    "status": {
                        "enum": ["active", "used", "revoked", "expired"],
                        "description": "`used`: takes no new submission (`once` used, `many` at its cap).",
                    },
                    "uses": {"type": "integer", "minimum": 0, "description": "Submissions recorded."},
                },
            },
        ]
    },
    "Submission": {
        "type": "object",
        "additionalProperties": False,
        "properties": {
            "score": {"type": ["number", "boolean", "null"]},
            "value": {"type": ["number", "boolean", "string", "object", "null"]},
            "comment": {"type": ["string", "null"], "maxLength": 4096},
            "correction": {"type": ["object", "string", "null"]},
            "metadata": {"type": ["object", "null"]},
            "do_not_extend_trace_retention": {"type": ["boolean", "null"]},
        },
    },
    "Feedback": {
        "type": "object",
        "required": [
            "id", "run_id", "feedback_key", "score", "value", "comment", "correction",
            "created_at", "duplicate",
        ],
        "properties": {
            "id": _uuid,
            "run_id": _uuid,
            "feedback_key": {"type": "string"},
            "score": _nullable_number,
            "value": {"type": ["number", "boolean", "string", "object", "null"]},
            "comment": {"type": ["string", "null"]},
            "correction": {"type": ["object", "string", "null"]},
            "created_at": _datetime,
            "duplicate": {"type": "boolean"},
            "revision": {
                "type": "integer",
                "minimum": 1,
                "description": "Tokens with use `update` only: this answer's revision; the highest wins.",
            },
        },
    },
    "Confirmation": {
        "type": "object",
        "description": "A link of a token issued with `confirm`: nothing recorded yet; POST to `url` to record.",
        "required": ["confirm", "detail", "url", "submission"],
        "properties": {
            "confirm": {"const": True},
            "detail": {"type": "string"},
            "url": {"type": "string"},
            "submission": {
                "type": "object",
                "required": ["score", "value", "comment", "correction"],
                "properties": {
                    "score": _nullable_number,
                    "value": {"type": ["number", "boolean", "string", "object", "null"]},
                    "comment": {"type": ["string", "null"]},
                    "correction": {"type": ["object", "string", "null"]},
                },
            },
        },
    },
    "FormSubmission": {
        "type": "object",
        "description": "The service's own confirmation and picker pages post this; fields as in a GET link.",
        "properties": {
            **{n: {"type": "string"} for n in ("score", "value", "comment", "correction")},
            "lang": {"type": "string", "description": "Language of the answer page."},
        },
    },
    "TokenInfo": {
        "type": "object",
        "required": [
            "id", "run_id", "feedback_key", "feedback_config", "expires_at", "use", "max_uses",
            "confirm", "status", "uses", "latest",
        ],
        "properties": {
            "id": _uuid,
            "run_id": _uuid,
            "feedback_key": {"type": "string"},
            "feedback_config": {"anyOf": [_ref("FeedbackConfig"), {"type": "null"}]},
            "expires_at": _datetime,
            "use": {"enum": ["once", "update", "many"]},
            "max_uses": {"type": ["integer", "null"]},
            "confirm": {"type": "boolean"},
            "status": {"enum": ["active", "used", "revoked", "expired"]},
            "uses": {"type": "integer", "minimum": 0},
            "latest": {
                "description": "Use `update` only: the answer that currently stands, with its revision.",
                "anyOf": [{"type": "object"}, {"type": "null"}],
            },
        },
    },
}

_token_param = {
    "name": "token",
    "in": "path",
    "required": True,
    "description": "The JWT (the last segment of token URLs issued before they ended in the id), or the "
    "token id (UUID), which is looked up: how the LangSmith SDK submits.",
    "schema": {"type": "string"},
}
_IDEMPOTENCY_KEY = {
    "name": "Idempotency-Key",
    "in": "header",
    "required": False,
    "description": "JSON submissions: names one logical submission across requests. The same key with the "
    "same body is answered as the first time, with `duplicate` true (under `many` too); with another body, "
    "422 `invalid_request`. 1 to 255 visible ASCII characters (a structured-field string's quotes are "
    "taken off).",
    "schema": {"type": "string", "minLength": 1, "maxLength": 255},
}
_api_key: list[dict[str, list[str]]] = [{"apiKey": []}]


def _problem_or_page(*classes: type[errors.FeedbackTokenError]) -> dict[str, Any]:
    # A browser (Accept: text/html) gets a short page with the same status instead.
    doc = _problem(*classes)
    doc["content"]["text/html"] = {"schema": {"type": "string"}}
    return doc


_submit_errors = {
    "400": _problem_or_page(errors.InvalidBody),
    "401": _problem_or_page(errors.TokenInvalid),
    "404": _problem_or_page(errors.TokenNotFound),
    "409": _problem_or_page(errors.TokenUsed),
    "410": _problem_or_page(errors.TokenExpired, errors.TokenRevoked),
    "413": _problem_or_page(errors.BodyTooLarge),
    "422": _problem_or_page(errors.InvalidFeedback),
    "503": _problem_or_page(errors.StoreUnavailable, errors.KeysStale),
}
_feedback_answer = {
    "description": "Recorded (or an identical retry: `duplicate` is true).",
    "content": {"application/json": {"schema": _ref("Feedback")}, "text/html": {"schema": {"type": "string"}}},
}
_redirected = {"description": "Recorded; a browser is sent to the token's `redirect_url`."}
_link_answer = {
    "description": "Recorded (or an identical retry), or, for a token issued with `confirm`, what a POST "
    "would record; a browser gets a page (thanks, confirmation, or the choices when the link has no answer).",
    "content": {
        "application/json": {"schema": {"oneOf": [_ref("Feedback"), _ref("Confirmation")]}},
        "text/html": {"schema": {"type": "string"}},
    },
}

DOCUMENT: dict[str, Any] = {
    "openapi": "3.1.0",
    "info": {
        "title": "feedback-tokens",
        "version": "1",
        "description": "Presigned feedback tokens: one-use signed links for end-user feedback.",
    },
    "components": {
        "schemas": SCHEMAS,
        "securitySchemes": {"apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"}},
    },
    "paths": {
        "/api/v1/feedback/tokens": {
            "post": {
                "summary": "Issue one token, or a batch of up to 100",
                "security": _api_key,
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "oneOf": [
                                    _ref("TokenRequest"),
                                    {"type": "array", "minItems": 1, "maxItems": 100,
                                     "items": _ref("TokenRequest")},
                                ]
                            }
                        }
                    },
                },
                "responses": {
                    "200": {
                        "description": "The token, or the tokens in request order.",
                        "content": {
                            "application/json": {
                                "schema": {"oneOf": [_ref("Token"), {"type": "array", "items": _ref("Token")}]}
                            }
                        },
                    },
                    "400": _problem(errors.InvalidBody),
                    "401": _problem(errors.Unauthorized),
                    "403": _problem(errors.SigningDisabled),
                    "413": _problem(errors.BodyTooLarge),
                    "415": _problem(errors.UnsupportedMediaType),
                    "422": _problem(errors.InvalidRequest),
                    "503": _problem(errors.StoreUnavailable),
                },
            },
            "get": {
                "summary": "List a run's tokens, oldest first",
                "security": _api_key,
                "parameters": [
                    {"name": "run_id", "in": "query", "required": True, "schema": _uuid},
                    {"name": "limit", "in": "query",
                     "schema": {"type": "integer", "minimum": 1, "maximum": 100, "default": 100}},
                    {"name": "offset", "in": "query",
                     "schema": {"type": "integer", "minimum": 0, "default": 0}},
                ],
                "responses": {
                    "200": {
                        "description": "The run's tokens.",
                        "content": {
                            "application/json": {"schema": {"type": "array", "items": _ref("ListedToken")}}
                        },
                    },
                    "401": _problem(errors.Unauthorized),
                    "422": _problem(errors.InvalidRequest),
                    "503": _problem(errors.StoreUnavailable),
                },
            },
        },
        "/api/v1/feedback/tokens/{token}": {
            "parameters": [_token_param],
            "post": {
                "summary": "Submit feedback with a token (no credential)",
                "security": [],
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {"schema": _ref("Submission")},
                        "application/x-www-form-urlencoded": {"schema": _ref("FormSubmission")},
                    },
                },
                "parameters": [_IDEMPOTENCY_KEY],
                "responses": {
                    "200": _feedback_answer,
                    "303": _redirected,
                    **_submit_errors,
                    "415": _problem(errors.UnsupportedMediaType),
                    "422": _problem_or_page(errors.InvalidFeedback, errors.InvalidRequest),
                },
            },
            "get": {
                "summary": "Submit feedback by following a link (no credential)",
                "security": [],
                "parameters": [
                    {"name": n, "in": "query", "schema": {"type": "string"}}
                    for n in ("score", "value", "comment", "correction")
                ],
                "description": "Prefetches (`Sec-Purpose`/`Purpose: prefetch`, `X-Moz: prefetch`, "
                "`X-Purpose: preview`) and HEAD never consume. A token issued with `confirm`, or a browser "
                "visit without an answer, gets a page whose form POSTs back here; only that POST records.",
                "responses": {
                    "200": _link_answer,
                    "303": _redirected,
                    "425": {"description": "A prefetch: nothing was recorded, nothing was checked."},
                    **_submit_errors,
                },
            },
            "delete": {
                "summary": "Revoke a token by its id",
                "security": _api_key,
                "responses": {
                    "204": {"description": "Revoked."},
                    "401": _problem(errors.Unauthorized),
                    "404": _problem(errors.TokenNotFound),
                    "503": _problem(errors.StoreUnavailable),
                },
            },
        },
        "/api/v1/feedback/tokens/{token}/info": {
            "parameters": [_token_param],
            "get": {
                "summary": "A token's key, config, policy, expiry, status and uses (read-only)",
                "security": [],
                "responses": {
                    "200": {
                        "description": "Consumes nothing; CORS-readable from any origin.",
                        "content": {"application/json": {"schema": _ref("TokenInfo")}},
                    },
                    "401": _problem(errors.TokenInvalid),
                    "404": _problem(errors.TokenNotFound),
                    "503": _problem(errors.StoreUnavailable),
                },
            },
        },
        "/api/v1/info": {
            "get": {
                "summary": "What the LangSmith SDKs read about a server: this service's version, no flags",
                "responses": {
                    "200": {
                        "description": "`batch_ingest_config.use_multipart_endpoint` is false: this service "
                        "takes no runs.",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": [
                                        "version", "license_expiration_time", "instance_flags", "batch_ingest_config",
                                    ],
                                    "properties": {
                                        "version": {"type": "string"},
                                        "license_expiration_time": {"type": "null"},
                                        "instance_flags": {"type": "object"},
                                        "batch_ingest_config": {"type": "object"},
                                    },
                                }
                            }
                        },
                    }
                },
            }
        },
        "/favicon.ico": {
            "get": {
                "summary": "The service's icon (cacheable)",
                "responses": {"200": {"description": "An icon.", "content": {"image/x-icon": {}}}},
            }
        },
        "/widget.js": {
            "get": {
                "summary": "The embeddable feedback widget (JavaScript, no dependencies)",
                "responses": {"200": {"description": "The script.", "content": {"text/javascript": {}}}},
            }
        },
        "/.well-known/jwks.json": {
            "get": {
                "summary": "Public keys that verify tokens (pending and active)",
                "responses": {
                    "200": {
                        "description": "A JWK Set.",
                        "content": {
                            "application/json": {
                                "schema": {
                                    "type": "object",
                                    "required": ["keys"],
                                    "properties": {"keys": {"type": "array", "items": {"type": "object"}}},
                                }
                            }
                        },
                    }
                },
            }
        },
        "/healthz": {
            "get": {
                "summary": "The process is alive",
                "responses": {"200": {"description": "Alive.", "content": {"application/json": {}}}},
            }
        },
        "/readyz": {
            "get": {
                "summary": "Redis reachable and safe, keys loaded",
                "responses": {
                    "200": {"description": "Ready.", "content": {"application/json": {}}},
                    "503": {"description": "Not ready; `checks` says why.", "content": {"application/json": {}}},
                },
            }
        },
        "/openapi.json": {
            "get": {
                "summary": "This document",
                "responses": {"200": {"description": "OpenAPI 3.1.", "content": {"application/json": {}}}},
            }
        },
    },
}


def _under_token_id(paths: dict[str, Any]) -> dict[str, Any]:
    """Token URLs as issued, ``<jwt>/<token id>``: the submit and read operations of the one-segment
    path (whose ``token`` is then a JWT or an id), placed after it; revocation stays by id alone."""
    token_id = {
        "name": "token_id",
        "in": "path",
        "required": True,
        "description": "The token id, the last segment of a token URL (where the LangSmith SDK reads it). "
        "It must be the JWT's own (`jti`), else 401 `token_invalid`.",
        "schema": _uuid,
    }
    jwt = {**_token_param, "description": "The JWT from the token URL (not an id)."}
    out: dict[str, Any] = {}
    for path, item in paths.items():
        out[path] = item
        if path == "/api/v1/feedback/tokens/{token}/info":
            single = paths["/api/v1/feedback/tokens/{token}"]
            out["/api/v1/feedback/tokens/{token}/{token_id}"] = {
                **{method: op for method, op in single.items() if method in ("post", "get")},
                "parameters": [jwt, token_id],
            }
            out["/api/v1/feedback/tokens/{token}/{token_id}/info"] = {**item, "parameters": [jwt, token_id]}
    return out


DOCUMENT["paths"] = _under_token_id(DOCUMENT["paths"])


async def endpoint(request: Request) -> Response:
    return JSONResponse(DOCUMENT)
