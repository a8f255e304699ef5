"""The OpenAPI 3.1 document served at ``/openapi.json``, written by hand to match SPEC.md."""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from . import errors

_uuid = {"type": "string", "format": "uuid"}
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
        },
    },
    "ListedToken": {
        "allOf": [
            _ref("Token"),
            {
                "type": "object",
                "required": ["created_at", "status"],
                "properties": {
                    "created_at": _datetime,
                    "status": {"enum": ["active", "used", "revoked", "expired"]},
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
        },
    },
}

_token_param = {
    "name": "token",
    "in": "path",
    "required": True,
    "description": "The JWT from the token URL, or the token id (UUID).",
    "schema": {"type": "string"},
}
_api_key = [{"apiKey": []}]
_submit_errors = {
    "400": _problem(errors.InvalidBody),
    "401": _problem(errors.TokenInvalid),
    "404": _problem(errors.TokenNotFound),
    "409": _problem(errors.TokenUsed),
    "410": _problem(errors.TokenExpired, errors.TokenRevoked),
    "413": _problem(errors.BodyTooLarge),
    "422": _problem(errors.InvalidFeedback),
    "503": _problem(errors.StoreUnavailable),
}
_feedback_answer = {
    "description": "Recorded (or an identical retry: `duplicate` is true).",
    "content": {"application/json": {"schema": _ref("Feedback")}, "text/html": {}},
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
                    "content": {"application/json": {"schema": _ref("Submission")}},
                },
                "responses": {
                    "200": _feedback_answer,
                    **_submit_errors,
                    "415": _problem(errors.UnsupportedMediaType),
                },
            },
            "get": {
                "summary": "Submit feedback by following a link (no credential)",
                "security": [],
                "parameters": [
                    {"name": n, "in": "query", "schema": {"type": "string"}}
                    for n in ("score", "value", "comment", "correction")
                ],
                "responses": {"200": _feedback_answer, **_submit_errors},
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


async def endpoint(request: Request) -> Response:
    return JSONResponse(DOCUMENT)
