"""HTTP endpoints: parse the request, call one method of the service, answer."""

from __future__ import annotations

import hmac
import uuid
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from . import feedback, pages
from .errors import (
    BodyTooLarge,
    FeedbackTokenError,
    InvalidRequest,
    Unauthorized,
    UnsupportedMediaType,
)
from .service import FeedbackService

ISSUE_BODY_CAP = 256 * 1024
_JSON_TYPES = ("application/json", "text/plain", "")


def service(request: Request) -> FeedbackService:
    return request.app.state.service  # type: ignore[no-any-return]


def authorize(request: Request) -> None:
    """Constant-time comparison against every configured key (no early exit on a match)."""
    given = request.headers.get("x-api-key", "").encode()
    ok = False
    for key in service(request).settings.api_keys:
        ok |= hmac.compare_digest(given, key.value.encode())
    if not given or not ok:
        raise Unauthorized("send a valid API key in the X-API-Key header")


async def read_body(request: Request, cap: int) -> bytes:
    """Read the body, refusing it as soon as it passes ``cap`` bytes (not after reading it all)."""
    media = request.headers.get("content-type", "").split(";", 1)[0].strip().lower()
    if media not in _JSON_TYPES and not media.endswith("+json"):
        raise UnsupportedMediaType(f"send JSON (Content-Type: application/json), not {media!r}")
    length = request.headers.get("content-length")
    if length is not None and length.isdigit() and int(length) > cap:
        raise BodyTooLarge(f"the body may be at most {cap} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > cap:
            raise BodyTooLarge(f"the body may be at most {cap} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _query_int(request: Request, name: str, default: int, lo: int, hi: int) -> int:
    raw = request.query_params.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise InvalidRequest(f"{name} must be a whole number") from None
    if not lo <= value <= hi:
        raise InvalidRequest(f"{name} must be between {lo} and {hi}")
    return value


# -- API key endpoints ---------------------------------------------------------------------------


async def issue_tokens(request: Request) -> Response:
    authorize(request)
    body = feedback.loads(await read_body(request, ISSUE_BODY_CAP))
    return JSONResponse(await service(request).issue(body))


async def list_tokens(request: Request) -> Response:
    authorize(request)
    raw = request.query_params.get("run_id", "")
    try:
        run_id = uuid.UUID(raw)
    except ValueError:
        raise InvalidRequest("run_id must be a UUID") from None
    limit = _query_int(request, "limit", 100, 1, 100)
    offset = _query_int(request, "offset", 0, 0, 10**9)
    return JSONResponse(await service(request).list_run(run_id, limit, offset))


async def revoke_token(request: Request) -> Response:
    authorize(request)
    await service(request).revoke(request.path_params["token"])
    return Response(status_code=204)


# -- public submission ---------------------------------------------------------------------------


def _answer(outcome: Any) -> dict[str, Any]:
    return {**outcome.answer, "duplicate": outcome.duplicate}


async def submit_post(request: Request) -> Response:
    token = request.path_params["token"]
    submission = feedback.parse_json(await read_body(request, feedback.BODY_CAP))
    outcome = await service(request).submit(token, submission)
    return JSONResponse(_answer(outcome))


async def submit_get(request: Request) -> Response:
    """A link click. HEAD never consumes: it only says whether the token would verify."""
    token = request.path_params["token"]
    html = pages.wants_html(request)
    try:
        if request.method == "HEAD":
            await service(request).resolve(token)
            return Response(status_code=200, media_type="text/html" if html else "application/json")
        if len(str(request.url.query)) > feedback.BODY_CAP:
            raise BodyTooLarge(f"the query may be at most {feedback.BODY_CAP} bytes")
        submission = feedback.parse_query(request.query_params.multi_items())
        outcome = await service(request).submit(token, submission)
    except FeedbackTokenError as err:
        if not html:
            raise
        return pages.outcome_page(err.code, err.status, err.detail)
    if html:
        return pages.outcome_page("duplicate" if outcome.duplicate else "thanks", 200)
    return JSONResponse(_answer(outcome))


async def token_path(request: Request) -> Response:
    method = request.method
    if method == "POST":
        return await submit_post(request)
    if method == "DELETE":
        return await revoke_token(request)
    return await submit_get(request)


async def tokens_root(request: Request) -> Response:
    if request.method == "POST":
        return await issue_tokens(request)
    return await list_tokens(request)


# -- keys and health -----------------------------------------------------------------------------


async def jwks(request: Request) -> Response:
    return JSONResponse(
        service(request).keys.keyring.jwks(),
        headers={"Cache-Control": "public, max-age=30"},
    )


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    checks = await request.app.state.readiness.check()
    ok = all(c["ok"] for c in checks.values())
    return JSONResponse({"status": "ok" if ok else "unavailable", "checks": checks},
                        status_code=200 if ok else 503)

