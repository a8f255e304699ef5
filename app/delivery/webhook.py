"""``webhook:URL``: each batch is one POST, signed per the Standard Webhooks spec.

Body (JSON)::

    {"type": "feedback.batch", "timestamp": "<ISO 8601 UTC>", "data": [<entry>, ...]}

Headers: ``webhook-id`` (the same for every attempt of one batch: ``msg_`` and a hash of the
entries' stream ids), ``webhook-timestamp`` (seconds, this attempt) and ``webhook-signature``
(``v1,<base64 HMAC-SHA256>`` of ``id.timestamp.body`` under ``FEEDBACK_WEBHOOK_SECRET``), made by
the ``standardwebhooks`` package, whose ``Webhook(secret).verify(body, headers)`` checks them
on the receiving side.

A 2xx confirms the batch. 408, 429, 5xx, timeouts and connection errors mean "later"
(``TargetUnavailable``, honouring ``Retry-After``); any other status refuses the entries
(``Rejected``). A receiver may see an entry twice (a batch confirmed by it but not heard back
here, or a deliverer that crashed before acknowledging): it deduplicates on (``id``,
``revision``) of each entry, or on ``webhook-id`` for whole batches.
"""

from __future__ import annotations

import hashlib
import time
from collections.abc import Sequence
from datetime import UTC, datetime
from email.utils import parsedate_to_datetime

import httpx
from standardwebhooks import Webhook

from app import encoding
from app.config import Secret
from app.delivery.target import Rejected, TargetUnavailable
from app.store.entry import FeedbackEntry

RETRY_STATUSES = frozenset({408, 429})


def message_id(batch: Sequence[FeedbackEntry]) -> str:
    digest = hashlib.sha256()
    for entry in batch:
        digest.update(f"{entry.stream}/{entry.stream_id}\n".encode())
    return "msg_" + digest.hexdigest()[:32]


def retry_after(value: str | None) -> float | None:
    """Seconds from a Retry-After header (delta seconds or an HTTP date); None if absent or odd."""
    if not value:
        return None
    value = value.strip()
    if value.isdigit():
        return float(value)
    try:
        when = parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


class WebhookTarget:
    def __init__(self, url: str, secret: Secret, timeout: float = 10.0) -> None:
        self.url = url
        self._signer = Webhook(secret.value)
        self._http = httpx.AsyncClient(timeout=timeout, follow_redirects=False)

    async def deliver(self, batch: Sequence[FeedbackEntry]) -> None:
        now = datetime.now(UTC)
        body = encoding.dumps(
            {
                "type": "feedback.batch",
                "timestamp": now.isoformat(timespec="milliseconds"),
                "data": [entry.to_json() for entry in batch],
            }
        )
        msg_id = message_id(batch)
        headers = {
            "content-type": "application/json",
            "webhook-id": msg_id,
            "webhook-timestamp": str(int(now.timestamp())),
            "webhook-signature": self._signer.sign(msg_id, now, body.decode()),
        }
        try:
            response = await self._http.post(self.url, content=body, headers=headers)
        except httpx.HTTPError as err:  # timeouts, refused or dropped connections
            raise TargetUnavailable(f"POST {self.url}: {type(err).__name__}: {err}") from err
        status = response.status_code
        if 200 <= status < 300:
            return
        detail = f"POST {self.url} answered {status}: {response.text[:200]!r}"
        if status >= 500 or status in RETRY_STATUSES:
            raise TargetUnavailable(detail, retry_after(response.headers.get("retry-after")))
        raise Rejected(detail)

    async def aclose(self) -> None:
        await self._http.aclose()
