"""The OpenAPI 3.1 document served at ``/openapi.json``, built from the shapes the service checks
requests against (``app/domain/shapes.py``) and builds answers by (``app/domain/answers.py``).

To document a route, add its operations to ``_paths`` below (a path parameter that names a token
carries ``x-rules: _ISSUED``); a header is a parameter ``{"in": "header", "schema":
b.schema(shape)}`` whose shape lives in ``app/domain/shapes.py``; a field goes into its shape,
not here.
"""

from __future__ import annotations

from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from app import errors
from app.domain import answers, shapes
from app.http.endpoints import ISSUE_BODY_CAP
from app.schema import Json, Object, Refs, Shape

_STRICT_JSON = (
    "Strict JSON: UTF-8, no duplicate keys, no NaN or infinities, no lone surrogates (\\ud800-\\udfff), "
    f"nested at most {shapes.MAX_DEPTH} levels deep (else 400 invalid_body)."
)
_API_KEY: list[dict[str, list[str]]] = [{"apiKey": []}]
_ISSUED = {"issued-token": "A token this service issued (and has not yet forgotten); a submission also needs it "
           "unexpired, unrevoked and not used up."}
_TOKEN_PARAM: Json = {
    "name": "token",
    "in": "path",
    "required": True,
    "description": "The JWT from the token URL, or the token id (UUID).",
    "schema": {"type": "string", "x-rules": _ISSUED},
}
_TOKEN_ID_PARAM: Json = {
    "name": "token",
    "in": "path",
    "required": True,
    "description": "The token id (UUID; 32 hex digits also do).",
    "schema": {"type": "string", "format": "uuid", "x-stricter": ["format"], "x-rules": _ISSUED},
}


class _Builder:
    """Collects the named shapes the operations refer to, for ``components.schemas``."""

    def __init__(self) -> None:
        self.refs: Refs = {}

    def schema(self, shape: Shape) -> Json:
        return shape.schema(self.refs)

    def components(self) -> Json:
        done: Json = {}
        while len(done) < len(self.refs):  # a definition may name further shapes
            for name, shape in list(self.refs.items()):
                if name not in done:
                    done[name] = shape.definition(self.refs)
        return dict(sorted(done.items()))

    def json(self, shape: Shape, description: str, *, html: bool = False) -> Json:
        content: Json = {"application/json": {"schema": self.schema(shape)}}
        if html:
            content["text/html"] = {"schema": {"type": "string"}}
        return {"description": description, "content": content}

    def problem(self, *classes: type[errors.FeedbackTokenError], html: bool = False) -> Json:
        doc = self.json(answers.PROBLEM, " / ".join(f"`{c.code}`: {c.title}" for c in classes), html=html)
        doc["content"] = {"application/problem+json": doc["content"].pop("application/json"), **doc["content"]}
        return doc

    def query(self, shape: Object, max_bytes: int | None = None) -> list[Json]:
        """Query parameters: one per field; or, when rules relate the fields, one object
        (``style: form``, exploded: each field its own parameter) whose schema states them.
        ``max_bytes`` caps the whole query string (``x-max-bytes``)."""
        if shape.rules or shape.refused:
            param = {"name": shape.name or "query", "in": "query", "style": "form", "explode": True,
                     "required": bool(shape.rules), "schema": self.schema(shape)}
            if max_bytes is not None:
                param["description"] = (f"The query string is at most {max_bytes} bytes (else 413, or 400 from "
                                        "the HTTP server, which may refuse a request line that long first).")
                param["x-max-bytes"] = max_bytes
            return [param]
        params = []
        for name, field in shape.fields.items():
            schema = self.schema(field.shape)
            if field.default is not None:
                schema["default"] = field.default
            param = {"name": name, "in": "query", "required": field.required, "schema": schema}
            if shape.blank_is_absent and not field.required:
                param["allowEmptyValue"] = True  # and then it means the default
            params.append(param)
        return params


