"""What the service takes, each request shape defined once: the parsers check input against these
(``app/domain/feedback.py``, ``app/domain/issuance.py``) and ``app/http/openapi.py`` describes
them. Limits live here; the modules that enforce them import them from here.

A new field goes into its shape below, with its limits; the parser then hands it on (see
``TokenRequest`` in issuance.py) and the document shows it with no further edit.
"""

from __future__ import annotations

import uuid
from collections.abc import Mapping

from app.domain import policy
from app.errors import InvalidRequest
from app.schema import (
    AnyOf,
    AnyValue,
    Array,
    Boolean,
    Choice,
    Field,
    Instant,
    Integer,
    Invalid,
    JsonObject,
    Number,
    Object,
    QueryInteger,
    QueryNumber,
    Rule,
    Tagged,
    Text,
    Uuid,
    at_least_one,
    never_when,
    not_both,
    only_when,
)

COMMENT_CAP = 4 * 1024
CORRECTION_CAP = 16 * 1024
METADATA_CAP = 8 * 1024
BODY_CAP = 64 * 1024
MAX_DEPTH = 32
MAX_CATEGORIES = 100
LABEL_CAP = 256
FEEDBACK_KEY_CAP = 128
EXPIRY_PART_CAP = 10**6
MAX_BATCH = 100
FORM_FIELDS_CAP = 64
LIST_CAP = 100
OFFSET_CAP = 10**9
IDEMPOTENCY_KEY_CAP = 255
TOKEN_LENGTH_CAP = 2000  # = tokens.MAX_TOKEN_LENGTH, which service.py checks (tests/test_schema.py pins them)

# -- feedback_config -----------------------------------------------------------------------------

_category = Object(
    {"value": Field(Number(), required=True, nullable=False), "label": Field(Text(1, LABEL_CAP))},
    what="an object {value, label}",
)


def _kind(name: str) -> Field:
    return Field(Choice(name), required=True, nullable=False)


CONTINUOUS = Object(
    {"type": _kind("continuous"), "min": Field(Number()), "max": Field(Number())},
    rules=[Rule("has min greater than max", lambda v: v["min"] is None or v["max"] is None or v["min"] <= v["max"],
                name="min-not-above-max", description="min, when given with max, is at most max.")],
    description="A score between min and max (each optional, inclusive).",
)


def _distinct(values: list[object]) -> bool:
    return len(set(values)) == len(values)


CATEGORICAL = Object(
    {
        "type": _kind("categorical"),
        "categories": Field(Array(_category, 1, MAX_CATEGORIES), required=True, nullable=False),
        "allows_multiple_categories": Field(Choice(False), description="One choice each: only false."),
    },
    rules=[
        Rule("has two categories with the same value", lambda v: _distinct([c["value"] for c in v["categories"]]),
             name="distinct-category-values",
             description="Category values are distinct (1 and 1.0 are the same value)."),
        Rule("has two categories with the same label",
             lambda v: _distinct([c["label"] for c in v["categories"] if c["label"] is not None]),
             name="distinct-category-labels", description="Category labels, where given, are distinct."),
    ],
    description="A score that is one category's value, or a value that is one category's label.",
)
FREEFORM = Object({"type": _kind("freeform")}, description="Any string value.")
FEEDBACK_CONFIG = Tagged(
    "type", {"continuous": CONTINUOUS, "categorical": CATEGORICAL, "freeform": FREEFORM}, name="FeedbackConfig"
)

# -- issuance: POST /api/v1/feedback/tokens --------------------------------------------------------

EXPIRES_IN = Object(
    {n: Field(Integer(0, EXPIRY_PART_CAP)) for n in ("days", "hours", "minutes")},
    rules=[Rule(
        "is zero: give at least one minute (the LangSmith Python SDK sends a timedelta shorter than a "
        "minute, e.g. timedelta(seconds=30), as all zeros)",
        lambda v: any(v[n] for n in ("days", "hours", "minutes")),
        {"anyOf": [{"required": [n], "properties": {n: {"type": "integer", "minimum": 1}}}
                   for n in ("days", "hours", "minutes")]},
    )],
    what="an object {days, hours, minutes}",
    description="A lifetime; the parts add up and at least one is positive.",
)
TOKEN_REQUEST = Object(
    {
        "run_id": Field(Uuid(), required=True, nullable=False),
        "feedback_key": Field(Text(1, FEEDBACK_KEY_CAP, controls=False), required=True, nullable=False,
                              description="No control characters."),
        "expires_in": Field(EXPIRES_IN),
        "expires_at": Field(Instant(), description="Without an offset it means UTC."),
        "feedback_config": Field(FEEDBACK_CONFIG),
        "id": Field(Uuid(), description="The id the feedback will get; generated when absent."),
        # Ours, beyond LangSmith's (app/domain/policy.py); null means the default.
        "use": Field(Choice(*policy.USES), default="once", description=(
            "`once`: one submission. `update`: the same feedback, changeable until expiry (each change a new "
            "stream entry with a higher `revision`). `many`: each submission a new feedback (then `id` may "
            "not be given).")),
        "max_uses": Field(Integer(1, policy.MAX_USES_CAP), description="Use `many` only: a cap."),
        "confirm": Field(Boolean(), default=False, description=(
            "GET shows a confirmation page and records nothing; the page's POST records (for links in "
            "emails, which scanners open).")),
        "redirect_url": Field(Text(1, policy.REDIRECT_URL_CAP), description=(
            "Where a browser goes (303) after success.")),
    },
    rules=[
        not_both("expires_in", "expires_at", "give expires_in or expires_at, not both"),
        only_when("max_uses", "use", "many", "max_uses applies only to use 'many'"),
        never_when("id", "use", "many",
                   "id can't be chosen with use 'many': each submission gets its own feedback id"),
        # Checked in issuance.py, where the clock and the settings are.
        Rule("expires too early or too late", None, name="expiry-window", description=(
            "The expiry (expires_at; or now plus expires_in; or now plus FEEDBACK_DEFAULT_TTL) is in the future "
            "and at most FEEDBACK_MAX_TTL seconds (default 30 days) ahead.")),
        Rule("redirect_url's origin is not allowed", None, name="redirect-origin", description=(
            "redirect_url is an absolute http(s) URL without credentials whose origin is one of "
            "FEEDBACK_REDIRECT_ORIGINS.")),
        # Checked in service.py, on the signed token.
        Rule("makes the token too long", None, name="token-length", description=(
            f"The signed token carries feedback_key, feedback_config and redirect_url and is at most "
            f"{TOKEN_LENGTH_CAP} characters long; a request that would make it longer is refused, naming "
            "what to shorten.")),
    ],
    what="an object",
    name="TokenRequest",
)
ISSUANCE = AnyOf(TOKEN_REQUEST, Array(TOKEN_REQUEST, 1, MAX_BATCH),
                 what=f"a token request object, or a list of 1 to {MAX_BATCH} of them")

