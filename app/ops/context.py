"""What the access line and the metrics learn about a request while it is handled.

The middleware (``app.ops.middleware``) opens one ``Access`` record per HTTP request and puts it
in a context variable; code deeper down notes what only it knows (the token id once a token
verified, whether the request was a submission and how it ended) with the ``note_*`` functions,
which cost a context-variable read and an attribute write. Each request runs in a task of its
own, so a record never leaks into another request.

Request ids: an ``X-Request-ID`` from the client is kept when it is 1-64 characters from
``A-Z a-z 0-9 . _ : + / = -`` (nothing that could split a log line or a header), else one is
generated: a random per-process prefix and a counter, unique across a fleet for all practical
purposes and much cheaper than a UUID per request.
"""

from __future__ import annotations

import itertools
import os
import re
import secrets
from contextvars import ContextVar
from uuid import UUID

REQUEST_ID_HEADER = "X-Request-ID"
_SAFE_ID = re.compile(rb"[A-Za-z0-9._:+/=-]{1,64}")
_PREFIX = secrets.token_hex(6)
_COUNTER = itertools.count(1)


def _new_process() -> None:
    # A forked worker (a server that loads the app before forking) must not repeat its parent's ids.
    global _PREFIX, _COUNTER
    _PREFIX, _COUNTER = secrets.token_hex(6), itertools.count(1)


os.register_at_fork(after_in_child=_new_process)


def request_id(given: bytes | None) -> str:
    """The client's request id when it is safe to log and echo, else a new one."""
    if given is not None and _SAFE_ID.fullmatch(given):
        return given.decode("ascii")
    return f"{_PREFIX}-{next(_COUNTER):x}"


class Access:
    """One request's record. ``outcome`` is ``recorded`` or ``duplicate`` when a submission was
    answered; ``problem`` the problem ``code`` when the request ended in an error."""

    __slots__ = ("request_id", "token_id", "submission", "outcome", "problem")

    def __init__(self, request_id: str) -> None:
        self.request_id = request_id
        self.token_id: UUID | None = None
        self.submission = False
        self.outcome: str | None = None
        self.problem: str | None = None


CURRENT: ContextVar[Access | None] = ContextVar("feedback_tokens_access", default=None)


def current() -> Access | None:
    return CURRENT.get()


def note_token(token_id: UUID) -> None:
    """The request concerns this token (its ``jti``): only ever called with a verified token's
    id or a revoked one's, so a forged token can't put a chosen id into the logs."""
    access = CURRENT.get()
    if access is not None:
        access.token_id = token_id


def note_submission() -> None:
    """This request is an attempt to submit feedback: its outcome is counted."""
    access = CURRENT.get()
    if access is not None:
        access.submission = True


def note_outcome(duplicate: bool) -> None:
    access = CURRENT.get()
    if access is not None:
        access.outcome = "duplicate" if duplicate else "recorded"


def note_problem(code: str) -> str | None:
    """The request ended in this problem; returns its request id for the problem document."""
    access = CURRENT.get()
    if access is None:
        return None
    access.problem = code
    return access.request_id
