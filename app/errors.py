"""One exception tree for every answer that is not a success.

    FeedbackTokenError              (500 internal_error; never raised on purpose)
    ├── TokenInvalid                401 token_invalid
    ├── TokenNotFound               404 token_not_found
    ├── TokenExpired                410 token_expired
    ├── TokenRevoked                410 token_revoked
    ├── TokenUsed                   409 token_used
    ├── InvalidBody                 400 invalid_body
    ├── InvalidFeedback             422 invalid_feedback
    ├── BodyTooLarge                413 body_too_large
    ├── UnsupportedMediaType        415 unsupported_media_type
    ├── StoreUnavailable            503 store_unavailable (with Retry-After)
    ├── KeysStale                   503 keys_stale (with Retry-After)
    ├── Unauthorized                401 unauthorized
    │   └── MetricsUnauthorized     401 unauthorized (bearer token for /metrics)
    ├── InvalidRequest              422 invalid_request
    ├── SigningDisabled             403 signing_disabled
    ├── NotFound                    404 not_found
    └── MethodNotAllowed            405 method_not_allowed

Each class carries its HTTP status and problem `code`; one handler in `main` turns any of them
into an RFC 9457 problem document, so endpoints never build error responses themselves.
"""

from __future__ import annotations


class FeedbackTokenError(Exception):
    status = 500
    code = "internal_error"
    title = "Internal error"

    def __init__(self, detail: str | None = None) -> None:
        self.detail = detail or self.title
        super().__init__(self.detail)

    def headers(self) -> dict[str, str]:
        return {}


class TokenInvalid(FeedbackTokenError):
    status = 401
    code = "token_invalid"
    title = "Not a valid feedback token"


class TokenNotFound(FeedbackTokenError):
    status = 404
    code = "token_not_found"
    title = "Unknown token id"


class TokenExpired(FeedbackTokenError):
    status = 410
    code = "token_expired"
    title = "Token expired"


class TokenRevoked(FeedbackTokenError):
    status = 410
    code = "token_revoked"
    title = "Token revoked"


class TokenUsed(FeedbackTokenError):
    status = 409
    code = "token_used"
    title = "Token already used"


class InvalidBody(FeedbackTokenError):
    status = 400
    code = "invalid_body"
    title = "Malformed request body"


class InvalidFeedback(FeedbackTokenError):
    status = 422
    code = "invalid_feedback"
    title = "Feedback not accepted"


class BodyTooLarge(FeedbackTokenError):
    status = 413
    code = "body_too_large"
    title = "Request body too large"


class UnsupportedMediaType(FeedbackTokenError):
    status = 415
    code = "unsupported_media_type"
    title = "Unsupported content type"


class StoreUnavailable(FeedbackTokenError):
    status = 503
    code = "store_unavailable"
    title = "Storage unavailable"

    def __init__(self, detail: str | None = None, retry_after: int = 5) -> None:
        super().__init__(detail)
        self.retry_after = retry_after

    def headers(self) -> dict[str, str]:
        return {"Retry-After": str(self.retry_after)}


class KeysStale(StoreUnavailable):
    """A verify-only node whose copy of the issuer's keys is too old to trust: it fails closed
    rather than keep accepting tokens of a key the issuer may have retired since."""

    code = "keys_stale"
    title = "Signing keys out of date"


class Unauthorized(FeedbackTokenError):
    status = 401
    code = "unauthorized"
    title = "Missing or wrong API key"

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'APIKey header="X-API-Key"'}


class MetricsUnauthorized(Unauthorized):
    title = "Missing or wrong metrics token"

    def headers(self) -> dict[str, str]:
        return {"WWW-Authenticate": 'Bearer realm="metrics"'}


class InvalidRequest(FeedbackTokenError):
    status = 422
    code = "invalid_request"
    title = "Invalid token request"


class SigningDisabled(FeedbackTokenError):
    status = 403
    code = "signing_disabled"
    title = "This node cannot issue tokens"


class NotFound(FeedbackTokenError):
    status = 404
    code = "not_found"
    title = "Not found"


class MethodNotAllowed(FeedbackTokenError):
    status = 405
    code = "method_not_allowed"
    title = "Method not allowed"