# -- submission: POST /api/v1/feedback/tokens/{token} ----------------------------------------------

_SUBMITTED = ("score", "value", "comment", "correction")
SUBMISSION = Object(
    {
        "score": Field(Number(booleans=True), description="Booleans count as 1 and 0."),
        "value": Field(AnyOf(Number(), Boolean(), Text(max_bytes=CORRECTION_CAP), JsonObject(CORRECTION_CAP),
                             what="a number, boolean, string or object")),
        "comment": Field(Text(max_bytes=COMMENT_CAP)),
        "correction": Field(AnyOf(Text(max_bytes=CORRECTION_CAP), JsonObject(CORRECTION_CAP),
                                  what="an object or a string")),
        "metadata": Field(JsonObject(METADATA_CAP)),
        # Fields that LangSmith's API defines for this call.
        "do_not_extend_trace_retention": Field(AnyValue(), description=(
            "Defined by LangSmith's API for this call (a boolean there): any value is accepted, and has no "
            "effect here.")),
    },
    rules=[at_least_one(_SUBMITTED, "give at least one of score, value, comment, correction")],
    what="a JSON object",
    name="Submission",
    description="What the token's feedback_config allows is checked against the token (422 invalid_feedback).",
)

# -- submission by link (GET query) and by the service's own pages (a form POST) --------------------

_LINK_FIELDS = {  # text can't be null: an empty parameter is the absent one
    "score": Field(QueryNumber(), nullable=False),
    "value": Field(Text(max_bytes=CORRECTION_CAP), nullable=False),
    "comment": Field(Text(max_bytes=COMMENT_CAP), nullable=False),
    "correction": Field(Text(max_bytes=CORRECTION_CAP), nullable=False),
}
_LINK_RULES = [at_least_one(_SUBMITTED, "give at least one of score, value, comment, correction",
                            present={"minLength": 1})]
_NO_METADATA = {"metadata": "can't be sent in a link; use POST"}
LINK = Object(
    _LINK_FIELDS, rules=_LINK_RULES, closed=False, refused=_NO_METADATA, blank_is_absent=True, name="LinkSubmission",
    description="Query parameters; an empty one counts as absent, other parameters are ignored.",
)
FORM = Object(
    {**_LINK_FIELDS, "lang": Field(Text(), nullable=False, description="Language of the answer page.")},
    rules=_LINK_RULES, closed=False, refused=_NO_METADATA, blank_is_absent=True, max_properties=FORM_FIELDS_CAP,
    name="FormSubmission",
    description="The service's confirmation and picker pages post this; fields as in a link.",
)

# -- listing: GET /api/v1/feedback/tokens -----------------------------------------------------------

LIST_QUERY = Object(
    {
        "run_id": Field(Uuid(), required=True, nullable=False),
        "limit": Field(QueryInteger(1, LIST_CAP), nullable=False, default=LIST_CAP),
        "offset": Field(QueryInteger(0, OFFSET_CAP), nullable=False, default=0),
    },
    closed=False,
    blank_is_absent=True,
)


def parse_list_query(params: Mapping[str, str]) -> tuple[uuid.UUID, int, int]:
    """``run_id``, ``limit`` and ``offset`` of a listing (422 ``invalid_request``)."""
    try:
        checked = LIST_QUERY.check(dict(params))
    except Invalid as err:
        raise InvalidRequest(err.describe("query")) from None
    return checked["run_id"], checked["limit"], checked["offset"]

# The Idempotency-Key request header of submissions (the IETF httpapi draft): a key of the caller's
# naming one logical submission on one token across requests. Printable ASCII; a structured-field
# string's quotes are taken off before the check.
IDEMPOTENCY_KEY = Text(
    1, IDEMPOTENCY_KEY_CAP, controls=False,
    description="Names one logical submission on this token across requests: the same key with the same body "
    "is answered as the first time, with `duplicate` true (also under `use: many`); with another body, 422 "
    "`invalid_request`. 1 to 255 visible ASCII characters (a structured-field string's quotes are taken off).",
)
