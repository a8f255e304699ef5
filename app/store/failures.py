"""What a failed Redis call means: its kind (one bounded set, for the 503's wording and for the
``feedback_redis_errors_total`` label) and the 503 a caller gets.

redis-py reports most failures as ``RedisError`` subclasses; a connection closed under a call can
instead surface as a transport's ``AttributeError`` / ``TypeError`` (redis-py issue 4287, seen
here when a cluster failover replaces a node's connections) or, under uvloop, as the
``RuntimeError`` its transport raises for a write after it closed ("the handler is closed": a
node killed between the pool's check of a connection and the write), and the cluster client's own
``RedisClusterException`` (no node for a slot mid-failover) is not a RedisError at all.
``as_redis_error`` turns those, and only those, into the RedisError they stand for; the same
AttributeError raised by this service's own code stays a bug and a 500.
"""

from __future__ import annotations

import asyncio
import os
import traceback

import redis
from redis.exceptions import (
    ClusterDownError,
    MaxConnectionsError,
    NoScriptError,
    OutOfMemoryError,
    RedisClusterException,
    RedisError,
    ResponseError,
    TimeoutError,
)
from redis.exceptions import ConnectionError as RedisConnectionError

from app.errors import StoreUnavailable

# Every kind error_kind returns; "other" for anything else.
KINDS = ("timeout", "connection", "pool", "oom", "noscript", "response", "other")

# What each store operation was doing, in the words a 503's detail uses.
OPERATIONS = {
    "ping": "checking Redis",
    "issue": "issuing tokens",
    "submit": "recording the submission",
    "lookup": "looking up the token id",
    "state": "reading the token's state",
    "recent": "reading recent feedback",
    "revoke": "revoking the token",
    "list": "listing the run's tokens",
}

_REDIS_DIR = os.path.dirname(redis.__file__) + os.sep
_TRANSPORT_DIRS = (_REDIS_DIR, os.path.dirname(asyncio.__file__) + os.sep)


# What may escape redis-py that is not a RedisError yet means Redis could not be used.
NOT_REDIS_ERRORS = (AttributeError, TypeError, RuntimeError, RedisClusterException)


def as_redis_error(err: BaseException) -> RedisError | None:
    """``err`` as the RedisError it stands for, or None if it is not one:

    - a closed connection's AttributeError or TypeError raised inside redis-py or asyncio's
      transport: a ConnectionError;
    - uvloop's RuntimeError for a write on a transport that closed, raised under a redis-py
      call: a ConnectionError;
    - redis-py's cluster client finding no node for a slot while it learns a new topology
      (``SlotNotCoveredError`` and the other ``RedisClusterException``s, which are not
      RedisErrors): a ClusterDownError, as Redis itself says during a failover.

    The same AttributeError, TypeError or RuntimeError raised by this service's own code stays a
    bug (None)."""
    if isinstance(err, RedisClusterException):
        return ClusterDownError(f"the cluster client has no node for this ({type(err).__name__}: {err})")
    if isinstance(err, RuntimeError):
        if "the handler is closed" not in str(err) or err.__traceback__ is None:
            return None
        frames = traceback.extract_tb(err.__traceback__)
        if not any(frame.filename.startswith(_REDIS_DIR) for frame in frames):
            return None
        return RedisConnectionError(f"connection closed under the call ({type(err).__name__}: {err})")
    if not isinstance(err, (AttributeError, TypeError)) or err.__traceback__ is None:
        return None
    innermost = traceback.extract_tb(err.__traceback__)[-1].filename
    if not innermost.startswith(_TRANSPORT_DIRS):
        return None
    return RedisConnectionError(f"connection closed under the call ({type(err).__name__}: {err})")


def error_kind(err: BaseException) -> str:
    """One of ``KINDS``. Order matters: a full pool is a ConnectionError subclass, and Redis's
    OOM refusal is a ResponseError."""
    if isinstance(err, OutOfMemoryError) or (isinstance(err, RedisError) and str(err).startswith("OOM")):
        return "oom"
    if isinstance(err, MaxConnectionsError):
        return "pool"
    if isinstance(err, TimeoutError):
        return "timeout"
    if isinstance(err, RedisConnectionError):
        return "connection"
    if isinstance(err, NoScriptError):
        return "noscript"
    if isinstance(err, ResponseError):
        return "response"
    return "other"


def unavailable(what: str, err: RedisError, retry_after: int) -> StoreUnavailable:
    """The 503 for store operation ``what`` failing with ``err``: what was being done, and whether
    anything may have been recorded."""
    kind = error_kind(err)
    doing = OPERATIONS.get(what, what)
    if kind == "oom":
        # Refused at the script's first write: certainly nothing was recorded.
        detail = f"Redis is out of memory while {doing}; nothing was changed, try again"
    elif kind == "pool":
        detail = f"every Redis connection of this node is busy ({doing}); nothing was changed, try again"
    elif what == "submit":
        # A timeout or a dropped connection may come after Redis ran the script, so don't promise
        # that nothing was recorded; an identical resend is answered either way.
        detail = (
            f"Redis is unavailable ({doing} failed: {kind}); send the same submission again shortly: "
            "an identical resend is never counted twice (for tokens that take many submissions, "
            "send an Idempotency-Key header so that a resend is recognised)"
        )
    else:
        detail = f"Redis is unavailable ({doing} failed: {kind}); try again shortly"
    return StoreUnavailable(detail, retry_after=retry_after)
