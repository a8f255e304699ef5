"""What a delivery target is, how it says that something went wrong, and how ``--to`` names one.

A target is any object with one async method::

    class Target(Protocol):
        async def deliver(self, batch: Sequence[FeedbackEntry]) -> None: ...

``deliver`` returns once the target holds every entry of the batch durably: only then are the
entries acknowledged, so a crash before that delivers them again (at least once). Entries may
arrive twice; a target deduplicates on ``entry.key`` (feedback id, revision). How it fails says
what happens next:

- ``TargetUnavailable``: the target can't take anything right now (down, overloaded, timing
  out). The same batch is tried again with exponential backoff and jitter, without end; the
  entries stay pending and the group's lag grows, which ``deliver --status`` and the metrics show.
- ``Rejected``: the target refuses these entries (a 4xx from a webhook, data PostgreSQL won't
  take). The batch is halved until the refused entries stand alone; those go to the dead-letter
  stream, the rest are delivered.
- any other exception: a failure of this attempt, retried with backoff; after ``max_failures``
  failed attempts the batch is treated as rejected.

A target may also have ``async def aclose(self) -> None``; the deliverer calls it on the way out.
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from pathlib import Path
from typing import Protocol, runtime_checkable
from urllib.parse import urlsplit

from app.config import ConfigError, Settings
from app.store.entry import FeedbackEntry


class DeliveryError(Exception):
    """Root of the failures a target reports."""


class TargetUnavailable(DeliveryError):
    """Try the same batch again later; ``retry_after`` (seconds) when the target said when."""

    def __init__(self, message: str, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class Rejected(DeliveryError):
    """The target refuses the entries of this batch: delivering them again won't help."""


class Target(Protocol):
    async def deliver(self, batch: Sequence[FeedbackEntry]) -> None: ...


@runtime_checkable
class Closable(Protocol):
    async def aclose(self) -> None: ...


def _readable(spec: str) -> str:
    """The spec without credentials, query or fragment; with a short hash of the whole spec
    when something was left out, so two different targets never share a name."""
    parts = urlsplit(spec)
    host = parts.hostname or ""
    if parts.port:
        host = f"{host}:{parts.port}"
    shown = f"{parts.scheme}://{host}{parts.path}"
    if parts.username or parts.password or parts.query or parts.fragment:
        shown += "#" + hashlib.sha256(spec.encode()).hexdigest()[:8]
    return shown


def group_name(spec: str) -> str:
    """The default consumer group of a target: named after it, never showing a secret."""
    kind, _, rest = spec.partition(":")
    if kind == "jsonl":
        return "jsonl:-" if rest == "-" else f"jsonl:{Path(rest).resolve()}"
    if kind == "webhook":
        return "webhook:" + _readable(rest)
    if kind in ("postgresql", "postgres"):
        return _readable(spec)
    return spec


def open_target(spec: str, settings: Settings) -> Target:
    """The target ``--to`` names: ``jsonl:PATH`` (``jsonl:-`` for stdout), ``webhook:URL``,
    ``postgresql://...`` (libpq URL; ``?table=NAME`` picks the table, default ``feedback``), or
    ``python:MODULE:CLASS`` (a class of yours, constructed without arguments)."""
    kind, _, rest = spec.partition(":")
    if kind == "jsonl" and rest:
        from app.delivery.jsonl import JsonlTarget

        return JsonlTarget(rest)
    if kind == "webhook" and rest.startswith(("http://", "https://")):
        if settings.webhook_secret is None:
            raise ConfigError("a webhook target needs FEEDBACK_WEBHOOK_SECRET (whsec_...) to sign its requests")
        from app.delivery.webhook import WebhookTarget

        return WebhookTarget(rest, settings.webhook_secret)
    if kind in ("postgresql", "postgres") and rest.startswith("//"):
        from app.delivery.postgres import PostgresTarget

        return PostgresTarget(spec)
    if kind == "python" and rest.count(":") == 1:
        import importlib

        module, _, name = rest.partition(":")
        try:
            factory = getattr(importlib.import_module(module), name)
        except (ImportError, AttributeError) as err:
            raise ConfigError(f"--to {spec}: can't load {name} from {module}: {err}") from err
        target = factory()
        if not callable(getattr(target, "deliver", None)):
            raise ConfigError(f"--to {spec}: {name}() has no deliver method")
        return target  # type: ignore[no-any-return]
    raise ConfigError(
        f"--to {spec!r}: expected jsonl:PATH, jsonl:-, webhook:https://..., postgresql://... "
        "or python:MODULE:CLASS"
    )