def _paths(b: _Builder) -> Json:
    submit_errors = {
        "400": b.problem(errors.InvalidBody, html=True),
        "401": b.problem(errors.TokenInvalid, html=True),
        "404": b.problem(errors.TokenNotFound, html=True),
        "409": b.problem(errors.TokenUsed, html=True),
        "410": b.problem(errors.TokenExpired, errors.TokenRevoked, html=True),
        "413": b.problem(errors.BodyTooLarge, html=True),
        "422": b.problem(errors.InvalidFeedback, html=True),
        "503": b.problem(errors.StoreUnavailable, errors.KeysStale, html=True),
    }
    idempotency_key = {"name": "Idempotency-Key", "in": "header", "required": False,
                       "schema": b.schema(shapes.IDEMPOTENCY_KEY)}
    redirected = {"description": "Recorded; a browser is sent to the token's `redirect_url`."}
    link_answer = {
        "description": "Recorded (or an identical retry), or, for a token issued with `confirm`, what a POST would "
        "record; a browser gets a page (thanks, confirmation, or the choices when the link has no answer).",
        "content": {
            "application/json": {"schema": {"anyOf": [b.schema(answers.FEEDBACK), b.schema(answers.CONFIRMATION)]}},
            "text/html": {"schema": {"type": "string"}},
        },
    }
    return {
        "/api/v1/feedback/tokens": {
            "post": {
                "summary": "Issue one token, or a batch of up to 100",
                "security": _API_KEY,
                "requestBody": {
                    "required": True,
                    "description": f"{_STRICT_JSON} At most {ISSUE_BODY_CAP} bytes (else 413).",
                    "x-max-bytes": ISSUE_BODY_CAP,
                    "content": {"application/json": {"schema": b.schema(shapes.ISSUANCE)}},
                },
                "responses": {
                    "200": {"description": "The token, or the tokens in request order.", "content": {
                        "application/json": {"schema": {"anyOf": [
                            b.schema(answers.TOKEN), {"type": "array", "items": b.schema(answers.TOKEN)}]}}}},
                    "400": b.problem(errors.InvalidBody),
                    "401": b.problem(errors.Unauthorized),
                    "403": b.problem(errors.SigningDisabled),
                    "413": b.problem(errors.BodyTooLarge),
                    "415": b.problem(errors.UnsupportedMediaType),
                    "422": b.problem(errors.InvalidRequest),
                    "503": b.problem(errors.StoreUnavailable),
                },
            },
            "get": {
                "summary": "List a run's tokens, oldest first",
                "security": _API_KEY,
                "parameters": b.query(shapes.LIST_QUERY),
                "responses": {
                    "200": {"description": "The run's tokens.", "content": {"application/json": {
                        "schema": {"type": "array", "items": b.schema(answers.LISTED_TOKEN)}}}},
                    "401": b.problem(errors.Unauthorized),
                    "422": b.problem(errors.InvalidRequest),
                    "503": b.problem(errors.StoreUnavailable),
                },
            },
        },
        "/api/v1/feedback/tokens/{token}": {
            "parameters": [_TOKEN_PARAM],
            "post": {
                "summary": "Submit feedback with a token (no credential)",
                "security": [],
                "parameters": [idempotency_key],
                "requestBody": {
                    "required": True,
                    "description": f"{_STRICT_JSON} At most {shapes.BODY_CAP} bytes (else 413).",
                    "x-max-bytes": shapes.BODY_CAP,
                    "content": {
                        "application/json": {"schema": b.schema(shapes.SUBMISSION)},
                        "application/x-www-form-urlencoded": {"schema": b.schema(shapes.FORM)},
                    },
                },
                "responses": {
                    "200": b.json(answers.FEEDBACK, "Recorded (or an identical retry: `duplicate` is true).",
                                  html=True),
                    "303": redirected,
                    **submit_errors,
                    "415": b.problem(errors.UnsupportedMediaType),
                    "422": b.problem(errors.InvalidFeedback, errors.InvalidRequest, html=True),
                },
            },
            "get": {
                "summary": "Submit feedback by following a link (no credential)",
                "security": [],
                "parameters": b.query(shapes.LINK, max_bytes=shapes.BODY_CAP),
                "description": "Prefetches (`Sec-Purpose`/`Purpose: prefetch`, `X-Moz: prefetch`, `X-Purpose: "
                "preview`) and HEAD never consume. A token issued with `confirm`, or a browser visit without an "
                "answer, gets a page whose form POSTs back here; only that POST records.",
                "responses": {
                    "200": link_answer,
                    "303": redirected,
                    "425": {"description": "A prefetch: nothing was recorded, nothing was checked."},
                    **submit_errors,
                },
            },
            "delete": {
                "summary": "Revoke a token by its id",
                "security": _API_KEY,
                "parameters": [_TOKEN_ID_PARAM],
                "responses": {
                    "204": {"description": "Revoked."},
                    "401": b.problem(errors.Unauthorized),
                    "404": b.problem(errors.TokenNotFound),
                    "503": b.problem(errors.StoreUnavailable),
                },
            },
        },
        "/api/v1/feedback/tokens/{token}/info": {
            "parameters": [_TOKEN_PARAM],
            "get": {
                "summary": "A token's key, config, policy, expiry, status and uses (read-only)",
                "security": [],
                "responses": {
                    "200": b.json(answers.TOKEN_INFO, "Consumes nothing; CORS-readable from any origin."),
                    "401": b.problem(errors.TokenInvalid),
                    "404": b.problem(errors.TokenNotFound),
                    "503": b.problem(errors.StoreUnavailable),
                },
            },
        },
        "/api/v1/info": {"get": {
            "summary": "What the LangSmith SDKs read about a server: this service's version, no flags",
            "responses": {"200": {
                "description": "`batch_ingest_config.use_multipart_endpoint` is false: this service takes no runs.",
                "content": {"application/json": {"schema": {
                    "type": "object",
                    "required": ["version", "license_expiration_time", "instance_flags", "batch_ingest_config"],
                    "properties": {
                        "version": {"type": "string"},
                        "license_expiration_time": {"type": "null"},
                        "instance_flags": {"type": "object"},
                        "batch_ingest_config": {"type": "object"},
                    },
                }}},
            }},
        }},
        "/favicon.ico": {"get": {
            "summary": "The service's icon (cacheable)",
            "responses": {"200": {"description": "An icon.", "content": {"image/x-icon": {}}}},
        }},
        "/metrics": {"get": {
            "summary": "Prometheus metrics of this node (unless FEEDBACK_METRICS=0)",
            "description": "With FEEDBACK_METRICS_TOKEN set, only for `Authorization: Bearer <that token>`.",
            "responses": {
                "200": {"description": "The Prometheus text format.", "content": {"text/plain": {}}},
                "401": b.problem(errors.Unauthorized),
            },
        }},
        "/widget.js": {"get": {
            "summary": "The embeddable feedback widget (JavaScript, no dependencies)",
            "responses": {"200": {"description": "The script.", "content": {"text/javascript": {}}}},
        }},
        "/.well-known/jwks.json": {"get": {
            "summary": "Public keys that verify tokens (pending and active)",
            "responses": {"200": b.json(answers.JWKS, "A JWK Set.")},
        }},
        "/healthz": {"get": {
            "summary": "The process is alive",
            "responses": {"200": b.json(answers.ALIVE, "Alive.")},
        }},
        "/readyz": {"get": {
            "summary": "Redis reachable and safe, keys loaded",
            "responses": {"200": b.json(answers.READY, "Ready."),
                          "503": b.json(answers.READY, "Not ready; `checks` says why.")},
        }},
        "/openapi.json": {"get": {
            "summary": "This document",
            "responses": {"200": {"description": "OpenAPI 3.1.", "content": {"application/json": {}}}},
        }},
    }


