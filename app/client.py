"""A small Python client, with the method names of LangSmith's, that also takes token URLs.

    client = Client("http://127.0.0.1:8000", api_key="...")
    token = client.create_presigned_feedback_token(run_id, "user_score")
    Client("http://127.0.0.1:8000").create_feedback_from_token(token["url"], score=1)

``create_feedback_from_token`` takes a token URL (``.../tokens/<jwt>/<token id>``, or the older
``.../tokens/<jwt>``), a JWT, ``<jwt>/<token id>``, or a token id.
"""

from __future__ import annotations

import datetime as dt
import uuid
from collections.abc import Iterator, Sequence
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import httpx

TOKENS = "/api/v1/feedback/tokens"
_TOKEN_PATH = "/feedback/tokens/"


class FeedbackTokensError(Exception):
    """The service answered with a problem document."""

    def __init__(self, status: int, code: str, detail: str) -> None:
        super().__init__(f"{status} {code}: {detail}")
        self.status = status
        self.code = code
        self.detail = detail


def _expiry(expiration: dt.datetime | dt.timedelta | None) -> dict[str, Any]:
    if expiration is None:
        return {"expires_in": None, "expires_at": None}
    if isinstance(expiration, dt.datetime):
        return {"expires_in": None, "expires_at": expiration.isoformat()}
    seconds = int(expiration.total_seconds())
    return {
        "expires_in": {
            "days": seconds // 86400,
            "hours": seconds % 86400 // 3600,
            "minutes": seconds % 3600 // 60,
        },
        "expires_at": None,
    }


def submit_target(token_or_url: uuid.UUID | str) -> str:
    """Where a submission goes: a token URL as it is (scheme and host kept, query and fragment
    dropped), so the JWT it carries is verified with no lookup, in either URL form; a URL's path
    (``/api/v1/feedback/tokens/...``) relative to the client's base URL; anything else is a token
    path segment (a JWT, ``<jwt>/<token id>`` or a token id) under ``TOKENS``.
    Raises ValueError for what can be neither, before anything is sent."""
    text = str(token_or_url).strip()
    parts = urlsplit(text)
    if parts.scheme or parts.netloc or text.startswith("/"):
        if (parts.scheme or parts.netloc) and (parts.scheme.lower() not in ("http", "https") or not parts.netloc):
            raise ValueError(f"a token URL must be http(s)://host/...: {text!r}")
        if _TOKEN_PATH not in parts.path or parts.path.endswith(_TOKEN_PATH):
            raise ValueError(f"not a token URL (no .../feedback/tokens/<token> in its path): {text!r}")
        return urlunsplit((parts.scheme, parts.netloc, parts.path, "", ""))
    token = text.strip("/")
    if not token or any(c in token for c in "?#") or any(not c.isprintable() or c.isspace() for c in token):
        raise ValueError(f"not a token, a token id or a token URL: {text!r}")
    return f"{TOKENS}/{token}"


class Client:
    def __init__(
        self, base_url: str, api_key: str | None = None, *, timeout: float = 10.0,
        transport: httpx.BaseTransport | None = None,
    ) -> None:
        # Sent only to the issuing endpoints: the token alone authorises a submission.
        self._auth = {"X-API-Key": api_key} if api_key else {}
        self.http = httpx.Client(base_url=base_url.rstrip("/"), timeout=timeout, transport=transport)

    def close(self) -> None:
        self.http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _json(self, response: httpx.Response) -> Any:
        if response.status_code >= 400:
            try:
                body = response.json()
                code, detail = body.get("code", "error"), body.get("detail", response.text)
            except ValueError:
                code, detail = "error", response.text
            raise FeedbackTokensError(response.status_code, code, detail)
        return response.json() if response.content else None

    def create_presigned_feedback_token(
        self,
        run_id: uuid.UUID | str,
        feedback_key: str,
        *,
        expiration: dt.datetime | dt.timedelta | None = None,
        feedback_config: dict[str, Any] | None = None,
        feedback_id: uuid.UUID | str | None = None,
    ) -> dict[str, Any]:
        body = {
            "run_id": str(run_id),
            "feedback_key": feedback_key,
            "feedback_config": feedback_config,
            "id": str(feedback_id) if feedback_id else None,
            **_expiry(expiration),
        }
        return self._json(self.http.post(TOKENS, json=body, headers=self._auth))  # type: ignore[no-any-return]

    def create_presigned_feedback_tokens(
        self,
        run_id: uuid.UUID | str,
        feedback_keys: Sequence[str],
        *,
        expiration: dt.datetime | dt.timedelta | None = None,
        feedback_configs: Sequence[dict[str, Any] | None] | None = None,
    ) -> list[dict[str, Any]]:
        configs = list(feedback_configs) if feedback_configs else [None] * len(feedback_keys)
        if len(configs) != len(feedback_keys):
            raise ValueError("feedback_keys and feedback_configs must have the same length")
        body = [
            {"run_id": str(run_id), "feedback_key": k, "feedback_config": c, **_expiry(expiration)}
            for k, c in zip(feedback_keys, configs, strict=True)
        ]
        return self._json(self.http.post(TOKENS, json=body, headers=self._auth))  # type: ignore[no-any-return]

    def list_presigned_feedback_tokens(
        self, run_id: uuid.UUID | str, *, limit: int | None = None
    ) -> Iterator[dict[str, Any]]:
        offset, seen = 0, 0
        while True:
            page = self._json(
                self.http.get(
                    TOKENS,
                    params={"run_id": str(run_id), "limit": 100, "offset": offset},
                    headers=self._auth,
                )
            )
            for item in page:
                yield item
                seen += 1
                if limit is not None and seen >= limit:
                    return
            if len(page) < 100:
                return
            offset += len(page)

    def revoke_presigned_feedback_token(self, token_id: uuid.UUID | str) -> None:
        self._json(self.http.delete(f"{TOKENS}/{token_id}", headers=self._auth))

    def create_feedback_from_token(
        self,
        token_or_url: uuid.UUID | str,
        score: float | int | bool | None = None,
        *,
        value: Any = None,
        correction: Any = None,
        comment: str | None = None,
        metadata: dict[str, Any] | None = None,
    ) -> dict[str, Any]:
        """Submit with a token URL (either form), a JWT, ``<jwt>/<token id>``, or a token id.
        A URL is posted to as it is (see ``submit_target``)."""
        url = submit_target(token_or_url)
        body = {"score": score, "value": value, "comment": comment,
                "correction": correction, "metadata": metadata}
        return self._json(self.http.post(url, json=body))  # type: ignore[no-any-return]
