"""HTTP endpoints: parse the request, call one method of the service, answer."""

from __future__ import annotations

import hashlib
import hmac
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response

from app import encoding
from app.domain import feedback, policy, shapes
from app.domain.outcomes import LinkMode, LinkStep, TokenRef, as_uuid, parse_idempotency_key
from app.domain.service import FeedbackService
from app.domain.tokens import TokenClaims
from app.errors import (
    BodyTooLarge,
    FeedbackTokenError,
    MethodNotAllowed,
    TokenNotFound,
    Unauthorized,
    UnsupportedMediaType,
)
from app.http import pages
from app.ops import context, metrics

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


def media_type(content_type: str) -> str:
    """The media type of a Content-Type header's value (``""`` when there is none)."""
    return content_type.split(";", 1)[0].strip().lower()


def is_json(media: str) -> bool:
    """Whether a body of this media type is read as JSON (else 415)."""
    return media in _JSON_TYPES or media.endswith("+json")


def declared_over(length: str | None, cap: int) -> bool:
    """Whether a Content-Length says the body passes ``cap`` bytes (refused before reading it)."""
    return length is not None and length.isdigit() and int(length) > cap


async def read_body(request: Request, cap: int) -> bytes:
    """Read a JSON body, refusing it as soon as it passes ``cap`` bytes (not after reading it all)."""
    media = _media(request)
    if not is_json(media):
        raise UnsupportedMediaType(f"send JSON (Content-Type: application/json), not {media!r}")
    return await read_capped(request, cap)