def _under_token_id(paths: Json) -> Json:
    """Token URLs as issued, ``<jwt>/<token id>``: the submit and read operations of the one-segment
    path (whose ``token`` is then a JWT or an id), placed after it; revocation stays by id alone."""
    token_id: Json = {
        "name": "token_id",
        "in": "path",
        "required": True,
        "description": "The token id, the last segment of a token URL (where the LangSmith SDK reads it). It must "
        "be the JWT's own (`jti`), else 401 `token_invalid`.",
        "schema": {"type": "string", "format": "uuid", "x-stricter": ["format"], "x-rules": _ISSUED},
    }
    jwt: Json = {**_TOKEN_PARAM, "description": "The JWT from the token URL (not an id)."}
    out: Json = {}
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


def build() -> dict[str, Any]:
    b = _Builder()
    paths = _under_token_id(_paths(b))
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "feedback-tokens",
            "version": "1",
            "description": "Presigned feedback tokens: one-use signed links for end-user feedback. Where JSON "
            "Schema can't state a rule exactly, a schema states a stricter bound and lists its keywords in "
            "`x-stricter` (the exact rule is in its description); rules it can't state at all are named in "
            "`x-rules`.",
        },
        "components": {
            "schemas": b.components(),
            "securitySchemes": {"apiKey": {"type": "apiKey", "in": "header", "name": "X-API-Key"}},
        },
        "paths": paths,
    }


DOCUMENT = build()


async def endpoint(request: Request) -> Response:
    return JSONResponse(DOCUMENT)
