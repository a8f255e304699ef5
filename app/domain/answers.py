"""What the service answers, each shape defined once for ``app/http/openapi.py``. The service
builds these answers itself (``service.py``, ``endpoints.py``, ``main.problem``); the suite checks
each kind of answer against the document (tests/test_openapi_fuzz.py).

A new answer field goes into its shape below; optional ones (absent at their default, like the
policy fields of a token) are not ``required``.
"""

from __future__ import annotations

from app import errors
from app.domain import policy
from app.domain.shapes import FEEDBACK_CONFIG
from app.schema import AnyOf, Array, Boolean, Choice, Extends, Field, Integer, Number, Object, Shape, Text

_UUID = Text(format="uuid")
_INSTANT = Text(format="date-time")
_ANY_OBJECT = Object({}, closed=False)
_VALUE = AnyOf(Number(), Boolean(), Text(), _ANY_OBJECT, what="a number, boolean, string or object")
_CORRECTION = AnyOf(Text(), _ANY_OBJECT, what="an object or a string")
_STATUS = Choice("active", "used", "revoked", "expired")


def _given(shape: Shape, description: str | None = None) -> Field:
    """A member every answer of the kind carries (possibly null where ``shape`` allows)."""
    return Field(shape, required=True, nullable=False, description=description)


def _maybe_null(shape: Shape, description: str | None = None) -> Field:
    return Field(shape, required=True, nullable=True, description=description)


def _sometimes(shape: Shape, description: str) -> Field:
    return Field(shape, nullable=False, description=description)


_CODES = sorted({c.code for c in vars(errors).values()
                 if isinstance(c, type) and issubclass(c, errors.FeedbackTokenError)})
PROBLEM = Object(
    {
        "type": _given(Text()),
        "title": _given(Text()),
        "status": _given(Integer()),
        "detail": _given(Text()),
        "code": _given(Choice(*_CODES)),
    },
    closed=False,
    name="Problem",
    description="RFC 9457 problem details.",
)

TOKEN = Object(
    {
        "id": _given(_UUID, "The token id."),
        "url": _given(Text(), "<public base URL>/api/v1/feedback/tokens/<JWT>"),
        "expires_at": _given(_INSTANT),
        "run_id": _given(_UUID),
        "feedback_key": _given(Text()),
        "feedback_config": _maybe_null(FEEDBACK_CONFIG),
        "use": _sometimes(Choice("update", "many"), "Present when not `once`."),
        "max_uses": _sometimes(Integer(1, policy.MAX_USES_CAP), "Present when set."),
        "confirm": _sometimes(Choice(True), "Present when set."),
        "redirect_url": _sometimes(Text(), "Present when set."),
    },
    closed=False,
    name="Token",
)
LISTED_TOKEN = Extends(
    TOKEN,
    Object(
        {
            "created_at": _given(_INSTANT),
            "status": _given(_STATUS, "`used`: takes no new submission (`once` used, `many` at its cap)."),
            "uses": _given(Integer(0), "Submissions recorded."),
        },
        closed=False,
    ),
    name="ListedToken",
)

_SUBMITTED = {
    "score": _maybe_null(Number()),
    "value": _maybe_null(_VALUE),
    "comment": _maybe_null(Text()),
    "correction": _maybe_null(_CORRECTION),
}
FEEDBACK = Object(
    {
        "id": _given(_UUID, "The feedback id."),
        "run_id": _given(_UUID),
        "feedback_key": _given(Text()),
        **_SUBMITTED,
        "created_at": _given(_INSTANT),
        "duplicate": _given(Boolean(), "True for an identical retry: nothing new was recorded."),
        "revision": _sometimes(Integer(1), "Tokens with use `update` only: this answer's revision; the highest "
                                           "wins."),
    },
    closed=False,
    name="Feedback",
)
CONFIRMATION = Object(
    {
        "confirm": _given(Choice(True)),
        "detail": _given(Text()),
        "url": _given(Text(), "POST here (JSON or a form) to record."),
        "submission": _given(Object(_SUBMITTED, closed=False)),
    },
    closed=False,
    name="Confirmation",
    description="A link of a token issued with `confirm`: nothing recorded yet.",
)
TOKEN_INFO = Object(
    {
        "id": _given(_UUID),
        "run_id": _given(_UUID),
        "feedback_key": _given(Text()),
        "feedback_config": _maybe_null(FEEDBACK_CONFIG),
        "expires_at": _given(_INSTANT),
        "use": _given(Choice(*policy.USES)),
        "max_uses": _maybe_null(Integer(1)),
        "confirm": _given(Boolean()),
        "status": _given(_STATUS),
        "uses": _given(Integer(0)),
        "latest": _maybe_null(_ANY_OBJECT, "Use `update` only: the answer that currently stands, with its "
                                           "revision."),
    },
    closed=False,
    name="TokenInfo",
)

JWKS = Object({"keys": _given(Array(_ANY_OBJECT))}, closed=False, description="A JWK Set.")
ALIVE = Object({"status": _given(Choice("ok"))}, closed=False)
READY = Object(
    {"status": _given(Choice("ok", "unavailable")), "checks": _given(_ANY_OBJECT, "Each check, and why it failed.")},
    closed=False,
)