async def read_capped(request: Request, cap: int) -> bytes:
    """The body as it streams in, refused (413) the moment it passes ``cap`` bytes."""
    if declared_over(request.headers.get("content-length"), cap):
        raise BodyTooLarge(f"the body may be at most {cap} bytes")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > cap:
            raise BodyTooLarge(f"the body may be at most {cap} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


# -- API key endpoints ---------------------------------------------------------------------------


async def issue_tokens(request: Request) -> Response:
    authorize(request)
    body = feedback.loads(await read_body(request, ISSUE_BODY_CAP))
    answer = await service(request).issue(body)
    metrics.tokens_issued(len(answer) if isinstance(answer, list) else 1)
    return JSONResponse(answer)


async def list_tokens(request: Request) -> Response:
    authorize(request)
    run_id, limit, offset = shapes.parse_list_query(request.query_params)
    return JSONResponse(await service(request).list_run(run_id, limit, offset))


async def revoke_token(request: Request) -> Response:
    authorize(request)
    token_id = as_uuid(request.path_params["token"])
    if token_id is None:
        raise TokenNotFound("no live token has this id")
    await service(request).revoke(token_id)
    metrics.token_revoked()
    return Response(status_code=204)


# -- public submission ---------------------------------------------------------------------------


_FORM = "application/x-www-form-urlencoded"


def _answer(outcome: Any) -> dict[str, Any]:
    return {**outcome.answer, "duplicate": outcome.duplicate}


def _answer_response(outcome: Any) -> Response:
    """The JSON answer to a recorded submission: what ``JSONResponse(_answer(outcome))`` sends,
    encoded with orjson (the submit path's hot loop)."""
    context.note_outcome(outcome.duplicate)
    return Response(encoding.dumps(_answer(outcome)), media_type="application/json")


def _media(request: Request) -> str:
    return media_type(request.headers.get("content-type", ""))


def _token(request: Request) -> TokenRef:
    """The token the path names: ``<jwt>/<token id>``, or one segment (a JWT or an id)."""
    params = request.path_params
    return TokenRef.parse(params["token"], params.get("token_id"))


def _token_url_path(request: Request, claims: TokenClaims) -> str:
    """The path a page's form posts to and a confirm answer names: the one requested, with the
    token id appended to an old-form ``<jwt>`` path, so that every link the service hands out
    ends in the token id (what the LangSmith SDK reads from a URL)."""
    if "token_id" in request.path_params or as_uuid(request.path_params["token"]) is not None:
        return request.url.path
    return f"{request.url.path}/{claims.token_id}"


def is_form(media: str) -> bool:
    """A POST to a token URL with this media type is a page's form (``submit_form``), else JSON."""
    return media == _FORM


def submit_target(token: str, token_id: str | None, idempotency: str | None) -> tuple[TokenRef, str | None]:
    """What a JSON submission's path and Idempotency-Key header name; checked before its body."""
    return TokenRef.parse(token, token_id), parse_idempotency_key(idempotency)


async def submit_json(svc: FeedbackService, ref: TokenRef, idempotency_key: str | None, body: bytes) -> Response:
    """A JSON submission once its body is read: the answer, or the error it raises."""
    outcome = await svc.submit(ref, feedback.parse_json(body), idempotency_key)
    return _answer_response(outcome)


async def submit_post(request: Request) -> Response:
    """``app/http/fastpath.py`` serves most JSON submissions with the same steps, in this order."""
    if is_form(_media(request)):
        return await submit_form(request)
    params, idempotency = request.path_params, request.headers.get("idempotency-key")
    ref, idempotency_key = submit_target(params["token"], params.get("token_id"), idempotency)
    body = await read_body(request, feedback.BODY_CAP)
    return await submit_json(service(request), ref, idempotency_key, body)


async def submit_form(request: Request) -> Response:
    """The POST of a confirmation page or of the choices (a plain HTML form): fields as in a link."""
    html = pages.wants_html(request)
    lang = pages.language(request)
    try:
        ref = _token(request)
        pairs = feedback.form_fields(await read_capped(request, feedback.BODY_CAP))
        lang = pages.language(request, dict(pairs).get("lang"))
        step = await service(request).follow_link(ref, feedback.parse_form(pairs), "post")
    except FeedbackTokenError as err:
        if not html:
            raise
        return _error_page(err, lang)
    return _render(request, step, html, lang)


async def submit_get(request: Request) -> Response:
    """A link followed: GET or HEAD. Prefetches never consume (425, nothing checked); the service
    decides the rest (``FeedbackService.follow_link``) and this renders it."""
    if policy.is_prefetch(request.headers):
        return Response(
            status_code=policy.PREFETCH_STATUS,
            headers={"Cache-Control": "no-store", "Vary": "Sec-Purpose, Purpose"},
        )
    html = pages.wants_html(request)
    lang = pages.language(request)
    try:
        ref = _token(request)
        if len(str(request.url.query)) > feedback.BODY_CAP:
            raise BodyTooLarge(f"the query may be at most {feedback.BODY_CAP} bytes")
        params = request.query_params.multi_items()
        # A browser's visit without an answer gets the choices; anyone else must give one.
        submission = None if html and not pages.has_answer(params) else feedback.parse_query(params)
        mode: LinkMode = "head" if request.method == "HEAD" else "get"
        step = await service(request).follow_link(ref, submission, mode)
    except FeedbackTokenError as err:
        if not html:
            raise
        return _error_page(err, lang)
    return _render(request, step, html, lang)


def _render(request: Request, step: LinkStep, html: bool, lang: str) -> Response:
    """A link step as JSON, or for a browser as a page or the redirect."""
    claims, redirect = step.claims, step.redirect_url
    redirect_origin = policy.origin(redirect) if redirect else None
    if step.kind == "choose":
        return pages.choose_page(claims, _token_url_path(request, claims), lang, redirect_origin)
    if step.kind == "confirm":
        assert step.submission is not None
        path = _token_url_path(request, claims)
        if not html:
            return JSONResponse(_confirmation(f"{service(request).settings.public_url}{path}", step.submission))
        return pages.confirm_page(claims, step.submission, path, lang, redirect_origin)
    if step.kind == "would_record":  # HEAD: GET's status and content type (the body is never sent)
        if not html:
            return Response(status_code=200, media_type="application/json")
        return pages.redirect(redirect) if redirect else pages.outcome_page("thanks", 200, lang=lang)
    assert step.outcome is not None
    outcome = step.outcome
    if not html:
        return _answer_response(outcome)
    context.note_outcome(outcome.duplicate)
    if redirect:
        return pages.redirect(redirect)
    if outcome.duplicate:
        key = "duplicate"
    else:
        key = "updated" if outcome.answer.get("revision", 1) > 1 else "thanks"
    return pages.outcome_page(key, 200, lang=lang)


def _error_page(err: FeedbackTokenError, lang: str) -> Response:
    context.note_problem(err.code)  # the page's counterpart of app.main.problem
    page = pages.outcome_page(err.code, err.status, err.detail, lang)
    page.headers.update(err.headers())  # e.g. Retry-After on a 503, as the JSON answer has it
    return page


def _confirmation(url: str, submission: feedback.Submission) -> dict[str, Any]:
    return {
        "confirm": True,
        "detail": "this link records feedback only when confirmed: POST it (JSON or a form) to record",
        "url": url,
        "submission": submission.to_json(),
    }


async def token_info(request: Request) -> Response:
    """Read-only: what a page needs to render the right control. Consumes nothing."""
    return JSONResponse(await service(request).info(_token(request)))


async def token_path(request: Request) -> Response:
    method = request.method
    if method == "POST":
        context.note_submission()
        return await submit_post(request)
    if method == "DELETE":
        if "token_id" in request.path_params:
            raise MethodNotAllowed("revoke a token by its id: DELETE /api/v1/feedback/tokens/<token id>")
        return await revoke_token(request)
    if method == "GET":  # HEAD only looks
        context.note_submission()
    return await submit_get(request)


async def tokens_root(request: Request) -> Response:
    if request.method == "POST":
        return await issue_tokens(request)
    return await list_tokens(request)


# -- keys and health -----------------------------------------------------------------------------


async def jwks(request: Request) -> Response:
    body = encoding.dumps(service(request).keys.keyring.jwks())
    etag = f'"{hashlib.sha256(body).hexdigest()[:32]}"'
    # Cacheable, but every use revalidates: a retired key must leave edge nodes within seconds,
    # which a max-age would stretch. Verify-only nodes revalidate with If-None-Match: 304.
    headers = {"Cache-Control": "public, no-cache", "ETag": etag}
    if etag in (part.strip() for part in request.headers.get("if-none-match", "").split(",")):
        return Response(status_code=304, headers=headers)
    return Response(body, media_type="application/json", headers=headers)


async def healthz(request: Request) -> Response:
    return JSONResponse({"status": "ok"})


async def readyz(request: Request) -> Response:
    checks = await request.app.state.readiness.check()
    ok = all(c["ok"] for c in checks.values())
    return JSONResponse({"status": "ok" if ok else "unavailable", "checks": checks},
                        status_code=200 if ok else 503)

